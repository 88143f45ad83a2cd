"""The runner's machinery: one run of one outgoing payment, whatever its protocol.

Read ``docs/ARCHITECTURE.md`` ("payments: sending") for the full contract. What lives here
is shared by :mod:`payments.sending.services` (which starts and ends runs),
:mod:`payments.sending.psk2` and :mod:`payments.sending.stream` (what each protocol sends):

**The lease.** One runner per payment at a time: ``lease_owner``/``lease_until``, taken and
renewed with conditional UPDATEs (a write by a runner that lost it raises
:class:`LeaseLost`); it always covers the Prepare in flight plus :data:`LEASE_GRACE`.

**The journal.** Every chunk is an :class:`~payments.models_outgoing.OutgoingChunk` row
written **before** it is sent (unique ``(payment, sequence)``; each attempt has its own
sequence), settled with the payment's counters in one transaction.

**Money** (:mod:`payments.sending.reservation`): via a peer, this module holds and books
each chunk under ``outgoing:<id>:<seq>`` (and ``…:peer``); through the switch, the switch
books it itself (``<packet key>`` or ``<packet key>:in`` on the source account).

**Resume.** A chunk found in state ``sending`` by a new runner is *in doubt*. The runner
waits until its Prepare has expired (+ :data:`RESOLVE_MARGIN`), then decides, in order:
(1) its source-debit posting exists → fulfilled; (2) it went through the switch to one of
our own receivers and there is no posting → lost (the receiver commits before it
fulfills); (3) ask the receiver for its running total (the protocol's total probe): more
than we knew → fulfilled (the difference was delivered), the same and the receiver's
totals have proven exact → lost; (4) otherwise **unknown**: its amount is charged to the
source and booked to :data:`~payments.sending.reservation.SUSPENSE_ACCOUNT` for the
operator to reconcile, and the payment fails. A chunk is never sent twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple, ParamSpec, Protocol, TypeVar, cast

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from ilp.packet import Fulfill, Prepare, Reject, Reply
from payments.ledger import PostingDraft, ensure_account
from payments.models import LedgerAccount, Posting
from payments.models_outgoing import OutgoingChunk, OutgoingPayment
from payments.sending.errors import InsufficientBalance, SendFailed
from payments.sending.port import Sender, send_safely
from payments.sending.reservation import (
    SUSPENSE_ACCOUNT,
    book_chunk,
    commit_booking,
    hold_chunk,
    lock_source_account,
    release_holds,
    reserve_on,
)

__all__ = [
    "ALL_PAYMENTS_GROUP",
    "CHUNK_EXPIRY",
    "LEASE",
    "LEASE_GRACE",
    "PROGRESS_EVENT",
    "RESOLVE_MARGIN",
    "SLIPPAGE_PERCENT",
    "ChunkInDoubt",
    "ChunkOutcome",
    "ChunkPlan",
    "LeaseLost",
    "NextChunk",
    "Run",
    "RunOptions",
    "in_thread",
    "payment_summary",
    "publish_event",
    "send_chunks",
]

log = logging.getLogger(__name__)

CHUNK_EXPIRY = timedelta(seconds=30)
LEASE = timedelta(minutes=2)
LEASE_GRACE = timedelta(seconds=60)  # a Prepare's owner keeps its lease this long past expiry
RESOLVE_MARGIN = timedelta(seconds=2)
SLIPPAGE_PERCENT = 1
PROGRESS_EVENT = "outgoing.progress"
ALL_PAYMENTS_GROUP = "payments.outgoing"  # a channel-layer group name, kept stable


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


async def progress(payment: OutgoingPayment, options: RunOptions) -> None:
    summary = payment_summary(payment)
    event = {"type": PROGRESS_EVENT, "payment": summary}
    await publish_event(payment.group_name, event)
    await publish_event(ALL_PAYMENTS_GROUP, event)
    if options.on_progress is not None:
        try:
            options.on_progress(payment)
        except Exception:
            log.exception("payments: progress callback failed")


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


db_acquire = in_thread(_acquire)
db_save = in_thread(_save)
db_release_lease = in_thread(_release_lease)
db_reserve_after_quote = in_thread(_reserve_after_quote)
db_finish = in_thread(_finish)
db_insert_chunk = in_thread(_insert_chunk)
db_settle_chunk = in_thread(_settle_chunk)
db_posted = in_thread(_posted)


@in_thread
def db_chunks_in_doubt(payment_id: int) -> list[OutgoingChunk]:
    return list(
        OutgoingChunk.objects.filter(
            payment_id=payment_id, state=OutgoingChunk.State.SENDING
        ).order_by("sequence")
    )


@in_thread
def db_ensure_suspense() -> None:
    ensure_account(SUSPENSE_ACCOUNT, kind=LedgerAccount.Kind.NODE)


# --- one run -------------------------------------------------------------------------------


def _local_destination(address: str) -> bool:
    """Whether ``address`` is one of this node's own receivers."""
    return address.startswith(f"{settings.ILP_ADDRESS}.receivers.")


