"""Sending money: outgoing SPSP payments over STREAM or PSK2 (services + runner; what is
STREAM's own is in :mod:`payments.outgoing_stream`, circular payments are in
:mod:`payments.outgoing_circular`).

Read ``docs/ARCHITECTURE.md`` ("payments: sending") for the full contract. In short:

**Creating** (:func:`outgoing_payment_create`, sync, own transaction): validates, locks the
source account row (``FOR NO KEY UPDATE``, the ledger's lock order: accounts by id, then
outgoing payments), checks ``balance - floor - other reservations ≥ amount`` and writes
the payment with ``amount_reserved`` (a DB-level hold: every process sees it, unlike the
in-memory book holds). Idempotent on ``idempotency_key`` (unique). The Celery task
``payments.send_outgoing_payment`` is queued with ``transaction.on_commit``.

**Running** (:func:`outgoing_payment_run`, async): one runner per payment at a time, by a
**lease** (``lease_owner``/``lease_until``, taken and renewed with conditional UPDATEs;
it always covers the Prepare in flight plus :data:`LEASE_GRACE`). Then the SPSP query,
which offers both protocols: a receiver that answers SPSP4 is paid over STREAM
(:mod:`payments.outgoing_stream`: a STREAM rate probe, then ``StreamMoney`` packets, each
an :class:`~payments.models_outgoing.OutgoingChunk` like a PSK2 chunk, with the same money,
lease and resume rules), one that answers SPSP over PSK2: a rate probe (draft-1 quote, F99
answer), and chunks planned by
:class:`ilp.psk2_sender.ChunkedPayment` (x1.1 on success, x0.5 and back-off on T/R, capped
F99 retries) plus F08 shrinking from the Reject's data. Every chunk is an
:class:`~payments.models_outgoing.OutgoingChunk` row written **before** it is sent
(unique ``(payment, sequence)``; each attempt has its own sequence).

**Money.** Two routes, chosen per payment:

* ``via_peer`` set: the Prepare goes straight to that peer's link. This module books it:
  before sending, an in-memory debit hold on the source and credit hold on the peer
  (``book.ahold`` / ``hold_credit``, keys ``outgoing:<id>:<seq>`` and ``…:peer``); on a
  valid Fulfill ``book.commit`` of ``source -amount`` and ``peer +amount`` under those
  keys **before** the chunk is marked fulfilled; on a Reject the holds are released.
* no ``via_peer``: the Prepare goes to this process's packet switch as a local source
  (name :data:`SWITCH_SOURCE_NAME`, the source account as its account), which routes it
  (our own receivers, or the routing table) and books it itself: ``<packet key>`` (local
  receiver) or ``<packet key>:in`` (forwarded) on the source account.

**Resume.** A chunk found in state ``sending`` by a new runner is *in doubt*. The runner
waits until its Prepare has expired (+ :data:`RESOLVE_MARGIN`), then decides, in order:
(1) its source-debit posting exists → fulfilled; (2) it went through the switch to one of
our own receivers and there is no posting → lost (the receiver commits before it
fulfills); (3) ask the receiver for its running total of the Payment ID with an
unfulfillable probe: more than we knew → fulfilled (the difference was delivered), the
same and the receiver's totals have proven exact → lost; (4) otherwise **unknown**: its
amount is charged to the source and booked to :data:`SUSPENSE_ACCOUNT` for the operator
to reconcile, and the payment fails. A chunk is never sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, ParamSpec, Protocol, TypeVar, cast

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q, Sum
from django.utils import timezone
from django.utils.module_loading import import_string

from ilp.errors import DecodeError
from ilp.packet import (
    Fulfill,
    Prepare,
    Reject,
    Reply,
    decode_amount_too_large_data,
)
from ilp.psk2 import (
    IV_LENGTH,
    PAYMENT_ID_LENGTH,
    QUOTE_AMOUNT,
    ChunkRejection,
    ChunkRequest,
    decrypt_psk2,
    encrypt_psk2,
)
from ilp.psk2_sender import PROBE_AMOUNT, ChunkedPayment, Progress, build_quote, read_reply
from payments import outgoing_stream
from payments.errors import BalanceLimitExceeded, PaymentsError
from payments.ledger import UINT64_MAX, PostingDraft, ensure_account, get_book
from payments.models import LedgerAccount, Posting
from payments.models_outgoing import CircularPayment, OutgoingChunk, OutgoingPayment
from payments.outgoing_errors import (
    BookingFailed,
    IdempotencyKeyReused,
    InsufficientBalance,
    OutgoingNotAllowed,
    SendFailed,
    SpspError,
)
from payments.outgoing_spsp import SpspDetails, query_spsp, resolve_receiver

__all__ = [
    "OPERATOR_ACCOUNT",
    "SUSPENSE_ACCOUNT",
    "SWITCH_SOURCE_NAME",
    "RateProbe",
    "Route",
    "RunOptions",
    "Sender",
    "SenderOpener",
    "account_available",
    "check_amount",
    "commit_booking",
    "in_thread",
    "lock_source_account",
    "outgoing_payment_create",
    "outgoing_payment_lease_left",
    "outgoing_payment_run",
    "outgoing_payment_run_sync",
    "outgoing_payments_due",
    "payment_summary",
    "probe_rate",
    "publish_event",
    "reserve_on",
    "sender_opener",
    "set_sender_opener",
]

log = logging.getLogger(__name__)

OPERATOR_ACCOUNT = "node:operator"
SUSPENSE_ACCOUNT = "node:suspense"
# The name the switch sees for Prepares this node originates (not a valid peer name, so
# no peer can ever be mistaken for it).
SWITCH_SOURCE_NAME = "_outgoing"
DEFAULT_SENDER_OPENER = "links.sender_link.open_sender"

CHUNK_EXPIRY = timedelta(seconds=30)
LEASE = timedelta(minutes=2)
LEASE_GRACE = timedelta(seconds=60)  # a Prepare's owner keeps its lease this long past expiry
RESOLVE_MARGIN = timedelta(seconds=2)
SLIPPAGE_PERCENT = 1
MAX_PROBES = 6
MAX_F08_IN_A_ROW = 10
COMMIT_ATTEMPTS = 5
PROGRESS_EVENT = "outgoing.progress"
ALL_PAYMENTS_GROUP = "payments.outgoing"


# --- the way out: a port that links.sender_link implements -------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    """Where a payment's Prepares go: ``via_peer``'s link, or ("") this process's switch
    with ``source_account`` (in ``asset_code``/``asset_scale``) as a local source."""

    source_account: str
    asset_code: str
    asset_scale: int
    via_peer: str = ""


class Sender(Protocol):
    """An open way out for Prepares (what :func:`links.sender_link.open_sender` yields).

    ``peer_account`` is the via peer's ledger account (this module books the chunk on
    it), ``None`` when the switch books the money itself. ``source_keys(prepare)`` are
    the posting keys under which the switch records the source debit of ``prepare``
    (``()`` for a via peer). ``send`` never raises: failures come back as Rejects.
    """

    @property
    def peer_account(self) -> str | None: ...
    @property
    def max_packet_amount(self) -> int: ...
    @property
    def asset(self) -> tuple[str, int]: ...
    def source_keys(self, prepare: Prepare) -> tuple[str, ...]: ...
    async def send(self, prepare: Prepare) -> Reply: ...


SenderOpener = Callable[[Route], AbstractAsyncContextManager[Sender]]

_opener: SenderOpener | None = None


def set_sender_opener(opener: SenderOpener | None) -> None:
    """Use ``opener`` instead of ``settings.ILP_SENDER_OPENER`` (tests, other transports)."""
    global _opener
    _opener = opener


def sender_opener() -> SenderOpener:
    """The registered opener, else the one named by ``ILP_SENDER_OPENER`` (default
    ``links.sender_link.open_sender``), imported on first use: ``payments`` never
    imports ``links`` at module level (import direction ilp ← payments ← receivers ←
    links)."""
    if _opener is not None:
        return _opener
    path = str(getattr(settings, "ILP_SENDER_OPENER", "") or DEFAULT_SENDER_OPENER)
    opener: SenderOpener = import_string(path)
    return opener


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Knobs of a run (tests shorten the expiry; the command prints progress)."""

    chunk_expiry: timedelta = CHUNK_EXPIRY
    on_progress: Callable[[OutgoingPayment], None] | None = None
    max_wait_ms: int = 30_000


