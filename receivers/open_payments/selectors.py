"""Reads of Open Payments rows (no writes here)."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Sum

from payments.models import Receipt
from receivers.addresses import TAG_KEY_PREFIX, tag_key_prefix
from receivers.models import MonetizedPage, Receiver
from receivers.open_payments.models import AccessToken, Grant, IncomingPaymentResource
from receivers.pages import page_get_visible, parse_visitor, visitor_text
from receivers.selectors import receiver_default, receiver_get

PAGE_WALLET_PATH = "pages/{slug}/spsp/{visitor}"


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
        IncomingPaymentResource.objects.select_related("receiver", "receiver__account", "page")
        .filter(id=key)
        .first()
    )


def incoming_payment_page(
    *, wallet: WalletAddress, client: str | None, after: str | None, first: int
) -> tuple[list[IncomingPaymentResource], bool]:
    """Up to ``first`` incoming payments created on ``wallet`` (newest first), after the one
    with id ``after``; only ``client``'s when given. Also whether more follow."""
    rows = IncomingPaymentResource.objects.select_related(
        "receiver", "receiver__account", "page"
    ).filter(receiver=wallet.receiver, page=wallet.page, visitor=wallet.visitor)
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
    received = Receipt.objects.filter(
        account_id=payment.receiver.account_id,
        key__startswith=TAG_KEY_PREFIX,  # repeats the partial index's condition
    ).filter(key__startswith=receipt_prefix(payment.id.bytes, wallet_address_of(payment).visitor))
    total = received.aggregate(total=Sum("amount"))["total"]
    received_total = int(total or 0)
    cap = payment.incoming_amount
    completed = payment.completed_at is not None or (cap is not None and received_total >= int(cap))
    expired = payment.expires_at is not None and payment.expires_at <= now
    return PaymentState(received_total, completed, expired)


def receipt_prefix(payment_tag: bytes, visitor: bytes | None) -> str:
    """What every receipt key of an incoming payment starts with: its tag's prefix, after
    its page visitor's when it has one (see :func:`receipt_key`)."""
    inner = tag_key_prefix(payment_tag)
    return inner if visitor is None else tag_key_prefix(visitor) + inner


@dataclass(frozen=True, slots=True)
class WalletAddress:
    """One of our wallet addresses: a pointer (``page`` and ``visitor`` ``None``), or a
    web-monetized page's wallet address for one visitor (paid to the page's receiver)."""

    receiver: Receiver
    page: MonetizedPage | None = None
    visitor: bytes | None = None

    def url(self, base: str) -> str:
        if self.page is None or self.visitor is None:
            return f"{base}/{self.receiver.name}"
        return f"{base}/" + page_wallet_path(self.page.slug, self.visitor)


def page_wallet_path(slug: str, visitor: bytes) -> str:
    """``pages/<slug>/spsp/<visitor id>``: a page visitor's wallet address (and SPSP
    endpoint), relative to the node's base URL."""
    return PAGE_WALLET_PATH.format(slug=slug, visitor=visitor_text(visitor))


def wallet_address_of(payment: IncomingPaymentResource) -> WalletAddress:
    visitor = None if payment.visitor is None else bytes(payment.visitor)
    return WalletAddress(payment.receiver, payment.page, visitor)


def wallet_address_resolve(*, url: str, base_url: str) -> WalletAddress | None:
    """The wallet address at ``url``: a pointer (``{base}/<name>``, the bare host's
    ``{base}/.well-known/pay``) or a published page's visitor address
    (``{base}/pages/<slug>/spsp/<visitor id>``), else ``None``."""
    base = base_url.rstrip("/") + "/"
    if not url.startswith(base):
        return None
    path = url[len(base) :].rstrip("/")
    if path.startswith("pages/"):
        return _page_wallet(path)
    receiver = receiver_for_wallet_address(url=url, base_url=base_url)
    return None if receiver is None else WalletAddress(receiver)


def _page_wallet(path: str) -> WalletAddress | None:
    parts = path.split("/")
    if len(parts) != 4 or parts[0] != "pages" or parts[2] != "spsp":
        return None
    visitor = parse_visitor(parts[3])
    page = None if visitor is None else page_get_visible(slug=parts[1])
    if page is None or visitor is None:
        return None
    return WalletAddress(page.receiver, page, visitor)


def receiver_for_wallet_address(*, url: str, base_url: str) -> Receiver | None:
    """The pointer whose wallet address is ``url`` (``{base}/<name>`` or the bare host's
    ``{base}/.well-known/pay``), else ``None``. A page visitor's wallet address is its
    page's pointer here (grants are bound to pointers)."""
    base = base_url.rstrip("/") + "/"
    if not url.startswith(base):
        return None
    name = url[len(base) :].rstrip("/")
    if name == ".well-known/pay":
        return receiver_default()
    if name.startswith("pages/"):
        wallet = _page_wallet(name)
        return None if wallet is None else wallet.receiver
    if not name or "/" in name:
        return None
    return receiver_get(name=name)