def chunk_base(payment: OutgoingPayment, sequence: int) -> str:
    """The base of a chunk's hold and posting keys (``outgoing:<id>:<seq>``)."""
    return f"outgoing:{payment.pk}:{sequence}"


def expiry(options: RunOptions) -> datetime:
    return _now() + options.chunk_expiry


@dataclass(slots=True)
class Run:
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

    @property
    def via(self) -> bool:
        return self.sender.peer_account is not None

    @property
    def stream(self) -> bool:
        return self.payment.protocol == OutgoingPayment.Protocol.STREAM


async def send(run: Run, prepare: Prepare) -> Reply:
    return await send_safely(run.sender, prepare)


def source_keys(run: Run, prepare: Prepare, sequence: int) -> str:
    """The chunk row's ``ledger_key``: the switch's source posting keys, or (via a peer)
    the source hold key this module books under."""
    keys = run.sender.source_keys(prepare) or (chunk_base(run.payment, sequence),)
    return " ".join(keys)


async def hold(run: Run, prepare: Prepare, sequence: int) -> Reject | None:
    """Via a peer: debit hold on the source, credit hold on the peer (None = held)."""
    peer_account = run.sender.peer_account
    assert peer_account is not None
    return await hold_chunk(
        source_account=run.payment.source_account.code,
        peer_account=peer_account,
        amount=prepare.amount,
        base=chunk_base(run.payment, sequence),
        expires_at=prepare.expires_at,
    )


def release(run: Run, sequence: int) -> None:
    release_holds(chunk_base(run.payment, sequence))


async def book_fulfilled(run: Run, amount: int, sequence: int) -> None:
    peer_account = run.sender.peer_account
    if peer_account is None:
        return  # the switch booked it before it returned the Fulfill
    await book_chunk(
        source_account=run.payment.source_account.code,
        peer_account=peer_account,
        amount=amount,
        base=chunk_base(run.payment, sequence),
        memo="outgoing",
    )


# --- the chunk loop, the same for every protocol ---------------------------------------------


class NextChunk(NamedTuple):
    """The next chunk a protocol wants sent: its Prepare, sequence and minimum delivery."""

    prepare: Prepare
    sequence: int
    minimum: int


@dataclass(frozen=True, slots=True)
class ChunkOutcome:
    """What a protocol read in one chunk's reply. ``fulfilled``: a valid Fulfill, which
    delivered ``delivered`` (``total_exact``: the receiver's running total is exactly what
    we know delivered so far). Otherwise ``message`` says why a Fulfill was not valid.
    ``failure`` is set when the payment cannot go on (after this chunk is settled)."""

    fulfilled: bool
    delivered: int = 0
    total_exact: bool = False
    message: str = ""
    failure: str | None = None


class ChunkPlan(Protocol):
    """One protocol's plan of a payment's chunks (:mod:`payments.sending.psk2`,
    :mod:`payments.sending.stream`), driven by :func:`send_chunks`."""

    unit: str  # what a chunk is called in messages ("chunk", "packet")

    def next_chunk(self, run: Run) -> NextChunk | None:
        """The next chunk, ``None`` when the payment is paid."""
        ...

    def on_reply(self, run: Run, prepare: Prepare, reply: Reply) -> ChunkOutcome:
        """Read ``reply`` to ``prepare`` and move the plan on."""
        ...

    def state(self, run: Run) -> dict[str, Any]:
        """The payment's counters to store with a settled chunk."""
        ...

    def wait_ms(self) -> int:
        """How long to wait before the next chunk (back-off)."""
        ...


