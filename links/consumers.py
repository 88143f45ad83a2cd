"""The BTP/2.0 WebSocket endpoint (``/btp``): a thin dispatcher around :class:`BtpLink`.

Each binary message goes to the link core (:mod:`links.btp_link`), which authenticates
the peer, serves its requests in their own tasks and registers itself as the peer's
``OutgoingLink``. Text messages are not BTP: the session treats them as unreadable
frames. The route must not sit behind ``AllowedHostsOriginValidator`` (BTP clients send
no ``Origin``).

:class:`BtpConsumer` is a plain ASGI application, not a Channels ``AsyncConsumer``: the
link needs nothing of a consumer but ``receive`` and ``send``, and Channels' generic
dispatch costs a task, an ``asyncio.wait`` and a handler lookup per frame (and a thread
hop for ``close_old_connections``). Here one coroutine per socket awaits the server's
queue and hands each frame to the link. It does not subscribe to the channel layer:
cross-process sends reach the link through the per-peer bridge of :mod:`links.registry`,
one listener per peer rather than one per socket. It never touches the database itself
(every query goes through ``database_sync_to_async``).

Before the peer is authenticated the consumer keeps reading while the first frame (the
auth Message) is looked up, so nothing queues unbounded in the server: what arrives
meanwhile is held, at most :data:`~links.limits.MAX_PREAUTH_FRAMES` frames and
:data:`~links.limits.MAX_PREAUTH_BYTES` bytes (beyond: BTP Error F00, then close), and
handed to the link in order once the auth is decided.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

from ilp.btp import BtpErrorCode, btp_error, encode_btp
from links.btp_link import CLOSE_POLICY, BtpLink
from links.limits import MAX_PREAUTH_BYTES, MAX_PREAUTH_FRAMES

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# An alias that is never configured: ``get_channel_layer`` returns ``None`` for it (kept
# for callers that look; this endpoint joins no channel-layer group).
NO_CHANNEL_LAYER = "links.btp.no-channel-layer"


class BtpConsumer:
    """One BTP WebSocket connection (server side). Route it with ``BtpConsumer.as_asgi()``."""

    channel_layer_alias = NO_CHANNEL_LAYER

    link: BtpLink
    _auth_task: asyncio.Task[None] | None = None

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self._closed = False
        self._frames = daphne_frame_sender(send)

    @classmethod
    def as_asgi(cls) -> Any:  # an AsgiApp; Any for django.urls.path() in URLRouter tables
        """The ASGI application: one :class:`BtpConsumer` per connection."""

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await cls(scope, receive, send).run()

        asgi: AsgiApp = app
        asgi.consumer_class = cls  # type: ignore[attr-defined]  # as Channels' as_asgi does
        return asgi

    async def run(self) -> None:
        receive = self._receive
        message = await receive()
        if message["type"] != "websocket.connect":
            return  # disconnected before connecting
        client = self.scope.get("client") or ("?", 0)
        link = self.link = BtpLink(
            send=self._send_frame,
            close=self._close_socket,
            role="server",
            label=f"{client[0]}:{client[1]}",
        )
        await self._send({"type": "websocket.accept"})
        link.start()
        try:
            open_, ahead = await self._authenticate()
            if not open_:
                return
            while True:
                if ahead is not None:
                    message, ahead = await ahead, None
                else:
                    message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    data = message.get("bytes")
                    if data is not None:
                        await link.receive(data)
                    elif message.get("text") is not None:
                        await link.receive_text(message["text"])
                elif kind == "websocket.disconnect":
                    return
        finally:
            link.connection_lost()

    async def _authenticate(self) -> tuple[bool, asyncio.Future[Message] | None]:
        """Serve the first frame (the auth) while reading on, holding what arrives meanwhile
        (bounded, see the module docstring); then hand the held frames to the link in order.

        Returns ``(False, None)`` when the socket is done with (disconnected, or closed for
        too much pre-auth data), else ``(True, ahead)``: ``ahead`` is a read already under
        way, to be awaited before the next one.
        """
        receive = self._receive
        auth: asyncio.Task[None] | None = None
        ahead: asyncio.Future[Message] | None = None
        held: list[Message] = []
        held_bytes = 0
        while True:
            if auth is None:
                message = await receive()
            else:
                if not auth.done():
                    if ahead is None:
                        ahead = asyncio.ensure_future(receive())
                    await asyncio.wait((auth, ahead), return_when=asyncio.FIRST_COMPLETED)
                if auth.done():
                    break  # decided: a read under way goes on in the main loop
                assert ahead is not None
                message, ahead = ahead.result(), None
            kind = message["type"]
            if kind == "websocket.disconnect":
                return False, None
            if kind != "websocket.receive":
                continue
            if auth is None:
                auth = self._auth_task = asyncio.ensure_future(self._hand_over(message))
                continue
            held.append(message)
            data = message.get("bytes")
            held_bytes += len(data) if data is not None else len(message.get("text") or "")
            if len(held) > MAX_PREAUTH_FRAMES or held_bytes > MAX_PREAUTH_BYTES:
                await self._refuse_early(data)
                return False, None
        await auth
        for message in held:
            await self._hand_over(message)
        return True, ahead

    async def _hand_over(self, message: Message) -> None:
        data = message.get("bytes")
        if data is not None:
            await self.link.receive(data)
        elif message.get("text") is not None:
            await self.link.receive_text(message["text"])

    async def _refuse_early(self, data: bytes | None) -> None:
        """Too much before the auth was decided: BTP Error F00 on the last frame's request
        id (0 when unreadable), then close. The session is closed first, so the auth
        lookup still under way changes nothing when it returns."""
        reason = (
            f"too much data before authentication completed (at most {MAX_PREAUTH_FRAMES} "
            f"frames, {MAX_PREAUTH_BYTES} bytes)"
        )
        request_id = int.from_bytes(data[1:5], "big") if data is not None and len(data) >= 5 else 0
        self.link.session.close(reason)
        error = btp_error(request_id, BtpErrorCode.F00, None, reason, datetime.now(UTC))
        await self.link.transmit(encode_btp(error))
        await self.link.close(CLOSE_POLICY)

    async def _send_frame(self, frame: bytes) -> None:
        if self._closed:
            raise ConnectionError("socket closed")
        frames = self._frames
        if frames is not None:
            frames.send(frame)
            return
        await self._send({"type": "websocket.send", "bytes": frame})

    async def _close_socket(self, code: int) -> None:
        if self._closed:
            return
        self._closed = True
        if self._frames is not None:
            self._frames.flush()  # the replies of this turn go before the close frame
        await self._send({"type": "websocket.close", "code": daphne_close_code(code)})


class DaphneFrames:
    """A Daphne socket's binary messages: ``send(frame)`` (see :func:`daphne_frame_sender`)
    and ``flush()``, which writes the frames still held for the end of this loop turn
    (:class:`TurnWriter`) now."""

    __slots__ = ("flush", "send")

    def __init__(self, send: Callable[[bytes], None], flush: Callable[[], None]) -> None:
        self.send = send
        self.flush = flush


def daphne_frame_sender(send: Send) -> DaphneFrames | None:
    """Under Daphne, a ``send(frame)`` that does what ``await send({"type": "websocket.send",
    "bytes": frame})`` does, without the message dict and the two dispatchers; ``None``
    under any other server (or another Daphne than the one this mirrors).

    Daphne's ``send`` is ``partial(Server.handle_reply, protocol)``: a coroutine that never
    suspends, returns when the connection is gone or marked disconnected, and otherwise
    has the protocol's ``handle_reply`` dispatch on the message type to
    ``serverSend(bytes, True)`` (a socket not accepted yet is a ``ValueError``, an empty
    payload sends nothing). The function below makes the same checks and the same call,
    in the same order relative to the other sends of the socket (it runs in the caller's
    task, as the awaited coroutine did). Accept and close still go through ``send``.
    """
    if not isinstance(send, functools.partial) or send.keywords or len(send.args) != 1:
        return None
    try:
        from daphne.server import Server
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:
        return None
    server = getattr(send.func, "__self__", None)
    protocol = send.args[0]
    if (
        getattr(send.func, "__func__", None) is not Server.handle_reply
        or not isinstance(server, Server)
        or not isinstance(protocol, WebSocketProtocol)
        or not _reads_exactly(Server.handle_reply, _DAPHNE_HANDLE_REPLY_NAMES)
    ):
        return None
    connections = server.connections
    connecting = protocol.STATE_CONNECTING
    server_send = binary_message_sender(protocol)

    def send_bytes(frame: bytes) -> None:
        connection = connections.get(protocol)
        if connection is None or connection.get("disconnected", None):
            return
        if protocol.state == connecting:
            raise ValueError("Socket has not been accepted, so cannot send over it")
        if frame:
            server_send(frame)

    return DaphneFrames(send_bytes, functools.partial(flush_replies, protocol))


def binary_message_sender(protocol: Any) -> Callable[[bytes], None]:
    """``protocol.serverSend(frame, True)`` for a Daphne WebSocket ``protocol``, with
    autobahn's send of one unfragmented, uncompressed, unmasked binary message done in
    one step: the frame header (2 or 4 bytes) and the payload written to the transport,
    the same traffic counters incremented.

    autobahn's ``sendMessage`` → ``sendFrame`` → ``sendData`` are general (compression,
    fragmentation, masking, payload_len fuzzing, chopping, the send queue, frame and octet
    logging, timings) and cost about three times the work for the one case a server's
    BTP reply is. Each call checks that it is that case on this protocol, now; any other
    (not open, compression negotiated, a size limit or auto-fragmenting it would hit, a
    queued write, masking, logging or timings on, debug logging on, a payload over 64 KiB)
    goes to ``serverSend`` itself, as does every call when Daphne or autobahn is not the
    code mirrored here (:func:`_autobahn_send_is_known`).
    """
    server_send = protocol.serverSend

    def fallback(frame: bytes) -> None:
        server_send(frame, True)

    if not _autobahn_send_is_known(protocol):
        return fallback
    from autobahn.websocket.protocol import WebSocketProtocol as AutobahnProtocol
    from daphne.ws_protocol import logger as daphne_logger
    from twisted.internet.tcp import Server as plain_tcp

    state_open = AutobahnProtocol.STATE_OPEN
    writer: TurnWriter | None = None
    if _AUTOBAHN_DATA_RECEIVED is not None:  # reads flush first: see TurnWriter
        writer = TurnWriter(protocol, plain_tcp, state_open)
        setattr(protocol, _TURN_WRITER, writer)
    no_op = _txaio_no_op()
    debug = logging.DEBUG

    def send(frame: bytes) -> None:
        p = protocol
        n = len(frame)
        if (
            p.state != state_open
            or n > 0xFFFF
            or p.send_queue
            or p.trackedTimings
            or p._perMessageCompress is not None
            or 0 < p.maxMessagePayloadSize < n
            or 0 < p.autoFragmentSize < n
            or p.maskServerFrames
            or not p.factory.isServer
            or p.logFrames
            or p.logOctets
            or p.log.debug is not no_op
            or daphne_logger.isEnabledFor(debug)
        ):
            if writer is not None:
                writer.flush()
            server_send(frame, True)
            return
        # FIN + opcode 2 (binary); no mask bit; the length in 7 bits, or 126 + 16 bits.
        raw = (_SHORT_HEADERS[n] if n <= 125 else _header_16(n)) + frame
        stats = p.trafficStats
        stats.outgoingWebSocketMessages += 1
        stats.outgoingOctetsAppLevel += n
        stats.outgoingOctetsWebSocketLevel += n
        stats.outgoingWebSocketFrames += 1
        if writer is None:
            write_now(p.transport, raw, plain_tcp)
        else:
            writer.write(raw)
        stats.outgoingOctetsWireLevel += len(raw)

    return send


class TurnWriter:
    """The BTP replies one loop turn makes on a socket, written with one ``send`` when the
    turn ends instead of one each.

    Replies come in bursts: a ledger batch's commit resumes its ~20 waiting requests in
    one turn. Written one by one, each is a ``send`` here and a read for the peer (which
    runs on the same cores under load); gathered, the turn's frames go in one write, in
    the order they were made, one loop turn later (``call_soon`` after the first).

    Nothing else may write to the socket before the frames held: every other write there
    flushes them first. The fallback of :func:`binary_message_sender` (autobahn's own
    send), the consumer's close (:meth:`BtpConsumer._close_socket`), and each read
    (:func:`_make_data_received`): autobahn answers a Close or a Ping from the bytes
    read, so the replies made before the read go out before its answer. Only autobahn's
    timed Pings can pass them, and a control frame between two messages is allowed
    (RFC 6455 §5.4). Installed only while that read hook is (else replies go at once,
    :func:`write_now`). Frames still held when the socket is no longer open (a close
    made some other way) are dropped, as autobahn would refuse them then.
    """

    __slots__ = ("_chunks", "_plain_tcp", "_protocol", "_state_open")

    def __init__(self, protocol: Any, plain_tcp: Any, state_open: int) -> None:
        self._protocol = protocol
        self._plain_tcp = plain_tcp
        self._state_open = state_open
        self._chunks: list[bytes] = []

    def write(self, raw: bytes) -> None:
        chunks = self._chunks
        if not chunks:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop to end a turn (a synchronous caller)
                write_now(self._protocol.transport, raw, self._plain_tcp)
                return
            loop.call_soon(self.flush)
        chunks.append(raw)

    def flush(self) -> None:
        chunks = self._chunks
        if not chunks:
            return
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        protocol = self._protocol
        if protocol.state == self._state_open:
            write_now(protocol.transport, data, self._plain_tcp)


_TURN_WRITER = "_ilp_turn_writer"  # the protocol's TurnWriter, for its reads to flush


def flush_replies(protocol: Any) -> None:
    """Write the replies ``protocol``'s :class:`TurnWriter` holds, if any, now."""
    writer: TurnWriter | None = getattr(protocol, _TURN_WRITER, None)
    if writer is not None:
        writer.flush()


