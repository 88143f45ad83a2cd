"""CCP route broadcasting as ilp-connector 21.3.0 does it (``shared/spec/ccp.md``).

Three parts, all in memory and on the event loop:

* :class:`ForwardingTable` — the routes we *advertise* and their epoch log (ccp.md §6.3).
  It follows the :class:`~links.routing.RoutingTable`: whenever a best route changes,
  the advertised view is recomputed and every changed prefix is appended to the log
  (one epoch per change). Not advertised: prefixes outside our global prefix (the
  scheme of our address, ``g``/``test``), the default route, our children (our own
  address covers them), and routes DRAGON-filtered by a less specific route whose next
  hop is at least as good. ``<node>`` and ``<node>.receivers`` are advertised.
* :class:`CcpSender` per peer — after the peer's ``peer.route.control`` (SYNC) it sends
  ``peer.route.update`` batches of at most 50 epochs from the log, 150 ms after a change
  and as a heartbeat every broadcast interval otherwise (ccp.md §5.2). The epoch is
  advanced optimistically and restored if the send fails (no link / exception / no
  answer within the interval); like 21.3.0 a Reject counts as delivered.
* :class:`CcpReceiver` per peer — applies the peer's updates to the routing table
  (ccp.md §5.3) with the recommended fixes over 21.3.0: a gap re-sends our route control
  so the speaker rewinds, a routing table id change drops that peer's old routes, routes
  expire after the hold-down time, and routes looping through us (our address in the
  path) or claiming our own address space are ignored. At most ``limits.max_routes``
  prefixes are held from one peer: further new ones are ignored (logged once per
  receiver) and the update is still answered with a Fulfill, so the session goes on.

Relation rules (ccp.md §4): a control is served only if ``send_routes`` is set for the
peer and an update applied only if ``receive_routes`` is; otherwise the 21.3.0 F00
texts. Children speak CCP too when their flags say so — the node's default for children
is ``send_routes`` on, so a JS connector attached as our child learns our routes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from ilp.ccp import (
    CCP_CONTROL_DESTINATION,
    CCP_UPDATE_DESTINATION,
    Mode,
    Route,
    RouteControlRequest,
    RouteUpdateRequest,
    decode_route_control_request,
    decode_route_update_request,
    encode_route_control_request,
    encode_route_update_request,
)
from ilp.conditions import PEER_CONDITION, PEER_FULFILLMENT
from ilp.errors import DecodeError, EncodeError
from ilp.packet import Fulfill, Prepare, Reject, Reply
from links.peers import PeerContext
from links.registry import OutgoingLink
from links.routing import (
    DEFAULT_PREFIX,
    LOCAL_HOP,
    RELATION_PRIORITY,
    RouteEntry,
    RouteOrigin,
    RoutingTable,
)

log = logging.getLogger(__name__)

MAX_EPOCHS_PER_UPDATE = 50  # ccp.md §7, hard-coded in 21.3.0
MIN_UPDATE_SPACING_S = 0.15  # ccp.md §5.2
CONTROL_RETRY_S = 30.0  # ccp.md §5.3: a rejected route control is retried after 30 s
REQUEST_EXPIRY = timedelta(seconds=60)  # ilp-protocol-ccp's expiry for both requests
DEFAULT_HOLD_DOWN_MS = 45_000  # 21.3.0's routeExpiry, sent as holdDownTime
NO_TABLE = bytes(16)

LinkGetter = Callable[[str], OutgoingLink | None]
Clock = Callable[[], datetime]


class RouteSharer(Protocol):
    """Where the routes this process learns are published for the node's other processes
    (:class:`links.shared.SharedRoutes`). Both calls are cheap and never block: the
    sharer reads :meth:`RoutingTable.learned_from` later, on its own task."""

    def changed(self, peer: str, hold_down_ms: int) -> None:
        """The routes learned from ``peer`` changed (or are gone); valid ``hold_down_ms``."""
        ...

    def touched(self, peer: str, hold_down_ms: int) -> None:
        """A heartbeat from ``peer``: its routes stay valid another ``hold_down_ms``."""
        ...


# --- the advertised table ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One epoch: ``prefix`` became advertised as ``route``, or withdrawn (``None``)."""

    epoch: int
    prefix: str
    route: RouteEntry | None


