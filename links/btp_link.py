"""The BTP/2.0 (and BTP/2.0-I) link core, shared by the server consumer and the client.

A :class:`BtpLink` is one WebSocket connection, on either side. The transport (the
Channels consumer or the ``websockets`` client) only moves bytes: it calls
:meth:`BtpLink.receive` / :meth:`BtpLink.receive_text` for each message and
:meth:`BtpLink.connection_lost` once, and gives the link ``send(bytes)`` and
``close(code)`` coroutines.

The protocol rules are the sans-IO session's (``ilp.btp_session``): frames go in, typed
events come out, and this class acts on them:

* ``AuthRequested`` (server): the username is the peer name (an empty username finds
  the peer by its token among BTP-server peers); the token is checked against the
  salted hash (one thread hop per connection, cached); a disabled peer, a peer of
  another link kind or a wrong token is refused (Error F00 ``NotAcceptedError``
  "invalid auth_token", then close).
* ``Authenticated``: cache the :class:`PeerContext`, register as the peer's
  ``OutgoingLink``, ``get_switch().link_up(ctx)``.
* ``IlpRequest``: decode the Prepare and call the switch in a task of its own (so 50 in
  flight run at once); malformed ILP → Reject F01 inside the Response (never a BTP
  Error); a switch crash → Reject T00. ``SideProtocolRequest`` / ``TransferRequest`` go
  to :mod:`links.side_protocols` (no handler: a Message gets an empty Response, a
  Transfer Error F00, never a Response, since nothing credits it).
* Replies to our requests resolve the :class:`Outbox`.

Our requests (:meth:`send_prepare`) use fresh random request ids, wait until the
Prepare's expiry (then a local R00) and fail with T01 when the connection goes away. On
a BTP/2.0-I link the outbox belongs to the peer, not the socket: requests are resent
byte-identical with backoff (1 s doubling to 8 s) and at once after a reconnect, until
answered or expired (btp.md §7.2); with several processes the requests pending when its
connection is lost follow the peer to the process it reconnects to (see "the outbox
follows the peer" below). Replies we give on a BTP/2.0-I link are made durable before
they are sent, and a request another process of the node has seen is replayed from there,
never processed twice (:mod:`links.idempotency`). The outboxes belong to the node
runtime (:class:`PeerOutboxes`).

Nothing here queries the database per packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from channels.db import database_sync_to_async

from ilp.btp import (
    BtpErrorCode,
    BtpMessage,
    BtpResponse,
    BtpTransfer,
    BtpType,
    ProtocolData,
    btp_error,
    encode_btp,
    encode_ilp_frame,
)
from ilp.btp_session import (
    Authenticated,
    AuthRequested,
    BtpClientSession,
    BtpServerSession,
    BtpStateError,
    CloseConnection,
    Event,
    IlpReply,
    IlpRequest,
    ReplyReceived,
    RequestFailed,
    SendFrame,
    SideProtocolRequest,
    State,
    TransferRequest,
    Verdict,
)
from ilp.errors import DecodeError
from ilp.packet import Prepare, Reply, decode_prepare, decode_reply, encode_packet, encode_prepare
from links import activity, edge, idempotency, registry, side_protocols
from links.limits import auth_refusal
from links.peers import MAX_PEER_NAME_LENGTH, PeerContext

log = logging.getLogger(__name__)

SendFn = Callable[[bytes], Awaitable[None]]
CloseFn = Callable[[int], Awaitable[None]]
Role = Literal["server", "client"]

AUTH_TIMEOUT_S = 60.0
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 8.0
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
# links.activity flushes "last packet at" every 5 s: telling it once a second is plenty.
ACTIVITY_NOTE_INTERVAL_S = 1.0
# When a new BTP/2.0-I connection looks for requests handed over by another process.
TAKE_OVER_AGAIN_S = (0.0, 1.0)


# What ``respond_ilp`` is given for "now" on a plain BTP/2.0 link, which keeps no replay
# (only BTP/2.0-I sessions read it, to date the remembered reply).
_NO_REPLAY_CLOCK = datetime(1970, 1, 1, tzinfo=UTC)


class LinkDown(Exception):
    """The connection went away before the peer answered."""


@dataclass(frozen=True, slots=True)
class _Failed:
    reason: str


# What an outstanding request resolves to.
_Result = bytes | BtpResponse | _Failed


@dataclass(slots=True)
class _Pending:
    ilp: bytes
    future: asyncio.Future[_Result]
    frame: bytes = b""
    link: BtpLink | None = None  # the connection whose session tracks this request
    deadline: float = 0.0  # time.monotonic() at which its caller stops waiting

    @property
    def timeout_s(self) -> float:
        return self.deadline - time.monotonic()


class Outbox:
    """Our outstanding ILP requests to one peer.

    Plain BTP/2.0: one outbox per connection; losing it fails them all (T01).
    BTP/2.0-I: one outbox per peer (:func:`peer_outbox`), outliving connections:
    requests are (re)sent on whichever connection is current until their deadline.
    """

    def __init__(self, peer_name: str, *, retry: bool) -> None:
        self.peer_name = peer_name
        self.retry = retry
        self.pending: dict[int, _Pending] = {}
        self._links: list[BtpLink] = []

    @property
    def link(self) -> BtpLink | None:
        return self._links[-1] if self._links else None

    def attach(self, link: BtpLink) -> None:
        if link not in self._links:
            self._links.append(link)
        if self.retry:
            for request_id, pending in list(self.pending.items()):
                link.spawn(self._transmit(request_id, pending))

    def detach(self, link: BtpLink) -> None:
        if link in self._links:
            self._links.remove(link)
        if self.retry:
            return
        if not self._links:
            for pending in self.pending.values():
                if not pending.future.done():
                    pending.future.set_exception(LinkDown())

    def new_request_id(self) -> int:
        while True:
            request_id = random.getrandbits(32)
            if request_id not in self.pending and not any(
                link.session.request_id_in_use(request_id) for link in self._links
            ):
                return request_id

    def resolve(self, request_id: int, result: _Result) -> None:
        pending = self.pending.get(request_id)
        if pending is not None and not pending.future.done():
            pending.future.set_result(result)

    async def _transmit(self, request_id: int, pending: _Pending) -> bool:
        """Send (or resend) a request on the current connection."""
        link = self.link
        if link is None or not link.is_open:
            return False
        if pending.link is not link:
            # A new connection: let its session track the id (same bytes as before).
            try:
                pending.frame = link.session.send_ilp(request_id, pending.ilp)
            except BtpStateError:
                return False
            pending.link = link
        return await link.transmit(pending.frame)

    async def request(self, ilp: bytes, timeout: float) -> _Result | None:
        """Send an ILP Prepare and wait for the reply; ``None`` on timeout."""
        return await self._request(self.new_request_id(), ilp, timeout)

    async def adopt(self, request_id: int, ilp: bytes, timeout: float) -> _Result | None:
        """Take over a request another process of the node sent to this peer (BTP/2.0-I:
        its connection moved here): the same id and bytes, so the peer's replay memory
        answers a copy it already has instead of processing it twice."""
        if request_id in self.pending:
            return _Failed("request id already in use here")
        return await self._request(request_id, ilp, timeout)

    async def _request(self, request_id: int, ilp: bytes, timeout: float) -> _Result | None:
        loop = asyncio.get_running_loop()
        pending = _Pending(ilp, loop.create_future(), deadline=time.monotonic() + timeout)
        self.pending[request_id] = pending
        retrier: asyncio.Task[None] | None = None
        try:
            sent = await self._transmit(request_id, pending)
            if not sent and not self.retry:
                raise LinkDown()
            if self.retry:
                retrier = loop.create_task(self._resend(request_id, pending))
            try:
                return await asyncio.wait_for(pending.future, timeout)
            except TimeoutError:
                return None
        finally:
            del self.pending[request_id]
            if retrier is not None:
                retrier.cancel()
            if pending.link is not None:
                pending.link.session.cancel(request_id)

    async def _resend(self, request_id: int, pending: _Pending) -> None:
        delay = RETRY_FIRST_S
        while True:
            await asyncio.sleep(delay)
            await self._transmit(request_id, pending)
            delay = min(delay * 2, RETRY_MAX_S)


class PeerOutboxes:
    """The BTP/2.0-I outboxes of one runtime (``interledger_site.runtime`` holds one)."""

    def __init__(self) -> None:
        self._outboxes: dict[str, Outbox] = {}

    def get(self, peer_name: str) -> Outbox:
        outbox = self._outboxes.get(peer_name)
        if outbox is None:
            outbox = self._outboxes[peer_name] = Outbox(peer_name, retry=True)
        return outbox

    def peek(self, peer_name: str) -> Outbox | None:
        return self._outboxes.get(peer_name)

    def clear(self) -> None:
        self._outboxes.clear()


def peer_outbox(peer_name: str) -> Outbox:
    """The BTP/2.0-I outbox of a peer (shared by its successive connections), the
    current runtime's."""
    from payments.node import runtime

    outboxes: PeerOutboxes = runtime().outboxes
    return outboxes.get(peer_name)