def write_now(transport: Any, data: bytes, plain_tcp: Any) -> None:
    """``transport.write(data)``, with the bytes on the socket now when nothing is queued.

    Twisted's TCP ``write`` only buffers: the bytes go at the reactor's next turn once the
    socket is polled writable, after every callback already due (under load, the next
    packets' work), and each such write costs registering and unregistering the writer
    with the poller. asyncio's and uvloop's transports send at once when their buffer is
    empty; this does the same for Twisted's plain TCP server transport (``plain_tcp``,
    ``twisted.internet.tcp.Server``, passed in: importing Twisted here could install a
    reactor before Daphne's). With nothing buffered, ``writeSomeData`` (one non-blocking
    ``send``); whatever did not fit, or an error, goes to ``write`` (then Twisted sends the
    rest in order, or closes the connection, as it would have). Any other transport (TLS,
    a test's) and any transport with bytes buffered just get ``write``.
    """
    if (
        type(transport) is plain_tcp
        and not transport.dataBuffer
        and not transport._tempDataBuffer
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
    ):
        sent = transport.writeSomeData(data)
        if isinstance(sent, Exception) or sent < 0:
            transport.write(data)  # the error again, at doWrite, on Twisted's own path
        elif sent < len(data):
            transport.write(data[sent:])
        return
    transport.write(data)