def _ancestors(prefix: str) -> list[str]:
    """The less specific prefixes of ``prefix`` at segment boundaries, longest first."""
    out = []
    end = prefix.rfind(".")
    while end > 0:
        out.append(prefix[:end])
        end = prefix.rfind(".", 0, end)
    return out


class ForwardingTable:
    """The routes we advertise, with the append-only epoch log CCP updates are cut from."""

    def __init__(self, node_address: str, routing: RoutingTable) -> None:
        self.node_address = node_address
        self.global_prefix = node_address.partition(".")[0]
        self.routing = routing
        self.advertised: dict[str, RouteEntry] = {}
        self.log: list[LogEntry] = []

    @property
    def current_epoch(self) -> int:
        return len(self.log)

    def _advertisable(self, route: RouteEntry) -> bool:
        prefix = route.prefix
        if prefix == DEFAULT_PREFIX or not prefix.startswith(self.global_prefix + "."):
            return False
        # Our children are covered by our own address (21.3.0: "path length 1" rule).
        return not (route.next_hop != LOCAL_HOP and prefix.startswith(self.node_address + "."))

    def refresh(self) -> bool:
        """Recompute the advertised view from the routing table; log what changed.

        Returns whether the log grew. Runs off the hot path (peer reloads, CCP updates);
        tables are small, so a full recomputation keeps DRAGON re-checks trivially right.
        """
        new: dict[str, RouteEntry] = {}
        for route in sorted(self.routing.entries(), key=lambda r: len(r.prefix)):
            if not self._advertisable(route):
                continue
            rank = RELATION_PRIORITY.get(route.relation, 0)
            dragon = any(
                (up := new.get(a)) is not None
                and up.next_hop != LOCAL_HOP
                and RELATION_PRIORITY.get(up.relation, 0) >= rank
                for a in _ancestors(route.prefix)
            )
            if not dragon:
                new[route.prefix] = route
        grew = False
        for prefix in sorted(set(self.advertised) | set(new)):
            old, cur = self.advertised.get(prefix), new.get(prefix)
            if old is None and cur is None:
                continue
            if (
                old is not None
                and cur is not None
                and (old.next_hop, old.path, old.auth) == (cur.next_hop, cur.path, cur.auth)
            ):
                continue
            self.log.append(LogEntry(len(self.log), prefix, cur))
            grew = True
        self.advertised = new
        return grew


# --- per-peer state ------------------------------------------------------------------------


@dataclass(slots=True)
class CcpSender:
    """Our routes flowing to ``peer`` (ccp.md §5.2)."""

    peer: PeerContext
    mode: Mode = Mode.IDLE
    last_known_epoch: int = 0
    last_update: float = 0.0  # loop time of the last update sent
    retry_at: float = 0.0  # loop time before which a failed send is not retried
    task: asyncio.Task[None] | None = None
    wake: asyncio.Event | None = None
    updates_sent: int = 0


@dataclass(slots=True)
class CcpReceiver:
    """The peer's routes flowing to us (ccp.md §5.3)."""

    peer: PeerContext
    routing_table_id: bytes = NO_TABLE
    epoch: int = 0
    expires_at: float = 0.0  # time.monotonic() when the peer's routes lapse; 0 = never set
    control_task: asyncio.Task[None] | None = None
    updates_applied: int = 0
    # Prefixes held from this peer, for its max_routes cap (a set: O(1) per route).
    prefixes: set[str] = field(default_factory=set)
    routes_ignored: int = 0


# --- the service ---------------------------------------------------------------------------