# --- helpers -------------------------------------------------------------------------------

_P = ParamSpec("_P")
_R = TypeVar("_R")


def in_thread(fn: Callable[_P, _R]) -> Callable[_P, Awaitable[_R]]:
    """``database_sync_to_async`` with the types kept (channels' decorator is untyped)."""
    return cast(Callable[_P, Awaitable[_R]], database_sync_to_async(fn))


def _now() -> datetime:
    return timezone.now()


def _int(value: Decimal | int | None) -> int:
    return int(value or 0)


def check_amount(amount: object, what: str = "amount") -> int:
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= UINT64_MAX:
        raise OutgoingNotAllowed(f"{what} must be an integer from 1 to 2**64-1")
    return amount


def _floor(account: LedgerAccount) -> int | None:
    """How low the account may go for sending: its ``min_balance``; a receiver account
    without one may not go below 0; a node account without one is unbounded."""
    if account.min_balance is not None:
        return int(account.min_balance)
    return 0 if account.kind == LedgerAccount.Kind.RECEIVER else None


def _outstanding(account_id: int, *, exclude_payment: int | None = None) -> int:
    """Source units reserved on the account by active payments and not yet debited."""
    active = OutgoingPayment.objects.filter(
        source_account_id=account_id, status__in=OutgoingPayment.ACTIVE
    )
    if exclude_payment is not None:
        active = active.exclude(pk=exclude_payment)
    reserved = active.aggregate(
        r=Sum(F("amount_reserved") - F("amount_debited"), default=Decimal(0))
    )["r"]
    circular = CircularPayment.objects.filter(
        source_account_id=account_id,
        status__in=(CircularPayment.Status.PENDING, CircularPayment.Status.SENDING),
    ).aggregate(r=Sum("amount_out", default=Decimal(0)))["r"]
    return max(_int(reserved), 0) + _int(circular)


