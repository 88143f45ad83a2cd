"""The inbound speed-ups of :mod:`links.consumers` (``speed_up_autobahn``): a whole binary frame
taken in one step, the per-read debug log call skipped. Each case feeds the same bytes, cut the
same way, to two Daphne protocols, one through the speed-ups and one through autobahn's own
methods, and compares what the application got, what was written back, the traffic counters
and every field the protocol was left with."""

from __future__ import annotations

import collections
import itertools
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from links import consumers


@pytest.fixture(autouse=True)
def _installed() -> None:
    assert consumers.speed_up_autobahn()
    assert consumers._AUTOBAHN_PROCESS_DATA is not None
    assert consumers._AUTOBAHN_DATA_RECEIVED is not None


@contextmanager
def autobahn_own() -> Iterator[None]:
    """autobahn's own inbound methods for the duration (the reference run)."""
    from autobahn.twisted.websocket import WebSocketAdapterProtocol
    from autobahn.websocket.protocol import WebSocketProtocol

    fast = WebSocketProtocol.processData, WebSocketAdapterProtocol.dataReceived
    WebSocketProtocol.processData = consumers._AUTOBAHN_PROCESS_DATA  # type: ignore[method-assign,assignment]
    WebSocketAdapterProtocol.dataReceived = consumers._AUTOBAHN_DATA_RECEIVED  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        WebSocketProtocol.processData, WebSocketAdapterProtocol.dataReceived = fast  # type: ignore[method-assign]


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.lost = 0

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def loseConnection(self) -> None:
        self.lost += 1

    def abortConnection(self) -> None:
        self.lost += 1

    def unregisterProducer(self) -> None:
        pass


class _Queue:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def put_nowait(self, item: dict[str, Any]) -> None:
        self.items.append(item)


def daphne_protocol(**options: Any) -> Any:
    """A Daphne WebSocket protocol after its handshake (server side, open), as autobahn and
    Daphne set it up, writing to a list and queueing to a list."""
    import txaio
    from autobahn.twisted.websocket import WebSocketServerFactory
    from autobahn.websocket.protocol import TrafficStats
    from autobahn.websocket.utf8validator import Utf8Validator
    from daphne.ws_protocol import WebSocketProtocol

    txaio.use_twisted()
    factory = WebSocketServerFactory()
    protocol = WebSocketProtocol()
    protocol.factory = factory
    for name in protocol.CONFIG_ATTRS:
        setattr(protocol, name, getattr(factory, name))
    protocol.transport = _Transport()
    protocol.state = protocol.STATE_OPEN
    protocol.send_queue = collections.deque()
    protocol.triggered = False
    protocol.trafficStats = TrafficStats()
    protocol.trackedTimings = None
    protocol._perMessageCompress = None
    protocol.data = b""
    protocol.current_frame = None
    protocol.inside_message = False
    protocol.utf8validator = Utf8Validator()
    protocol.websocket_version = 13
    protocol.autoPingTimeoutCall = None
    protocol.autoPingPendingCall = None
    protocol.closeHandshakeTimeoutCall = None
    protocol.serverConnectionDropTimeoutCall = None
    protocol.openHandshakeTimeoutCall = None
    for flag in ("failedByMe", "closedByMe", "droppedByMe", "wasClean", "muted"):
        setattr(protocol, flag, False)
    protocol.wasMaxFramePayloadSizeExceeded = protocol.wasMaxMessagePayloadSizeExceeded = False
    protocol.wasNotCleanReason = None
    protocol.localCloseCode = protocol.localCloseReason = None
    protocol.remoteCloseCode = protocol.remoteCloseReason = None
    protocol.peer = "tcp:127.0.0.1:1"
    protocol.client_addr = ["127.0.0.1", 1]
    protocol.application_queue = _Queue()
    protocol.server = None
    protocol.logFrames = protocol.logOctets = False
    protocol.closeHandshakeTimeout = 0  # no timers: the test has no reactor running
    protocol.serverConnectionDropTimeout = 0
    for name, value in options.items():
        setattr(protocol, name, value)
    return protocol


