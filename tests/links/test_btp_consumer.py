"""The /btp consumer against raw frames: auth, the bad-input cases, ILP, side protocols."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest
from channels.db import database_sync_to_async

from ilp.btp import (
    BtpError,
    BtpMessage,
    BtpResponse,
    BtpTransfer,
    ContentType,
    ProtocolData,
    encode_btp,
    find_entry,
)
from ilp.oer import encode_length
from ilp.packet import Fulfill, Prepare, Reject, decode_reply, encode_packet
from links import registry, side_protocols
from links.consumers import BtpConsumer
from links.peers import PeerContext
from tests.conftest import load_vectors
from tests.links.btp_helpers import RawBtp
from tests.links.conftest import FULFILLMENT, FakeSwitch, prepare_to

pytestmark = pytest.mark.django_db(transaction=True)

BTP = load_vectors("btp.json")
INTEROP_AUTH = bytes.fromhex(
    "0600000001350103046175746800000d617574685f757365726e616d650105616c6963650a"
    "617574685f746f6b656e010a616c696365746f6b656e"
)


@pytest.fixture
async def alice(make_peer: Callable[..., Any]) -> None:
    await database_sync_to_async(make_peer)("alice", token="alicetoken")


async def authed(**kwargs: Any) -> RawBtp:
    raw = await RawBtp().open()
    reply = await raw.auth(**kwargs)
    assert isinstance(reply, BtpResponse)
    return raw


def ilp_reply(packet: Any) -> Fulfill | Reject:
    assert isinstance(packet, BtpResponse), packet
    assert len(packet.protocol_data) == 1
    entry = find_entry(packet, "ilp")
    assert entry is not None and entry.content_type == 0
    return decode_reply(entry.data)


def test_close_codes_daphne_accepts() -> None:
    from links.consumers import daphne_close_code

    assert daphne_close_code(1000) == 1000
    assert daphne_close_code(1008) == 1000
    assert daphne_close_code(1002) == 1000
    assert daphne_close_code(4008) == 4008


def test_consumer_has_no_channel_layer_subscription() -> None:
    from channels.layers import get_channel_layer

    assert get_channel_layer(BtpConsumer.channel_layer_alias) is None


async def test_interop_auth_bytes(alice: None, switch: FakeSwitch) -> None:
    raw = await RawBtp().open()
    await raw.send(INTEROP_AUTH)
    assert await raw.next_raw() == bytes.fromhex("0100000001020100")
    await asyncio.sleep(0)
    assert switch.ups == ["alice"]
    assert registry.local("alice") is not None
    await raw.close()
    assert switch.downs == ["alice"]
    assert registry.local("alice") is None


@pytest.mark.parametrize("case", BTP["handshake"], ids=lambda c: c["name"])
async def test_handshake_vectors(
    case: dict[str, Any], make_peer: Callable[..., Any], switch: FakeSwitch
) -> None:
    for name in ("alice", "x", "bob"):
        await database_sync_to_async(make_peer)(name, token=case["server_secret"])
    raw = await RawBtp().open()
    await raw.send(bytes.fromhex(case["frame"]))
    if case["expected_reply"].startswith("0100"):
        assert await raw.next_raw() == bytes.fromhex(case["expected_reply"])
        assert await raw.nothing_within()
    elif case["expected_reply"] == "none":
        assert await raw.next_raw() is None
    else:
        error = await raw.next()
        assert isinstance(error, BtpError)
        assert error.code == "F00" and error.name == "NotAcceptedError"
        assert error.message in case["expected_reply"]
        assert error.request_id == int(case["frame"][2:10], 16)
        assert len(error.triggered_at) == 19 and error.triggered_at.endswith("Z")
        assert await raw.next_raw() is None  # then closed
    assert switch.calls == []


async def test_garbage_before_auth_closes_without_reply(alice: None) -> None:
    raw = await RawBtp().open()
    await raw.send(b"\xff" + os.urandom(63))
    assert await raw.next_raw() is None


async def test_text_frame_closes(alice: None) -> None:
    raw = await RawBtp().open()
    await raw.comm.send_to(text_data="hello")
    assert await raw.next_raw() is None


async def test_transfer_first_is_refused(alice: None) -> None:
    raw = await RawBtp().open()
    await raw.send(encode_btp(BtpTransfer(7, 10)))
    error = await raw.next()
    assert isinstance(error, BtpError) and error.code == "F00"
    assert await raw.next_raw() is None


async def test_auth_without_token_is_refused(alice: None) -> None:
    raw = await RawBtp().open()
    await raw.send(encode_btp(BtpMessage(9, (ProtocolData("auth", 0, b""),))))
    error = await raw.next()
    assert isinstance(error, BtpError) and error.request_id == 9
    assert await raw.next_raw() is None


async def test_ilp_before_auth_is_refused(alice: None, switch: FakeSwitch) -> None:
    raw = await RawBtp().open()
    await raw.send_prepare(prepare_to())
    error = await raw.next()
    assert isinstance(error, BtpError) and error.code == "F00"
    assert await raw.next_raw() is None
    assert switch.calls == []


async def test_wrong_token_and_disabled_and_wrong_link(
    make_peer: Callable[..., Any], switch: FakeSwitch
) -> None:
    await database_sync_to_async(make_peer)("alice", token="alicetoken", enabled=False)
    await database_sync_to_async(make_peer)("oer", token="oertoken", link="http-sync")
    for user, token in (("alice", "alicetoken"), ("oer", "oertoken"), ("nobody", "x")):
        raw = await RawBtp().open()
        error = await raw.auth(user, token)
        assert isinstance(error, BtpError) and error.message == "invalid auth_token"
        assert await raw.next_raw() is None
    assert switch.ups == []


async def test_auth_without_username_finds_peer_by_token(alice: None, switch: FakeSwitch) -> None:
    raw = await RawBtp().open()
    reply = await raw.auth("", "alicetoken")
    assert isinstance(reply, BtpResponse)
    assert switch.ups == ["alice"]


async def test_ilp_exchange(alice: None, switch: FakeSwitch) -> None:
    raw = await authed()
    rid = await raw.send_prepare(prepare_to(amount=5))
    reply = await raw.next()
    assert reply is not None and reply.request_id == rid
    fulfill = ilp_reply(reply)
    assert fulfill == Fulfill(FULFILLMENT, b"ok")
    ((source, prepare),) = switch.calls
    assert source == "alice" and prepare.amount == 5
    rid = await raw.send_prepare(prepare_to(condition=bytes(32)))
    reply = await raw.next()
    assert reply is not None and reply.request_id == rid
    assert isinstance(ilp_reply(reply), Reject)


@pytest.mark.parametrize(
    "ilp",
    [
        encode_packet(prepare_to())[:20],  # truncated
        bytes([12, 0x82, 0x7F, 0xFF]) + encode_packet(prepare_to())[3:],  # length overrun
        bytes([0x63, 0x03, 1, 2, 3]),  # unknown type
        b"",  # empty
        os.urandom(200),  # garbage
        encode_packet(Fulfill(bytes(32))),  # not a Prepare
    ],
    ids=["truncated", "overrun", "unknown-type", "empty", "garbage", "fulfill"],
)
async def test_malformed_ilp_is_a_reject_f01_then_still_serving(
    ilp: bytes, alice: None, switch: FakeSwitch
) -> None:
    raw = await authed()
    rid = await raw.send_prepare(ilp)
    reply = await raw.next()
    assert reply is not None and reply.request_id == rid
    reject = ilp_reply(reply)
    assert isinstance(reject, Reject) and reject.code == "F01"
    assert reject.triggered_by == "test.local"
    assert switch.calls == []
    await raw.send_prepare(prepare_to())
    assert isinstance(ilp_reply(await raw.next()), Fulfill)


async def test_after_auth_truncated_frame_gets_error(alice: None, switch: FakeSwitch) -> None:
    raw = await authed()
    frame = encode_btp(BtpMessage(5, (ProtocolData("ilp", 0, encode_packet(prepare_to())),)))
    await raw.send(frame[: len(frame) // 2])
    error = await raw.next()
    assert isinstance(error, BtpError) and error.request_id == 5 and error.code == "F01"
    await raw.send_prepare(prepare_to())
    assert isinstance(ilp_reply(await raw.next()), Fulfill)


async def test_after_auth_unknown_type_gets_error(alice: None, switch: FakeSwitch) -> None:
    raw = await authed()
    await raw.send(bytes([0x63, 0, 0, 0, 5, 2, 1, 0]))
    error = await raw.next()
    assert isinstance(error, BtpError) and error.request_id == 5 and error.code == "F00"
    await raw.comm.send_to(text_data="hello")
    error = await raw.next()
    assert isinstance(error, BtpError) and error.code == "F01"
    await raw.send_prepare(prepare_to())
    assert isinstance(ilp_reply(await raw.next()), Fulfill)


async def test_after_auth_2mib_frame_is_rejected_and_socket_survives(
    alice: None, switch: FakeSwitch
) -> None:
    raw = await authed()
    small = encode_packet(prepare_to())  # short envelope, empty data (last byte 00)
    assert small[1] < 0x80 and small[-1] == 0
    data = os.urandom(2 * 1024 * 1024)
    inner = small[2:-1] + encode_length(len(data)) + data
    big = bytes([12]) + encode_length(len(inner)) + inner
    rid = await raw.send_prepare(big)
    reply = await raw.next(timeout=10)
    assert reply is not None and reply.request_id == rid
    reject = ilp_reply(reply)
    assert isinstance(reject, Reject) and reject.code == "F01"
    await raw.send_prepare(prepare_to())
    assert isinstance(ilp_reply(await raw.next()), Fulfill)


async def test_side_protocols_and_transfer(alice: None, switch: FakeSwitch) -> None:
    raw = await authed()
    await raw.send(encode_btp(BtpMessage(11, (ProtocolData("foo", 2, b"{}"),))))
    assert await raw.next() == BtpResponse(11, ())
    seen: list[tuple[str, Any]] = []

    async def claim(
        peer: PeerContext, packet: BtpMessage | BtpTransfer
    ) -> tuple[ProtocolData, ...]:
        seen.append((peer.name, packet))
        return (ProtocolData("claim", ContentType.APPLICATION_JSON, b'{"ok":true}'),)

    async def refuse(
        peer: PeerContext, packet: BtpMessage | BtpTransfer
    ) -> tuple[ProtocolData, ...]:
        raise side_protocols.SideProtocolError("F08", "insufficient")

    side_protocols.register("claim", claim)
    side_protocols.register("refuse", refuse)
    try:
        await raw.send(encode_btp(BtpMessage(12, (ProtocolData("claim", 2, b"{}"),))))
        reply = await raw.next()
        assert reply == BtpResponse(12, (ProtocolData("claim", 2, b'{"ok":true}'),))
        await raw.send(encode_btp(BtpTransfer(13, 500, (ProtocolData("claim", 2, b"{}"),))))
        assert isinstance(await raw.next(), BtpResponse)
        assert seen[1][1].amount == 500
        # no settlement module for a plain Transfer: an Error, never a Response
        await raw.send(encode_btp(BtpTransfer(14, 5)))
        refused = await raw.next()
        assert isinstance(refused, BtpError) and refused.request_id == 14
        assert (refused.code, refused.name) == ("F00", "NotAcceptedError")
        assert refused.data.decode() == side_protocols.TRANSFER_REFUSED
        await raw.send(encode_btp(BtpMessage(15, (ProtocolData("refuse", 0, b""),))))
        error = await raw.next()
        assert isinstance(error, BtpError) and error.code == "F08"
        assert error.name == "InsufficientBalanceError" and error.request_id == 15
    finally:
        side_protocols.unregister("claim")
        side_protocols.unregister("refuse")
    # unknown replies are ignored silently
    await raw.send(encode_btp(BtpResponse(999, ())))
    assert await raw.nothing_within()


async def test_fifty_requests_in_flight_run_concurrently(alice: None, switch: FakeSwitch) -> None:
    """Structural, not timed: the switch holds every Prepare until all 50 are inside it
    at once. A consumer that served them one by one (or fewer than 50 at a time) would
    never get there and no reply would come."""
    n = 50
    inside = 0
    most_inside = 0
    all_inside = asyncio.Event()

    async def gate(source: PeerContext, prepare: Prepare) -> Fulfill:
        nonlocal inside, most_inside
        inside += 1
        most_inside = max(most_inside, inside)
        if inside == n:
            all_inside.set()
        try:
            await all_inside.wait()
        finally:
            inside -= 1
        return Fulfill(FULFILLMENT, prepare.data)

    switch.handler = gate
    raw = await authed()
    ids = {await raw.send_prepare(prepare_to(data=bytes([i]))): i for i in range(n)}
    got: dict[int, bytes] = {}
    for _ in range(n):
        try:
            reply = await raw.next(timeout=10)
        except TimeoutError:
            reply = None
        assert reply is not None, f"no reply: at most {most_inside} of {n} were in the switch"
        fulfill = ilp_reply(reply)
        assert isinstance(fulfill, Fulfill)
        got[reply.request_id] = fulfill.data
    assert all_inside.is_set() and most_inside == n
    # each answer went to its own request
    assert got == {rid: bytes([i]) for rid, i in ids.items()}


async def test_outgoing_prepare_round_trip(alice: None, switch: FakeSwitch) -> None:
    raw = await authed()
    link = registry.get("alice")
    assert link is not None
    task = asyncio.ensure_future(link.send_prepare(prepare_to("test.local.alice.x")))
    frame = await raw.next()
    assert isinstance(frame, BtpMessage)
    entry = find_entry(frame, "ilp")
    assert entry is not None
    await raw.send(
        encode_btp(
            BtpResponse(
                frame.request_id, (ProtocolData("ilp", 0, encode_packet(Fulfill(FULFILLMENT))),)
            )
        )
    )
    assert await task == Fulfill(FULFILLMENT)

    # a BTP Error from the peer → T01; a Response without ilp → T01
    task = asyncio.ensure_future(link.send_prepare(prepare_to()))
    frame = await raw.next()
    assert frame is not None
    await raw.send(
        encode_btp(
            BtpError(frame.request_id, "F00", "NotAcceptedError", "20200101000000.000Z", b"no")
        )
    )
    reject = await task
    assert isinstance(reject, Reject) and reject.code == "T01"
    task = asyncio.ensure_future(link.send_prepare(prepare_to()))
    frame = await raw.next()
    assert frame is not None
    await raw.send(encode_btp(BtpResponse(frame.request_id, ())))
    reject = await task
    assert isinstance(reject, Reject) and reject.code == "T01"


async def test_outgoing_prepare_timeout_and_disconnect(alice: None, switch: FakeSwitch) -> None:
    raw = await authed()
    link = registry.get("alice")
    assert link is not None
    reject = await link.send_prepare(prepare_to(expires_in=0.2))
    assert isinstance(reject, Reject) and reject.code == "R00"
    assert await raw.next() is not None  # the Message went out
    task = asyncio.ensure_future(link.send_prepare(prepare_to()))
    assert await raw.next() is not None
    await raw.close()
    reject = await asyncio.wait_for(task, 2)
    assert isinstance(reject, Reject) and reject.code == "T01"
    assert switch.downs == ["alice"]
    assert registry.local("alice") is None


async def test_two_connections_same_peer(alice: None, switch: FakeSwitch) -> None:
    first = await authed()
    second = await authed()
    assert registry.local("alice") is not None
    await second.close()
    assert switch.downs == []  # the first socket still serves alice
    link = registry.get("alice")
    assert link is not None
    task = asyncio.ensure_future(link.send_prepare(prepare_to()))
    frame = await first.next()
    assert frame is not None
    await first.send(
        encode_btp(
            BtpResponse(
                frame.request_id, (ProtocolData("ilp", 0, encode_packet(Fulfill(FULFILLMENT))),)
            )
        )
    )
    assert isinstance(await task, Fulfill)
    await first.close()
    assert switch.downs == ["alice"]


async def test_status_recorded(alice: None, switch: FakeSwitch) -> None:
    from links import activity
    from links.models import Peer

    raw = await authed()
    await raw.send_prepare(prepare_to())
    await raw.next()
    await activity.flush()
    peer = await Peer.objects.aget(name="alice")
    assert peer.connected_since is not None and peer.last_packet_at is not None
    await raw.close()
    await activity.flush()
    peer = await Peer.objects.aget(name="alice")
    assert peer.connected_since is None


async def test_supervisor_closes_links_of_disabled_peers(alice: None, switch: FakeSwitch) -> None:
    from links import services
    from links.supervisor import Supervisor

    raw = await authed()
    await database_sync_to_async(services.peer_update)(name="alice", max_packet_amount=77)
    await Supervisor().refresh_live_links()
    link = registry.local("alice")
    assert link is not None and link.peer.max_packet_amount == 77  # type: ignore[attr-defined]
    await database_sync_to_async(services.peer_update)(name="alice", enabled=False)
    await Supervisor().refresh_live_links()
    assert await raw.next_raw() is None  # closed by the server
    await raw.close()
    assert switch.downs == ["alice"]


def test_celery_prune_tasks() -> None:
    from links.tasks import prune_btp_responses, prune_http_async_requests

    assert prune_btp_responses() == 0
    assert prune_http_async_requests() == 0


# --- autobahn speed-ups (links.consumers.speed_up_autobahn) ----------------------------------


@pytest.mark.parametrize("length", [0, 1, 3, 4, 5, 127, 128, 300, 70000])
def test_fast_xor_masker_matches_autobahn_on_any_split(length: int) -> None:
    from autobahn.nvx._xormasker import create_xor_masker as reference_masker

    from links.consumers import FastXorMasker

    mask = os.urandom(4)
    data = os.urandom(length)
    for cuts in ([], [1], [3, 7], [length // 2], [2, 5, 6, length - 1]):
        ours, theirs = FastXorMasker(mask), reference_masker(mask, length)
        cuts = sorted({min(cut, length) for cut in cuts})
        bounds = zip([0, *cuts], [*cuts, length], strict=True)
        pieces = [data[a:b] for a, b in bounds if b > a]  # autobahn never passes b"" in
        assert b"".join(ours.process(p) for p in pieces) == b"".join(
            theirs.process(p) for p in pieces
        )
        assert ours.pointer() == theirs.pointer() == length
        ours.reset()
        assert ours.pointer() == 0
        assert FastXorMasker(mask).process(ours.process(data)) == data  # an involution


def test_autobahn_speed_ups_are_installed() -> None:
    from autobahn.twisted import websocket as tx_websocket
    from autobahn.websocket import protocol

    from links import consumers

    assert consumers.speed_up_autobahn()
    assert protocol.create_xor_masker is consumers.create_xor_masker
    assert protocol.hlval(5) == "5" and tx_websocket.hltype is consumers._plain_type

    class NotReady:
        def __repr__(self) -> str:
            raise AttributeError("not set up yet")

        def method(self) -> None: ...

    assert (
        protocol.hltype(NotReady().method)
        == "<test_autobahn_speed_ups_are_installed.<locals>.NotReady.method>"
    )


class _SentProtocol:
    """What ``serverSend`` was asked to send, for the Daphne send-path test below."""

    sent: list[tuple[bytes, bool]]

    def serverSend(self, content: bytes, binary: bool = False) -> None:
        self.sent.append((content, binary))


@pytest.mark.parametrize("case", ["open", "gone", "disconnected", "connecting", "empty"])
async def test_daphne_frame_sender_does_what_handle_reply_does(case: str) -> None:
    import functools

    from daphne.server import Server
    from daphne.ws_protocol import WebSocketProtocol

    from links.consumers import daphne_frame_sender

    class Protocol(_SentProtocol, WebSocketProtocol):
        def __init__(self) -> None:
            self.sent = []
            self.state = self.STATE_CONNECTING if case == "connecting" else self.STATE_OPEN

    server = Server.__new__(Server)  # not started: handle_reply reads only its connections
    server.connections = {}
    outcomes = []
    for direct in (False, True):
        protocol = Protocol()
        if case != "gone":
            server.connections[protocol] = {"disconnected": 1} if case == "disconnected" else {}
        send = functools.partial(server.handle_reply, protocol)
        sender = daphne_frame_sender(send)
        assert sender is not None
        frame = b"" if case == "empty" else b"\x01\x00\x00\x00\x07frame"
        try:
            if direct:
                sender.send(frame)
            else:
                await send({"type": "websocket.send", "bytes": frame})
            outcome: object = protocol.sent
        except ValueError as exc:
            outcome = str(exc)
        outcomes.append(outcome)
    assert outcomes[0] == outcomes[1]
    assert (outcomes[0] == [(b"\x01\x00\x00\x00\x07frame", True)]) is (case == "open")


def test_daphne_frame_sender_only_for_daphne() -> None:
    import functools

    from links.consumers import daphne_frame_sender

    async def send(message: dict[str, Any]) -> None: ...

    async def handle_reply(protocol: object, message: dict[str, Any]) -> None: ...

    assert daphne_frame_sender(send) is None
    assert daphne_frame_sender(functools.partial(handle_reply, object())) is None


def _autobahn_protocol(payload: list[bytes]) -> Any:
    from autobahn.twisted.websocket import WebSocketServerProtocol

    protocol = WebSocketServerProtocol()
    protocol.failedByMe = False
    protocol.trackedTimings = None
    protocol.message_is_binary = True
    protocol.message_data = list(payload)
    protocol.got = []
    protocol.onMessage = lambda data, is_binary: protocol.got.append((data, is_binary))
    return protocol


def test_autobahn_message_end_without_listeners_delivers_the_same() -> None:
    from autobahn.websocket import protocol as ab_protocol

    from links import consumers

    assert consumers.speed_up_autobahn()
    original = consumers._AUTOBAHN_ON_MESSAGE_END
    assert original is not None
    assert ab_protocol.WebSocketProtocol.onMessageEnd.__wrapped__ is original  # type: ignore[attr-defined]
    ours, theirs = _autobahn_protocol([b"ab", b"c"]), _autobahn_protocol([b"ab", b"c"])
    ours.onMessageEnd()
    original(theirs)
    assert ours.got == theirs.got == [(b"abc", True)]
    assert ours.message_data is None and theirs.message_data is None
    failed = _autobahn_protocol([b"x"])
    failed.failedByMe = True
    failed.onMessageEnd()
    assert failed.got == [] and failed.message_data is None


def test_autobahn_message_end_with_a_listener_fires_it() -> None:
    from links import consumers

    assert consumers.speed_up_autobahn()
    protocol = _autobahn_protocol([b"hi"])
    heard: list[tuple[bytes, bool]] = []
    protocol.set_valid_events(["message"])
    protocol.on("message", lambda payload, is_binary: heard.append((payload, is_binary)))
    protocol.onMessageEnd()
    assert protocol.got == [(b"hi", True)]
    assert heard == [(b"hi", True)]


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


def _daphne_protocol(**options: Any) -> Any:
    """A Daphne WebSocket protocol, open, configured as its factory does, writing to a list."""
    import collections

    import txaio
    from autobahn.twisted.websocket import WebSocketServerFactory
    from autobahn.websocket.protocol import TrafficStats
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
    protocol.trafficStats = TrafficStats()
    protocol.trackedTimings = None
    protocol._perMessageCompress = None
    protocol.client_addr = None
    protocol.logFrames = protocol.logOctets = False
    for name, value in options.items():
        setattr(protocol, name, value)
    return protocol


@pytest.mark.parametrize("length", [1, 5, 125, 126, 127, 300, 65535, 65536, 70000])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"maskServerFrames": True},
        {"autoFragmentSize": 100},
        {"maxMessagePayloadSize": 200},
        {"logOctets": True},
    ],
)
def test_binary_message_sender_writes_what_autobahn_writes(
    length: int, options: dict[str, Any]
) -> None:
    from autobahn.exception import PayloadExceededError

    from links.consumers import _autobahn_send_is_known, binary_message_sender

    frame = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
    ours, theirs = _daphne_protocol(**options), _daphne_protocol(**options)
    assert _autobahn_send_is_known(ours)
    fallbacks: list[int] = []
    real_server_send = ours.serverSend

    def server_send(content: bytes, binary: bool = False) -> None:
        fallbacks.append(len(content))
        real_server_send(content, binary)

    ours.serverSend = server_send
    outcomes = []
    for protocol, send in ((ours, binary_message_sender(ours)), (theirs, None)):
        try:
            if send is not None:
                send(frame)
            else:
                protocol.serverSend(frame, True)
            outcome: object = None
        except PayloadExceededError as exc:
            outcome = str(exc)
        outcomes.append(outcome)
    assert outcomes[0] == outcomes[1]
    if not options.get("maskServerFrames"):  # a masked frame has a random mask
        assert b"".join(ours.transport.written) == b"".join(theirs.transport.written)
    assert vars(ours.trafficStats) == vars(theirs.trafficStats)
    # The one case mirrored is sent directly; every other goes through autobahn.
    mirrored = (
        length <= 0xFFFF
        and not options.get("maskServerFrames")
        and not options.get("logOctets")
        and length <= (options.get("autoFragmentSize") or length)
        and length <= (options.get("maxMessagePayloadSize") or length)
    )
    assert (fallbacks == []) is mirrored


def test_binary_message_sender_leaves_other_states_to_autobahn() -> None:
    from autobahn.exception import Disconnected

    from links.consumers import binary_message_sender

    closed = _daphne_protocol()
    closed.state = closed.STATE_CLOSING
    with pytest.raises(Disconnected):
        binary_message_sender(closed)(b"frame")
    queued = _daphne_protocol()
    queued.send_queue.append((b"earlier", True))
    queued._trigger = lambda: None
    binary_message_sender(queued)(b"frame")
    assert queued.transport.written == []  # behind the queued write, as autobahn does
    assert len(queued.send_queue) == 2


def test_binary_message_sender_falls_back_for_another_protocol() -> None:
    from daphne.ws_protocol import WebSocketProtocol

    from links.consumers import _autobahn_send_is_known

    class Overridden(WebSocketProtocol):
        def sendMessage(self, *args: Any, **kwargs: Any) -> None:
            raise AssertionError("not mirrored")

    assert not _autobahn_send_is_known(Overridden())
    assert not _autobahn_send_is_known(object())


def _autobahn_frames(*payloads: bytes) -> bytes:
    """What autobahn itself writes for these binary messages, one after the other."""
    theirs = _daphne_protocol()
    for payload in payloads:
        theirs.serverSend(payload, True)
    return b"".join(theirs.transport.written)


async def test_replies_of_one_loop_turn_go_in_one_write() -> None:
    from links import consumers

    assert consumers.speed_up_autobahn()
    protocol = _daphne_protocol()
    send = consumers.binary_message_sender(protocol)
    payloads = [b"a" * 5, b"b" * 300, b"c" * 125]
    for payload in payloads:
        send(payload)
    assert protocol.transport.written == []  # held until the turn ends
    await asyncio.sleep(0)
    assert protocol.transport.written == [_autobahn_frames(*payloads)]
    send(b"next")
    await asyncio.sleep(0)
    assert protocol.transport.written[1:] == [_autobahn_frames(b"next")]


async def test_held_replies_go_before_autobahns_own_writes() -> None:
    from links import consumers

    assert consumers.speed_up_autobahn()
    plain = _daphne_protocol()
    send = consumers.binary_message_sender(plain)
    send(b"first")
    plain.maskServerFrames = True  # the next send falls back to autobahn's sendMessage
    send(b"second")
    assert plain.transport.written[0] == _autobahn_frames(b"first")
    assert len(plain.transport.written) == 2  # then autobahn's (masked) frame, in order
    # The consumer's close and a read flush the same way.
    closing = _daphne_protocol()
    send = consumers.binary_message_sender(closing)
    send(b"reply")
    consumers.flush_replies(closing)
    assert closing.transport.written == [_autobahn_frames(b"reply")]
    await asyncio.sleep(0)  # the turn's own flush finds nothing left
    assert closing.transport.written == [_autobahn_frames(b"reply")]


async def test_a_read_writes_the_held_replies_before_answering_it() -> None:
    from links import consumers

    assert consumers.speed_up_autobahn()
    protocol = _daphne_protocol()
    send = consumers.binary_message_sender(protocol)
    send(b"reply")
    seen: list[list[bytes]] = []
    protocol._dataReceived = lambda data: seen.append(list(protocol.transport.written))
    protocol.dataReceived(b"\x89\x80\x00\x00\x00\x00")  # a masked Ping from the client
    assert seen == [[_autobahn_frames(b"reply")]]


async def test_replies_held_when_the_socket_stops_being_open_are_dropped() -> None:
    from links import consumers

    assert consumers.speed_up_autobahn()
    protocol = _daphne_protocol()
    send = consumers.binary_message_sender(protocol)
    send(b"reply")
    protocol.state = protocol.STATE_CLOSING  # a close frame went out some other way
    await asyncio.sleep(0)
    assert protocol.transport.written == []


def test_without_a_running_loop_a_reply_goes_at_once() -> None:
    from links import consumers

    assert consumers.speed_up_autobahn()
    protocol = _daphne_protocol()
    consumers.binary_message_sender(protocol)(b"reply")
    assert protocol.transport.written == [_autobahn_frames(b"reply")]
