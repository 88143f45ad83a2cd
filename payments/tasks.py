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

from celery import Task, shared_task
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
    """Periodic sweep for receipts whose task was lost."""
    return services.apply_pending_receipts()


@shared_task(  # type: ignore[untyped-decorator]
    bind=True, name="payments.deliver_webhook", acks_late=True, max_retries=None
)
def deliver_webhook(self: Task, *, delivery_id: int, attempt: int = 0) -> str:
    """One attempt of one webhook delivery; retried through Celery with exponential backoff.

    The service claims attempt ``attempt`` atomically, so a replayed task is a no-op.
    """
    result = services.webhook_deliver(delivery_id=delivery_id, attempt=attempt)
    if result.retry_in is None:
        return result.status
    kwargs = {"delivery_id": delivery_id, "attempt": attempt + 1}
    if self.request.is_eager:
        # Eager Celery (the embedded default) cannot delay a retry, and with
        # task_eager_propagates its Retry escapes to the caller: wait on a timer instead.
        _retry_later(result.retry_in, kwargs)
        return "retry"
    raise self.retry(kwargs=kwargs, countdown=result.retry_in)


def _retry_later(countdown: float, kwargs: dict[str, Any]) -> None:
    _track(+1)

    def fire() -> None:
        try:
            run_in_background(deliver_webhook.apply, kwargs=kwargs)
        finally:
            _track(-1)

    timer = threading.Timer(countdown, fire)
    timer.daemon = True
    timer.start()


@shared_task(name="payments.retry_webhooks")  # type: ignore[untyped-decorator]
def retry_webhooks() -> int:
    """Periodic sweep: re-queue pending deliveries that are due (lost tasks, expired leases)."""
    ids = services.due_webhook_deliveries()
    for delivery_id in ids:
        deliver_webhook.delay(delivery_id=delivery_id, attempt=_attempts(delivery_id))
    return len(ids)


def _attempts(delivery_id: int) -> int:
    from payments.models import WebhookDelivery

    value = (
        WebhookDelivery.objects.filter(pk=delivery_id).values_list("attempts", flat=True).first()
    )
    return value or 0


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
    """Wait until no background task or scheduled eager retry is left (shutdown, tests)."""
    with _idle:
        return _idle.wait_for(lambda: _pending == 0, timeout=timeout)


from payments.outgoing_tasks import *  # noqa: E402,F403  (sending tasks: autodiscovery)