def frame(payload: bytes, opcode: int = 2, fin: bool = True, masked: bool = True,
          rsv: int = 0, long_length: bool = False) -> bytes:  # fmt: skip
    """One client frame; ``long_length``: the 16-bit length even when 7 bits would do."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    bit = 0x80 if masked else 0
    if n < 126 and not long_length:
        head += bytes([bit | n])
    elif n <= 0xFFFF:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def payload(n: int) -> bytes:
    return bytes(range(256)) * (n // 256) + bytes(range(n % 256))


# Fields that hold objects (compared by what they carry, not identity) or that only the frame
# being parsed reads (see links.consumers._make_process_data).
SKIP = {"transport", "application_queue", "trafficStats", "current_frame", "current_frame_masker",
        "factory", "utf8validator", "send_queue"}  # fmt: skip


def plain(value: Any) -> Any:
    """Data as is; any other object (a Deferred, a function, a timer) by its type."""
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return type(value).__qualname__


def state(protocol: Any) -> dict[str, Any]:
    out = {k: plain(v) for k, v in vars(protocol).items() if k not in SKIP}
    out["last_ping"] = "last_ping" in out  # the time Daphne received the last message
    frame_header = protocol.current_frame
    out["current_frame"] = None if frame_header is None else vars(frame_header)
    out["stats"] = vars(protocol.trafficStats)
    out["written"] = b"".join(protocol.transport.written)
    out["lost"] = protocol.transport.lost
    out["got"] = protocol.application_queue.items
    return out


def feed_both(stream: bytes, cuts: list[int], **options: Any) -> dict[str, Any]:
    """Feed ``stream`` cut at ``cuts`` to a protocol with the speed-ups and one without;
    assert they end the same; return the end state, with ``"headers"``: how many frame
    headers autobahn's own parser made in the run with the speed-ups (those it was left)."""
    from autobahn.websocket import protocol as ab_protocol

    ends = []
    for fast in (True, False):
        protocol = daphne_protocol(**options)
        bounds = [0, *sorted(c for c in cuts if 0 < c < len(stream)), len(stream)]
        headers = count_frame_headers()
        with autobahn_own() if not fast else _nothing(), headers:
            for a, b in itertools.pairwise(bounds):
                if b > a and protocol.state != protocol.STATE_CLOSED:
                    protocol.dataReceived(stream[a:b])
        ends.append(state(protocol))
        if fast:
            made = headers.made
    assert ends[0] == ends[1]
    assert ab_protocol.FrameHeader is _FRAME_HEADER
    return {**ends[0], "headers": made}


_FRAME_HEADER = __import__("autobahn.websocket.protocol", fromlist=["FrameHeader"]).FrameHeader


class count_frame_headers:  # a context manager, named as used
    """Counts the ``FrameHeader``s autobahn's ``processData`` makes (one per frame it parses)."""

    def __init__(self) -> None:
        self.made = 0

    def __enter__(self) -> None:
        from autobahn.websocket import protocol as ab_protocol

        def counting(*args: Any) -> Any:
            self.made += 1
            return _FRAME_HEADER(*args)

        ab_protocol.FrameHeader = counting  # type: ignore[assignment,misc]

    def __exit__(self, *exc: object) -> None:
        from autobahn.websocket import protocol as ab_protocol

        ab_protocol.FrameHeader = _FRAME_HEADER  # type: ignore[misc]


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def binary(data: bytes) -> dict[str, Any]:
    return {"type": "websocket.receive", "bytes": data}