async def send_chunks(run: Run, plan: ChunkPlan) -> None:
    """Send ``plan``'s chunks until the payment is paid (``completed``) or fails
    (:class:`SendFailed`; :class:`InsufficientBalance` if a chunk would spend more than
    the reservation). Each chunk: its row is written, then (via a peer) held, sent,
    booked when fulfilled (or its holds released), and settled with the plan's counters."""
    payment = run.payment
    while True:
        upcoming = plan.next_chunk(run)
        if upcoming is None:
            break
        prepare, sequence, minimum = upcoming
        debited = _int(payment.amount_debited)
        if debited + prepare.amount > _int(payment.amount_reserved):
            raise InsufficientBalance(
                f"the next {plan.unit} would spend more than the "
                f"{_int(payment.amount_reserved)} reserved ({debited} spent, "
                f"{_int(payment.amount_delivered)} delivered)"
            )
        chunk = await db_insert_chunk(
            payment,
            run.owner,
            sequence=sequence,
            prepare=prepare,
            minimum=minimum,
            ledger_key=source_keys(run, prepare, sequence),
        )
        refused = await hold(run, prepare, sequence) if run.via else None
        reply = refused or await send(run, prepare)
        outcome = plan.on_reply(run, prepare, reply)
        if isinstance(reply, Fulfill) and outcome.fulfilled:
            await book_fulfilled(run, prepare.amount, sequence)
            # The receiver's totals are exact so far: each one was the previous plus what
            # arrived (what lets a resume trust a total that did not move).
            trusted = (payment.totals_trusted or payment.chunks_fulfilled == 0) and (
                outcome.total_exact
            )
            await db_settle_chunk(
                payment,
                run.owner,
                chunk,
                state=OutgoingChunk.State.FULFILLED,
                delivered=outcome.delivered,
                amount_debited=debited + prepare.amount,
                totals_trusted=trusted,
                **plan.state(run),
            )
        else:
            if run.via:
                release(run, sequence)
            await db_settle_chunk(
                payment,
                run.owner,
                chunk,
                state=OutgoingChunk.State.REJECTED,
                reply=reply if isinstance(reply, Reject) else None,
                message="" if isinstance(reply, Reject) else outcome.message,
                **plan.state(run),
            )
        await progress(payment, run.options)
        if outcome.failure is not None:
            raise SendFailed(outcome.failure)
        wait_ms = plan.wait_ms()
        if wait_ms:
            await asyncio.sleep(wait_ms / 1000)
    run.payment = await db_finish(payment, run.owner, OutgoingPayment.Status.COMPLETED)
    await progress(run.payment, run.options)


# --- resuming: chunks in doubt ----------------------------------------------------------------

TotalProbe = Callable[[Run, int, int], Awaitable[int | None]]
"""``probe_total(run, sequence, amount)``: the receiver's running total of the payment
(``None`` when it would not say); each protocol has its own."""


async def resolve_in_doubt(run: Run, probe_total: TotalProbe) -> None:
    """Decide every chunk left in state ``sending`` (see the module docstring)."""
    for chunk in await db_chunks_in_doubt(run.payment.pk):
        await _resolve_chunk(run, chunk, probe_total)


async def _resolve_chunk(run: Run, chunk: OutgoingChunk, probe_total: TotalProbe) -> None:
    payment = run.payment
    amount = _int(chunk.amount)
    ready_at = chunk.expires_at + RESOLVE_MARGIN
    await db_save(payment, run.owner, lease_until=max(_now() + LEASE, ready_at + LEASE_GRACE))
    wait = (ready_at - _now()).total_seconds()
    if wait > 0:
        await asyncio.sleep(wait)
    debited = _int(payment.amount_debited)
    known = _int(payment.amount_delivered)
    total: int | None = None
    if await db_posted(chunk.ledger_key.split()):
        state = OutgoingChunk.State.FULFILLED
        total = await probe_total(run, chunk.sequence, amount)
    elif not run.via and _local_destination(payment.destination_address):
        state = OutgoingChunk.State.LOST
    else:
        total = await probe_total(run, chunk.sequence, amount)
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
        await book_fulfilled(run, amount, chunk.sequence)
        delivered = max(total - known, 0) if total is not None else 0
        await db_settle_chunk(
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
            release(run, chunk.sequence)
        await db_settle_chunk(
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
            release(run, chunk.sequence)
        await db_ensure_suspense()
        source_key = chunk.ledger_key.split()[0]
        await commit_booking(
            [
                PostingDraft(payment.source_account.code, -amount, source_key, "outgoing in doubt"),
                PostingDraft(SUSPENSE_ACCOUNT, amount, f"{source_key}:suspense", "in doubt"),
            ]
        )
        await db_settle_chunk(
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
    await progress(payment, run.options)
