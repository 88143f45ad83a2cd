"""Selectors of receivers: reads only."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db.models import QuerySet, Sum

from payments.models import IncomingPayment, Receipt, Webhook
from payments.selectors import incoming_payment_list, unapplied_receipts_total
from receivers.addresses import tag_key_prefix
from receivers.models import PaidToken, Receiver
from receivers.names import is_valid_name

if TYPE_CHECKING:
    from django.contrib.auth.models import User

# The receiver ``/.well-known/pay`` (the bare ``$host`` pointer) answers for: the one
# named ``demo`` if there is one, else the oldest receiver. No setting involved.
DEFAULT_RECEIVER_NAME = "demo"


def receiver_get(*, name: str) -> Receiver | None:
    """The receiver named ``name`` (with its account), or ``None``."""
    if not is_valid_name(name):
        return None
    return Receiver.objects.select_related("account").filter(name=name).first()


def receiver_default() -> Receiver | None:
    """The site's default receiver (``/.well-known/pay``): ``demo``, else the oldest."""
    qs = Receiver.objects.select_related("account")
    return qs.filter(name=DEFAULT_RECEIVER_NAME).first() or qs.order_by("created_at", "pk").first()


def receiver_list() -> QuerySet[Receiver]:
    return Receiver.objects.select_related("account", "user").order_by("name")


def receiver_list_for_user(*, user: User) -> QuerySet[Receiver]:
    return Receiver.objects.select_related("account").filter(user=user).order_by("name")


def receiver_get_for_user(*, user: User, name: str) -> Receiver | None:
    if not is_valid_name(name):
        return None
    return receiver_list_for_user(user=user).filter(name=name).first()


def receiver_account_codes_for_user(*, user: User) -> list[str]:
    """The ledger account codes of ``user``'s receivers (what their webhooks may be on)."""
    return list(Receiver.objects.filter(user=user).values_list("account__code", flat=True))


def receiver_account_code_get(*, name: str) -> str | None:
    """The ledger account code of the receiver ``name``, or ``None`` (one query)."""
    if not is_valid_name(name):
        return None
    return Receiver.objects.filter(name=name).values_list("account__code", flat=True).first()


def receiver_incoming_payments(*, receiver: Receiver, limit: int = 20) -> list[IncomingPayment]:
    """The most recent incoming payments of ``receiver`` (newest first)."""
    return incoming_payment_list(account_code=receiver.account.code, limit=limit)


def receiver_pending_total(*, receiver: Receiver) -> int:
    """Received but not yet in the balance (receipts ``apply_receipts`` has not credited)."""
    return unapplied_receipts_total(account_code=receiver.account.code)


def tag_received_total(*, account_id: int, tag: bytes) -> int:
    """What the account received through the addresses tagged ``tag`` (one indexed query on
    the receipts' ``key``: see :func:`receivers.addresses.tagged_receipt_key`)."""
    total = Receipt.objects.filter(
        account_id=account_id, key__startswith=tag_key_prefix(tag)
    ).aggregate(total=Sum("amount"))["total"]
    return int(total or 0)


# --- the user's webhooks and pay tokens -------------------------------------------------------


def webhook_list_for_user(*, user: User) -> QuerySet[Webhook]:
    """Webhooks on the accounts of ``user``'s receivers, with their receiver."""
    return (
        Webhook.objects.filter(account__receiver__user=user)
        .select_related("account__receiver")
        .order_by("account__code", "id")
    )


def webhook_get_for_user(*, user: User, webhook_id: int) -> Webhook | None:
    return webhook_list_for_user(user=user).filter(pk=webhook_id).first()


def paid_token_list_for_user(*, user: User) -> QuerySet[PaidToken]:
    """Pay tokens charged by ``user``'s paid APIs (their receivers)."""
    return (
        PaidToken.objects.filter(receiver__user=user)
        .select_related("receiver")
        .order_by("-last_used_at", "-id")
    )
