"""Celery tasks of the ledger. Each takes ids, calls one service, has a stable name.

Queue them after commit (``transaction.on_commit`` / ``delay_on_commit``). Idempotency
lives in the services (status check, row locks in primary-key order, unique keys), so
``acks_late`` is safe where set.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import shared_task
from celery.signals import task_postrun
from django.db import OperationalError, connections

from payments import services

logger = logging.getLogger(__name__)


@shared_task(  # type: ignore[untyped-decorator]
    name="payments.apply_receipts",
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=5,
)
def apply_receipts(*, receipt_ids: list[int]) -> int:
    """Receipts → incoming payments and the receivers' postings (``services.apply_receipts``)."""
    return services.apply_receipts(receipt_ids=receipt_ids)


@shared_task(name="payments.apply_pending_receipts", acks_late=True)  # type: ignore[untyped-decorator]
def apply_pending_receipts() -> int:
    """Sweep for receipts whose task was lost (the recovery sweep does the same in every
    serving process; this task is for a deployment that also runs beat)."""
    return services.apply_pending_receipts()


@shared_task(name="payments.deliver_webhook", acks_late=True)  # type: ignore[untyped-decorator]
def deliver_webhook(*, delivery_id: int, attempt: int | None = None) -> str:
    """One attempt of one webhook delivery (``services.webhook_deliver``).

    A failed attempt is not retried through Celery (a countdown lives in the broker or
    the worker's memory and dies with them): the service writes the next attempt's time
    into the durable row (``next_attempt_at``) and the recovery sweep
    (:mod:`payments.recovery`, or ``payments.retry_webhooks``) queues it once due. The
    service claims attempt ``attempt`` atomically, so a replayed task is a no-op.
    """
    return services.webhook_deliver(delivery_id=delivery_id, attempt=attempt).status


@shared_task(name="payments.retry_webhooks")  # type: ignore[untyped-decorator]
def retry_webhooks() -> int:
    """Sweep: queue the pending deliveries that are due (a failed attempt's backoff has run
    out, a task was lost, a claimed attempt's lease expired). Returns how many."""
    return services.webhook_deliveries_queue_due()


@task_postrun.connect  # type: ignore[untyped-decorator]
def _recycle_connections(sender: Any = None, **kwargs: Any) -> None:
    """After a task in a worker: what Django does after a request (``CELERY_DB_REUSE_MAX``
    keeps Celery from closing every connection): drop this thread's connections that are
    broken (an error left them unusable) or older than ``CONN_MAX_AGE``, keep the rest;
    with ``CONN_HEALTH_CHECKS`` the next task's first query checks it. Not for an eager
    task: it runs in its caller's thread, maybe inside the caller's transaction."""
    request = getattr(sender, "request", None)
    if request is None or getattr(request, "is_eager", False):
        return
    for conn in connections.all(initialized_only=True):
        try:
            conn.close_if_unusable_or_obsolete()
        except Exception:
            logger.warning("payments: closing a database connection failed", exc_info=True)


# --- background runner for the embedded (eager) mode -----------------------------------------

_background: ThreadPoolExecutor | None = None
_background_lock = threading.Lock()
_pending = 0
_idle = threading.Condition()


def _track(delta: int) -> None:
    global _pending
    with _idle:
        _pending += delta
        if _pending == 0:
            _idle.notify_all()


def run_in_background(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` on a small daemon pool (eager mode only: keeps HTTP off the ledger writer)."""
    global _background
    with _background_lock:
        if _background is None:
            _background = ThreadPoolExecutor(max_workers=4, thread_name_prefix="payments-bg")
        pool = _background

    def call() -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception:
            logger.exception("payments: background task %r failed", fn)
            raise
        finally:
            connections.close_all()  # this thread's connections only
            _track(-1)

    _track(+1)
    return pool.submit(call)


def wait_background_idle(timeout: float) -> bool:
    """Wait until no background task is left (shutdown, tests)."""
    with _idle:
        return _idle.wait_for(lambda: _pending == 0, timeout=timeout)


from payments.sending.tasks import *  # noqa: E402,F403  (sending tasks: autodiscovery)
