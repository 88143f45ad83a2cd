"""The packet switch: what the node does with every ILP Prepare a link hands it.

``await get_switch().handle_prepare(source, prepare)`` returns the Fulfill or Reject
for the link to send back. It never raises: every failure becomes a Reject whose
``triggered_by`` is our address (connector.md §3, errorHandler). Dispatch:

=====================================  ====================================================
``peer.config``                        IL-DCP (children only)          :mod:`links.peer_protocols`
``peer.balance``                       committed balance, Int64        :mod:`links.peer_protocols`
``peer.route.control|update``          CCP                             :mod:`links.ccp`
other ``peer.*``                       F01 ``unknown peer protocol.``
our own address                        echo                            :mod:`links.echo`
``<node>.receivers.…``                 local PSK2 receiver             ``receivers.psk2_receiver``
``<node>.<segment>.…``                 a registered local handler      :meth:`PacketSwitch.register_local`
anything else                          forward by longest prefix       :mod:`links.routing`
=====================================  ====================================================

Money (``payments.ledger`` book; positive balance = we owe the account holder):

* a packet from ``source`` first takes a **debit hold** of its amount on the source's
  account (``min_balance`` check → T04 ``exceeded maximum balance.``, 21.3.0's text for
  "you may not owe us more");
* forwarding (and echo) also takes a **credit hold** of the outgoing amount on the next
  hop's account (``max_balance`` check → T04 *before* sending: 21.3.0 only finds this out
  after the next hop has been paid);
* a valid Fulfill commits ``source -in``, ``next hop +out`` and ``node:fees +(in - value of
  out)`` durably (group commit) **before** the Fulfill goes back; anything else releases
  the holds. Posting keys are ``<packet key>:in|out|fee`` (the receiver path uses the
  packet key itself, see ``receivers.psk2_receiver``), so committing twice is harmless.

**Packet key** (:func:`packet_key`): the Prepare's expiry in ms, 11 hex digits, then the
first 16 bytes, hex, of SHA-256 over the source peer's name and every field of the
Prepare (amount, expiry in ms, condition, destination, data). A retransmission of the very same packet from the same peer has the
same key: while the first copy is in flight the copy waits for its result, and within the
Prepare's lifetime a fulfilled packet is answered from memory with the same Fulfill — it is
never sent on or committed twice.

**Amounts**: same asset code and scale: ``out = floor(in * (10^6 - ILP_FEE_PPM) / 10^6)``.
Another scale of the same asset code: that net amount is scaled by ``10^(to - from)``;
scaling down floors, and whatever a floor cuts off stays with the node as fee, counted in
whole source units (the sender never gets more than it paid for, and the books stay exact
in integers). Different asset codes: refused (F02), the node has no exchange rates. A
non-zero amount that becomes 0 is R01 (21.3.0 forwards it as 0).

**Expiry**: the outgoing Prepare expires at ``min(in - ILP_MIN_MESSAGE_WINDOW_MS, now +
ILP_MAX_HOLD_TIME_MS)``; less than one window left → R02 (21.3.0's texts). An incoming
Prepare already expired → R02 ``source transfer has already expired.`` as 21.3.0 and
RFC 27 (R00 is for the next hop not answering in time, where 21.3.0 wrongly says T00).

Codes where we deliberately differ from 21.3.0 (connector.md "Quirk" notes): R00 on
outgoing timeout (not T00), F05 on a wrong fulfillment (not F02), T01 for a missing link
or a transport failure (not F02), T00 for an unreadable reply, F02 for a destination under
our address that nothing serves (not F00), T04 before forwarding when the next hop's
limit would be exceeded, R01 for amounts rounded to zero, and F02 when the next hop is the
source itself (``reflectPayments`` off; echo is the exception, it always reflects).

Performance: the hot path is dict lookups, integer maths, two in-memory holds, one await
on the link and one on the group commit; no database query and no thread hop per packet.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import logging
import os
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from ilp.balance import BALANCE_DESTINATION
from ilp.ccp import CCP_CONTROL_DESTINATION, CCP_UPDATE_DESTINATION
from ilp.conditions import fulfillment_matches
from ilp.errors import DecodeError
from ilp.ildcp import ILDCP_DESTINATION
from ilp.oer import UINT64_MAX
from ilp.packet import Fulfill, Prepare, Reject, RejectError, Reply, amount_too_large_data
from interledger_site import metrics
from links import peer_protocols
from links.ccp import CcpService
from links.echo import echo_prepare, parse_echo_request
from links.models import LinkKind
from links.peers import PeerContext
from links.registry import OutgoingLink
from links.routing import LOCAL_HOP, RoutingTable, receivers_prefix, static_routes
from payments.errors import AccountNotLoaded, BalanceLimitExceeded
from payments.ledger import PostingDraft, ReceiptDraft, node_account
from payments.ledger.shared import HoldDraft

log = logging.getLogger(__name__)

FEE_ACCOUNT = node_account("fees")
PPM = 1_000_000
RECENT_FULFILLS_MAX = 100_000
# The memo of a forwarded packet's ``<key>:in`` posting from an HTTP-OER-ASYNC source:
# this prefix and the fulfillment in hex (see _send).
FULFILLMENT_MEMO = "fulfillment:"
RECENT_PURGE_EVERY = 1024
RATE_WINDOW_S = 10
# How often sends past their expiry are looked for (links normally answer R00 first).
SWEEP_INTERVAL_S = 0.05
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SEGMENT_RE = re.compile(r"[a-zA-Z0-9_~-]+")
_MS = timedelta(milliseconds=1)


# --- collaborators (protocols, so tests can pass small doubles) ---------------------------


class Book(Protocol):
    """The part of ``payments.ledger.BalanceBook`` the switch uses."""

    def hold(self, account_code: str, amount: int, key: str) -> None: ...
    def hold_credit(self, account_code: str, amount: int, key: str) -> None: ...
    def release(self, key: str) -> None: ...
    def balance(self, account_code: str) -> int: ...
    def is_loaded(self, account_code: str) -> bool: ...
    async def load_account(self, account_code: str) -> None: ...
    async def commit(
        self, postings: Sequence[PostingDraft], receipts: Sequence[ReceiptDraft] = ()
    ) -> None: ...


class Receiver(Protocol):
    """``receivers.psk2_receiver.receive_prepare``."""

    def __call__(
        self, prepare: Prepare, *, source_account: str, packet_key: str, now: datetime
    ) -> Awaitable[Fulfill | Reject]: ...


LocalHandler = Callable[[PeerContext, Prepare, str, datetime], Awaitable[Reply]]
"""``async handler(source, prepare, packet_key, now) -> Reply`` (see :meth:`PacketSwitch.register_local`)."""
LinkGetter = Callable[[str], OutgoingLink | None]
PeerLoader = Callable[[], Awaitable[list[PeerContext]]]
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- pure helpers ---------------------------------------------------------------------------


# The largest expiry an 11-digit hex prefix holds (ms since 1970: the year 2527).
_KEY_EXPIRY_MAX = 16**11 - 1


def packet_key(source_name: str, prepare: Prepare) -> str:
    """Stable id of one Prepare from one peer (see the module docstring): its expiry in ms
    since 1970 (11 hex digits, clamped to 0..:data:`_KEY_EXPIRY_MAX`), then 16 bytes of
    the hash, hex.

    The expiry first makes keys sort by time: the ledger's unique indexes on posting and
    receipt keys, which take every payment's keys, get a group commit's inserts in a few
    adjacent leaf pages at their right edge instead of one random page per key, which
    once the tables are large each commit rewrote and SQLite's WAL or Postgres's
    full-page writes copied (docs/PERFORMANCE.md, session 7)."""
    expiry_ms = (prepare.expires_at - _EPOCH) // _MS
    h = hashlib.sha256(source_name.encode("ascii", "replace"))
    h.update(b"\x00")
    h.update(prepare.amount.to_bytes(8, "big"))
    h.update(expiry_ms.to_bytes(8, "big", signed=True))
    h.update(prepare.execution_condition)
    h.update(prepare.destination.encode("ascii"))
    h.update(b"\x00")
    h.update(prepare.data)
    return f"{min(max(expiry_ms, 0), _KEY_EXPIRY_MAX):011x}{h.digest()[:16].hex()}"


def convert_amount(amount: int, from_scale: int, to_scale: int, fee_ppm: int) -> tuple[int, int]:
    """``(out, fee)``: ``out`` in the destination's units, ``fee`` in the source's units.

    Invariant: ``fee + out * 10^(from - to) == amount`` exactly (the value of ``out``,
    expressed in source units, is always an integer), ``0 <= fee <= amount``.
    """
    net = amount * (PPM - fee_ppm) // PPM
    if to_scale >= from_scale:
        return net * 10 ** (to_scale - from_scale), amount - net
    factor = 10 ** (from_scale - to_scale)
    out = net // factor
    return out, amount - out * factor


def fee_account_for(asset_code: str, asset_scale: int, node_code: str, node_scale: int) -> str:
    """The node's fee account for fees taken in this asset (``node:fees`` for its own)."""
    if (asset_code, asset_scale) == (node_code, node_scale):
        return FEE_ACCOUNT
    return f"{FEE_ACCOUNT}:{asset_code}:{asset_scale}"


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- dashboard counters ------------------------------------------------------------------------