# --- the outbox follows the peer (several processes) ----------------------------------------
#
# A BTP/2.0-I peer whose connection drops may come back to another process of the node.
# Our requests still pending to it then wait here, in callers this process serves; so the
# process whose connection was lost hands them over (:func:`_hand_over`: the request id,
# bytes and expiry, and its owner channel, in Redis until their expiry) and tells the
# peer's current owner; the process the peer authenticates to takes them
# (:func:`_take_over`, atomically: each once), sends them on its connection with the same
# ids and bytes, and sends each reply back to the waiting process's channel
# (``link.outbox_reply``), which resolves its caller. Its own entries (the peer came back
# here) stay with its own outbox, which resends them on the new connection.


def _ownership() -> Any:
    from payments.node import runtime

    return runtime().ownership


async def _hand_over(peer_name: str, outbox: Outbox) -> None:
    ownership = _ownership()
    shared = idempotency.memories().shared
    if shared is None or not ownership.shared or ownership.channel is None:
        return
    now_ms = int(time.time() * 1000)
    entries = {
        request_id: (pending.ilp, now_ms + int(pending.timeout_s * 1000))
        for request_id, pending in outbox.pending.items()
        if not pending.future.done() and pending.timeout_s > 0
    }
    if not entries:
        return
    try:
        await shared.hand_over(peer_name, ownership.channel, entries)
        owner = await ownership.owner_of(peer_name)
    except Exception:
        log.warning("BTP %s: cannot hand pending requests over", peer_name, exc_info=True)
        return
    log.info(
        "BTP %s: %d pending requests handed over (owner now %s)", peer_name, len(entries), owner
    )
    if owner is not None and owner != ownership.channel:
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        if layer is not None:
            with contextlib.suppress(Exception):
                await layer.send(owner, {"type": "link.outbox_adopt", "peer": peer_name})


