"""Shop orders paid with Interledger (``web-payments.md``): services and selectors.

An :class:`~receivers.models.Order` is an invoice of ``amount`` to the merchant's receiver.
Its own SPSP receiver id, ``/shop/<order id>/spsp`` (the pointer
``$host/shop/<order id>/spsp``), answers with addresses of the merchant's receiver **tagged
with the order id's 16 bytes** and an SPSP ``balance`` ``{maximum: amount, current:
received}``, so every chunk is attributable to the order (receipt keys ``tag:<id hex>:…``):
PSK2 addresses for ``application/spsp+json``, STREAM ones for ``application/spsp4+json``
(:func:`order_stream_answer`; each STREAM packet is one receipt with the same tagged key).

The order is paid when its receipts reach ``amount``: :func:`order_refresh` re-reads
them and moves ``pending`` → ``paid`` once (a conditional ``UPDATE ... WHERE status =
'pending'``; ``received`` only ever grows). It runs on every read of the order (checkout
page, status, SPSP, the payment-handler callback, the merchant's list), so a paid order is
marked as soon as anyone looks; ``orders_refresh_pending`` sweeps the rest. A browser's
``fulfillment`` is never proof (the PSK2 sender knows it too): only our receipts decide.
Chunks that arrive after the order is paid or cancelled are still recorded
(``received > amount``: a refund for the merchant to make); the hot path does not look
orders up.
"""

from __future__ import annotations

import secrets
import uuid
from typing import TYPE_CHECKING

from django.db.models import QuerySet
from django.utils import timezone

from ilp.oer import UINT64_MAX
from ilp.stream import ReceiptSetup
from receivers.addresses import (
    STREAM_IV_LENGTH,
    TOKEN_LENGTH,
    issue_stream,
    issue_tagged_address,
    tagged_prefix,
)
from receivers.errors import ReceiverError
from receivers.models import Order, Receiver
from receivers.pointers import public_base_url
from receivers.selectors import tag_received_total
from receivers.spsp import SpspAnswer, SpspBalance

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from django.http import HttpRequest


class OrderError(ReceiverError):
    code = "order_error"
    http_status = 400


# --- selectors -------------------------------------------------------------------------------------


def order_get(*, order_id: uuid.UUID | str) -> Order | None:
    try:
        key = order_id if isinstance(order_id, uuid.UUID) else uuid.UUID(str(order_id))
    except ValueError:
        return None
    return Order.objects.select_related("receiver__account").filter(pk=key).first()


def order_list_for_user(*, user: User) -> QuerySet[Order]:
    return Order.objects.select_related("receiver__account").filter(receiver__user=user)


def order_received(*, order: Order) -> int:
    """What the order's own addresses received (its receipts; one query)."""
    return tag_received_total(account_id=order.receiver.account_id, tag=order.id.bytes)


def order_spsp_url(*, order: Order, request: HttpRequest | None) -> str:
    return f"{public_base_url(request)}/shop/{order.id}/spsp"


def order_pointer(*, order: Order, request: HttpRequest | None) -> str:
    """``$host/shop/<order id>/spsp``: the order's single-use payment pointer."""
    return "$" + order_spsp_url(order=order, request=request).split("://", 1)[1]


def order_spsp_answer(*, order: Order) -> SpspAnswer:
    """A fresh SPSP answer for the order: a tagged address and its balance."""
    issued = issue_tagged_address(
        order.receiver.name, order.id.bytes, secrets.token_bytes(TOKEN_LENGTH)
    )
    return SpspAnswer(
        destination_account=issued.destination,
        shared_secret=issued.shared_secret,
        asset_code=order.receiver.account.asset_code,
        asset_scale=order.receiver.account.asset_scale,
        receiver_name=order.receiver.description or order.receiver.name,
        balance=SpspBalance(maximum=int(order.amount), current=int(order.received)),
    )


def order_stream_answer(*, order: Order, receipt: ReceiptSetup | None = None) -> SpspAnswer:
    """The SPSP4 twin of :func:`order_spsp_answer`: a STREAM address tagged with the order
    id (with RFC 0039 receipts when ``receipt``), so STREAM packets count for the order the
    same way, and the same balance."""
    issued = issue_stream(
        order.receiver.name,
        secrets.token_bytes(STREAM_IV_LENGTH),
        tag=order.id.bytes,
        receipt=receipt,
    )
    return SpspAnswer(
        destination_account=issued.destination,
        shared_secret=issued.shared_secret,
        asset_code=order.receiver.account.asset_code,
        asset_scale=order.receiver.account.asset_scale,
        receiver_name=order.receiver.description or order.receiver.name,
        balance=SpspBalance(maximum=int(order.amount), current=int(order.received)),
        receipts_enabled=issued.receipts_enabled,
    )


def order_address_matches(*, order: Order, payee_address: str) -> bool:
    """Whether ``payee_address`` is one of the order's own addresses (a hint, not proof)."""
    return payee_address.startswith(tagged_prefix(order.receiver.name, order.id.bytes) + ".")


# --- services ----------------------------------------------------------------------------------------


def order_create(
    *, receiver: Receiver, amount: int, description: str, reference: str = ""
) -> Order:
    """A pending order of ``amount`` base units to ``receiver``."""
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= UINT64_MAX:
        raise OrderError("the amount is a whole number of base units, at least 1")
    description = description.strip()
    if not description:
        raise OrderError("an order needs a description")
    return Order.objects.create(
        receiver=receiver,
        amount=amount,
        description=description[:200],
        reference=reference.strip()[:100],
    )


def order_refresh(*, order: Order) -> Order:
    """Bring ``order`` up to date with its receipts; idempotent, safe to race.

    ``received`` only grows (``UPDATE ... WHERE received < new``); ``pending`` becomes
    ``paid`` (with ``paid_at``) once, when the receipts reach ``amount``. Returns the
    order as stored afterwards.
    """
    received = order_received(order=order)
    now = timezone.now()
    Order.objects.filter(pk=order.pk, received__lt=received).update(received=received)
    if received >= int(order.amount):
        Order.objects.filter(pk=order.pk, status=Order.Status.PENDING).update(
            status=Order.Status.PAID, paid_at=now
        )
    order.refresh_from_db(fields=["received", "status", "paid_at"])
    return order


def order_cancel(*, order: Order) -> Order:
    """Cancel a pending order (a paid one stays paid). Its addresses keep recording what
    arrives (for refunds); its SPSP endpoint answers 410."""
    Order.objects.filter(pk=order.pk, status=Order.Status.PENDING).update(
        status=Order.Status.CANCELLED
    )
    order.refresh_from_db(fields=["status"])
    return order


def orders_refresh_pending(*, limit: int = 1000) -> int:
    """Refresh the oldest pending orders; how many became paid (for a periodic sweep)."""
    paid = 0
    for order in (
        Order.objects.select_related("receiver")
        .filter(status=Order.Status.PENDING)
        .order_by("created_at")[:limit]
    ):
        if order_refresh(order=order).status == Order.Status.PAID:
            paid += 1
    return paid
