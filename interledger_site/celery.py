"""The Celery app: ``celery -A interledger_site worker``.

No beat is needed: every serving process runs the recovery sweeps itself
(``payments.recovery``); ``CELERY_BEAT_SCHEDULE`` holds the same sweeps for a deployment
that runs beat as well.

Each worker process builds its node runtime from the worker's signals
(``interledger_site.runtime.worker_runtime``: it owns no links and runs no sweeps; a
Prepare a task sends goes out through the link's owner). ``worker_process_init`` fires
in each prefork child, ``worker_init`` in a solo/threads worker. A worker process that
stops (warm shutdown) first applies or publishes the receipts it committed and closes
its ledger writer, then closes its runtime.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "interledger_site.settings")

app = Celery("interledger_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _start_runtime(**_: Any) -> None:
    from interledger_site.runtime import install, worker_runtime

    install(worker_runtime())


def _close_runtime(**_: Any) -> None:
    """The book and its applier of this process, if a task made them (a payment through
    the switch commits receipts here too): pending receipts are applied or published,
    then the writer closes; then the runtime. Idempotent (a prefork child and a solo
    worker both get here)."""
    from interledger_site.runtime import install
    from payments.ledger import reset_book

    reset_book()
    runtime = install(None)
    if runtime is not None:
        runtime.close()


worker_process_init.connect(_start_runtime, weak=False)
worker_init.connect(_start_runtime, weak=False)
worker_process_shutdown.connect(_close_runtime, weak=False)
worker_shutdown.connect(_close_runtime, weak=False)