async def take_over(peer_name: str) -> None:
    """Send the requests other processes handed over for ``peer_name`` on our link."""
    ownership = _ownership()
    shared = idempotency.memories().shared
    if shared is None or not ownership.shared or ownership.channel is None:
        return
    link = registry.local(peer_name)
    if not isinstance(link, BtpLink) or not link.is_open or link._outbox is None:
        return
    outbox = link._outbox
    if not outbox.retry:
        return
    try:
        entries = await shared.take_over(peer_name)
    except Exception:
        log.warning("BTP %s: cannot take handed-over requests", peer_name, exc_info=True)
        return
    now_ms = int(time.time() * 1000)
    if entries:
        log.info("BTP %s: took over %d pending requests", peer_name, len(entries))
    for request_id, ilp, expires_ms, origin in entries:
        if origin == ownership.channel:
            continue  # ours: our outbox resends it on the new connection
        timeout = (expires_ms - now_ms) / 1000
        if timeout > 0:
            link.spawn(_relay(outbox, request_id, ilp, timeout, origin, peer_name))


async def _relay(
    outbox: Outbox, request_id: int, ilp: bytes, timeout: float, origin: str, peer_name: str
) -> None:
    from channels.layers import get_channel_layer

    result = await outbox.adopt(request_id, ilp, timeout)
    event: dict[str, Any] = {
        "type": "link.outbox_reply",
        "peer": peer_name,
        "request_id": request_id,
    }
    if isinstance(result, bytes):
        event["reply"] = result
    elif isinstance(result, _Failed):
        event["failed"] = result.reason
    else:
        return  # expired (or not an ILP reply): the waiting caller times out by itself
    layer = get_channel_layer()
    if layer is not None:
        with contextlib.suppress(Exception):
            await layer.send(origin, event)


