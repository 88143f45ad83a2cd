"""Sending's services: create an outgoing payment, run it, find the ones to resume.

**Creating** (:func:`outgoing_payment_create`, sync, own transaction): validates, locks the
source account row and reserves the source amount
(:mod:`payments.sending.reservation`), writes the payment; idempotent on
``idempotency_key`` (unique). The Celery task ``payments.send_outgoing_payment``
(:mod:`payments.sending.tasks`) is queued with ``transaction.on_commit``.

**Running** (:func:`outgoing_payment_run`, async): takes the payment's lease
(:mod:`payments.sending.runner`), opens a :class:`~payments.sending.port.Sender` for its
route through the port, then the SPSP query (:mod:`payments.sending.spsp`), which offers
both protocols: a receiver that answers SPSP4 is paid over STREAM
(:mod:`payments.sending.stream`), one that answers SPSP over PSK2 over PSK2
(:mod:`payments.sending.psk2`). A run that finds the payment already sending first
resolves the chunks left in doubt (the runner's resume rules), then goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from asgiref.sync import async_to_sync
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from ilp.errors import DecodeError
from ilp.psk2 import PAYMENT_ID_LENGTH
from payments.errors import PaymentsError
from payments.models import LedgerAccount
from payments.models_outgoing import OutgoingPayment
from payments.sending import psk2, stream
from payments.sending.errors import BookingFailed, IdempotencyKeyReused, OutgoingNotAllowed
from payments.sending.port import Route, sender_opener
from payments.sending.reservation import check_amount, lock_source_account, reserve_on
from payments.sending.runner import (
    LEASE,
    ChunkInDoubt,
    LeaseLost,
    Run,
    RunOptions,
    db_acquire,
    db_finish,
    db_release_lease,
    db_save,
    progress,
    resolve_in_doubt,
)
from payments.sending.spsp import SpspDetails, query_spsp, resolve_receiver

__all__ = [
    "outgoing_payment_create",
    "outgoing_payment_lease_left",
    "outgoing_payment_run",
    "outgoing_payment_run_sync",
    "outgoing_payments_due",
]

log = logging.getLogger(__name__)


def _now() -> datetime:
    return timezone.now()


# --- creating ------------------------------------------------------------------------------


def _same_request(payment: OutgoingPayment, **wanted: Any) -> bool:
    return all(getattr(payment, k) == v for k, v in wanted.items())


def outgoing_payment_create(
    *,
    source_account_code: str,
    receiver: str,
    amount: int,
    mode: str = OutgoingPayment.Mode.SOURCE,
    via_peer: str = "",
    idempotency_key: str | None = None,
    max_source_amount: int | None = None,
    requested_by: Any = None,
    protocol: str = "",
    pay_to: SpspDetails | None = None,
    start: bool = True,
) -> OutgoingPayment:
    """Create an outgoing payment and (``start``) queue ``payments.send_outgoing_payment``.

    ``protocol`` ``""`` lets the receiver's SPSP answer choose (STREAM when it offers
    SPSP4, else PSK2); ``"stream"`` or ``"psk2"`` insists on one. ``pay_to`` is the
    receiver's address and shared secret when the caller already has them (an HTTP-ILP
    ``Pay`` header): no SPSP query, PSK2; ``receiver`` then only names what is paid.

    ``amount`` is in source units (``mode="source"``) or in the receiver's units
    (``mode="destination"``, spending at most ``max_source_amount`` when given, else the
    quote plus :data:`SLIPPAGE_PERCENT`). The source must be a ``receiver`` or ``node``
    account. Locks the source account row, then checks and reserves the source amount
    (:class:`InsufficientBalance`, nothing written, when it does not fit); a
    destination-fixed payment without ``max_source_amount`` reserves after its quote.

    Idempotent on ``idempotency_key``: the same key with the same request returns the
    existing payment (and queues nothing), with another request raises
    :class:`IdempotencyKeyReused`.
    """
    amount = check_amount(amount)
    if mode not in OutgoingPayment.Mode.values:
        raise OutgoingNotAllowed(f"unknown mode {mode!r}")
    if max_source_amount is not None:
        check_amount(max_source_amount, "max_source_amount")
        if mode != OutgoingPayment.Mode.DESTINATION:
            raise OutgoingNotAllowed("max_source_amount is for destination-fixed payments")
    if protocol not in ("", *OutgoingPayment.Protocol.values):
        raise OutgoingNotAllowed(f"unknown protocol {protocol!r} (psk2 or stream)")
    known: dict[str, str] = {}
    if pay_to is not None:
        if protocol == OutgoingPayment.Protocol.STREAM:
            raise OutgoingNotAllowed("a receiver given by address and secret is paid over PSK2")
        if not 0 < len(receiver) <= 500:
            raise OutgoingNotAllowed("name what is paid in at most 500 characters")
        spsp_url = ""
        protocol = OutgoingPayment.Protocol.PSK2
        known = {
            "destination_address": pay_to.destination_account,
            "shared_secret": pay_to.shared_secret.hex(),
        }
    else:
        spsp_url = resolve_receiver(receiver)
    if via_peer and len(via_peer) > 64:
        raise OutgoingNotAllowed("peer names are at most 64 characters")
    key = idempotency_key or f"auto:{uuid.uuid4().hex}"
    if not 0 < len(key) <= 255:
        raise OutgoingNotAllowed("the idempotency key is 1 to 255 characters")
    request = {
        "receiver": receiver,
        "amount": Decimal(amount),
        "mode": mode,
        "via_peer": via_peer,
    }
    if protocol:  # "" matches whatever the receiver chose for the existing payment
        request["protocol"] = protocol
    existing = OutgoingPayment.objects.filter(idempotency_key=key).first()
    if existing is not None:
        if not _same_request(existing, **request):
            raise IdempotencyKeyReused("this idempotency key was used for another payment")
        return existing
    reserve = amount if mode == OutgoingPayment.Mode.SOURCE else (max_source_amount or 0)
    try:
        with transaction.atomic():
            account = lock_source_account(source_account_code)
            if account.kind not in (LedgerAccount.Kind.RECEIVER, LedgerAccount.Kind.NODE):
                raise OutgoingNotAllowed(
                    "payments are sent from receiver or node accounts", account=account.code
                )
            if reserve:
                reserve_on(account, reserve, exclude_payment=None)
            now = _now()
            payment = OutgoingPayment.objects.create(
                idempotency_key=key,
                source_account=account,
                requested_by=requested_by,
                spsp_url=spsp_url,
                payment_id=secrets.token_hex(PAYMENT_ID_LENGTH),
                max_source_amount=max_source_amount,
                amount_reserved=reserve,
                created_at=now,
                updated_at=now,
                **known,
                **request,
            )
            if start:
                pk = payment.pk
                transaction.on_commit(lambda: _queue_payment(pk))
    except IntegrityError:
        # A concurrent create with the same key won the unique constraint.
        existing = OutgoingPayment.objects.filter(idempotency_key=key).first()
        if existing is None:
            raise
        if not _same_request(existing, **request):
            raise IdempotencyKeyReused(
                "this idempotency key was used for another payment"
            ) from None
        return existing
    return payment


def _queue_payment(payment_id: int) -> None:
    from payments.sending.tasks import send_outgoing_payment

    send_outgoing_payment.delay(payment_id=payment_id)


def outgoing_payments_due(*, now: datetime | None = None, idle: timedelta = LEASE) -> list[int]:
    """Active payments that no runner holds (lease expired, or never started for
    ``idle``): what the sweeper re-queues."""
    now = now or _now()
    return list(
        OutgoingPayment.objects.filter(status__in=OutgoingPayment.ACTIVE)
        .filter(Q(lease_until__lt=now) | Q(lease_until__isnull=True, created_at__lt=now - idle))
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def outgoing_payment_lease_left(*, payment_id: int, now: datetime | None = None) -> float | None:
    """Seconds until another runner's lease on an active payment runs out (``None`` when
    the payment is over or nobody holds it): when a redelivered task should try again."""
    row = (
        OutgoingPayment.objects.filter(pk=payment_id, status__in=OutgoingPayment.ACTIVE)
        .values_list("lease_until", flat=True)
        .first()
    )
    if row is None:
        return None
    return max((row - (now or _now())).total_seconds(), 0.0)


# --- running -------------------------------------------------------------------------------


async def _quote(run: Run) -> None:
    payment = run.payment
    payment = await db_save(payment, run.owner, status=OutgoingPayment.Status.QUOTING)
    await progress(payment, run.options)
    if not payment.spsp_url and payment.destination_address and payment.shared_secret:
        # Given by address and secret at creation (``pay_to``): nothing to ask.
        details = SpspDetails(payment.destination_address, bytes.fromhex(payment.shared_secret))
        await psk2.psk2_quote(run, details)
        return
    stream_allowed = payment.protocol != OutgoingPayment.Protocol.PSK2
    details = await query_spsp(
        payment.spsp_url or resolve_receiver(payment.receiver),
        protocol=payment.protocol or None,
        receipts=stream.receipt_setup(payment) if stream_allowed else None,
    )
    if details.protocol == OutgoingPayment.Protocol.STREAM:
        await stream.stream_quote(run, details)
    else:
        await psk2.psk2_quote(run, details)


async def _probe_total(run: Run, sequence: int, amount: int) -> int | None:
    if run.stream:
        return await stream.stream_total(run, sequence)
    return await psk2.psk2_total(run, sequence, amount)


async def outgoing_payment_run(
    *, payment_id: int, options: RunOptions | None = None
) -> OutgoingPayment | None:
    """Run (or resume) the payment until it is completed or failed.

    Returns the payment, or ``None`` when there is nothing to do (unknown, already over,
    or another runner holds its lease — the Saleor-style status check). Never raises for
    payment failures (they end in status ``failed`` with ``last_error``); raises only when
    the process should retry later (the database or the ledger writer is down), after
    releasing its lease (a chunk it left in doubt is resolved by the next run). A process
    that dies keeps the lease until ``lease_until``; the sweeper then re-queues it.
    """
    options = options or RunOptions()
    owner = f"{os.getpid()}:{uuid.uuid4().hex[:16]}"
    payment = await db_acquire(payment_id, owner, _now() + LEASE)
    if payment is None:
        return None
    account = payment.source_account
    route = Route(account.code, account.asset_code, int(account.asset_scale), payment.via_peer)
    try:
        async with sender_opener()(route) as sender:
            run = Run(payment, owner, sender, options)
            if sender.asset != (account.asset_code, int(account.asset_scale)):
                raise OutgoingNotAllowed(
                    f"peer {payment.via_peer} uses {sender.asset[0]}/{sender.asset[1]}, the "
                    f"source account {account.asset_code}/{account.asset_scale}"
                )
            if payment.status in (OutgoingPayment.Status.PENDING, OutgoingPayment.Status.QUOTING):
                await _quote(run)
            else:
                run.secret = bytes.fromhex(payment.shared_secret)
                await resolve_in_doubt(run, _probe_total)
            if run.payment.status == OutgoingPayment.Status.SENDING:
                if run.stream:
                    await stream.stream_send(run)
                else:
                    await psk2.psk2_send(run)
    except LeaseLost:
        log.warning("payments: lost the lease of outgoing payment %s; stopping", payment_id)
        return None
    except BookingFailed:
        # Money moved and is not booked yet: not the payment's failure (the next run
        # books the chunk it leaves in doubt).
        with contextlib.suppress(Exception):
            await db_release_lease(payment_id, owner)
        raise
    except (PaymentsError, DecodeError, ValueError) as exc:
        message = exc.message if isinstance(exc, PaymentsError) else str(exc)
        log.info("payments: outgoing payment %s failed: %s", payment_id, message)
        try:
            payment = await db_finish(payment, owner, OutgoingPayment.Status.FAILED, message)
        except (LeaseLost, ChunkInDoubt):
            return None
        await progress(payment, options)
        return payment
    except Exception:
        # Not the payment's fault (database, ledger writer): let another run resume it
        # at once; a chunk left in doubt is resolved by that run, after its expiry.
        with contextlib.suppress(Exception):
            await db_release_lease(payment_id, owner)
        raise
    return payment


def outgoing_payment_run_sync(
    *, payment_id: int, options: RunOptions | None = None
) -> OutgoingPayment | None:
    """:func:`outgoing_payment_run` for sync callers (Celery, commands). Inside a sync view
    under ASGI this runs on the server's event loop, where the live links are."""
    result: OutgoingPayment | None = async_to_sync(outgoing_payment_run)(
        payment_id=payment_id, options=options
    )
    return result