_SHORT_HEADERS = tuple(bytes((0x82, n)) for n in range(126))


def _header_16(n: int) -> bytes:
    return b"\x82\x7e" + n.to_bytes(2, "big")


def _txaio_no_op() -> object:
    """txaio's stand-in for a log method whose level is off (a unique object otherwise:
    then no logger matches it and every send goes through autobahn)."""
    try:
        from txaio import tx
    except ImportError:
        return object()
    return getattr(tx, "_no_op", object())


# The names autobahn 26's send path and Daphne 4's ``serverSend`` read: another body is
# not mirrored by :func:`binary_message_sender`.
_AUTOBAHN_SEND_NAMES: dict[str, tuple[str, ...]] = {
    "sendMessage": (
        "type", "bytes", "bool", "int", "state", "WebSocketProtocol", "STATE_OPEN",
        "Disconnected", "trackedTimings", "track", "trafficStats",
        "outgoingWebSocketMessages", "_perMessageCompress", "start_compress_message",
        "outgoingOctetsAppLevel", "len", "compress_message_data", "end_compress_message",
        "join", "outgoingOctetsWebSocketLevel", "maxMessagePayloadSize",
        "wasMaxMessagePayloadSizeExceeded", "log", "warn", "PayloadExceededError",
        "autoFragmentSize", "sendFrame", "Exception",
    ),
    "sendFrame": (
        "len", "Exception", "join", "range", "factory", "isServer", "maskClientFrames",
        "maskServerFrames", "struct", "pack", "random", "getrandbits", "applyMask",
        "create_xor_masker", "process", "to_bytes", "trafficStats",
        "outgoingWebSocketFrames", "logFrames", "FrameHeader", "logTxFrame", "sendData",
    ),
    "sendData": (
        "len", "send_queue", "append", "_trigger", "transport", "write", "log", "debug",
        "hltype", "sendData", "hlval", "peer", "state", "WebSocketProtocol", "STATE_OPEN",
        "trafficStats", "outgoingOctetsWireLevel", "STATE_CONNECTING",
        "STATE_PROXY_CONNECTING", "preopenOutgoingOctetsWireLevel", "logOctets",
        "logTxOctets",
    ),
    "serverSend": (
        "state", "STATE_CONNECTING", "serverAccept", "logger", "debug", "client_addr",
        "sendMessage", "encode",
    ),
}  # fmt: skip