def account_available(*, account: LedgerAccount, exclude_payment: int | None = None) -> int | None:
    """What may still be sent from ``account`` (``None``: unbounded). Read it under the
    account's row lock to act on it."""
    floor = _floor(account)
    if floor is None:
        return None
    return int(account.balance) - floor - _outstanding(account.pk, exclude_payment=exclude_payment)


def lock_source_account(code: str) -> LedgerAccount:
    account = LedgerAccount.objects.select_for_update(no_key=True).filter(code=code).first()
    if account is None:
        raise OutgoingNotAllowed(f"no account {code!r}", account=code)
    return account


def reserve_on(account: LedgerAccount, amount: int, *, exclude_payment: int | None) -> None:
    available = account_available(account=account, exclude_payment=exclude_payment)
    if available is not None and amount > available:
        raise InsufficientBalance(
            f"account {account.code} can send {max(available, 0)}, not {amount}",
            account=account.code,
            available=str(max(available, 0)),
            amount=str(amount),
        )


def payment_summary(payment: OutgoingPayment) -> dict[str, Any]:
    """The JSON-safe progress view of a payment (events, the command, APIs)."""
    return {
        "id": payment.pk,
        "status": payment.status,
        "receiver": payment.receiver,
        "mode": payment.mode,
        "protocol": payment.protocol,
        "amount": str(_int(payment.amount)),
        "source_account": payment.source_account.code
        if OutgoingPayment._meta.get_field("source_account").is_cached(payment)
        else None,
        "via_peer": payment.via_peer,
        "amount_reserved": str(_int(payment.amount_reserved)),
        "amount_sent": str(_int(payment.amount_sent)),
        "amount_delivered": str(_int(payment.amount_delivered)),
        "amount_in_doubt": str(_int(payment.amount_in_doubt)),
        "quote_source_amount": None
        if payment.quote_source_amount is None
        else str(_int(payment.quote_source_amount)),
        "quote_destination_amount": None
        if payment.quote_destination_amount is None
        else str(_int(payment.quote_destination_amount)),
        "chunks_fulfilled": payment.chunks_fulfilled,
        "chunks_rejected": payment.chunks_rejected,
        "last_error": payment.last_error,
        "created_at": payment.created_at.isoformat(),
        "updated_at": payment.updated_at.isoformat(),
        "finished_at": payment.finished_at.isoformat() if payment.finished_at else None,
    }


async def publish_event(group: str, event: dict[str, Any]) -> None:
    """Fire-and-forget channel-layer event (a dashboard that is not listening is fine)."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(group, event)
    except Exception:
        log.warning("payments: cannot publish %s", group, exc_info=True)


async def _progress(payment: OutgoingPayment, options: RunOptions) -> None:
    summary = payment_summary(payment)
    event = {"type": PROGRESS_EVENT, "payment": summary}
    await publish_event(payment.group_name, event)
    await publish_event(ALL_PAYMENTS_GROUP, event)
    if options.on_progress is not None:
        try:
            options.on_progress(payment)
        except Exception:
            log.exception("payments: progress callback failed")


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
    start: bool = True,
) -> OutgoingPayment:
    """Create an outgoing payment and (``start``) queue ``payments.send_outgoing_payment``.

    ``protocol`` ``""`` lets the receiver's SPSP answer choose (STREAM when it offers
    SPSP4, else PSK2); ``"stream"`` or ``"psk2"`` insists on one.

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
    from payments.outgoing_tasks import send_outgoing_payment

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


# --- leases and row updates (sync, run through database_sync_to_async) ---------------------


class LeaseLost(Exception):
    """Another runner holds the payment now: stop without touching it."""


class ChunkInDoubt(Exception):
    """A chunk is still ``sending``: the payment cannot be ended before it is resolved."""


def _acquire(payment_id: int, owner: str, until: datetime) -> OutgoingPayment | None:
    now = _now()
    taken = (
        OutgoingPayment.objects.filter(pk=payment_id, status__in=OutgoingPayment.ACTIVE)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now) | Q(lease_owner=owner))
        .update(lease_owner=owner, lease_until=until, updated_at=now)
    )
    if not taken:
        return None
    return OutgoingPayment.objects.select_related("source_account").get(pk=payment_id)


def _save(payment: OutgoingPayment, owner: str, **changes: Any) -> OutgoingPayment:
    """Write ``changes`` if ``owner`` still holds the lease; :class:`LeaseLost` otherwise."""
    changes["updated_at"] = _now()
    done = OutgoingPayment.objects.filter(pk=payment.pk, lease_owner=owner).update(**changes)
    if not done:
        raise LeaseLost(payment.pk)
    for name, value in changes.items():
        setattr(payment, name, value)
    return payment


def _release_lease(payment_id: int, owner: str) -> None:
    OutgoingPayment.objects.filter(pk=payment_id, lease_owner=owner).update(
        lease_owner="", lease_until=None
    )


def _reserve_after_quote(payment: OutgoingPayment, owner: str, amount: int) -> None:
    """Destination-fixed payments: reserve the quoted maximum (account lock, then payment)."""
    with transaction.atomic():
        account = lock_source_account(payment.source_account.code)
        OutgoingPayment.objects.select_for_update().filter(pk=payment.pk).first()
        reserve_on(account, amount, exclude_payment=payment.pk)
        _save(payment, owner, amount_reserved=amount)