@dataclass(slots=True)
class PeerCounters:
    packets_in: int = 0  # Prepares this peer sent us
    packets_out: int = 0  # Prepares we sent this peer
    fulfilled: int = 0  # of the packets in, answered with a Fulfill
    rejected: int = 0  # of the packets in, answered with a Reject


class SwitchStats:
    """Cheap in-memory counters: a few integer increments per packet."""

    def __init__(self) -> None:
        self.peers: dict[str, PeerCounters] = {}
        self.started_at = time.time()
        self._second = int(time.monotonic())
        self._this_second = 0
        self._seconds: deque[tuple[int, int]] = deque(maxlen=RATE_WINDOW_S)

    def peer(self, name: str) -> PeerCounters:
        counters = self.peers.get(name)
        if counters is None:
            counters = self.peers[name] = PeerCounters()
        return counters

    def tick(self) -> None:
        second = int(time.monotonic())
        if second != self._second:
            self._seconds.append((self._second, self._this_second))
            self._second = second
            self._this_second = 0
        self._this_second += 1

    def packets_per_second(self) -> float:
        """Packets in per second over the last full seconds (up to ``RATE_WINDOW_S``)."""
        now = int(time.monotonic())
        recent = [n for s, n in self._seconds if now - s <= RATE_WINDOW_S]
        if self._second != now and now - self._second <= RATE_WINDOW_S:
            recent.append(self._this_second)
        return sum(recent) / RATE_WINDOW_S

    def snapshot(self) -> dict[str, Any]:
        peers = {
            name: {
                "packets_in": c.packets_in,
                "packets_out": c.packets_out,
                "fulfilled": c.fulfilled,
                "rejected": c.rejected,
            }
            for name, c in sorted(self.peers.copy().items())
        }
        return {
            "packets_per_second": self.packets_per_second(),
            "packets_in": sum(p["packets_in"] for p in peers.values()),
            "fulfilled": sum(p["fulfilled"] for p in peers.values()),
            "rejected": sum(p["rejected"] for p in peers.values()),
            "peers": peers,
            "uptime_s": time.time() - self.started_at,
        }