def _autobahn_send_is_known(protocol: Any) -> bool:
    """Whether ``protocol``'s class sends with the autobahn and Daphne methods
    :func:`binary_message_sender` mirrors (their bodies read exactly these names)."""
    try:
        from autobahn.websocket.protocol import WebSocketProtocol as AutobahnProtocol
        from daphne.ws_protocol import WebSocketProtocol as DaphneProtocol
    except ImportError:
        return False
    cls = type(protocol)
    if not issubclass(cls, DaphneProtocol):
        return False
    for name, names in _AUTOBAHN_SEND_NAMES.items():
        method = getattr(cls, name, None)
        owner = DaphneProtocol if name == "serverSend" else AutobahnProtocol
        if method is None or method is not getattr(owner, name, None):
            return False  # overridden somewhere: not the code mirrored here
        if not _reads_exactly(method, names):
            return False
    return True


def _reads_exactly(function: Any, names: tuple[str, ...]) -> bool:
    """Whether ``function``'s body reads exactly ``names`` (its code's ``co_names``): how
    the speed-ups here recognise the library code they mirror; any other version keeps
    its own code."""
    return getattr(getattr(function, "__code__", None), "co_names", None) == names


# The names Daphne 4's ``Server.handle_reply`` reads: another body is not mirrored above.
_DAPHNE_HANDLE_REPLY_NAMES = (
    "connections",
    "get",
    "check_headers_type",
    "ValueError",
    "basic_error",
    "handle_reply",
)