def _finish(payment: OutgoingPayment, owner: str, status: str, error: str = "") -> OutgoingPayment:
    """End the payment: release what is left of the reservation, wipe the secret.

    Refuses (:class:`ChunkInDoubt`) while a chunk is still ``sending``: such a payment is
    only ever ended by a run that has resolved it."""
    if OutgoingChunk.objects.filter(payment=payment, state=OutgoingChunk.State.SENDING).exists():
        raise ChunkInDoubt(payment.pk)
    now = _now()
    changes: dict[str, Any] = {
        "status": status,
        "amount_reserved": payment.amount_debited,
        "shared_secret": "",
        "finished_at": now,
        "lease_owner": "",
        "lease_until": None,
    }
    if error:
        changes["last_error"] = error[:2000]
    return _save(payment, owner, **changes)


def _insert_chunk(
    payment: OutgoingPayment,
    owner: str,
    *,
    sequence: int,
    prepare: Prepare,
    minimum: int,
    ledger_key: str,
) -> OutgoingChunk:
    """Persist the chunk (state ``sending``) and extend the lease past its expiry, in one
    transaction: after this returns the Prepare may go on the wire."""
    until = max(_now() + LEASE, prepare.expires_at + LEASE_GRACE)
    with transaction.atomic():
        _save(payment, owner, lease_until=until, next_sequence=sequence)
        return OutgoingChunk.objects.create(
            payment=payment,
            sequence=sequence,
            amount=prepare.amount,
            minimum=minimum,
            expires_at=prepare.expires_at,
            condition=prepare.execution_condition.hex(),
            ledger_key=ledger_key,
        )


def _settle_chunk(
    payment: OutgoingPayment,
    owner: str,
    chunk: OutgoingChunk,
    *,
    state: str,
    reply: Reply | None = None,
    delivered: int | None = None,
    message: str = "",
    **payment_changes: Any,
) -> None:
    """Mark ``chunk`` and update the payment's counters in one transaction."""
    now = _now()
    chunk_changes: dict[str, Any] = {"state": state, "settled_at": now}
    if delivered is not None:
        chunk_changes["delivered"] = delivered
    if isinstance(reply, Reject):
        chunk_changes.update(
            code=reply.code, message=reply.message[:500], triggered_by=reply.triggered_by[:1023]
        )
    elif message:
        chunk_changes["message"] = message[:500]
    with transaction.atomic():
        _save(payment, owner, **payment_changes)
        OutgoingChunk.objects.filter(pk=chunk.pk, state=OutgoingChunk.State.SENDING).update(
            **chunk_changes
        )
    for name, value in chunk_changes.items():
        setattr(chunk, name, value)


def _posted(keys: Sequence[str]) -> bool:
    return Posting.objects.filter(key__in=list(keys)).exists()


_db_acquire = in_thread(_acquire)
_db_save = in_thread(_save)
_db_release_lease = in_thread(_release_lease)
_db_reserve_after_quote = in_thread(_reserve_after_quote)
_db_finish = in_thread(_finish)
_db_insert_chunk = in_thread(_insert_chunk)
_db_settle_chunk = in_thread(_settle_chunk)
_db_posted = in_thread(_posted)


@in_thread
def _db_chunks_in_doubt(payment_id: int) -> list[OutgoingChunk]:
    return list(
        OutgoingChunk.objects.filter(
            payment_id=payment_id, state=OutgoingChunk.State.SENDING
        ).order_by("sequence")
    )


@in_thread
def _db_ensure_suspense() -> None:
    ensure_account(SUSPENSE_ACCOUNT, kind=LedgerAccount.Kind.NODE)


# --- the runner ----------------------------------------------------------------------------


def _local_destination(address: str) -> bool:
    """Whether ``address`` is one of this node's own receivers."""
    return address.startswith(f"{settings.ILP_ADDRESS}.receivers.")


def _hold_keys(payment: OutgoingPayment, sequence: int) -> tuple[str, str]:
    base = f"outgoing:{payment.pk}:{sequence}"
    return base, f"{base}:peer"


async def commit_booking(postings: Sequence[PostingDraft]) -> None:
    """``book.commit`` retried (it is idempotent on the keys): money that moved must be
    booked. :class:`BookingFailed` when it still fails (never a payment failure)."""
    book = get_book()
    delay = 0.05
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            await book.commit(postings)
            return
        except PaymentsError as exc:
            if attempt == COMMIT_ATTEMPTS - 1:
                raise BookingFailed(f"cannot book {postings[0].key}: {exc.message}") from exc
            log.warning("payments: commit of %s failed; retrying", postings[0].key, exc_info=True)
            await asyncio.sleep(delay)
            delay *= 4


def _expiry(options: RunOptions) -> datetime:
    return _now() + options.chunk_expiry