# --- the switch ---------------------------------------------------------------------------------


class PacketSwitch:
    """One per process (:func:`get_switch`). Lives on the event loop; not thread-safe."""

    def __init__(
        self,
        *,
        node_address: str,
        asset_code: str,
        asset_scale: int,
        book: Book,
        links: LinkGetter,
        receiver: Receiver,
        peer_loader: PeerLoader | None = None,
        fee_ppm: int = 0,
        min_message_window_ms: int = 1000,
        max_hold_time_ms: int = 30_000,
        route_broadcast_interval_s: float = 30.0,
        clock: Clock = utc_now,
        routing_table_id: bytes | None = None,
        routing_secret: bytes | None = None,
        housekeeping: bool = False,
    ) -> None:
        if not 0 <= fee_ppm <= PPM:
            raise ValueError("fee_ppm must be 0..1000000")
        self.address = node_address
        self.asset_code = asset_code
        self.asset_scale = asset_scale
        self.book = book
        # With shared credit (Redis) a packet's holds go to the book together, awaited;
        # without it the in-memory holds below, unchanged (no await, no allocation).
        self._hold_many: Callable[..., Awaitable[None]] | None = (
            getattr(book, "hold_many", None) if getattr(book, "shared", None) else None
        )
        self.links = links
        self.receiver = receiver
        self.peer_loader = peer_loader
        self.fee_ppm = fee_ppm
        self.window = timedelta(milliseconds=min_message_window_ms)
        self.max_hold = timedelta(milliseconds=max_hold_time_ms)
        self.broadcast_interval_s = route_broadcast_interval_s
        self.clock = clock
        self.stats = SwitchStats()
        self.routing = RoutingTable()
        self.ccp = CcpService(
            node_address,
            self.routing,
            links=links,
            clock=clock,
            routing_table_id=routing_table_id or os.urandom(16),
            routing_secret=routing_secret or os.urandom(32),
            broadcast_interval_s=route_broadcast_interval_s,
        )
        self.peers: dict[str, PeerContext] = {}
        self._receivers_dot = receivers_prefix(node_address) + "."
        self._node_dot = node_address + "."
        self._locals: dict[str, LocalHandler] = {}  # segment -> handler
        # Packets in progress: key -> the future their copies wait on, made only when a
        # copy arrives (None until then: no future to make and resolve per packet).
        self._inflight: dict[str, asyncio.Future[Reply] | None] = {}
        # key -> the Fulfill's (fulfillment, data), its expiry in _recent_expiry. A tuple of
        # bytes, not the Fulfill: the collector stops tracking such a tuple at its first
        # young collection, while every Fulfill object (~100,000 at 3,500/s over a 30 s
        # Prepare lifetime) stayed tracked, and each full collection walked them all
        # (15-60 ms with every thread stopped, the p99 of the embedded shape over 100k).
        self._recent: dict[str, tuple[bytes, bytes]] = {}
        # (expiry in POSIX seconds, key) of every remembered Fulfill, a heap: purged in
        # expiry order whatever the arrival order (one far-future Prepare pins nothing).
        self._recent_expiry: list[tuple[float, str]] = []
        self._remembered = 0
        self._housekeeping = housekeeping
        self._housekeeping_task: asyncio.Task[None] | None = None
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._background: set[asyncio.Task[Any]] = set()
        # Sends in flight: task -> loop-time deadline (the outgoing Prepare's expiry).
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._timed_out: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.set_peers([])

    # --- peers and routes ---------------------------------------------------------------

    def set_peers(self, peers: Iterable[PeerContext]) -> None:
        """Replace the known peers and rebuild the static routes from them (sync, no I/O)."""
        self.peers = {p.name: p for p in peers}
        self.routing.set_static(static_routes(self.address, self.peers.values()))

    async def load_peers(self) -> None:
        """(Re)load the enabled peers (``peer_loader``) and their book accounts."""
        if self.peer_loader is None:
            return
        contexts = await self.peer_loader()
        codes = {p.account_code for p in contexts} | {
            fee_account_for(p.asset_code, p.asset_scale, self.asset_code, self.asset_scale)
            for p in contexts
        }
        await self._load_accounts(codes)
        gone = set(self.peers) - {p.name for p in contexts}
        self.set_peers(contexts)
        for name in gone:
            self.ccp.link_down(name)

    async def _load_accounts(self, codes: Iterable[str]) -> None:
        missing = [c for c in codes if not self.book.is_loaded(c)]
        if not missing:
            return
        results = await asyncio.gather(
            *(self.book.load_account(c) for c in missing), return_exceptions=True
        )
        for code, result in zip(missing, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("switch: cannot load ledger account %s: %s", code, result)

    async def start(self) -> None:
        """Load peers once and start housekeeping; every entry point calls it lazily."""
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            try:
                await self.load_peers()
            except Exception:
                log.exception("switch: loading peers failed; housekeeping will retry")
            self._started = True
            if self._housekeeping:
                self._housekeeping_task = asyncio.get_running_loop().create_task(
                    self._run_housekeeping(), name="switch-housekeeping"
                )
                # Routes and peer caches shared with the node's other processes (Redis).
                from links import shared

                await shared.start(self.ccp)

    async def _run_housekeeping(self) -> None:
        """Every broadcast interval: reload peers (changes made by other processes), drop
        CCP routes past their hold-down, purge the recent-Fulfill cache."""
        while True:
            await asyncio.sleep(self.broadcast_interval_s)
            try:
                await self.load_peers()
            except Exception:
                log.exception("switch: reloading peers failed")
            try:
                self.ccp.expire_routes()
                self._purge_recent(self.clock())
            except Exception:
                log.exception("switch: housekeeping failed")

    def link_up(self, source: PeerContext) -> None:
        """A transport has a live link to ``source`` (called by the transports)."""
        if self.peers.get(source.name) != source:
            self.set_peers([*(p for n, p in self.peers.items() if n != source.name), source])
        self._spawn(self._link_up(source))

    async def _link_up(self, source: PeerContext) -> None:
        await self.start()
        await self._load_accounts([source.account_code])
        self.ccp.link_up(source)

    def link_down(self, peer_name: str) -> None:
        """The last link to ``peer_name`` went away (called by the transports)."""
        self.ccp.link_down(peer_name)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (sync caller): nothing to run it on
            coro.close()
            return
        task: asyncio.Task[None] = loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def close(self) -> None:
        self.ccp.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._housekeeping_task is not None:
            self._housekeeping_task.cancel()
        for task in list(self._background):
            task.cancel()

    # --- local destinations -------------------------------------------------------------

    def register_local(self, segment: str, handler: LocalHandler) -> None:
        """Serve ``<node>.<segment>.…`` in this process with ``handler``.

        Dispatched like the local receivers: after the F08 check and the duplicate-packet
        check, the switch takes a debit hold of ``prepare.amount`` on the source's account
        under ``packet_key`` (T04 if that exceeds its limit), then awaits
        ``handler(source, prepare, packet_key, now)``. The handler must commit whatever it
        books (the source posting under ``packet_key``, which releases the hold) before it
        returns a Fulfill; on anything else the switch releases the hold. A handler that
        raises gives T00. ``segment`` is one address segment; registering it again
        replaces the handler; ``receivers`` is the built-in PSK2 receiver and cannot be
        taken. A local segment hides a child peer of the same name.
        """
        if not segment or not _SEGMENT_RE.fullmatch(segment):
            raise ValueError(f"not an ILP address segment: {segment!r}")
        if self._receivers_dot == f"{self._node_dot}{segment}.":
            raise ValueError(f"{segment!r} is the local receivers' segment")
        self._locals[segment] = handler

    def unregister_local(self, segment: str) -> None:
        """Stop serving ``<node>.<segment>.…`` here (unknown segments are ignored)."""
        self._locals.pop(segment, None)

    def is_local(self, destination: str) -> bool:
        """Whether this node itself answers Prepares to ``destination`` (a receiver or a
        registered local handler), rather than forwarding them (echo forwards)."""
        return destination.startswith(self._receivers_dot) or (
            bool(self._locals) and self._local_handler(destination) is not None
        )

    def _local_handler(self, destination: str) -> LocalHandler | None:
        if not destination.startswith(self._node_dot):
            return None
        segment, dot, _rest = destination[len(self._node_dot) :].partition(".")
        return self._locals.get(segment) if dot else None

    # --- the entry point ----------------------------------------------------------------

    async def handle_prepare(self, source: PeerContext, prepare: Prepare) -> Reply:
        """The Fulfill or Reject for ``prepare`` received from ``source``. Never raises
        (except ``CancelledError`` when the caller is cancelled)."""
        stats = self.stats
        counters = stats.peers.get(source.name) or stats.peer(source.name)
        counters.packets_in += 1
        stats.tick()
        try:
            if not self._started:
                await self.start()
            if prepare.destination.startswith(peer_protocols.PEER_PREFIX):
                reply = await self._peer_protocol(source, prepare)
            else:
                reply = await self._money(source, prepare)
        except RejectError as exc:
            reply = exc.to_reject(self.address)
        except Exception:
            log.exception("switch: internal error on a packet from %s", source.name)
            reply = Reject("T00", self.address, "internal error.")
        if type(reply) is Fulfill:
            counters.fulfilled += 1
        else:
            counters.rejected += 1
        return reply

    # --- peer protocols -------------------------------------------------------------------

    async def _peer_protocol(self, source: PeerContext, prepare: Prepare) -> Reply:
        refused = peer_protocols.check_peer_prepare(self.address, prepare)
        if refused is not None:
            return refused
        destination = prepare.destination
        if destination == ILDCP_DESTINATION:
            return peer_protocols.ildcp_reply(self.address, source, prepare, self.clock())
        if destination == BALANCE_DESTINATION:
            code = source.account_code
            try:
                balance = self.book.balance(code)
            except AccountNotLoaded:
                await self.book.load_account(code)
                balance = self.book.balance(code)
            return peer_protocols.balance_reply(self.address, balance)
        if destination in (CCP_CONTROL_DESTINATION, CCP_UPDATE_DESTINATION) or (
            destination.startswith(peer_protocols.ROUTE_PREFIX)
        ):
            return self.ccp.handle(source, prepare)
        return peer_protocols.unknown_protocol(self.address)

    # --- packets that carry value ----------------------------------------------------------

    async def _money(self, source: PeerContext, prepare: Prepare) -> Reply:
        if prepare.amount > source.max_packet_amount:
            raise RejectError(
                "F08",
                f"packet size too large. maxAmount={source.max_packet_amount} "
                f"actualAmount={prepare.amount}",
                amount_too_large_data(prepare.amount, source.max_packet_amount),
            )
        key = packet_key(source.name, prepare)
        cached = self._recent.get(key)
        if cached is not None:
            return Fulfill(*cached)
        inflight = self._inflight
        if key in inflight:
            waiting = inflight[key]
            if waiting is None:
                waiting = inflight[key] = asyncio.get_running_loop().create_future()
            return await asyncio.shield(waiting)
        inflight[key] = None
        reply: Reply | None = None
        try:
            destination = prepare.destination
            if destination == self.address:
                reply = await self._echo(source, prepare, key)
            elif destination.startswith(self._receivers_dot):
                reply = await self._receive(source, prepare, key)
            elif self._locals and (handler := self._local_handler(destination)) is not None:
                reply = await self._receive(source, prepare, key, handler)
            else:
                reply = await self._forward(source, prepare, key)
        except RejectError as exc:
            reply = exc.to_reject(self.address)
        finally:
            waiting = inflight.pop(key)
            if reply is None:  # cancelled or crashed: tell any waiting copy something final
                reply = Reject("T00", self.address, "packet processing was interrupted.")
            if waiting is not None:
                waiting.set_result(reply)
        if type(reply) is Fulfill:
            self._remember(key, reply, prepare.expires_at)
        return reply

    def _remember(self, key: str, fulfill: Fulfill, expires_at: datetime) -> None:
        """Keep ``fulfill`` for retransmissions until ``expires_at``; at most
        :data:`RECENT_FULFILLS_MAX` entries (when full, the one closest to its expiry goes:
        it is the least likely to be asked for again)."""
        self._recent[key] = (fulfill.fulfillment, fulfill.data)
        heap = self._recent_expiry
        # A packet key covers the expiry, so one key never has two expiries in the heap.
        heapq.heappush(heap, (expires_at.timestamp(), key))
        if len(heap) > RECENT_FULFILLS_MAX:
            self._recent.pop(heapq.heappop(heap)[1], None)
        self._remembered += 1
        if not self._remembered % RECENT_PURGE_EVERY:
            # Drop what expired every so often, not only at housekeeping: the cache then
            # holds about one Prepare lifetime of Fulfills, whatever the packet rate.
            self._purge_recent(self.clock())

    def _purge_recent(self, now: datetime) -> None:
        heap = self._recent_expiry
        recent = self._recent
        limit = now.timestamp()
        while heap and heap[0][0] <= limit:
            recent.pop(heapq.heappop(heap)[1], None)

    async def _receive(
        self, source: PeerContext, prepare: Prepare, key: str, handler: LocalHandler | None = None
    ) -> Reply:
        """A Prepare for one of our receivers (or a registered local ``handler``): hold,
        then let the receiver decide."""
        amount = prepare.amount
        if amount:
            hold_many = self._hold_many
            if hold_many is not None:
                # _hold's shared-credit branch, inline (every received packet).
                try:
                    await hold_many(
                        (HoldDraft(source.account_code, amount, key),),
                        expires_at=prepare.expires_at,
                    )
                except BalanceLimitExceeded:
                    raise RejectError("T04", "exceeded maximum balance.") from None
            else:
                await self._hold(source.account_code, amount, key, "exceeded maximum balance.")
        reply: Reply | None = None
        try:
            if handler is None:
                reply = await self.receiver(
                    prepare, source_account=source.account_code, packet_key=key, now=self.clock()
                )
            else:
                reply = await handler(source, prepare, key, self.clock())
        except Exception:
            log.exception("switch: the local receiver failed on %s", prepare.destination)
            reply = Reject("T00", self.address, "internal error.")
        finally:
            # The receiver commits (and so releases) the hold before it returns a Fulfill.
            if amount and type(reply) is not Fulfill:
                self.book.release(key)
            metrics.packet_local(reply)
        return reply

    async def _forward(self, source: PeerContext, prepare: Prepare, key: str) -> Reply:
        now = self.clock()
        if prepare.expires_at <= now:
            raise RejectError(
                "R02",
                f"source transfer has already expired. sourceExpiry={_iso(prepare.expires_at)} "
                f"currentTime={_iso(now)}",
            )
        destination = prepare.destination
        route = self.routing.lookup(destination)
        if route is None or route.next_hop == LOCAL_HOP:
            raise RejectError(
                "F02", f"no route found. source={source.name} destination={destination}"
            )
        hop = route.next_hop
        if hop == source.name:
            raise RejectError(
                "F02",
                "refusing to route payments back to sender. "
                f"sourceAccount={source.name} destinationAccount={hop}",
            )
        target, link = self._next_hop(hop)
        out_amount, fee = self._convert(source, target, prepare.amount, self.fee_ppm)
        out_expiry = min(prepare.expires_at - self.window, now + self.max_hold)
        if out_expiry - now < self.window:
            raise RejectError(
                "R02",
                "source transfer expires too soon to complete payment. "
                f"actualSourceExpiry={_iso(prepare.expires_at)} "
                f"requiredSourceExpiry={_iso(now + 2 * self.window)} currentTime={_iso(now)}",
            )
        out = Prepare(
            out_amount, out_expiry, prepare.execution_condition, destination, prepare.data
        )
        return await self._send(source, prepare, key, target, link, out, fee)

    async def _echo(self, source: PeerContext, prepare: Prepare, key: str) -> Reply:
        now = self.clock()
        request = parse_echo_request(prepare.data)
        source_address = request.source_address
        route = self.routing.lookup(source_address)
        if route is None or route.next_hop == LOCAL_HOP:
            raise RejectError("F02", f"no route found. to={source_address}")
        target, link = self._next_hop(route.next_hop)
        # Echo bypasses fees (21.3.0); only a scale change converts the amount.
        out_amount, fee = self._convert(source, target, prepare.amount, 0)
        out = echo_prepare(prepare, request, amount=out_amount, window=self.window, now=now)
        return await self._send(source, prepare, key, target, link, out, fee)

    def _next_hop(self, hop: str) -> tuple[PeerContext, OutgoingLink]:
        target = self.peers.get(hop)
        if target is None:
            receiver = self.ccp.receivers.get(hop)
            target = receiver.peer if receiver is not None else None
        link = self.links(hop) if target is not None else None
        if target is None or link is None:
            raise RejectError("T01", f"no connection to account. account={hop}")
        return target, link

    def _convert(
        self, source: PeerContext, target: PeerContext, amount: int, fee_ppm: int
    ) -> tuple[int, int]:
        if source.asset_code != target.asset_code:
            raise RejectError(
                "F02",
                f"no exchange rate. sourceAsset={source.asset_code} "
                f"destinationAsset={target.asset_code}",
            )
        out, fee = convert_amount(amount, source.asset_scale, target.asset_scale, fee_ppm)
        if out == 0 and amount > 0:
            raise RejectError(
                "R01",
                f"insufficient source amount. sourceAmount={amount} destinationAmount=0",
            )
        if out > UINT64_MAX:
            # Only scaling up overflows; the largest amount that still fits, in source units.
            maximum = UINT64_MAX // 10 ** (target.asset_scale - source.asset_scale)
            raise RejectError(
                "F08",
                f"packet size too large. maxAmount={maximum} actualAmount={amount}",
                amount_too_large_data(amount, maximum),
            )
        return out, fee

    async def _hold(
        self,
        code: str,
        amount: int,
        key: str,
        message: str,
        *,
        credit: bool = False,
        expires_at: datetime | None = None,
    ) -> None:
        if self._hold_many is not None:
            # One hold: _hold_together's work without its coroutine and lists (per packet).
            try:
                await self._hold_many(
                    (HoldDraft(code, amount, key, credit),), expires_at=expires_at
                )
            except BalanceLimitExceeded:
                raise RejectError("T04", message) from None
            return
        hold = self.book.hold_credit if credit else self.book.hold
        try:
            try:
                hold(code, amount, key)
            except AccountNotLoaded:
                await self.book.load_account(code)
                hold(code, amount, key)
        except BalanceLimitExceeded:
            raise RejectError("T04", message) from None

    async def _hold_together(
        self, holds: list[tuple[HoldDraft, str]], expires_at: datetime | None
    ) -> None:
        """Shared credit: all of ``holds`` or none, in one step for every process; T04 with
        the message of the hold whose account has no room."""
        assert self._hold_many is not None
        try:
            await self._hold_many([h for h, _ in holds], expires_at=expires_at)
        except BalanceLimitExceeded as exc:
            account = exc.details.get("account")
            message = next((m for h, m in holds if h.account_code == account), holds[0][1])
            raise RejectError("T04", message) from None

    async def _send(
        self,
        source: PeerContext,
        prepare: Prepare,
        key: str,
        target: PeerContext,
        link: OutgoingLink,
        out: Prepare,
        fee: int,
    ) -> Reply:
        """Hold both sides, send ``out`` to ``target``, settle on the outcome."""
        in_key, out_key = f"{key}:in", f"{key}:out"
        in_amount, out_amount = prepare.amount, out.amount
        book = self.book
        settled = False
        held_in = held_out = False
        sent = False
        try:
            if self._hold_many is not None and in_amount and out_amount:
                await self._hold_together(
                    [
                        (
                            HoldDraft(source.account_code, in_amount, in_key),
                            "exceeded maximum balance.",
                        ),
                        (
                            HoldDraft(target.account_code, out_amount, out_key, credit=True),
                            f"insufficient liquidity. account={target.name}",
                        ),
                    ],
                    out.expires_at,
                )
                held_in = held_out = True
                in_amount_left = out_amount_left = 0
            else:
                in_amount_left, out_amount_left = in_amount, out_amount
            if in_amount_left:
                await self._hold(
                    source.account_code,
                    in_amount,
                    in_key,
                    "exceeded maximum balance.",
                    expires_at=out.expires_at,
                )
                held_in = True
            if out_amount_left:
                await self._hold(
                    target.account_code,
                    out_amount,
                    out_key,
                    f"insufficient liquidity. account={target.name}",
                    credit=True,
                    expires_at=out.expires_at,
                )
                held_out = True
            self.stats.peer(target.name).packets_out += 1
            sent = True
            reply = await self._call(link, out)
            if type(reply) is Reject:
                return reply
            if type(reply) is not Fulfill:
                log.warning("switch: %s answered with %r", target.name, type(reply).__name__)
                return Reject("T00", self.address, "invalid reply from the next hop.")
            if not fulfillment_matches(reply.fulfillment, out.execution_condition):
                log.warning("switch: wrong fulfillment from %s", target.name)
                return Reject("F05", self.address, "fulfillment did not match expected value.")
            if in_amount or out_amount:
                # From an HTTP-OER-ASYNC peer, the proof of payment goes with the money: a
                # request cut by a restart before its reply was stored is answered with
                # this Fulfill (links.http_oer), the posting being committed atomically.
                memo = (
                    FULFILLMENT_MEMO + reply.fulfillment.hex()
                    if source.link == LinkKind.HTTP_ASYNC
                    else ""
                )
                postings = [
                    PostingDraft(source.account_code, -in_amount, in_key, memo),
                    PostingDraft(target.account_code, out_amount, out_key),
                ]
                if fee:
                    account = fee_account_for(
                        source.asset_code, source.asset_scale, self.asset_code, self.asset_scale
                    )
                    postings.append(PostingDraft(account, fee, f"{key}:fee"))
                try:
                    await book.commit(postings)
                except Exception:
                    log.exception(
                        "switch: commit failed for fulfilled packet %s (%s -> %s, in=%d out=%d)",
                        key,
                        source.name,
                        target.name,
                        in_amount,
                        out_amount,
                    )
                    return Reject("T00", self.address, "could not record the payment.")
            settled = True
            return reply
        finally:
            if not settled:
                if held_in:
                    book.release(in_key)
                if held_out:
                    book.release(out_key)
            if sent:
                metrics.packet_forwarded(target, out_amount, settled)

    async def _call(self, link: OutgoingLink, out: Prepare) -> Reply:
        """``link.send_prepare(out)``, bounded by ``out``'s expiry; failures as Rejects.

        Links answer R00 themselves when a Prepare expires (``OutgoingLink`` contract);
        the expiry sweeper is the safety net for one that does not. It costs a dict entry
        per packet instead of a timer per packet (``asyncio.timeout`` is ~10x dearer).
        """
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        self._deadlines[task] = loop.time() + (out.expires_at - self.clock()).total_seconds()
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep_expired(), name="switch-expiry")
        try:
            return await link.send_prepare(out)
        except asyncio.CancelledError:
            if task in self._timed_out:
                self._timed_out.discard(task)
                task.uncancel()
                return Reject("R00", self.address, "packet expired.")
            raise
        except DecodeError as exc:
            return Reject("T00", self.address, f"invalid reply from the next hop: {exc.reason}")
        except Exception as exc:
            log.info("switch: sending to the next hop failed: %r", exc)
            return Reject("T01", self.address, f"failed to send packet: {str(exc)[:200]}")
        finally:
            del self._deadlines[task]
            if task in self._timed_out:  # the link swallowed our cancellation
                self._timed_out.discard(task)
                task.uncancel()

    async def _sweep_expired(self) -> None:
        """Cancel sends still waiting past their Prepare's expiry (they answer R00).

        Runs while sends are in flight, every :data:`SWEEP_INTERVAL_S`.
        """
        loop = asyncio.get_running_loop()
        try:
            while self._deadlines:
                await asyncio.sleep(SWEEP_INTERVAL_S)
                now = loop.time()
                for task, deadline in list(self._deadlines.items()):
                    if deadline <= now and task not in self._timed_out:
                        self._timed_out.add(task)
                        task.cancel()
        finally:
            self._sweeper = None

    # --- views for the admin page and the dashboard ------------------------------------

    def dashboard(self) -> dict[str, Any]:
        snapshot = self.stats.snapshot()
        snapshot["node_address"] = self.address
        snapshot["routes"] = len(self.routing)
        snapshot["ccp"] = self.ccp.status()
        return snapshot