class CcpService:
    """CCP for one node: handles incoming control/update requests and runs the senders.

    ``links`` finds a peer's live link (``links.registry.get`` by default); ``clock``
    gives the wall-clock time used for request expiries. Sending needs a running event
    loop; without one (sync tests, management commands) the sender and receiver state
    is kept but nothing is sent.
    """

    def __init__(
        self,
        node_address: str,
        routing: RoutingTable,
        *,
        links: LinkGetter,
        clock: Clock,
        routing_table_id: bytes,
        routing_secret: bytes,
        broadcast_interval_s: float = 30.0,
        hold_down_ms: int = DEFAULT_HOLD_DOWN_MS,
        control_retry_s: float = CONTROL_RETRY_S,
    ) -> None:
        if len(routing_table_id) != 16:
            raise ValueError("routing_table_id must be 16 bytes")
        self.node_address = node_address
        self.routing = routing
        self.forwarding = ForwardingTable(node_address, routing)
        self.links = links
        self.clock = clock
        self.routing_table_id = routing_table_id
        self.routing_secret = routing_secret
        self.broadcast_interval_s = broadcast_interval_s
        self.hold_down_ms = hold_down_ms
        self.control_retry_s = control_retry_s
        self.senders: dict[str, CcpSender] = {}
        self.receivers: dict[str, CcpReceiver] = {}
        # Set by links.shared when routes are shared between processes (Redis).
        self.sharer: RouteSharer | None = None
        self._closed = False
        routing.subscribe(self._on_routes_changed)
        self.forwarding.refresh()

    # --- incoming requests (called by the switch, condition already checked) -----------

    def handle(self, source: PeerContext, prepare: Prepare) -> Reply:
        """Answer a ``peer.route.*`` Prepare (ccp.md §4)."""
        destination = prepare.destination
        if destination == CCP_CONTROL_DESTINATION:
            return self.handle_control(source, prepare)
        if destination == CCP_UPDATE_DESTINATION:
            return self.handle_update(source, prepare)
        return self._reject("F00", f"unrecognized ccp message. destination={destination}")

    def handle_control(self, source: PeerContext, prepare: Prepare) -> Reply:
        if not (source.send_routes or source.receive_routes):
            return self._reject("F00", "cannot process route control messages from non-peers.")
        if not source.send_routes:
            return self._reject(
                "F00",
                "rejecting route control message, we are configured not to send routes to you.",
            )
        if self.clock() > prepare.expires_at:
            return self._reject("F00", "CCP route control request packet is expired.")
        try:
            request = decode_route_control_request(prepare.data)
        except DecodeError as exc:
            return self._reject("F01", f"invalid route control request: {exc}")
        sender = self.senders.get(source.name)
        if sender is None:
            sender = self.senders[source.name] = CcpSender(source)
        sender.peer = source
        if request.last_known_routing_table_id != self.routing_table_id:
            sender.last_known_epoch = 0  # a table we never gave them: full resync
        else:
            sender.last_known_epoch = min(request.last_known_epoch, self.forwarding.current_epoch)
        sender.mode = request.mode
        sender.retry_at = 0.0
        log.info(
            "ccp: %s asks for routes (mode %s, from epoch %d)",
            source.name,
            request.mode.name,
            sender.last_known_epoch,
        )
        if request.mode is Mode.SYNC:
            self._start_sender(sender)
        else:
            self._stop_sender(sender)
        return Fulfill(PEER_FULFILLMENT)

    def handle_update(self, source: PeerContext, prepare: Prepare) -> Reply:
        if not (source.send_routes or source.receive_routes):
            return self._reject("F00", "cannot process route update messages from non-peers.")
        if not source.receive_routes:
            return self._reject(
                "F00", "rejecting route update, we are configured not to receive routes from you."
            )
        if self.clock() > prepare.expires_at:
            return self._reject("F00", "CCP route update request packet is expired.")
        try:
            update = decode_route_update_request(prepare.data)
        except DecodeError as exc:
            return self._reject("F01", f"invalid route update request: {exc}")
        self.apply_update(source, update)
        return Fulfill(PEER_FULFILLMENT)

    def apply_update(self, source: PeerContext, update: RouteUpdateRequest) -> None:
        """ccp.md §5.3, with the recommended fixes (module docstring)."""
        receiver = self.receivers.get(source.name)
        if receiver is None:
            receiver = self.receivers[source.name] = CcpReceiver(source)
        receiver.peer = source
        receiver.expires_at = max(
            receiver.expires_at, time.monotonic() + update.hold_down_time / 1000
        )
        hold_down_ms = update.hold_down_time
        if update.routing_table_id != receiver.routing_table_id:
            if receiver.routing_table_id != NO_TABLE:
                log.info("ccp: %s has a new routing table; dropping its old routes", source.name)
                self.routing.drop_learned(source.name)
                receiver.prefixes.clear()
                self._shared_change(source.name, hold_down_ms)
            elif self.sharer is not None:
                # The session starts here: routes adopted from the process that held it
                # before are replaced by what this peer now tells us.
                self.routing.drop_learned(source.name)
            receiver.routing_table_id = update.routing_table_id
            receiver.epoch = 0
        if update.from_epoch_index > receiver.epoch:
            log.info(
                "ccp: gap from %s (have epoch %d, update starts at %d); asking to rewind",
                source.name,
                receiver.epoch,
                update.from_epoch_index,
            )
            self._request_routes(receiver, delay=0.0)
            return
        if update.to_epoch_index < receiver.epoch:
            return  # stale
        if update.is_heartbeat:
            if self.sharer is not None:
                self.sharer.touched(source.name, hold_down_ms)
        else:
            held = receiver.prefixes
            held.difference_update(update.withdrawn_routes)
            cap = source.limits.max_routes
            add: list[RouteEntry] = []
            ignored = 0
            for route in update.new_routes:
                if not self._importable(route):
                    continue
                if route.prefix not in held:
                    if len(held) >= cap:
                        ignored += 1
                        continue
                    held.add(route.prefix)
                add.append(
                    RouteEntry(
                        route.prefix,
                        source.name,
                        RouteOrigin.CCP,
                        source.relation,
                        path=route.path,
                        auth=route.auth,
                        epoch=update.to_epoch_index,
                    )
                )
            if ignored:
                if not receiver.routes_ignored:
                    log.warning(
                        "ccp: %s advertises more than its %d routes (max_routes); ignoring "
                        "the new ones beyond (logged once)",
                        source.name,
                        cap,
                    )
                receiver.routes_ignored += ignored
            self.routing.update_learned(source.name, add=add, withdraw=update.withdrawn_routes)
            receiver.updates_applied += 1
            self._shared_change(source.name, hold_down_ms)
        receiver.epoch = update.to_epoch_index

    def _importable(self, route: Route) -> bool:
        prefix = route.prefix
        node = self.node_address
        return (
            prefix.startswith(self.forwarding.global_prefix + ".")
            and node not in route.path  # loop: it went through us already
            and prefix != node
            and not prefix.startswith(node + ".")  # our own address space is ours
        )

    # --- building updates ---------------------------------------------------------------

    def _auth(self, route: RouteEntry) -> bytes:
        # ccp.md §6.4: the originator's HMAC, hashed once more by every re-advertiser;
        # 21.3.0 hashes its own HMAC too before sending, and so do we.
        base = (
            route.auth
            if route.origin is RouteOrigin.CCP and route.auth
            else hmac.new(self.routing_secret, route.prefix.encode("ascii"), "sha256").digest()
        )
        return hashlib.sha256(base).digest()

    def build_update(self, peer: PeerContext, from_epoch: int) -> RouteUpdateRequest:
        """The update for ``peer`` covering at most 50 epochs from ``from_epoch`` (§5.2, §6.2).

        A prefix that changes several times inside the batch is sent once, in its last
        state, so the receiver's "withdrawals first, then new routes" order cannot undo it.
        """
        entries = self.forwarding.log[from_epoch : from_epoch + MAX_EPOCHS_PER_UPDATE]
        to_epoch = entries[-1].epoch + 1 if entries else from_epoch
        last: dict[str, LogEntry] = {}
        for entry in entries:
            last[entry.prefix] = entry
        new_routes: list[Route] = []
        withdrawn: list[str] = []
        for prefix, entry in last.items():
            route = entry.route
            if (
                route is None
                or route.next_hop == peer.name
                or (peer.relation == "parent" and route.relation in ("peer", "parent"))
            ):
                withdrawn.append(prefix)
            else:
                new_routes.append(
                    Route(prefix, (self.node_address, *route.path), self._auth(route))
                )
        return RouteUpdateRequest(
            routing_table_id=self.routing_table_id,
            current_epoch_index=self.forwarding.current_epoch,
            from_epoch_index=from_epoch,
            to_epoch_index=to_epoch,
            hold_down_time=self.hold_down_ms,
            speaker=self.node_address,
            new_routes=tuple(new_routes),
            withdrawn_routes=tuple(withdrawn),
        )

    def _request(self, destination: str, data: bytes) -> Prepare:
        return Prepare(0, self.clock() + REQUEST_EXPIRY, PEER_CONDITION, destination, data)

    async def send_update(self, peer_name: str) -> bool:
        """Send the next update to ``peer_name`` now. Returns whether it was delivered."""
        sender = self.senders.get(peer_name)
        if sender is None or self._closed:
            return False
        from_epoch = sender.last_known_epoch
        try:
            update = self.build_update(sender.peer, from_epoch)
            prepare = self._request(CCP_UPDATE_DESTINATION, encode_route_update_request(update))
        except (EncodeError, ValueError):
            log.exception("ccp: cannot build the update for %s", peer_name)
            return False
        loop = asyncio.get_running_loop()
        # Optimistic advance (21.3.0): the next update starts where this one ends.
        sender.last_known_epoch = update.to_epoch_index
        sender.last_update = loop.time()
        delivered = False
        link = self.links(peer_name)
        if link is not None:
            try:
                async with asyncio.timeout(self.broadcast_interval_s):
                    reply = await link.send_prepare(prepare)
                # 21.3.0 counts a Reject as delivered too; only T01 means "not sent".
                delivered = not (isinstance(reply, Reject) and reply.code == "T01")
            except Exception as exc:  # any failure just means "retry later"
                log.info("ccp: update to %s failed: %r", peer_name, exc)
        if delivered:
            sender.updates_sent += 1
        else:
            if sender.last_known_epoch == update.to_epoch_index:
                sender.last_known_epoch = from_epoch
            sender.retry_at = loop.time() + self.broadcast_interval_s
        return delivered

    # --- the sender loop ----------------------------------------------------------------

    def _next_delay(self, sender: CcpSender, now: float) -> float:
        if now < sender.retry_at:
            return sender.retry_at - now
        if sender.last_known_epoch < self.forwarding.current_epoch:
            return MIN_UPDATE_SPACING_S
        return max(MIN_UPDATE_SPACING_S, self.broadcast_interval_s - (now - sender.last_update))

    async def _run_sender(self, sender: CcpSender) -> None:
        loop = asyncio.get_running_loop()
        assert sender.wake is not None
        wake = sender.wake
        deadline = loop.time() + self._next_delay(sender, loop.time())
        while sender.mode is Mode.SYNC and not self._closed:
            now = loop.time()
            if now < deadline:
                wake.clear()
                try:
                    async with asyncio.timeout(deadline - now):
                        await wake.wait()
                except TimeoutError:
                    pass
                else:
                    # A route change or a new control: maybe sooner, never later (so a
                    # stream of changes cannot starve the update).
                    now = loop.time()
                    deadline = min(deadline, now + self._next_delay(sender, now))
                    continue
            if sender.mode is not Mode.SYNC or self._closed:
                break
            try:
                await self.send_update(sender.peer.name)
            except Exception:  # the loop must survive anything
                log.exception("ccp: sending to %s failed", sender.peer.name)
            deadline = loop.time() + self._next_delay(sender, loop.time())

    def _start_sender(self, sender: CcpSender) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if sender.wake is None:
            sender.wake = asyncio.Event()
        if sender.task is None or sender.task.done():
            sender.task = loop.create_task(
                self._run_sender(sender), name=f"ccp-sender:{sender.peer.name}"
            )
        else:
            sender.wake.set()

    def _stop_sender(self, sender: CcpSender) -> None:
        if sender.task is not None:
            sender.task.cancel()
            sender.task = None

    def _on_routes_changed(self, prefixes: list[str]) -> None:
        if self.forwarding.refresh():
            for sender in self.senders.values():
                if sender.mode is Mode.SYNC and sender.wake is not None:
                    sender.wake.set()

    # --- route control towards the peer -------------------------------------------------

    def _request_routes(self, receiver: CcpReceiver, *, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if receiver.control_task is not None and not receiver.control_task.done():
            if delay > 0:
                return  # one already pending
            receiver.control_task.cancel()
        receiver.control_task = loop.create_task(
            self._control_loop(receiver, delay), name=f"ccp-control:{receiver.peer.name}"
        )

    async def _control_loop(self, receiver: CcpReceiver, delay: float) -> None:
        """Send ``control(SYNC)`` until the peer accepts it (retry every 30 s, §5.3)."""
        if delay:
            await asyncio.sleep(delay)
        while not self._closed and self.receivers.get(receiver.peer.name) is receiver:
            request = RouteControlRequest(Mode.SYNC, receiver.routing_table_id, receiver.epoch, ())
            prepare = self._request(CCP_CONTROL_DESTINATION, encode_route_control_request(request))
            link = self.links(receiver.peer.name)
            ok = False
            if link is not None:
                try:
                    async with asyncio.timeout(self.broadcast_interval_s):
                        reply = await link.send_prepare(prepare)
                    ok = isinstance(reply, Fulfill)
                    if not ok:
                        log.info(
                            "ccp: %s refused our route control: %s %s",
                            receiver.peer.name,
                            getattr(reply, "code", "?"),
                            getattr(reply, "message", ""),
                        )
                except Exception as exc:  # retried below
                    log.info("ccp: route control to %s failed: %r", receiver.peer.name, exc)
            if ok:
                return
            await asyncio.sleep(self.control_retry_s)

    # --- links going up and down ----------------------------------------------------------

    def link_up(self, peer: PeerContext) -> None:
        """A link to ``peer`` is live: ask for its routes if we take routes from it."""
        sender = self.senders.get(peer.name)
        if sender is not None:
            sender.peer = peer
        if not peer.receive_routes:
            return
        receiver = self.receivers.get(peer.name)
        if receiver is None:
            receiver = self.receivers[peer.name] = CcpReceiver(peer)
        receiver.peer = peer
        self._request_routes(receiver, delay=0.0)

    def link_down(self, peer_name: str) -> None:
        """The last link to ``peer_name`` is gone: stop talking CCP and forget its routes."""
        sender = self.senders.pop(peer_name, None)
        if sender is not None:
            self._stop_sender(sender)
        receiver = self.receivers.pop(peer_name, None)
        if receiver is not None and receiver.control_task is not None:
            receiver.control_task.cancel()
        self.routing.drop_learned(peer_name)
        # Shared: deletes what this process published for the peer, and makes it adopt
        # again what another process (now the link owner) publishes.
        self._shared_change(peer_name, 0)

    def expire_routes(self, now: float | None = None) -> list[str]:
        """Drop the routes of peers silent for longer than their hold-down time.

        Returns the peers whose routes were dropped; each is asked for a full resync.
        """
        now = time.monotonic() if now is None else now
        lapsed = [r for r in self.receivers.values() if r.expires_at and r.expires_at < now]
        for receiver in lapsed:
            log.info("ccp: routes from %s expired (no update within hold-down)", receiver.peer.name)
            self.routing.drop_learned(receiver.peer.name)
            receiver.prefixes.clear()
            self._shared_change(receiver.peer.name, 0)
            receiver.routing_table_id = NO_TABLE
            receiver.epoch = 0
            receiver.expires_at = 0.0
            self._request_routes(receiver, delay=0.0)
        return [r.peer.name for r in lapsed]

    def close(self) -> None:
        self._closed = True
        for sender in self.senders.values():
            self._stop_sender(sender)
        for receiver in self.receivers.values():
            if receiver.control_task is not None:
                receiver.control_task.cancel()

    # --- helpers -----------------------------------------------------------------------------

    def _shared_change(self, peer: str, hold_down_ms: int) -> None:
        if self.sharer is not None:
            self.sharer.changed(peer, hold_down_ms)

    def _reject(self, code: str, message: str) -> Reject:
        return Reject(code, self.node_address, message)

    def status(self) -> dict[str, object]:
        """A summary for the admin page and the dashboard."""
        return {
            "routing_table_id": self.routing_table_id.hex(),
            "current_epoch": self.forwarding.current_epoch,
            "advertised": sorted(self.forwarding.advertised),
            "senders": {
                n: {"mode": s.mode.name, "epoch": s.last_known_epoch, "sent": s.updates_sent}
                for n, s in sorted(self.senders.copy().items())
            },
            "receivers": {
                n: {
                    "table": r.routing_table_id.hex(),
                    "epoch": r.epoch,
                    "applied": r.updates_applied,
                    "routes": len(r.prefixes),
                    "ignored": r.routes_ignored,
                }
                for n, r in sorted(self.receivers.copy().items())
            },
        }
