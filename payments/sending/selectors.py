"""Read-only queries of sending (no writes, no locks): for views, APIs and commands.

For the REST API (``payments/apis.py``): list with :func:`outgoing_payment_list`
(optionally for the accounts a user may send from), show with
:func:`outgoing_payment_get` / :func:`outgoing_chunk_list`, serialize with
:func:`payments.sending.runner.payment_summary`; create with
:func:`payments.sending.services.outgoing_payment_create` (its errors are ``PaymentsError``
subclasses carrying ``http_status``).
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import QuerySet

from payments.models import LedgerAccount
from payments.models_outgoing import CircularPayment, OutgoingChunk, OutgoingPayment
from payments.sending.reservation import account_available


def outgoing_payment_get(
    *, payment_id: int, account_codes: Iterable[str] | None = None
) -> OutgoingPayment | None:
    """One payment (``None`` if missing, or not from one of ``account_codes`` when given)."""
    qs = OutgoingPayment.objects.select_related("source_account")
    if account_codes is not None:
        qs = qs.filter(source_account__code__in=list(account_codes))
    return qs.filter(pk=payment_id).first()


def outgoing_payment_list(
    *,
    account_codes: Iterable[str] | None = None,
    status: str | None = None,
    limit: int = 50,
) -> list[OutgoingPayment]:
    """The newest payments (of ``account_codes`` when given), newest first."""
    qs: QuerySet[OutgoingPayment] = OutgoingPayment.objects.select_related("source_account")
    if account_codes is not None:
        qs = qs.filter(source_account__code__in=list(account_codes))
    if status:
        qs = qs.filter(status=status)
    return list(qs.order_by("-created_at", "-id")[:limit])


def outgoing_chunk_list(*, payment_id: int, limit: int = 500) -> list[OutgoingChunk]:
    """A payment's chunks (every attempt), in sequence order."""
    return list(OutgoingChunk.objects.filter(payment_id=payment_id).order_by("sequence")[:limit])


def account_sendable(*, account_code: str) -> int | None:
    """What may still be sent from the account now (``None``: unbounded; 0 if unknown)."""
    account = LedgerAccount.objects.filter(code=account_code).first()
    if account is None:
        return 0
    available = account_available(account=account)
    return None if available is None else max(available, 0)


def circular_payment_get(*, circular_id: int) -> CircularPayment | None:
    return CircularPayment.objects.select_related("source_account").filter(pk=circular_id).first()


def circular_payment_list(*, limit: int = 50) -> list[CircularPayment]:
    return list(CircularPayment.objects.order_by("-created_at", "-id")[:limit])
