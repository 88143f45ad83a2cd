"""The Celery app: ``celery -A interledger_site worker``.

No beat is needed: every serving process runs the recovery sweeps itself
(``payments.recovery``); ``CELERY_BEAT_SCHEDULE`` holds the same sweeps for a deployment
that runs beat as well. A worker process that stops (warm shutdown) first applies or
publishes the receipts it committed and closes its ledger writer.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import worker_process_shutdown, worker_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "interledger_site.settings")

app = Celery("interledger_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _close_ledger(**_: Any) -> None:
    """The book and its applier of this process, if a task made them (a payment through
    the switch commits receipts here too): pending receipts are applied or published,
    then the writer closes. Idempotent (a prefork child and a solo worker both get here)."""
    from payments.ledger import reset_book

    reset_book()


worker_process_shutdown.connect(_close_ledger, weak=False)
worker_shutdown.connect(_close_ledger, weak=False)
