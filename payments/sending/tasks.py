"""Celery tasks of sending. Each takes ids, calls one service, has a stable ``name=``.

Queued with ``transaction.on_commit`` by :mod:`payments.sending.services`. Idempotency lives in
the services, in the three layers of the house style: a status check (a finished
payment, or one whose lease another runner holds, returns at once), row locks (the
source account, then the payment, in that order) and unique keys (``idempotency_key``,
``(payment, sequence)`` of each chunk, the ledger's posting keys). So ``acks_late`` with
``reject_on_worker_lost`` is safe: a worker killed mid-payment has its message delivered
again and the next run resumes (chunks in flight are resolved, never re-sent).
"""

from __future__ import annotations

import logging

from celery import Task, shared_task
from django.db import OperationalError

from payments.sending import circular, services
from payments.sending.errors import BookingFailed

__all__ = [
    "resolve_circular_payments",
    "resume_outgoing_payments",
    "send_circular_payment",
    "send_outgoing_payment",
]

logger = logging.getLogger(__name__)

# A retried run must wait for the lease of the run that failed only when that run could
# not release it; it releases it on the errors below, so a short countdown is enough.
RETRY_COUNTDOWN_S = 5


@shared_task(  # type: ignore[untyped-decorator]
    bind=True,
    name="payments.send_outgoing_payment",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError, BookingFailed),
    retry_backoff=RETRY_COUNTDOWN_S,
    max_retries=10,
)
def send_outgoing_payment(self: Task, *, payment_id: int) -> str:
    """Run or resume one outgoing payment (``services.outgoing_payment_run``).

    When another runner holds the payment (e.g. this is the redelivery of a task whose
    worker died mid-payment), try again once its lease has run out: the run that then
    takes it resolves whatever the dead one left in flight.
    """
    payment = services.outgoing_payment_run_sync(payment_id=payment_id)
    if payment is not None:
        return str(payment.status)
    wait = services.outgoing_payment_lease_left(payment_id=payment_id)
    if wait is not None and not self.request.is_eager:
        raise self.retry(countdown=wait + 1)
    return "skipped"


@shared_task(  # type: ignore[untyped-decorator]
    name="payments.send_circular_payment",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError,),
    retry_backoff=RETRY_COUNTDOWN_S,
    max_retries=5,
)
def send_circular_payment(*, circular_id: int) -> str:
    """Send one circular payment (``circular.circular_payment_run``)."""
    payment = circular.circular_payment_run_sync(circular_id=circular_id)
    return payment.status if payment is not None else "skipped"


@shared_task(name="payments.resume_outgoing_payments")  # type: ignore[untyped-decorator]
def resume_outgoing_payments() -> int:
    """Sweep: re-queue active payments no runner holds (a worker died, a message was lost)
    and settle circular payments whose runner died. Returns how many were handled.

    With eager Celery each queued payment runs in the calling thread; a serving process
    resumes them on its own event loop instead (:mod:`payments.recovery`). A publish that
    fails is logged and left to the next sweep (the payment stays due).
    """
    due = services.outgoing_payments_due()
    to_start, to_resolve = circular.circular_payments_due()
    handled = 0
    for payment_id in due:
        handled += _publish(send_outgoing_payment, payment_id=payment_id)
    for circular_id in to_start:
        handled += _publish(send_circular_payment, circular_id=circular_id)
    return handled + resolve_circular_payments(to_resolve)


def resolve_circular_payments(circular_ids: list[int]) -> int:
    """Settle circular payments whose runner died (``circular_payment_resolve`` each)."""
    done = 0
    for circular_id in circular_ids:
        try:
            circular.circular_payment_resolve(circular_id=circular_id)
            done += 1
        except Exception:
            logger.exception("payments: cannot resolve circular payment %s", circular_id)
    return done


def _publish(task: Task, **kwargs: int) -> int:
    try:
        task.delay(**kwargs)
    except Exception:
        # A broker outage (or, eager, a run that failed): the row stays due.
        logger.warning(
            "payments: %s%s failed; left to the next sweep", task.name, kwargs, exc_info=True
        )
        return 0
    return 1