@pytest.mark.parametrize("n", [0, 1, 5, 125, 126, 127, 300, 65535, 65536, 70000])
@pytest.mark.parametrize("cut", ["whole", "bytewise-head", "halves"])
def test_one_binary_frame(n: int, cut: str) -> None:
    data = payload(n)
    stream = frame(data)
    cuts = {"whole": [], "bytewise-head": list(range(1, 12)), "halves": [len(stream) // 2]}[cut]
    end = feed_both(stream, cuts)
    assert end["got"] == [binary(data)]
    assert end["data"] == b"" and end["stats"]["incomingWebSocketMessages"] == 1
    # Taken in one step when the whole frame is buffered before autobahn has parsed its
    # header (a read ending after the header, before the payload's end), up to 64 KiB.
    head = 6 if n < 126 else 8 if n <= 0xFFFF else 14
    parsed_early = n > 0xFFFF or any(head <= c < len(stream) for c in cuts)
    assert end["headers"] == (1 if parsed_early else 0)


def test_many_frames_in_one_read_and_across_reads() -> None:
    messages = [payload(n) for n in (3, 0, 200, 125, 1000, 7)]
    stream = b"".join(frame(m) for m in messages)
    for cuts in ([], [1], [5, 9, 300], list(range(0, len(stream), 7))):
        end = feed_both(stream, cuts)
        assert end["got"] == [binary(m) for m in messages]
        if not cuts:
            assert end["headers"] == 0


def test_fragmented_text_ping_and_close_between_binary_frames() -> None:
    stream = b"".join(
        [
            frame(b"one"),
            frame(b"frag", fin=False),
            frame(b"ment", opcode=0, fin=False),
            frame(b"ed", opcode=0),
            frame("héllo".encode(), opcode=1),
            frame(b"are you there", opcode=9),
            frame(b"two"),
            frame(struct.pack("!H", 1000) + b"bye", opcode=8),
            frame(b"after close"),
        ]
    )
    for cuts in ([], [2], list(range(0, len(stream), 3))):
        end = feed_both(stream, cuts)
        got = [m.get("bytes", m.get("text")) for m in end["got"]]
        assert got == [b"one", b"fragmented", "héllo", b"two"]
        assert b"\x8a\x0dare you there" in end["written"]  # the pong
        assert end["state"] != daphne_protocol().STATE_OPEN  # closing after the close frame


@pytest.mark.parametrize(
    ("shape", "why"),
    [
        ({"masked": False}, "unmasked client frame"),
        ({"long_length": True}, "non-minimal length"),
        ({"rsv": 4}, "RSV bit without an extension"),
        ({"opcode": 0}, "continuation outside a message"),
        ({"opcode": 3}, "reserved opcode"),
        ({"opcode": 1, "data": b"\xff\xfe"}, "invalid UTF-8"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_protocol_violations_fail_the_same(shape: dict[str, Any], why: str) -> None:
    shape = dict(shape)
    stream = frame(shape.pop("data", b"bad"), **shape)
    end = feed_both(stream + frame(b"never"), [])
    assert end["failedByMe"], why
    assert all(m.get("bytes") != b"never" for m in end["got"])


@pytest.mark.parametrize(
    "options",
    [
        {"maxMessagePayloadSize": 100},
        {"maxFramePayloadSize": 100},
        {"requireMaskedClientFrames": False},
        {"applyMask": False},
        {"logFrames": True},
        {"logOctets": True},  # logged by _dataReceived, before any frame is parsed
        {"state": 2},  # STATE_CLOSING: frames still parsed, not counted
    ],
)
def test_options_and_states_the_fast_path_leaves_to_autobahn(options: dict[str, Any]) -> None:
    stream = frame(payload(50)) + frame(payload(200)) + frame(b"", masked=False)
    end = feed_both(stream, [], **options)
    assert (end["headers"] >= 1) is ("logOctets" not in options)
    feed_both(stream, list(range(0, len(stream), 5)), **options)


def test_a_listener_of_the_message_event_still_hears_every_message() -> None:
    for fast in (True, False):
        protocol = daphne_protocol()
        heard: list[bytes] = []
        protocol.set_valid_events(["message"])
        protocol.on("message", lambda data, is_binary, heard=heard: heard.append(data))
        with autobahn_own() if not fast else _nothing():
            protocol.dataReceived(frame(b"a") + frame(b"b"))
        assert heard == [b"a", b"b"]
        assert [m["bytes"] for m in protocol.application_queue.items] == [b"a", b"b"]


def test_a_subclass_overriding_a_frame_hook_keeps_autobahns_path() -> None:
    from daphne.ws_protocol import WebSocketProtocol

    class Streaming(WebSocketProtocol):
        def onMessageFrameData(self, payload: bytes) -> None:
            self.frames_seen = getattr(self, "frames_seen", 0) + 1
            super().onMessageFrameData(payload)

    assert consumers._hooks_are_autobahns(WebSocketProtocol)
    assert not consumers._hooks_are_autobahns(Streaming)
    protocol = daphne_protocol()
    protocol.__class__ = Streaming
    protocol.dataReceived(frame(b"abc"))
    assert protocol.frames_seen == 1
    assert protocol.application_queue.items == [binary(b"abc")]


def test_the_debug_log_call_is_made_when_debug_is_on() -> None:
    calls: list[dict[str, Any]] = []

    class Log:
        def debug(self, *args: Any, **kwargs: Any) -> None:
            calls.append(kwargs)

    protocol = daphne_protocol()
    protocol.log = Log()
    protocol.dataReceived(frame(b"abc"))
    assert calls and calls[0]["data_len"] == str(len(frame(b"abc")))
    assert protocol.application_queue.items == [binary(b"abc")]


def test_unmask_matches_the_masker() -> None:
    for n in (0, 1, 3, 4, 5, 126, 1000):
        mask, data = os.urandom(4), os.urandom(n)
        assert consumers._unmask(mask, data) == consumers.FastXorMasker(mask).process(data)


def test_another_autobahn_is_not_sped_up() -> None:
    def processData(self: Any) -> bool:  # another body: other names read
        return bool(self.something_else)

    names = consumers._AUTOBAHN_INBOUND_NAMES["processData"]
    assert not consumers._reads_exactly(processData, names)
    assert consumers._reads_exactly(consumers._AUTOBAHN_PROCESS_DATA, names)