# --- autobahn (Daphne's WebSocket layer): per-frame costs that change nothing on the wire ---


class FastXorMasker:
    """RFC 6455 masking of a frame payload, same interface as autobahn's maskers.

    autobahn's NVX masker goes through cffi (an import, two allocations and a copy per
    frame): about 5x slower than one ``int`` XOR for the short frames of ILP. ``process``
    may be called on consecutive chunks of one payload; ``pointer`` counts the bytes done.
    """

    __slots__ = ("_mask", "_ptr")

    def __init__(self, mask: bytes) -> None:
        if len(mask) != 4:
            raise ValueError("a WebSocket mask is 4 bytes")
        self._mask = bytes(mask)
        self._ptr = 0

    def pointer(self) -> int:
        return self._ptr

    def reset(self) -> None:
        self._ptr = 0

    def process(self, data: bytes) -> bytes:
        n = len(data)
        if not n:
            return b""
        offset = self._ptr & 3
        mask = self._mask[offset:] + self._mask[:offset] if offset else self._mask
        self._ptr += n
        key = int.from_bytes(mask * ((n + 3) >> 2), "little") & ((1 << (n << 3)) - 1)
        return (int.from_bytes(data, "little") ^ key).to_bytes(n, "little")


def create_xor_masker(mask: bytes, length: int | None = None) -> FastXorMasker:
    return FastXorMasker(mask)


def _plain_type(obj: object, *args: object, **kwargs: object) -> str:
    """``hltype`` without colours: the qualified name (never the object's repr, which
    may not work yet, e.g. on a protocol still being set up)."""
    return f"<{getattr(obj, '__qualname__', type(obj).__qualname__)}>"


def _plain_value(value: object, *args: object, **kwargs: object) -> str:
    """``hlval`` without colours."""
    return f"{value}"


def _make_on_message_end(original: Callable[[Any], None]) -> Callable[[Any], None]:
    """autobahn's ``WebSocketProtocol.onMessageEnd`` without the ``"message"`` event when
    nothing listens for it.

    After handing the message to ``onMessage`` (Daphne's, which queues it for the
    application), autobahn fires its observable ``"message"`` event for every message: with
    no listener registered (``_listeners`` is ``None``: Daphne registers none) that is a
    Twisted Deferred already fired with ``[]``, an errback closure attached to it and
    dropped, three txaio calls per frame that change nothing. This skips them in exactly
    that case and runs autobahn's own method otherwise.
    """

    def on_message_end(self: Any) -> None:
        if self._listeners is not None:
            original(self)
            return
        if not self.failedByMe:
            payload = b"".join(self.message_data)
            if self.trackedTimings:
                self.trackedTimings.track("onMessage")
            self._onMessage(payload, self.message_is_binary)
        self.message_data = None

    on_message_end.__wrapped__ = original  # type: ignore[attr-defined]
    return on_message_end


# autobahn's onMessageEnd as this module found it (the one the speed-up falls back to).
_AUTOBAHN_ON_MESSAGE_END: Callable[[Any], None] | None = None