@dataclass(slots=True)
class _Run:
    """State of one runner of one payment."""

    payment: OutgoingPayment
    owner: str
    sender: Sender
    options: RunOptions
    secret: bytes = b""
    f08_in_a_row: int = 0
    # The largest amount the path took after an F08 told us its limit (chunks stay at or
    # below it instead of growing into the same F08 again).
    max_chunk: int | None = None
    plan: ChunkedPayment | None = field(default=None)

    @property
    def via(self) -> bool:
        return self.sender.peer_account is not None

    @property
    def stream(self) -> bool:
        return self.payment.protocol == OutgoingPayment.Protocol.STREAM


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
    payment = await _db_acquire(payment_id, owner, _now() + LEASE)
    if payment is None:
        return None
    account = payment.source_account
    route = Route(account.code, account.asset_code, int(account.asset_scale), payment.via_peer)
    try:
        async with sender_opener()(route) as sender:
            run = _Run(payment, owner, sender, options)
            if sender.asset != (account.asset_code, int(account.asset_scale)):
                raise OutgoingNotAllowed(
                    f"peer {payment.via_peer} uses {sender.asset[0]}/{sender.asset[1]}, the "
                    f"source account {account.asset_code}/{account.asset_scale}"
                )
            if payment.status in (OutgoingPayment.Status.PENDING, OutgoingPayment.Status.QUOTING):
                await _quote(run)
            else:
                run.secret = bytes.fromhex(payment.shared_secret)
                await _resolve_in_doubt(run)
            if run.payment.status == OutgoingPayment.Status.SENDING:
                if run.stream:
                    await outgoing_stream.stream_send(run)
                else:
                    await _send_chunks(run)
    except LeaseLost:
        log.warning("payments: lost the lease of outgoing payment %s; stopping", payment_id)
        return None
    except (PaymentsError, DecodeError, ValueError) as exc:
        message = exc.message if isinstance(exc, PaymentsError) else str(exc)
        log.info("payments: outgoing payment %s failed: %s", payment_id, message)
        try:
            payment = await _db_finish(payment, owner, OutgoingPayment.Status.FAILED, message)
        except (LeaseLost, ChunkInDoubt):
            return None
        await _progress(payment, options)
        return payment
    except Exception:
        # Not the payment's fault (database, ledger writer): let another run resume it
        # at once; a chunk left in doubt is resolved by that run, after its expiry.
        with contextlib.suppress(Exception):
            await _db_release_lease(payment_id, owner)
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


# --- quoting ----------------------------------------------------------------------------------


async def _send(run: _Run, prepare: Prepare) -> Reply:
    try:
        return await run.sender.send(prepare)
    except Exception as exc:  # a Sender must not raise; be safe anyway
        log.exception("payments: the sender failed")
        return Reject("T01", str(settings.ILP_ADDRESS), f"failed to send packet: {exc!r}"[:500])


def _f08_size(reply: Reject, sent: int) -> int:
    """The next amount after an F08 (Amount Too Large): scaled by the Reject's
    ``maximum/received`` when it carries them, else halved."""
    try:
        too_large = decode_amount_too_large_data(reply.data)
    except DecodeError:
        too_large = None
    if (
        too_large is not None
        and too_large.received_amount > 0
        and too_large.maximum_amount < too_large.received_amount
    ):
        size = sent * too_large.maximum_amount // too_large.received_amount
    else:
        size = sent // 2
    return max(1, min(size, sent - 1))


@dataclass(frozen=True, slots=True)
class RateProbe:
    """What :func:`probe_rate` found: ``source_amount`` sent in the probe that answered,
    ``delivered`` what arrived of it, ``max_packet`` the path's limit if an F08 told it."""

    source_amount: int
    delivered: int
    max_packet: int | None = None


async def probe_rate(
    send: Callable[[Prepare], Awaitable[Reply]],
    shared_secret: bytes,
    destination: str,
    *,
    amount: int,
    grow_until: int | None = None,
    payment_id: bytes | None = None,
    expiry: timedelta = CHUNK_EXPIRY,
    max_wait_s: float = 30.0,
    attempts: int = MAX_PROBES,
) -> RateProbe:
    """Learn the exchange rate to a PSK2 receiver with draft-1 quotes (sender.md §2.2, §3).

    Sends an unfulfillable quote of ``amount`` through ``send``; the receiver answers F99
    with a type-3 error whose Chunk Amount is what arrived. Adapts instead of giving up
    (sender.md §3): F08 → the Reject's ``maximum/received`` scale the probe down; R01 or
    nothing arriving → x10 (at most ``grow_until``, default ``amount``); other T/R → the
    same again after a doubling back-off. :class:`SendFailed` on anything else (F02...),
    after ``attempts`` probes, or when nothing ever arrives. Usable with any sender (the
    paid-API client's too): it only needs ``send``.
    """
    limit = amount if grow_until is None else max(grow_until, amount)
    probe = amount
    max_packet: int | None = None
    wait = 0.1
    for _ in range(attempts):
        prepare = build_quote(
            shared_secret,
            destination,
            payment_id=payment_id or os.urandom(PAYMENT_ID_LENGTH),
            source_amount=probe,
            expires_at=_now() + expiry,
            iv=os.urandom(IV_LENGTH),
            condition=os.urandom(32),
        )
        reply = await send(prepare)
        result = read_reply(shared_secret, reply, prepare=prepare)
        code = reply.code if isinstance(reply, Reject) else ""
        if result.is_quote_answer and result.delivered is not None:
            if result.delivered > 0:
                return RateProbe(probe, result.delivered, max_packet)
            code = "R01"  # rounded to nothing along the path
        if isinstance(reply, Reject) and code == "F08":
            probe = max_packet = _f08_size(reply, probe)
            limit = min(limit, max_packet)
            continue
        if code == "R01":
            if probe >= limit:
                break
            probe = min(probe * 10, limit)
            continue
        if code[:1] in ("T", "R"):
            await asyncio.sleep(wait)
            wait = min(wait * 2, max_wait_s)
            continue
        detail = reply.message if isinstance(reply, Reject) else result.problem or "fulfilled"
        raise SendFailed(f"the quote failed: {code or 'no F99'} {detail}".strip(), code=code)
    raise SendFailed("the quote failed: nothing arrives at the receiver")


