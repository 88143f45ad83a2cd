"""Circular payments (sender.md §1): out through one peer to ``<node>.circular.<token>``,
back in through another, fulfilled here; the loop's cost and round-trip time recorded.

See ``docs/ARCHITECTURE.md`` ("Circular payments") for the setup on the far node, the
money (``circular:<id>:out``/``:out:peer`` on the way out, ``<packet key>`` and
``circular:<id>:in`` on the way in) and the switch hook. Reservations, the sender port
and booking are those of :mod:`payments.sending` (port, reservation, runner).
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.crypto import salted_hmac

from ilp.address import is_valid_address
from ilp.conditions import sha256
from ilp.packet import Fulfill, Prepare, Reject, Reply
from payments.errors import BalanceLimitExceeded, PaymentsError
from payments.ledger import PostingDraft, ensure_account, get_book
from payments.ledger.accounts import PEER_PREFIX
from payments.ledger.shared import HoldDraft
from payments.models import LedgerAccount
from payments.models_outgoing import CircularPayment
from payments.sending.errors import BookingFailed, IdempotencyKeyReused, OutgoingNotAllowed
from payments.sending.port import Route, sender_opener
from payments.sending.reservation import (
    OPERATOR_ACCOUNT,
    check_amount,
    commit_booking,
    lock_source_account,
    reserve_on,
)
from payments.sending.runner import CHUNK_EXPIRY, LEASE, RESOLVE_MARGIN, in_thread, publish_event

__all__ = [
    "CIRCULAR_EVENT",
    "CIRCULAR_SEGMENT",
    "circular_fulfillment",
    "circular_payment_create",
    "circular_payment_resolve",
    "circular_payment_run",
    "circular_payment_run_sync",
    "circular_payments_due",
    "circular_prefix",
    "circular_receive",
]

log = logging.getLogger(__name__)

CIRCULAR_SEGMENT = "circular"
CIRCULAR_EVENT = "circular.progress"


def _now() -> datetime:
    return timezone.now()


def _int(value: Any) -> int:
    return int(value or 0)


def circular_prefix() -> str:
    """``<node>.circular``: the addresses circular payments come back to."""
    return f"{settings.ILP_ADDRESS}.{CIRCULAR_SEGMENT}"


def circular_fulfillment(token: str) -> bytes:
    """The fulfillment of the circular payment ``token`` (derived: never stored)."""
    # Derivation salt: changing it would strand the circular payments in flight.
    return salted_hmac("payments.outgoing.circular", token, algorithm="sha256").digest()


def circular_payment_create(
    *,
    out_peer: str,
    amount: int,
    source_account_code: str = OPERATOR_ACCOUNT,
    idempotency_key: str | None = None,
    start: bool = True,
) -> CircularPayment:
    """Create a circular payment of ``amount`` out through ``out_peer`` (queued with
    ``payments.send_circular_payment`` on commit when ``start``). The source defaults to
    the node's own ``node:operator`` account (created on demand). Locks the source
    account and checks its available amount like :func:`outgoing_payment_create`.
    Idempotent on ``idempotency_key``."""
    amount = check_amount(amount)
    if not out_peer or len(out_peer) > 64:
        raise OutgoingNotAllowed("name the peer to send through")
    key = idempotency_key or f"auto:{uuid.uuid4().hex}"
    existing = CircularPayment.objects.filter(idempotency_key=key).first()
    if existing is not None:
        if (existing.out_peer, _int(existing.amount_out)) != (out_peer, amount):
            raise IdempotencyKeyReused("this idempotency key was used for another payment")
        return existing
    if source_account_code == OPERATOR_ACCOUNT:
        ensure_account(OPERATOR_ACCOUNT, kind=LedgerAccount.Kind.NODE)
    token = secrets.token_hex(16)
    destination = f"{circular_prefix()}.{token}"
    if not is_valid_address(destination):
        raise OutgoingNotAllowed(f"{destination!r} is not a valid ILP address")
    with transaction.atomic():
        account = lock_source_account(source_account_code)
        if account.kind not in (LedgerAccount.Kind.RECEIVER, LedgerAccount.Kind.NODE):
            raise OutgoingNotAllowed("payments are sent from receiver or node accounts")
        reserve_on(account, amount, exclude_payment=None)
        circular = CircularPayment.objects.create(
            idempotency_key=key,
            token=token,
            source_account=account,
            out_peer=out_peer,
            destination=destination,
            amount_out=amount,
        )
        if start:
            pk = circular.pk
            transaction.on_commit(lambda: _queue_circular(pk))
    return circular


def _queue_circular(circular_id: int) -> None:
    from payments.sending.tasks import send_circular_payment

    send_circular_payment.delay(circular_id=circular_id)


def _circular_claim(circular_id: int, expires_at: datetime) -> CircularPayment | None:
    now = _now()
    claimed = CircularPayment.objects.filter(
        pk=circular_id, status=CircularPayment.Status.PENDING
    ).update(status=CircularPayment.Status.SENDING, sent_at=now, expires_at=expires_at)
    if not claimed:
        return None
    return CircularPayment.objects.select_related("source_account").get(pk=circular_id)


def _circular_end(circular_id: int, **changes: Any) -> CircularPayment:
    CircularPayment.objects.filter(pk=circular_id, status=CircularPayment.Status.SENDING).update(
        finished_at=_now(), **changes
    )
    return CircularPayment.objects.select_related("source_account").get(pk=circular_id)


def _circular_set(circular_id: int, **changes: Any) -> None:
    CircularPayment.objects.filter(pk=circular_id).update(**changes)


_db_circular_claim = in_thread(_circular_claim)
_db_circular_set = in_thread(_circular_set)
_db_circular_end = in_thread(_circular_end)


def _circular_keys(circular: CircularPayment) -> tuple[str, str, str]:
    base = f"circular:{circular.pk}"
    return f"{base}:out", f"{base}:out:peer", f"{base}:in"


async def _circular_progress(circular: CircularPayment) -> None:
    await publish_event(
        f"payments.circular.{circular.pk}",
        {
            "type": CIRCULAR_EVENT,
            "circular": {
                "id": circular.pk,
                "status": circular.status,
                "amount_out": str(_int(circular.amount_out)),
                "amount_in": None if circular.amount_in is None else str(_int(circular.amount_in)),
                "cost": circular.cost,
                "rtt_ms": circular.rtt_ms,
                "code": circular.code,
            },
        },
    )


async def circular_payment_run(
    *, circular_id: int, expiry: timedelta = CHUNK_EXPIRY
) -> CircularPayment | None:
    """Send the circular Prepare and wait for it to come back (sender.md §1).

    Status check first (``pending`` → ``sending`` by a conditional UPDATE: one runner).
    Money like an outgoing chunk via a peer: holds, then on a valid Fulfill
    ``source -out`` and ``out peer +out``; the incoming leg was booked by
    :func:`circular_receive`. Returns ``None`` when there was nothing to do.
    """
    expires_at = _now() + expiry
    circular = await _db_circular_claim(circular_id, expires_at)
    if circular is None:
        return None
    account = circular.source_account
    route = Route(account.code, account.asset_code, int(account.asset_scale), circular.out_peer)
    source_key, peer_key, _ = _circular_keys(circular)
    amount = _int(circular.amount_out)
    book = get_book()
    reply: Reply
    started = time.monotonic()
    try:
        async with sender_opener()(route) as sender:
            peer_account = sender.peer_account
            if peer_account is None:
                raise OutgoingNotAllowed("a circular payment goes out through a peer")
            await _db_circular_set(circular.pk, out_account=peer_account)
            circular.out_account = peer_account
            prepare = Prepare(
                amount,
                expires_at,
                sha256(circular_fulfillment(circular.token)),
                circular.destination,
                b"",
            )
            try:
                await book.hold_many(
                    [
                        HoldDraft(account.code, amount, source_key),
                        HoldDraft(peer_account, amount, peer_key, credit=True),
                    ],
                    expires_at=expires_at,
                )
            except BalanceLimitExceeded as exc:
                reply = Reject("T04", str(settings.ILP_ADDRESS), exc.message)
            else:
                started = time.monotonic()
                reply = await sender.send(prepare)
            rtt_ms = (time.monotonic() - started) * 1000
            if (
                isinstance(reply, Fulfill)
                and sha256(reply.fulfillment) == prepare.execution_condition
            ):
                await commit_booking(
                    [
                        PostingDraft(account.code, -amount, source_key, "circular out"),
                        PostingDraft(peer_account, amount, peer_key, "circular out"),
                    ]
                )
                circular = await _db_circular_end(
                    circular.pk, status=CircularPayment.Status.COMPLETED, rtt_ms=rtt_ms
                )
            else:
                book.release(source_key)
                book.release(peer_key)
                code = reply.code if isinstance(reply, Reject) else "F05"
                message = reply.message if isinstance(reply, Reject) else "wrong fulfillment"
                circular = await _db_circular_end(
                    circular.pk,
                    status=CircularPayment.Status.FAILED,
                    code=code,
                    last_error=message[:2000],
                    rtt_ms=rtt_ms,
                )
    except BookingFailed:
        raise  # it came back and is not booked yet: circular_payment_resolve books it
    except PaymentsError as exc:
        circular = await _db_circular_end(
            circular.pk, status=CircularPayment.Status.FAILED, last_error=exc.message
        )
    await _circular_progress(circular)
    return circular


def circular_payment_run_sync(
    *, circular_id: int, expiry: timedelta = CHUNK_EXPIRY
) -> CircularPayment | None:
    result: CircularPayment | None = async_to_sync(circular_payment_run)(
        circular_id=circular_id, expiry=expiry
    )
    return result


def circular_payment_resolve(*, circular_id: int, now: datetime | None = None) -> str:
    """A circular payment left ``sending`` by a runner that died: once expired, it came
    back (``amount_in`` recorded: our own incoming side fulfilled it) → book the out leg
    and complete it; else fail it. Returns the status."""
    now = now or _now()
    circular = CircularPayment.objects.select_related("source_account").get(pk=circular_id)
    if circular.status != CircularPayment.Status.SENDING:
        return circular.status
    if circular.expires_at is not None and circular.expires_at + RESOLVE_MARGIN > now:
        return circular.status
    if circular.amount_in is None:
        _circular_end(
            circular.pk,
            status=CircularPayment.Status.FAILED,
            last_error="expired while its runner was down",
        )
        return CircularPayment.Status.FAILED
    source_key, peer_key, _ = _circular_keys(circular)
    amount = _int(circular.amount_out)
    get_book().commit_sync(
        [
            PostingDraft(circular.source_account.code, -amount, source_key, "circular out"),
            PostingDraft(circular.out_account, amount, peer_key, "circular out"),
        ]
    )
    _circular_end(circular.pk, status=CircularPayment.Status.COMPLETED)
    return CircularPayment.Status.COMPLETED


def circular_payments_due(
    *, now: datetime | None = None, idle: timedelta = LEASE
) -> tuple[list[int], list[int]]:
    """``(to_start, to_resolve)``: pending circular payments nobody started within
    ``idle``, and sending ones past their expiry (their runner died)."""
    now = now or _now()
    pending = CircularPayment.objects.filter(
        status=CircularPayment.Status.PENDING, created_at__lt=now - idle
    )
    stuck = CircularPayment.objects.filter(
        status=CircularPayment.Status.SENDING, expires_at__lt=now - RESOLVE_MARGIN
    )
    return (
        list(pending.order_by("pk").values_list("pk", flat=True)),
        list(stuck.order_by("pk").values_list("pk", flat=True)),
    )


def _circular_arrive(
    token: str, amount: int, in_peer: str, now: datetime
) -> CircularPayment | None:
    """Record the arrival once (conditional UPDATE): ``None`` if unknown or not expected."""
    arrived = CircularPayment.objects.filter(
        token=token, status=CircularPayment.Status.SENDING, amount_in__isnull=True
    ).update(amount_in=amount, in_peer=in_peer, arrived_at=now)
    if not arrived:
        return None
    return CircularPayment.objects.select_related("source_account").get(token=token)


def _circular_unarrive(circular_id: int) -> None:
    CircularPayment.objects.filter(pk=circular_id).update(
        amount_in=None, in_peer="", arrived_at=None
    )


_db_circular_arrive = in_thread(_circular_arrive)
_db_circular_unarrive = in_thread(_circular_unarrive)


def _circular_reject(code: str, message: str) -> Reject:
    return Reject(code, str(settings.ILP_ADDRESS), message)


async def circular_receive(
    prepare: Prepare, *, source_account: str, packet_key: str, now: datetime
) -> Fulfill | Reject:
    """The incoming leg of a circular payment: a Prepare for ``<node>.circular.<token>``
    from the peer whose account is ``source_account`` (same contract as
    ``receivers.psk2_receiver.receive_prepare``, so the switch can call it for that
    prefix). Holds ``prepare.amount`` on the source under ``packet_key`` (a no-op when the
    switch already did), records the arrival once, commits ``source -in`` (key
    ``packet_key``) and ``circular source +in`` before returning the Fulfill. R00 expired,
    F06 unknown/finished/already arrived, F05 wrong condition, T04 no liquidity, T00
    commit failed. Never raises.
    """
    try:
        return await _circular_receive(prepare, source_account, packet_key, now)
    except Exception:
        log.exception("payments: circular receive failed")
        get_book().release(packet_key)
        return _circular_reject("T00", "internal error.")


async def _circular_receive(
    prepare: Prepare, source_account: str, packet_key: str, now: datetime
) -> Fulfill | Reject:
    prefix = circular_prefix() + "."
    if not prepare.destination.startswith(prefix):
        return _circular_reject("F02", "not a circular payment address.")
    token = prepare.destination[len(prefix) :]
    if prepare.expires_at <= now:
        return _circular_reject("R00", "circular payment expired.")
    if not token or len(token) > 64 or "." in token:
        return _circular_reject("F06", "unexpected circular payment.")
    fulfillment = circular_fulfillment(token)
    if sha256(fulfillment) != prepare.execution_condition:
        return _circular_reject("F05", "wrong condition for this circular payment.")
    book = get_book()
    amount = prepare.amount
    if amount:
        try:
            await book.hold_many(
                [HoldDraft(source_account, amount, packet_key)], expires_at=prepare.expires_at
            )
        except BalanceLimitExceeded:
            return _circular_reject("T04", "exceeded maximum balance.")
    in_peer = source_account.removeprefix(PEER_PREFIX)
    circular = await _db_circular_arrive(token, amount, in_peer, now)
    if circular is None:
        book.release(packet_key)
        return _circular_reject("F06", "unexpected circular payment.")
    _, _, in_key = _circular_keys(circular)
    try:
        await book.commit(
            [
                PostingDraft(source_account, -amount, packet_key, "circular in"),
                PostingDraft(circular.source_account.code, amount, in_key, "circular in"),
            ]
        )
    except Exception:
        log.exception("payments: circular %s: commit failed", circular.pk)
        book.release(packet_key)
        await _db_circular_unarrive(circular.pk)
        return _circular_reject("T00", "could not record the payment.")
    return Fulfill(fulfillment, b"")