def speed_up_autobahn() -> bool:
    """Install :class:`FastXorMasker` in autobahn, drop the colouring of its debug log
    arguments (``hltype``/``hlval``, evaluated for every frame sent and received even when
    debug logging is off: a ``click.style`` call each) and its per-message ``"message"``
    event when nothing listens (:func:`_make_on_message_end`); take a whole binary frame in
    one step (:func:`_make_process_data`) and skip the per-read debug log call when debug
    logging is off (:func:`_make_data_received`). Idempotent; ``False`` when autobahn is
    missing or laid out differently (then nothing is changed); each of these is left out
    alone when the autobahn code it mirrors differs."""
    global _AUTOBAHN_ON_MESSAGE_END
    try:
        from autobahn.twisted import websocket as tx_websocket
        from autobahn.websocket import protocol
    except ImportError:
        return False
    if not all(hasattr(protocol, n) for n in ("create_xor_masker", "hltype", "hlval")):
        return False
    protocol.create_xor_masker = create_xor_masker  # type: ignore[attr-defined]
    for module in (protocol, tx_websocket):
        for name, plain in (("hltype", _plain_type), ("hlval", _plain_value)):
            if hasattr(module, name):
                setattr(module, name, plain)
    ws = protocol.WebSocketProtocol
    current = ws.onMessageEnd
    if _AUTOBAHN_ON_MESSAGE_END is None and _reads_exactly(current, _AUTOBAHN_ON_MESSAGE_END_NAMES):
        _AUTOBAHN_ON_MESSAGE_END = current
        ws.onMessageEnd = _make_on_message_end(current)  # type: ignore[method-assign,assignment]
    _speed_up_inbound(ws, tx_websocket.WebSocketAdapterProtocol)
    return True


# The names autobahn 26's ``onMessageEnd`` reads: another body is not mirrored by
# :func:`_make_on_message_end`.
_AUTOBAHN_ON_MESSAGE_END_NAMES = (
    "failedByMe", "join", "message_data", "trackedTimings", "track", "_onMessage",
    "message_is_binary", "fire", "txaio", "add_callbacks",
)  # fmt: skip