async def _quote(run: _Run) -> None:
    payment = run.payment
    payment = await _db_save(payment, run.owner, status=OutgoingPayment.Status.QUOTING)
    await _progress(payment, run.options)
    stream_allowed = payment.protocol != OutgoingPayment.Protocol.PSK2
    details: SpspDetails = await query_spsp(
        payment.spsp_url or resolve_receiver(payment.receiver),
        protocol=payment.protocol or None,
        receipts=outgoing_stream.receipt_setup(payment) if stream_allowed else None,
    )
    if details.protocol == OutgoingPayment.Protocol.STREAM:
        await outgoing_stream.stream_quote(run, details)
        return
    run.secret = details.shared_secret
    destination = details.destination_account
    destination_mode = payment.mode == OutgoingPayment.Mode.DESTINATION
    amount = _int(payment.amount)
    remaining = details.remaining
    if remaining is not None and destination_mode and amount > remaining:
        raise SpspError(f"the receiver accepts {remaining} more, not {amount}")
    cap = max(1, min(run.sender.max_packet_amount, UINT64_MAX))
    # Source-fixed: probe the amount itself (a first chunk of that size is then proven);
    # destination-fixed: the reference probe size.
    first = min(amount, cap) if not destination_mode else min(PROBE_AMOUNT, cap)
    probe = await probe_rate(
        lambda prepare: _send(run, prepare),
        run.secret,
        destination,
        amount=first,
        grow_until=first if not destination_mode else cap,
        expiry=run.options.chunk_expiry,
        max_wait_s=run.options.max_wait_ms / 1000,
    )
    run.max_chunk = probe.max_packet
    if probe.max_packet is not None:
        cap = min(cap, probe.max_packet)
    if destination_mode:
        quote_source = -(-amount * probe.source_amount // probe.delivered)
        quote_destination = amount
        limit = payment.max_source_amount
        reserve = (
            _int(limit) if limit is not None else -(-quote_source * (100 + SLIPPAGE_PERCENT) // 100)
        )
        if quote_source > reserve:
            raise OutgoingNotAllowed(
                f"delivering {amount} costs about {quote_source}, more than the {reserve} allowed"
            )
        if reserve > _int(payment.amount_reserved):
            await _db_reserve_after_quote(payment, run.owner, reserve)
        chunk_size = min(quote_source, cap)
    else:
        quote_source = amount
        quote_destination = amount * probe.delivered // probe.source_amount
        chunk_size = probe.source_amount
    run.payment = await _db_save(
        payment,
        run.owner,
        status=OutgoingPayment.Status.SENDING,
        protocol=OutgoingPayment.Protocol.PSK2,
        destination_address=destination,
        shared_secret=run.secret.hex(),
        quote_source_amount=quote_source,
        quote_destination_amount=quote_destination,
        chunk_size=max(1, chunk_size),
        started_at=payment.started_at or _now(),
    )
    await _progress(run.payment, run.options)


# --- chunks --------------------------------------------------------------------------------


def _plan(run: _Run) -> ChunkedPayment:
    p = run.payment
    destination_mode = p.mode == OutgoingPayment.Mode.DESTINATION
    return ChunkedPayment(
        run.secret,
        p.destination_address,
        bytes.fromhex(p.payment_id),
        source_amount=None if destination_mode else _int(p.amount),
        destination_amount=_int(p.amount) if destination_mode else None,
        chunk_size=max(1, int(p.chunk_size)),
        max_wait_ms=run.options.max_wait_ms,
        amount_sent=_int(p.amount_sent),
        amount_delivered=_int(p.amount_delivered),
        sequence=int(p.next_sequence),
        chunks_fulfilled=p.chunks_fulfilled,
        chunks_rejected=p.chunks_rejected,
    )


def _plan_state(run: _Run, plan: ChunkedPayment) -> dict[str, Any]:
    size = plan.chunk_size if run.max_chunk is None else min(plan.chunk_size, run.max_chunk)
    return {
        "amount_sent": plan.amount_sent,
        "amount_delivered": plan.amount_delivered,
        "chunks_fulfilled": plan.chunks_fulfilled,
        "chunks_rejected": plan.chunks_rejected,
        "chunk_size": max(1, size),
        "next_sequence": plan.sequence,
    }


def _chunk_minimum(prepare: Prepare, secret: bytes) -> int:
    request = decrypt_psk2(secret, prepare.data)
    return request.chunk_amount if isinstance(request, ChunkRequest) else 0


async def _hold(run: _Run, prepare: Prepare, sequence: int) -> Reject | None:
    """Via a peer: debit hold on the source, credit hold on the peer (None = held)."""
    peer_account = run.sender.peer_account
    assert peer_account is not None
    book = get_book()
    source_key, peer_key = _hold_keys(run.payment, sequence)
    try:
        await book.ahold(run.payment.source_account.code, prepare.amount, source_key)
    except BalanceLimitExceeded:
        return Reject("T04", str(settings.ILP_ADDRESS), "insufficient balance on the source.")
    try:
        if not book.is_loaded(peer_account):
            await book.load_account(peer_account)
        book.hold_credit(peer_account, prepare.amount, peer_key)
    except BalanceLimitExceeded:
        book.release(source_key)
        return Reject(
            "T04", str(settings.ILP_ADDRESS), f"insufficient liquidity. account={peer_account}"
        )
    return None


def _release_holds(run: _Run, sequence: int) -> None:
    book = get_book()
    for key in _hold_keys(run.payment, sequence):
        book.release(key)


async def _book_fulfilled(run: _Run, amount: int, sequence: int) -> None:
    peer_account = run.sender.peer_account
    if peer_account is None:
        return  # the switch booked it before it returned the Fulfill
    source_key, peer_key = _hold_keys(run.payment, sequence)
    await commit_booking(
        [
            PostingDraft(run.payment.source_account.code, -amount, source_key, "outgoing"),
            PostingDraft(peer_account, amount, peer_key, "outgoing"),
        ]
    )


async def _send_chunks(run: _Run) -> None:
    plan = run.plan = _plan(run)
    payment = run.payment
    while True:
        if run.max_chunk is not None:
            plan.chunk_size = min(plan.chunk_size, run.max_chunk)
        prepare = plan.next_chunk(expires_at=_expiry(run.options), iv=os.urandom(IV_LENGTH))
        if prepare is None:
            break
        sequence = plan.sequence
        debited = _int(payment.amount_debited)
        if debited + prepare.amount > _int(payment.amount_reserved):
            raise InsufficientBalance(
                f"the next chunk would spend more than the {_int(payment.amount_reserved)} "
                f"reserved ({debited} spent, {_int(payment.amount_delivered)} delivered)"
            )
        keys = run.sender.source_keys(prepare) or (_hold_keys(payment, sequence)[0],)
        chunk = await _db_insert_chunk(
            payment,
            run.owner,
            sequence=sequence,
            prepare=prepare,
            minimum=_chunk_minimum(prepare, run.secret),
            ledger_key=" ".join(keys),
        )
        refused = await _hold(run, prepare, sequence) if run.via else None
        reply = refused or await _send(run, prepare)
        result = read_reply(run.secret, reply, prepare=prepare)
        if isinstance(reply, Fulfill) and result.fulfilled:
            before = plan.amount_delivered
            await _book_fulfilled(run, prepare.amount, sequence)
            plan.on_reply(reply)
            delivered = result.delivered or 0
            # The receiver's totals are exact so far: each one was the previous plus what
            # arrived (what lets a resume trust a total that did not move).
            trusted = (payment.totals_trusted or payment.chunks_fulfilled == 0) and (
                result.total is not None and result.total == before + delivered
            )
            await _db_settle_chunk(
                payment,
                run.owner,
                chunk,
                state=OutgoingChunk.State.FULFILLED,
                delivered=delivered,
                amount_debited=debited + prepare.amount,
                totals_trusted=trusted,
                **_plan_state(run, plan),
            )
        else:
            if run.via:
                _release_holds(run, sequence)
            progress = plan.on_reply(reply)
            if isinstance(reply, Reject) and reply.code == "F08" and progress is Progress.FAILED:
                run.f08_in_a_row += 1
                if run.f08_in_a_row <= MAX_F08_IN_A_ROW:
                    plan.failure = ""
                    plan.chunk_size = run.max_chunk = _f08_size(reply, prepare.amount)
                    progress = Progress.CONTINUE
            if progress is not Progress.FAILED:
                plan.sequence += 1  # every attempt has its own sequence (and row)
            await _db_settle_chunk(
                payment,
                run.owner,
                chunk,
                state=OutgoingChunk.State.REJECTED,
                reply=reply if isinstance(reply, Reject) else None,
                message="" if isinstance(reply, Reject) else f"invalid fulfill: {result.problem}",
                **_plan_state(run, plan),
            )
            if progress is Progress.FAILED:
                await _progress(payment, run.options)
                raise SendFailed(plan.failure)
        if isinstance(reply, Fulfill):
            run.f08_in_a_row = 0
        await _progress(payment, run.options)
        if plan.wait_ms:
            await asyncio.sleep(plan.wait_ms / 1000)
    run.payment = await _db_finish(payment, run.owner, OutgoingPayment.Status.COMPLETED)
    await _progress(run.payment, run.options)


# --- resuming: chunks in doubt ----------------------------------------------------------------


async def _probe_total(run: _Run, sequence: int, amount: int) -> int | None:
    """The receiver's running total for our Payment ID, from an unfulfillable draft-1
    request whose minimum cannot be met (it answers F99 + type-3 error with the total
    before any condition check); STREAM: :func:`payments.outgoing_stream.stream_total`.
    ``None`` when it would not say."""
    if run.stream:
        return await outgoing_stream.stream_total(run, sequence)
    p = run.payment
    destination_mode = p.mode == OutgoingPayment.Mode.DESTINATION
    request = ChunkRequest(
        bytes.fromhex(p.payment_id),
        max(sequence, 1),  # receivers that look totals up skip sequence 0 (nothing yet)
        _int(p.amount) if destination_mode else QUOTE_AMOUNT,
        QUOTE_AMOUNT,
    )
    wait = 0.1
    size = max(1, min(1000, amount))
    for _ in range(MAX_PROBES):
        prepare = Prepare(
            size,
            _expiry(run.options),
            os.urandom(32),
            p.destination_address,
            encrypt_psk2(run.secret, request, os.urandom(IV_LENGTH)),
        )
        reply = await _send(run, prepare)
        result = read_reply(run.secret, reply, prepare=prepare)
        if result.code == "F99" and isinstance(result.response, ChunkRejection):
            return result.response.payment_amount
        if isinstance(reply, Reject) and reply.code == "F08":
            size = _f08_size(reply, size)
            continue
        if isinstance(reply, Reject) and reply.code == "R01":
            size = min(size * 10, UINT64_MAX)  # rounded to nothing on the way: bigger
            continue
        if isinstance(reply, Reject) and reply.code[:1] in ("T", "R"):
            await asyncio.sleep(wait)
            wait *= 2
            continue
        return None
    return None


async def _resolve_in_doubt(run: _Run) -> None:
    """Decide every chunk left in state ``sending`` (see the module docstring)."""
    for chunk in await _db_chunks_in_doubt(run.payment.pk):
        await _resolve_chunk(run, chunk)


async def _resolve_chunk(run: _Run, chunk: OutgoingChunk) -> None:
    payment = run.payment
    amount = _int(chunk.amount)
    ready_at = chunk.expires_at + RESOLVE_MARGIN
    await _db_save(payment, run.owner, lease_until=max(_now() + LEASE, ready_at + LEASE_GRACE))
    wait = (ready_at - _now()).total_seconds()
    if wait > 0:
        await asyncio.sleep(wait)
    debited = _int(payment.amount_debited)
    known = _int(payment.amount_delivered)
    total: int | None = None
    if await _db_posted(chunk.ledger_key.split()):
        state = OutgoingChunk.State.FULFILLED
        total = await _probe_total(run, chunk.sequence, amount)
    elif not run.via and _local_destination(payment.destination_address):
        state = OutgoingChunk.State.LOST
    else:
        total = await _probe_total(run, chunk.sequence, amount)
        if total is not None and total > known:
            state = OutgoingChunk.State.FULFILLED
        elif total is not None and total == known and payment.totals_trusted:
            state = OutgoingChunk.State.LOST
        else:
            state = OutgoingChunk.State.UNKNOWN
    # After the probe: a STREAM total probe used (and stored) a sequence of its own.
    base: dict[str, Any] = {"next_sequence": max(payment.next_sequence, chunk.sequence + 1)}
    log.warning(
        "payments: outgoing %s chunk %s was in flight when its runner stopped: %s",
        payment.pk,
        chunk.sequence,
        state,
    )
    if state == OutgoingChunk.State.FULFILLED:
        await _book_fulfilled(run, amount, chunk.sequence)
        delivered = max(total - known, 0) if total is not None else 0
        await _db_settle_chunk(
            payment,
            run.owner,
            chunk,
            state=state,
            delivered=delivered,
            message="resolved after a restart",
            amount_debited=debited + amount,
            amount_sent=_int(payment.amount_sent) + amount,
            amount_delivered=known + delivered,
            chunks_fulfilled=payment.chunks_fulfilled + 1,
            **base,
        )
    elif state == OutgoingChunk.State.LOST:
        if run.via:
            _release_holds(run, chunk.sequence)
        await _db_settle_chunk(
            payment,
            run.owner,
            chunk,
            state=state,
            message="expired while its runner was down; not delivered",
            chunks_rejected=payment.chunks_rejected + 1,
            **base,
        )
    else:
        if run.via:
            _release_holds(run, chunk.sequence)
        await _db_ensure_suspense()
        source_key = chunk.ledger_key.split()[0]
        await commit_booking(
            [
                PostingDraft(payment.source_account.code, -amount, source_key, "outgoing in doubt"),
                PostingDraft(SUSPENSE_ACCOUNT, amount, f"{source_key}:suspense", "in doubt"),
            ]
        )
        await _db_settle_chunk(
            payment,
            run.owner,
            chunk,
            state=state,
            message=f"outcome unknown; charged and booked to {SUSPENSE_ACCOUNT}",
            amount_debited=debited + amount,
            amount_in_doubt=_int(payment.amount_in_doubt) + amount,
            **base,
        )
        raise SendFailed(
            f"chunk {chunk.sequence} ({amount}) was in flight when the payment's runner "
            f"stopped and its outcome cannot be known; it was charged and booked to "
            f"{SUSPENSE_ACCOUNT} for reconciliation"
        )
    await _progress(payment, run.options)