# --- the process-wide instance ------------------------------------------------------------------


async def _load_enabled_peers() -> list[PeerContext]:
    from channels.db import database_sync_to_async

    contexts: list[PeerContext] = await database_sync_to_async(_enabled_peer_contexts)()
    return contexts


def _enabled_peer_contexts() -> list[PeerContext]:
    """Every enabled peer, and the fee accounts their assets need (sync, off the loop)."""
    from django.conf import settings

    from links.models import Peer
    from links.peers import context_from_peer
    from payments.ledger import ensure_account

    contexts = [context_from_peer(p) for p in Peer.objects.filter(enabled=True)]
    node = (settings.ILP_ASSET_CODE, settings.ILP_ASSET_SCALE)
    for code, scale in {node} | {(c.asset_code, c.asset_scale) for c in contexts}:
        try:
            ensure_account(
                fee_account_for(code, scale, *node),
                kind="node",
                asset_code=code,
                asset_scale=scale,
            )
        except Exception:
            log.exception("switch: cannot create the fee account for %s/%s", code, scale)
    return contexts


def build_switch(links: Callable[[str], Any] | None = None) -> PacketSwitch:
    """A switch from the settings (the runtime builds one: ``interledger_site.runtime``).

    ``links`` finds a peer's link (the runtime's registry); default: the current one's.
    """
    from django.conf import settings

    from links import registry
    from payments.ledger import get_book
    from receivers.psk2_receiver import receive_prepare

    switch = PacketSwitch(
        node_address=settings.ILP_ADDRESS,
        asset_code=settings.ILP_ASSET_CODE,
        asset_scale=settings.ILP_ASSET_SCALE,
        book=get_book(),
        links=links or registry.get,
        receiver=receive_prepare,
        peer_loader=_load_enabled_peers,
        fee_ppm=settings.ILP_FEE_PPM,
        min_message_window_ms=settings.ILP_MIN_MESSAGE_WINDOW_MS,
        max_hold_time_ms=settings.ILP_MAX_HOLD_TIME_MS,
        route_broadcast_interval_s=settings.ILP_ROUTE_BROADCAST_INTERVAL_S,
        housekeeping=True,
    )
    # Local destinations other parts own (circular payments come back through here).
    from links.sender_link import register_local_destinations

    register_local_destinations(switch)
    return switch


def get_switch() -> PacketSwitch:
    """The current runtime's switch (built by the runtime, on its first use)."""
    from payments.node import runtime

    switch: PacketSwitch = runtime().switch
    return switch


def peek_switch() -> PacketSwitch | None:
    """The current runtime's switch if it was built (views must not build one)."""
    from payments.node import runtime

    switch: PacketSwitch | None = runtime().peek_switch()
    return switch


def reset_switch() -> None:
    """Close and forget the current runtime's switch (tests; the next use builds anew)."""
    from payments.node import runtime

    runtime().reset_switch()


def dashboard_stats() -> dict[str, Any]:
    """Counters for the dashboard: packets in/out per peer, outcomes, packets/s."""
    switch = peek_switch()
    if switch is None:
        return {
            "packets_per_second": 0.0,
            "packets_in": 0,
            "fulfilled": 0,
            "rejected": 0,
            "peers": {},
        }
    return switch.dashboard()