def on_outbox_event(event: dict[str, Any]) -> None:
    """An owner-channel event of the outbox hand-over (``links.ownership`` calls this)."""
    peer_name = str(event.get("peer", ""))
    if event.get("type") == "link.outbox_adopt":
        with contextlib.suppress(RuntimeError):
            link = registry.local(peer_name)
            if isinstance(link, BtpLink):
                link.spawn(take_over(peer_name))
        return
    from payments.node import runtime

    outbox = runtime().outboxes.peek(peer_name)
    request_id = event.get("request_id")
    if outbox is None or not isinstance(request_id, int):
        return
    if isinstance(event.get("reply"), bytes):
        outbox.resolve(request_id, event["reply"])
    elif event.get("failed"):
        outbox.resolve(request_id, _Failed(str(event["failed"])))


async def _authenticate(username: str, token: str) -> PeerContext | None:
    from links import services

    if username:
        ctx: PeerContext | None = await database_sync_to_async(services.peer_authenticate)(
            username, token
        )
        if ctx is not None and ctx.link != "btp-server":
            return None
        return ctx
    found: PeerContext | None = await database_sync_to_async(services.peer_authenticate_any)(
        token, links=("btp-server",)
    )
    return found


class BtpLink:
    """One BTP connection (server or client side); an ``OutgoingLink`` once open."""

    session: BtpServerSession | BtpClientSession

    def __init__(
        self,
        *,
        send: SendFn,
        close: CloseFn,
        role: Role,
        peer: PeerContext | None = None,
        username: str = "",
        token: str = "",
        label: str = "",
    ) -> None:
        self._send = send
        self._close = close
        self.role = role
        self.peer = peer
        self.label = label
        self._outbox: Outbox | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._auth_timer: asyncio.TimerHandle | None = None
        self._auth_done: asyncio.Future[bool] | None = None
        self._closing = False
        self._lost = False
        self._noted_at = -ACTIVITY_NOTE_INTERVAL_S  # last activity.note_packet
        if role == "server":
            self.session = BtpServerSession(memory=idempotency.server_memory())
        else:
            if peer is None:
                raise ValueError("a client link needs its peer")
            # A replay quota of 0 means no BTP/2.0-I with this peer.
            self.session = BtpClientSession(
                username,
                token,
                idempotent=peer.limits.replay_quota > 0,
                memory=idempotency.client_memory(peer.name),
            )

    # --- lifecycle --------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.session.state is State.OPEN and not self._lost

    @property
    def idempotent(self) -> bool:
        return self.session.idempotent

    @property
    def peer_name(self) -> str:
        return self.peer.name if self.peer is not None else ""

    def start(self) -> None:
        """Arm the server's auth timeout (call once the socket is accepted)."""
        if self.role == "server":
            loop = asyncio.get_running_loop()
            self._auth_timer = loop.call_later(AUTH_TIMEOUT_S, self._auth_timed_out)

    def _auth_timed_out(self) -> None:
        if self.session.state is not State.OPEN and not self._lost:
            log.info("BTP %s: no auth within %.0f s, closing", self.label, AUTH_TIMEOUT_S)
            self.session.close("authentication timeout")
            self.spawn(self.close(CLOSE_POLICY))

    async def close(self, code: int = CLOSE_NORMAL) -> None:
        if self._closing:
            return
        self._closing = True
        with contextlib.suppress(Exception):
            await self._close(code)

    def connection_lost(self) -> None:
        """The socket is gone (call exactly once). Requests being served keep running."""
        if self._lost:
            return
        self._lost = True
        if self._auth_timer is not None:
            self._auth_timer.cancel()
        was_open = self.session.state is State.OPEN
        for event in self.session.close("connection closed"):
            outbox = self._outbox
            if isinstance(event, RequestFailed) and outbox is not None and not outbox.retry:
                outbox.resolve(event.request_id, _Failed("connection closed"))
        if self._auth_done is not None and not self._auth_done.done():
            self._auth_done.set_result(False)
        if not was_open or self.peer is None or self._outbox is None:
            return
        name = self.peer.name
        outbox = self._outbox
        outbox.detach(self)
        if registry.unregister(name, self):
            edge.link_down(name)
            activity.note_disconnected(name)
        if outbox.retry and outbox.pending and outbox.link is None:
            self.spawn(_hand_over(name, outbox))

    def spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def transmit(self, frame: bytes) -> bool:
        if self._lost:
            return False
        try:
            await self._send(frame)
        except Exception:
            log.debug("BTP %s: send failed", self.label, exc_info=True)
            return False
        return True

    # --- incoming bytes -----------------------------------------------------------------

    async def receive(self, raw: bytes) -> None:
        """Handle one binary WebSocket message. Never raises."""
        try:
            events = self.session.receive_frame(raw, datetime.now(UTC))
            if len(events) == 1 and type(events[0]) is IlpRequest:
                # The frame of almost every packet: acted on here, with no coroutine for _act.
                self._on_ilp_request(events[0])
            else:
                await self._act(events)
        except Exception:
            log.exception("BTP %s: unexpected error on a frame; closing", self.label)
            await self.close(CLOSE_POLICY)

    async def receive_text(self, text: str) -> None:
        """A text message is never BTP: the session decides (close or Error)."""
        try:
            await self._act(self.session.receive_text(text, datetime.now(UTC)))
        except Exception:
            log.exception("BTP %s: unexpected error on a text message; closing", self.label)
            await self.close(CLOSE_POLICY)

    async def _act(self, events: list[Event]) -> None:
        for event in events:
            if type(event) is IlpRequest:
                self._on_ilp_request(event)
            elif type(event) is IlpReply:
                self._on_reply(event.request_id, event.ilp)
            elif type(event) is SendFrame:
                await self.transmit(event.data)
            elif type(event) is CloseConnection:
                log.info("BTP %s: closing: %s", self.label, event.reason)
                if self._auth_done is not None and not self._auth_done.done():
                    self._auth_done.set_result(False)
                await self.close(CLOSE_POLICY)
            elif type(event) is AuthRequested:
                await self._on_auth_requested(event)
            elif type(event) is Authenticated:
                self._on_authenticated()
            elif type(event) is SideProtocolRequest or type(event) is TransferRequest:
                self.spawn(self._serve_side(event))
            elif type(event) is ReplyReceived:
                self._on_reply(event.request_id, event.packet)
            elif type(event) is RequestFailed:
                self._on_reply(event.request_id, _Failed(event.reason))

    def _on_ilp_request(self, event: IlpRequest) -> None:
        now = time.monotonic()
        if now - self._noted_at >= ACTIVITY_NOTE_INTERVAL_S:
            self._noted_at = now
            activity.note_packet(self.peer_name)
        self.spawn(self._serve_ilp(event))

    def _on_reply(self, request_id: int, result: _Result) -> None:
        if self._outbox is not None:
            self._outbox.resolve(request_id, result)

    async def _on_auth_requested(self, event: AuthRequested) -> None:
        session = self.session
        assert isinstance(session, BtpServerSession)
        auth = event.auth
        refusal = auth_refusal(auth.username, auth.token, max_username=MAX_PEER_NAME_LENGTH)
        if refusal is not None:  # refused before any hashing or query
            await self._act(session.reject_auth(datetime.now(UTC), refusal))
            return
        ctx = await _authenticate(event.auth.username, event.auth.token)
        if session.state is not State.AUTHENTICATING or self._lost:
            return  # closed while we checked
        now = datetime.now(UTC)
        if ctx is None:
            await self._act(session.reject_auth(now))
            return
        self.peer = ctx
        # BTP/2.0-I needs a username to key the replay memory on, and a share of it.
        quota = ctx.limits.replay_quota
        allow = bool(event.auth.username) and quota > 0
        if allow and (event.auth.idempotent or ctx.idempotent):
            memory = idempotency.server_memory()
            memory.set_quota(event.auth.username, quota)
            await idempotency.restore(ctx.name, memory, event.auth.username)
        await self._act(session.accept_auth(now, allow_idempotent=allow))

    def _on_authenticated(self) -> None:
        peer = self.peer
        assert peer is not None
        if self._auth_timer is not None:
            self._auth_timer.cancel()
        if (
            peer.idempotent
            and self.session.username
            and not self.session.idempotent
            and peer.limits.replay_quota > 0
        ):
            # The operator declared this peer BTP/2.0-I (per-peer flag): on even if the
            # handshake did not negotiate it.
            self.session.idempotent = True
        idem = self.session.idempotent
        self._outbox = peer_outbox(peer.name) if idem else Outbox(peer.name, retry=False)
        self._outbox.attach(self)
        registry.register(peer.name, self)
        if idem:
            self.spawn(self._take_over())
        activity.note_connected(peer.name)
        edge.link_up(peer)
        if self._auth_done is not None and not self._auth_done.done():
            self._auth_done.set_result(True)

    # --- client auth ------------------------------------------------------------------

    async def authenticate(self, *, timeout: float = 10.0) -> bool:
        """Client side: send the auth Message (offering BTP/2.0-I), wait for the answer.

        The link activates itself when the auth Response is read (before the next frame),
        so a request the server sends right after it is served.
        """
        session = self.session
        assert isinstance(session, BtpClientSession) and self.peer is not None
        self._auth_done = asyncio.get_running_loop().create_future()
        memory = idempotency.client_memory(self.peer.name)
        memory.set_quota(session.username, self.peer.limits.replay_quota)
        await idempotency.restore(self.peer.name, memory, session.username)
        if not await self.transmit(session.start(random.getrandbits(32))):
            return False
        try:
            return await asyncio.wait_for(asyncio.shield(self._auth_done), timeout)
        except TimeoutError:
            return False

    # --- serving requests ------------------------------------------------------------------

    async def _serve_ilp(self, event: IlpRequest) -> None:
        peer = self.peer
        assert peer is not None
        try:
            prepare = decode_prepare(event.ilp)
        except DecodeError as exc:
            reply: Reply = edge.reject("F01", f"invalid packet: {exc.reason}")
            deadline = None
        else:
            if self.session.idempotent and await self._handled_elsewhere(
                event.request_id, prepare.expires_at
            ):
                return
            # This task is the link's (never cancelled, it outlives the socket): no shield.
            reply = await edge.handle_prepare(peer, prepare, owned=True)
            deadline = prepare.expires_at
        ilp = encode_packet(reply)
        session = self.session
        if session.idempotent:
            now = datetime.now(UTC)
            if deadline is not None:  # a far-future expiry must not keep the replay for ever
                deadline = min(deadline, now + idempotency.PREPARE_HORIZON)
        else:
            # Plain BTP/2.0 remembers no reply: the session reads neither (no clock call).
            now, deadline = _NO_REPLAY_CLOCK, None
        try:
            frame = session.respond_ilp(event.request_id, ilp, now, deadline=deadline)
        except BtpStateError:
            log.exception("BTP %s: could not answer request %d", self.label, event.request_id)
            return
        except Exception:
            # Every request gets an answer: the reply unremembered rather than none.
            log.exception("BTP %s: could not record reply %d", self.label, event.request_id)
            frame = encode_ilp_frame(BtpType.RESPONSE, event.request_id, ilp)
        if session.idempotent:
            await self._deliver(event.request_id, frame)
        elif not self._lost:
            # Plain BTP/2.0: _deliver and transmit come down to this (two coroutines fewer
            # per packet); a reply whose socket is gone is dropped, as transmit does.
            try:
                await self._send(frame)
            except Exception:
                log.debug("BTP %s: send failed", self.label, exc_info=True)

    async def _serve_side(self, event: SideProtocolRequest | TransferRequest) -> None:
        peer = self.peer
        assert peer is not None
        packet: BtpMessage | BtpTransfer = event.packet
        now = datetime.now(UTC)
        is_transfer = isinstance(packet, BtpTransfer)
        deadline = now + (
            idempotency.TRANSFER_DEADLINE if is_transfer else idempotency.MESSAGE_DEADLINE
        )
        if self.session.idempotent and await self._handled_elsewhere(event.request_id, None):
            return
        handler = side_protocols.handler_for(packet)
        session = self.session
        try:
            try:
                entries: tuple[ProtocolData, ...] = (
                    () if handler is None else tuple(await handler(peer, packet))
                )
                frame = session.respond(
                    event.request_id, datetime.now(UTC), entries, deadline=deadline
                )
            except side_protocols.SideProtocolError as exc:
                frame = session.respond_error(
                    event.request_id,
                    exc.code,
                    exc.message,
                    datetime.now(UTC),
                    name=exc.name or _error_name(exc.code),
                    deadline=deadline,
                )
            except BtpStateError:
                raise
            except Exception:
                log.exception("BTP %s: side protocol handler failed", self.label)
                frame = session.respond_error(
                    event.request_id, BtpErrorCode.T00, "internal error", datetime.now(UTC)
                )
        except BtpStateError:
            log.exception("BTP %s: could not answer request %d", self.label, event.request_id)
            return
        await self._deliver(event.request_id, frame)

    async def _take_over(self) -> None:
        # Now, and once more a moment later: the process whose connection was lost may
        # hand its requests over just after this one looked (it tells the lease's owner
        # itself only once this process's lease claim has landed).
        for delay in TAKE_OVER_AGAIN_S:
            await asyncio.sleep(delay)
            if not self.is_open:
                return
            await take_over(self.peer_name)

    async def _handled_elsewhere(self, request_id: int, deadline: datetime | None) -> bool:
        """BTP/2.0-I with several processes: this runtime's memory admitted the request as
        new; ask the node's (``links.idempotency.claim``). ``True`` when it is answered
        here from there (a replay, F05, T00) or left to the process processing it."""
        session = self.session
        record = idempotency.find_record(self._memory(), session.username, request_id)
        if record is None or record.reply is not None:
            return False
        quota = self.peer.limits.replay_quota if self.peer is not None else 0
        try:
            verdict, stored = await idempotency.claim(self.peer_name, record, quota, deadline)
        except Exception:  # this process's memory alone, as without Redis
            log.exception("BTP %s: shared claim of %d failed", self.label, request_id)
            return False
        if verdict is Verdict.NEW:
            return False
        now = datetime.now(UTC)
        if verdict is Verdict.REPLAY and stored is not None:
            try:
                frame = session.respond_stored(request_id, stored, now, deadline=deadline)
            except Exception:
                log.exception("BTP %s: could not record replay %d", self.label, request_id)
                frame = stored
            await self.transmit(frame)
        elif verdict is Verdict.CONFLICT:
            frame = session.respond_error(
                request_id, BtpErrorCode.F05, "request id reused with different content", now
            )
            await self.transmit(frame)
        elif verdict is Verdict.FULL:
            session.withdraw(request_id)
            message = "this account's share of the replay memory is full, retry later"
            await self.transmit(
                encode_btp(btp_error(request_id, BtpErrorCode.T00, None, message, now))
            )
        else:  # in progress in another process: its reply is replayed on the next retry
            session.withdraw(request_id)
        return True

    async def _deliver(self, request_id: int, frame: bytes) -> None:
        """Send a reply; on a BTP/2.0-I link make it durable first."""
        if self.session.idempotent:
            record = idempotency.find_record(self._memory(), self.session.username, request_id)
            if record is not None:
                try:
                    await idempotency.persist(self.peer_name, record)
                except Exception:
                    # Still answer: the reply stays replayable from memory in this process.
                    log.exception("BTP %s: could not persist reply %d", self.label, request_id)
        if await self.transmit(frame) or not self.session.idempotent:
            return
        # BTP/2.0-I: our socket died while we worked; the peer re-sent the request on
        # its new connection (where the session held the copy as in progress), so the
        # reply goes there at once instead of waiting for its next retry.
        current = registry.local(self.peer_name)
        if isinstance(current, BtpLink) and current is not self and current.is_open:
            await current.transmit(frame)

    def _memory(self) -> Any:
        if self.role == "server":
            return idempotency.server_memory()
        return idempotency.client_memory(self.peer_name)

    # --- OutgoingLink ---------------------------------------------------------------------

    async def send_prepare(self, prepare: Prepare) -> Reply:
        """Send our Prepare to the peer and return its Fulfill/Reject. Never raises."""
        outbox = self._outbox
        peer_name = self.peer_name
        if outbox is None or (not self.is_open and not outbox.retry):
            return registry.unreachable(peer_name)
        timeout = (prepare.expires_at - datetime.now(UTC)).total_seconds()
        if timeout <= 0:
            return registry.expired()
        try:
            result = await outbox.request(encode_prepare(prepare), timeout)
        except LinkDown:
            return registry.unreachable(peer_name, f"connection to {peer_name} lost")
        if result is None:
            return registry.expired()
        if isinstance(result, _Failed):
            return edge.reject("T01", f"failed to send packet: {result.reason}")
        if isinstance(result, BtpResponse):  # cannot happen for ILP requests; be safe
            return edge.reject("T01", "failed to send packet: unexpected reply")
        try:
            return decode_reply(result)
        except DecodeError as exc:
            return edge.reject("T00", f"invalid reply from peer: {exc.reason}")


def _error_name(code: str) -> str:
    try:
        return BtpErrorCode(code).error_name
    except ValueError:
        return "Error"