def _unmask(mask: bytes, payload: bytes) -> bytes:
    """RFC 6455 unmasking of a whole payload (what :class:`FastXorMasker` does in one call)."""
    n = len(payload)
    key = int.from_bytes((mask * ((n + 3) >> 2))[:n], "little")
    return (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")


def _make_process_data(original: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """autobahn's ``WebSocketProtocol.processData`` with one case done in one step: a whole
    unfragmented, uncompressed, masked binary frame of at most 64 KiB at the head of the
    buffer, received by a server with every per-frame hook the library's own.

    autobahn takes such a frame in two ``processData`` calls (header, then payload) through
    ``onFrameBegin``/``onFrameData``/``onFrameEnd`` and the eight ``on[_]Message*`` hooks
    between them, a ``FrameHeader`` and a masker object: about four times the work of
    unmasking the payload and handing it to ``onMessage``. This does what those calls do
    for that case, in their order: the traffic counters, the message and frame fields they
    leave behind, then ``_onMessage(payload, True)``; the buffer keeps what follows the
    frame, and the return value is autobahn's (more data buffered). Every other frame and
    state goes to autobahn's own method (a frame in progress, fragments, text, control
    frames, compression, an unmasked frame, a size limit the frame would hit, frame logging,
    timings, an auto-ping timeout to restart, listeners of the ``"message"`` event, the
    Hixie-76 protocol, a subclass overriding a hook: :func:`_hooks_are_autobahns`), as does
    every call when autobahn is not the code mirrored here (see :func:`speed_up_autobahn`).
    One field is not rewritten: ``current_frame_masker``, which only the frame being
    parsed reads (each frame header sets it before its payload).
    """
    from autobahn.websocket.protocol import WebSocketProtocol as AutobahnProtocol

    state_open = AutobahnProtocol.STATE_OPEN
    known: dict[type, bool] = {}

    def process_data(self: Any) -> bool:
        data: bytes = self.data
        n = len(data)
        if n < 6 or data[0] != 0x82 or self.current_frame is not None:
            return original(self)  # not FIN + binary, no RSV bits; or a frame under way
        length = data[1] ^ 0x80  # the mask bit set: the 7-bit length (else >= 128)
        if length < 126:
            start = 6
        elif length == 126 and n >= 8:
            length = (data[2] << 8) | data[3]
            start = 8
            if length < 126:
                return original(self)  # not the minimal encoding: autobahn's violation
        else:
            return original(self)  # unmasked, a 64-bit length, or the header incomplete
        end = start + length
        cls = type(self)
        hooks = known.get(cls)
        if hooks is None:
            hooks = known[cls] = _hooks_are_autobahns(cls)
        if (
            n < end
            or not hooks
            or self.state != state_open
            or self.inside_message
            or self.failedByMe
            or self._perMessageCompress is not None
            or not self.factory.isServer
            or not self.applyMask
            or self.trackedTimings
            or self.logFrames
            or 0 < self.maxMessagePayloadSize < length
            or 0 < self.maxFramePayloadSize < length
            or self.websocket_version == 0
            or self._listeners is not None
            or (self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic)
        ):
            return original(self)
        payload = _unmask(data[start - 4 : start], data[start:end]) if length else b""
        self.data = data[end:]
        # What onFrameBegin, onMessageBegin, onMessageFrameBegin, onFrameData, onFrameEnd,
        # onMessageFrameEnd and onMessageEnd leave for this frame (a new message, not text,
        # not compressed, one frame: no frame data kept, no message data kept after it).
        self._isMessageCompressed = False
        self.utf8validateIncomingCurrentMessage = False
        self.message_is_binary = True
        self.message_data_total_length = length
        self.frame_length = length
        self.frame_data = None
        self.message_data = None
        stats = self.trafficStats
        stats.incomingOctetsWebSocketLevel += length
        stats.incomingOctetsAppLevel += length
        stats.incomingWebSocketFrames += 1
        stats.incomingWebSocketMessages += 1
        self._onMessage(payload, True)
        return n > end

    process_data.__wrapped__ = original  # type: ignore[attr-defined]
    return process_data


# The per-frame hooks the fast path of :func:`_make_process_data` does the work of, with the
# class each must come from (the twisted adapter's ``_on*`` forward to the ``on*``).
_AUTOBAHN_FRAME_HOOKS = (
    "onFrameBegin", "onFrameData", "onFrameEnd", "onMessageBegin", "onMessageFrameBegin",
    "onMessageFrameData", "onMessageFrameEnd", "onMessageFrame", "onMessageEnd",
)  # fmt: skip
_ADAPTER_FRAME_HOOKS = (
    "_onMessageBegin", "_onMessageFrameBegin", "_onMessageFrameData", "_onMessageFrameEnd",
    "_onMessageFrame", "_onMessageEnd",
)  # fmt: skip


def _hooks_are_autobahns(cls: type) -> bool:
    """Whether ``cls`` takes every per-frame hook the fast path skips from autobahn itself
    (its ``WebSocketProtocol``, its Twisted adapter), i.e. overrides none of them."""
    from autobahn.twisted.websocket import WebSocketAdapterProtocol
    from autobahn.websocket.protocol import WebSocketProtocol as AutobahnProtocol

    if not issubclass(cls, WebSocketAdapterProtocol):
        return False
    return all(
        getattr(cls, name, None) is getattr(AutobahnProtocol, name)
        for name in _AUTOBAHN_FRAME_HOOKS
    ) and all(
        getattr(cls, name, None) is getattr(WebSocketAdapterProtocol, name)
        for name in _ADAPTER_FRAME_HOOKS
    )


def _make_data_received(original: Callable[[Any, bytes], None]) -> Callable[[Any, bytes], None]:
    """autobahn's Twisted ``dataReceived`` without its debug log call when the protocol's
    debug level is off (then the call does nothing, but its arguments, a type name, the
    peer and the length, were still built for every read), after writing the replies the
    socket's :class:`TurnWriter` holds."""
    no_op = _txaio_no_op()

    def data_received(self: Any, data: bytes) -> None:
        writer: TurnWriter | None = getattr(self, _TURN_WRITER, None)
        if writer is not None:
            writer.flush()  # the replies made so far go before any answer to these bytes
        if self.log.debug is not no_op:
            original(self, data)
            return
        self._dataReceived(data)

    data_received.__wrapped__ = original  # type: ignore[attr-defined]
    return data_received


# The names autobahn 26's inbound methods mirrored above read: another body keeps its own code.
_AUTOBAHN_INBOUND_NAMES: dict[str, tuple[str, ...]] = {
    "processData": (
        "len", "data", "current_frame", "_perMessageCompress", "_protocol_violation", "factory",
        "isServer", "requireMaskedClientFrames", "acceptMaskedServerFrames", "EXTENSION_NAME",
        "inside_message", "Exception", "struct", "unpack", "applyMask", "create_xor_masker",
        "current_frame_masker", "XorMaskerNull", "FrameHeader", "onFrameBegin", "length",
        "pointer", "process", "onFrameData", "onFrameEnd",
    ),
    "onFrameBegin": (
        "current_frame", "opcode", "control_frame_data", "inside_message", "_perMessageCompress",
        "rsv", "_isMessageCompressed", "start_decompress_message", "WebSocketProtocol",
        "MESSAGE_TYPE_TEXT", "utf8validateIncoming", "utf8validator", "reset",
        "utf8validateIncomingCurrentMessage", "utf8validateLast", "trackedTimings", "track",
        "_onMessageBegin", "MESSAGE_TYPE_BINARY", "_onMessageFrameBegin", "length",
    ),
    "onFrameData": (
        "current_frame", "opcode", "control_frame_data", "append", "_isMessageCompressed", "len",
        "log", "debug", "_LazyHexFormatter", "maxMessagePayloadSize", "message_data_total_length",
        "_perMessageCompress", "decompress_message_data", "PayloadExceededError", "failedByMe",
        "wasMaxMessagePayloadSizeExceeded", "_max_message_size_exceeded", "PayloadCorruptError",
        "_invalid_payload", "state", "WebSocketProtocol", "STATE_OPEN", "trafficStats",
        "incomingOctetsWebSocketLevel", "incomingOctetsAppLevel",
        "utf8validateIncomingCurrentMessage", "utf8validator", "validate", "utf8validateLast",
        "_onMessageFrameData",
    ),
    "onFrameEnd": (
        "current_frame", "opcode", "logFrames", "logRxFrame", "control_frame_data",
        "processControlFrame", "state", "WebSocketProtocol", "STATE_OPEN", "trafficStats",
        "incomingWebSocketFrames", "frame_data", "_onMessageFrameEnd", "autoPingTimeoutCall",
        "autoPingRestartOnAnyTraffic", "_cancelAutoPingTimeoutCall", "fin",
        "_isMessageCompressed", "_perMessageCompress", "end_decompress_message",
        "PayloadCorruptError", "failedByMe", "_invalid_payload",
        "utf8validateIncomingCurrentMessage", "utf8validateLast", "incomingWebSocketMessages",
        "_onMessageEnd", "inside_message",
    ),
    "onMessageBegin": ("message_is_binary", "message_data", "message_data_total_length"),
    "onMessageFrameBegin": (
        "frame_length", "frame_data", "message_data_total_length", "failedByMe",
        "maxMessagePayloadSize", "wasMaxMessagePayloadSizeExceeded", "_max_message_size_exceeded",
        "maxFramePayloadSize", "wasMaxFramePayloadSizeExceeded",
    ),
    "onMessageFrameData": (
        "failedByMe", "websocket_version", "message_data_total_length", "len",
        "maxMessagePayloadSize", "wasMaxMessagePayloadSizeExceeded", "_max_message_size_exceeded",
        "message_data", "append", "frame_data",
    ),
    "onMessageFrameEnd": ("failedByMe", "_onMessageFrame", "frame_data"),
    "onMessageFrame": ("failedByMe", "message_data", "extend"),
}  # fmt: skip
_ADAPTER_INBOUND_NAMES: dict[str, tuple[str, ...]] = {
    "dataReceived": (
        "log", "debug", "hltype", "dataReceived", "hlval", "peer", "len", "_dataReceived",
    ),
    "_onMessageBegin": ("onMessageBegin",),
    "_onMessageFrameBegin": ("onMessageFrameBegin",),
    "_onMessageFrameData": ("onMessageFrameData",),
    "_onMessageFrameEnd": ("onMessageFrameEnd",),
    "_onMessageFrame": ("onMessageFrame",),
    "_onMessageEnd": ("onMessageEnd",),
    "_onMessage": ("onMessage",),
}  # fmt: skip

# autobahn's processData and its Twisted adapter's dataReceived as this module found them.
_AUTOBAHN_PROCESS_DATA: Callable[[Any], bool] | None = None
_AUTOBAHN_DATA_RECEIVED: Callable[[Any, bytes], None] | None = None


def _all_read_exactly(owner: type, methods: dict[str, tuple[str, ...]]) -> bool:
    return all(_reads_exactly(getattr(owner, n, None), names) for n, names in methods.items())


def _speed_up_inbound(ws: Any, adapter: Any) -> None:
    """Install :func:`_make_process_data` and :func:`_make_data_received` when autobahn's
    inbound methods are the ones they mirror (once; a no-op otherwise)."""
    global _AUTOBAHN_PROCESS_DATA, _AUTOBAHN_DATA_RECEIVED
    if (
        _AUTOBAHN_PROCESS_DATA is None
        and _AUTOBAHN_ON_MESSAGE_END is not None  # the "message" event's skip is in place
        and _all_read_exactly(ws, _AUTOBAHN_INBOUND_NAMES)
        and _all_read_exactly(adapter, _ADAPTER_INBOUND_NAMES)
    ):
        _AUTOBAHN_PROCESS_DATA = ws.processData
        ws.processData = _make_process_data(ws.processData)
    if _AUTOBAHN_DATA_RECEIVED is None and _reads_exactly(
        adapter.dataReceived, _ADAPTER_INBOUND_NAMES["dataReceived"]
    ):
        _AUTOBAHN_DATA_RECEIVED = adapter.dataReceived
        adapter.dataReceived = _make_data_received(adapter.dataReceived)


def daphne_close_code(code: int) -> int:
    """Daphne's WebSocket layer (autobahn) lets a server close only with 1000 or
    3000-4999 and silently drops any other code, leaving the socket open: map the rest
    to 1000 (ilp-plugin-btp itself closes without a code)."""
    return code if code == 1000 or 3000 <= code <= 4999 else 1000
