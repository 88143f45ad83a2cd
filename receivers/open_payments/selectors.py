"""Reads of Open Payments rows (no writes here)."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime

from receivers.models import Receiver
from receivers.open_payments.models import AccessToken, Grant, IncomingPaymentResource
from receivers.selectors import receiver_default, receiver_get, tag_received_total


def token_hash(value: str) -> str:
    """How a bearer value is stored (tokens are 32 random bytes: a plain digest suffices)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def access_token_get(*, value: str) -> AccessToken | None:
    """The access token whose bearer value is ``value`` (revoked and expired ones too:
    the caller tells the client why)."""
    return (
        AccessToken.objects.select_related("grant", "grant__receiver")
        .filter(token_hash=token_hash(value))
        .first()
    )


def access_token_by_id(*, token_id: str) -> AccessToken | None:
    try:
        key = uuid.UUID(token_id)
    except ValueError:
        return None
    return AccessToken.objects.select_related("grant").filter(id=key).first()


def grant_get(*, grant_id: str) -> Grant | None:
    try:
        key = uuid.UUID(grant_id)
    except ValueError:
        return None
    return Grant.objects.filter(id=key).first()


def incoming_payment_get(*, payment_id: str) -> IncomingPaymentResource | None:
    try:
        key = uuid.UUID(payment_id)
    except ValueError:
        return None
    return (
        IncomingPaymentResource.objects.select_related("receiver", "receiver__account")
        .filter(id=key)
        .first()
    )


def incoming_payment_page(
    *, receiver: Receiver, client: str | None, after: str | None, first: int
) -> tuple[list[IncomingPaymentResource], bool]:
    """Up to ``first`` incoming payments of ``receiver`` (newest first), after the one with
    id ``after``; only ``client``'s when given. Also whether more follow."""
    rows = IncomingPaymentResource.objects.select_related("receiver", "receiver__account").filter(
        receiver=receiver
    )
    if client is not None:
        rows = rows.filter(client=client)
    if after is not None:
        anchor = incoming_payment_get(payment_id=after)
        if anchor is not None:
            rows = rows.filter(created_at__lte=anchor.created_at).exclude(id=anchor.id)
            rows = rows.exclude(created_at=anchor.created_at, id__lt=anchor.id)
    found = list(rows.order_by("-created_at", "id")[: first + 1])
    return found[:first], len(found) > first


@dataclass(frozen=True, slots=True)
class PaymentState:
    received: int
    completed: bool
    expired: bool


def incoming_payment_state(*, payment: IncomingPaymentResource, now: datetime) -> PaymentState:
    """What arrived so far (the durable receipts of its tag, live) and whether it is done."""
    received = tag_received_total(account_id=payment.receiver.account_id, tag=payment.id.bytes)
    cap = payment.incoming_amount
    completed = payment.completed_at is not None or (cap is not None and received >= int(cap))
    expired = payment.expires_at is not None and payment.expires_at <= now
    return PaymentState(received, completed, expired)


def receiver_for_wallet_address(*, url: str, base_url: str) -> Receiver | None:
    """The pointer whose wallet address is ``url`` (``{base}/<name>`` or the bare host's
    ``{base}/.well-known/pay``), else ``None``."""
    base = base_url.rstrip("/") + "/"
    if not url.startswith(base):
        return None
    name = url[len(base) :].rstrip("/")
    if name == ".well-known/pay":
        return receiver_default()
    if not name or "/" in name:
        return None
    return receiver_get(name=name)
