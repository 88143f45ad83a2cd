"""The sans-IO BTP sessions: the handshake table, bad input, request/reply matching,
the client side, and the BTP/2.0-I responder memory."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ilp.btp import (
    BTP_IDEMPOTENT,
    AuthRequest,
    BtpError,
    BtpMessage,
    BtpResponse,
    BtpTransfer,
    BtpType,
    ProtocolData,
    auth_message,
    decode_btp,
    encode_btp,
    encode_ilp_frame,
    ilp_message,
    peek_header,
)
from ilp.btp_session import (
    CLIENT_TABLE,
    SERVER_TABLE,
    Authenticated,
    AuthRequested,
    BtpClientSession,
    BtpServerSession,
    BtpStateError,
    CloseConnection,
    Event,
    FrameKind,
    IlpReply,
    IlpRequest,
    MemoryRecord,
    ReplyReceived,
    RequestFailed,
    ResponderMemory,
    SendFrame,
    SideProtocolRequest,
    State,
    TransferRequest,
    Verdict,
)
from tests.conftest import load_vectors

BTP = load_vectors("btp.json")
OBSERVED = load_vectors("observed-connector-21.3.0.json")
NOW = datetime(2026, 11, 25, 21, 22, 22, 111000, tzinfo=UTC)
SECRET = "alice_secret"
PREPARE = bytes.fromhex(
    next(v for v in BTP["vectors"] if v["name"] == "message_ilp_prepare")["object"]["protocolData"][
        0
    ]["data"]
)
FULFILL = bytes.fromhex("0d21" + "02" * 32 + "00")


def server(secret: str = SECRET, **kwargs: Any) -> BtpServerSession:
    return BtpServerSession(lambda auth: auth.token_matches(secret), **kwargs)


def frames(events: list[Event]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, SendFrame)]


def only_frame(events: list[Event]) -> bytes:
    (frame,) = frames(events)
    return frame


def closes(events: list[Event]) -> bool:
    return any(isinstance(e, CloseConnection) for e in events)


def authenticated_server(**kwargs: Any) -> BtpServerSession:
    session = server(**kwargs)
    events = session.receive_frame(encode_btp(auth_message(1, "alice", SECRET)), NOW)
    assert only_frame(events).hex() == "0100000001020100"
    assert session.state is State.OPEN
    return session


def assert_error(raw: bytes, request_id: int, code: str, data: str | None = None) -> BtpError:
    error = decode_btp(raw)
    assert isinstance(error, BtpError)
    assert error.request_id == request_id
    assert error.code == code
    assert error.triggered_at == "20261125212222.111Z"
    if data is not None:
        assert error.message == data
    return error


# --- the handshake table of btp.json ---------------------------------------------------

HANDSHAKE = BTP["handshake"]


@pytest.mark.parametrize("row", HANDSHAKE, ids=[r["name"] for r in HANDSHAKE])
def test_handshake_row(row: dict[str, Any]) -> None:
    session = server(row["server_secret"])
    events = session.receive_frame(bytes.fromhex(row["frame"]), NOW)
    expected = row["expected_reply"]
    if expected == "none":
        assert frames(events) == []
    elif expected.startswith("Error"):
        # Error code=F00 name=NotAcceptedError data="..." requestId=77 (...)
        fields = dict(
            part.split("=", 1)
            for part in expected.removeprefix("Error ").split(" (")[0].split(" ", 2)
            if "=" in part
        )
        tail = expected.split('data="', 1)[1]
        data, request_id = tail.split('" requestId=')
        error = assert_error(only_frame(events), int(request_id.split()[0]), fields["code"], data)
        assert error.name == fields["name"]
        assert error.protocol_data == ()
    else:
        assert only_frame(events).hex() == expected
    if row["then"] == "connection open":
        assert not closes(events)
        assert session.state is State.OPEN
        assert Authenticated("alice", False) in events
    else:
        assert isinstance(events[-1], CloseConnection)
        assert session.state is State.CLOSED
        assert not any(isinstance(e, Authenticated) for e in events)


def test_auth_ok_error_bytes_match_the_js_rejection() -> None:
    # The full bytes ilp-plugin-btp sent for the wrong token, with its triggeredAt.
    observed = OBSERVED["scenarios"]["auth_bad_token"]["responseHex"]
    row = next(r for r in HANDSHAKE if r["name"] == "auth_wrong_token")
    events = server("bob_secret").receive_frame(bytes.fromhex(row["frame"]), NOW)
    assert only_frame(events).hex() == observed


def test_minimal_rfc_auth_accepted() -> None:
    vector = next(v for v in BTP["vectors"] if v["name"] == "message_auth_minimal_rfc")
    events = server("secret").receive_frame(bytes.fromhex(vector["hex"]), NOW)
    assert only_frame(events).hex() == "0100000003020100"
    assert Authenticated("", False) in events


def test_observed_ilp_plugin_btp_client_stream() -> None:
    # What a real ilp-plugin-btp client sent: its auth (token still percent-encoded),
    # then four ILP Prepares.
    received = [
        bytes.fromhex(f["hex"])
        for f in OBSERVED["btp_client_ilp_plugin_btp_1_5_0"]["frames_received_by_server"]
    ]
    session = server("my%20tok%3A")
    events = session.receive_frame(received[0], NOW)
    assert Authenticated("my_user", False) in events
    auth_id = peek_header(received[0])
    assert auth_id is not None
    assert only_frame(events) == bytes((1,)) + auth_id[1].to_bytes(4, "big") + b"\x02\x01\x00"
    for raw in received[1:5]:
        (event,) = session.receive_frame(raw, NOW)
        assert isinstance(event, IlpRequest)
        assert event.ilp == PREPARE
        reply = session.respond_ilp(event.request_id, FULFILL, NOW)
        assert decode_btp(reply) == BtpResponse(
            event.request_id, (ProtocolData("ilp", 0, FULFILL),)
        )


# --- bad input of interop scenario 9, BTP layer ----------------------------------------


def test_garbage_before_auth_closes_without_reply() -> None:
    garbage = bytearray(os.urandom(64))
    garbage[0] = 0xFF
    session = server()
    events = session.receive_frame(bytes(garbage), NOW)
    assert frames(events) == []
    assert closes(events)


def test_text_message_before_auth_closes() -> None:
    session = server()
    events = session.receive_text("hello", NOW)
    assert frames(events) == [] and closes(events)


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (encode_btp(auth_message(5, "alice", "wrong-token")), "invalid auth_token"),
        (
            encode_btp(BtpTransfer(5, 10)),
            "First message sent over BTP connection must be auth packet",
        ),
        (
            encode_btp(BtpMessage(5, (ProtocolData("auth", 0, b""),))),
            "Auth packet must have auth and auth_token subprotocols",
        ),
        (
            encode_btp(ilp_message(5, PREPARE)),
            "Auth packet must have auth and auth_token subprotocols",
        ),
    ],
    ids=["wrong-token", "transfer-first", "auth-without-token", "ilp-before-auth"],
)
def test_refused_first_frames(first: bytes, reason: str) -> None:
    session = server()
    events = session.receive_frame(first, NOW)
    assert_error(only_frame(events), 5, "F00", reason)
    assert isinstance(events[-1], CloseConnection)
    assert not any(isinstance(e, IlpRequest | TransferRequest | Authenticated) for e in events)
    # and nothing more is accepted on that session
    assert session.receive_frame(encode_btp(auth_message(6, "alice", SECRET)), NOW) == []


@pytest.mark.parametrize(
    "first", ["0100000001020100", "02000000011346303001780a6e6f742d612d74696d65000100"]
)
def test_reply_before_auth_is_not_answered(first: str) -> None:
    events = server().receive_frame(bytes.fromhex(first), NOW)
    assert frames(events) == [] and closes(events)


def test_truncated_frame_after_auth_gets_error_with_its_id_and_session_continues() -> None:
    session = authenticated_server()
    frame = encode_btp(ilp_message(0xDEADBEEF, PREPARE))
    events = session.receive_frame(frame[: len(frame) // 2], NOW)
    assert_error(only_frame(events), 0xDEADBEEF, "F01")
    assert not closes(events)
    (event,) = session.receive_frame(frame, NOW)
    assert event == IlpRequest(0xDEADBEEF, PREPARE)


def test_unknown_type_after_auth_gets_error_with_its_id() -> None:
    session = authenticated_server()
    frame = bytes((0x63,)) + (77).to_bytes(4, "big") + b"\x02\x01\x00"
    events = session.receive_frame(frame, NOW)
    assert_error(only_frame(events), 77, "F00", "unsupported BTP type 99")
    assert session.state is State.OPEN


@pytest.mark.parametrize("btp_type", [3, 4, 5])
def test_btp1_types_after_auth_are_refused(btp_type: int) -> None:
    session = authenticated_server()
    events = session.receive_frame(bytes((btp_type,)) + b"\x00\x00\x00\x09\x02\x01\x00", NOW)
    assert_error(only_frame(events), 9, "F00")


@pytest.mark.parametrize("raw", ["", "06", "06000000"])
def test_headerless_garbage_after_auth_gets_error_with_id_zero(raw: str) -> None:
    session = authenticated_server()
    events = session.receive_frame(bytes.fromhex(raw), NOW)
    assert_error(only_frame(events), 0, "F01")


@pytest.mark.parametrize("text", ["hi", "hello world", "\x06\x00\x00\x00\x05\x02\x01\x00"])
def test_text_message_after_auth_gets_error_with_id_zero(text: str) -> None:
    session = authenticated_server()
    assert_error(only_frame(session.receive_text(text, NOW)), 0, "F01")
    assert session.state is State.OPEN


def test_two_mib_frame_is_delivered_to_the_ilp_layer() -> None:
    session = authenticated_server()
    big = b"\x0c" + os.urandom(2 * 1024 * 1024)
    (event,) = session.receive_frame(encode_btp(ilp_message(42, big)), NOW)
    assert event == IlpRequest(42, big)


def test_every_invalid_vector_after_auth_gets_an_error_never_a_response() -> None:
    answered = 0
    for vector in BTP["invalid"]:
        session = authenticated_server()
        raw = bytes.fromhex(vector["hex"])
        events = session.receive_frame(raw, NOW)
        assert session.state is State.OPEN, vector["name"]
        header = peek_header(raw)
        if header is not None and header[0] in (BtpType.RESPONSE, BtpType.ERROR):
            assert events == [], vector["name"]  # an unreadable reply is never answered
            continue
        (reply,) = frames(events)
        error = decode_btp(reply)
        assert isinstance(error, BtpError), vector["name"]
        assert error.request_id == (0 if header is None else header[1])
        assert error.code in ("F00", "F01")
        answered += 1
    assert answered == len(BTP["invalid"]) - 1  # all but error_code_truncated


@settings(max_examples=300)
@given(st.binary(max_size=120))
def test_after_auth_any_bytes_keep_the_session_and_never_get_a_response(raw: bytes) -> None:
    session = authenticated_server()
    events = session.receive_frame(raw, NOW)
    assert session.state is State.OPEN
    assert not closes(events)
    for frame in frames(events):
        assert isinstance(decode_btp(frame), BtpError)
    requests = [
        e for e in events if isinstance(e, IlpRequest | SideProtocolRequest | TransferRequest)
    ]
    # an Error frame and a request event are exclusive: one reply per request
    assert len(requests) + len(frames(events)) <= 1
    for request in requests:
        reply = decode_btp(session.respond(request.request_id, NOW))
        assert reply.request_id == request.request_id


# --- requests from the peer: one reply each --------------------------------------------


def test_side_protocol_and_transfer_requests() -> None:
    session = authenticated_server()
    message = BtpMessage(7, (ProtocolData("foo", 1, b"bar"),))
    (event,) = session.receive_frame(encode_btp(message), NOW)
    assert event == SideProtocolRequest(7, message)
    vector = next(v for v in BTP["vectors"] if v["name"] == "response_empty")
    assert session.respond(7, NOW) == bytes.fromhex(vector["hex"]).replace(
        (4242).to_bytes(4, "big"), (7).to_bytes(4, "big")
    )
    transfer = BtpTransfer(8, 100)
    (event,) = session.receive_frame(encode_btp(transfer), NOW)
    assert isinstance(event, TransferRequest) and event.amount == 100
    assert_error(session.respond_error(8, "F00", "no settlement here", NOW), 8, "F00")


def test_ilp_entry_among_others_is_an_ilp_request() -> None:
    vector = next(v for v in BTP["vectors"] if v["name"] == "message_multiple_entries")
    session = authenticated_server()
    (event,) = session.receive_frame(bytes.fromhex(vector["hex"]), NOW)
    assert event == IlpRequest(8, PREPARE)


def test_answering_twice_or_unasked_is_a_local_error() -> None:
    session = authenticated_server()
    session.receive_frame(encode_btp(ilp_message(3, PREPARE)), NOW)
    session.respond_ilp(3, FULFILL, NOW)
    with pytest.raises(BtpStateError):
        session.respond_ilp(3, FULFILL, NOW)
    with pytest.raises(BtpStateError):
        session.respond(99, NOW)


def test_peer_reusing_an_unanswered_id_gets_f05() -> None:
    session = authenticated_server()
    frame = encode_btp(ilp_message(3, PREPARE))
    assert session.receive_frame(frame, NOW) == [IlpRequest(3, PREPARE)]
    assert_error(only_frame(session.receive_frame(frame, NOW)), 3, "F05")
    session.respond_ilp(3, FULFILL, NOW)  # the first one is still answerable, once
    assert session.receive_frame(frame, NOW) == [IlpRequest(3, PREPARE)]  # now a new request


def test_answer_after_close_is_still_built() -> None:
    session = authenticated_server()
    session.receive_frame(encode_btp(ilp_message(3, PREPARE)), NOW)
    session.close()
    assert session.respond_ilp(3, FULFILL, NOW) == encode_ilp_frame(BtpType.RESPONSE, 3, FULFILL)


# --- our requests: ids and reply matching ----------------------------------------------


def test_send_ilp_and_match_the_reply() -> None:
    session = authenticated_server()
    frame = session.send_ilp(0xCB7FDAB4, PREPARE)
    vector = next(v for v in BTP["vectors"] if v["name"] == "message_ilp_prepare")
    assert frame.hex() == vector["hex"]
    assert session.request_id_in_use(0xCB7FDAB4)
    reply = next(v for v in BTP["vectors"] if v["name"] == "response_ilp_fulfill")
    (event,) = session.receive_frame(bytes.fromhex(reply["hex"]), NOW)
    assert event == IlpReply(0xCB7FDAB4, FULFILL)
    assert not session.request_id_in_use(0xCB7FDAB4)
    # the same reply again matches nothing: ignored, never answered
    assert session.receive_frame(bytes.fromhex(reply["hex"]), NOW) == []


def test_request_id_in_flight_cannot_be_reused() -> None:
    session = authenticated_server()
    session.send_ilp(5, PREPARE)
    with pytest.raises(BtpStateError):
        session.send_ilp(5, PREPARE)
    with pytest.raises(BtpStateError):
        session.send_transfer(BtpTransfer(5, 1))


def test_sending_before_auth_is_a_local_error() -> None:
    with pytest.raises(BtpStateError):
        server().send_ilp(5, PREPARE)


def test_error_reply_fails_the_request() -> None:
    session = authenticated_server()
    session.send_ilp(0x4D, PREPARE)
    vector = next(v for v in BTP["vectors"] if v["name"] == "error_invalid_auth_token")
    (event,) = session.receive_frame(bytes.fromhex(vector["hex"]), NOW)
    assert isinstance(event, RequestFailed)
    assert event.request_id == 0x4D
    assert event.error is not None and event.error.code == "F00"
    assert "invalid auth_token" in event.reason


def test_response_without_ilp_fails_an_ilp_request() -> None:
    session = authenticated_server()
    session.send_ilp(9, PREPARE)
    (event,) = session.receive_frame(encode_btp(BtpResponse(9)), NOW)
    assert event == RequestFailed(9, "Response without an ilp entry")


def test_unreadable_reply_fails_the_request_without_an_answer() -> None:
    session = authenticated_server()
    session.send_ilp(9, PREPARE)
    reply = encode_ilp_frame(BtpType.RESPONSE, 9, FULFILL)
    (event,) = session.receive_frame(reply[:-3], NOW)
    assert isinstance(event, RequestFailed) and event.request_id == 9
    assert session.receive_frame(reply[:-3], NOW) == []  # no longer pending: ignored


def test_side_protocol_and_transfer_replies() -> None:
    session = authenticated_server()
    session.send_message(BtpMessage(11, (ProtocolData("foo", 0, b""),)))
    session.send_transfer(BtpTransfer(12, 5))
    (event,) = session.receive_frame(encode_btp(BtpResponse(11)), NOW)
    assert event == ReplyReceived(11, BtpResponse(11))
    ilp_reply = encode_ilp_frame(BtpType.RESPONSE, 12, FULFILL)
    (event,) = session.receive_frame(ilp_reply, NOW)
    assert event == ReplyReceived(12, decode_btp(ilp_reply))  # type: ignore[arg-type]


def test_cancel_then_late_reply_is_ignored() -> None:
    session = authenticated_server()
    session.send_ilp(9, PREPARE)
    session.cancel(9)
    assert session.receive_frame(encode_ilp_frame(BtpType.RESPONSE, 9, FULFILL), NOW) == []


def test_close_fails_every_pending_request_once() -> None:
    session = authenticated_server()
    session.send_ilp(1, PREPARE)
    session.send_transfer(BtpTransfer(2, 5))
    failed = session.close("socket gone")
    assert sorted(e.request_id for e in failed if isinstance(e, RequestFailed)) == [1, 2]
    assert session.close() == []
    assert session.receive_frame(encode_ilp_frame(BtpType.RESPONSE, 1, FULFILL), NOW) == []


# --- asynchronous authentication -------------------------------------------------------


def test_auth_decided_later_with_held_frames() -> None:
    session = BtpServerSession()
    auth = encode_btp(auth_message(1, "alice", SECRET))
    (event,) = session.receive_frame(auth, NOW)
    assert event == AuthRequested(1, AuthRequest("alice", SECRET))
    assert session.state is State.AUTHENTICATING
    # a pipelining client: held, not answered, not refused
    assert session.receive_frame(encode_btp(ilp_message(2, PREPARE)), NOW) == []
    events = session.accept_auth(NOW)
    assert events == [
        SendFrame(bytes.fromhex("0100000001020100")),
        Authenticated("alice", False),
        IlpRequest(2, PREPARE),
    ]
    with pytest.raises(BtpStateError):
        session.accept_auth(NOW)


def test_auth_rejected_later() -> None:
    session = BtpServerSession()
    session.receive_frame(encode_btp(auth_message(4, "alice", "nope")), NOW)
    session.receive_frame(encode_btp(ilp_message(2, PREPARE)), NOW)
    events = session.reject_auth(NOW)
    assert_error(only_frame(events), 4, "F00", "invalid auth_token")
    assert isinstance(events[-1], CloseConnection)


def test_too_many_frames_before_the_decision_close() -> None:
    session = BtpServerSession()
    session.receive_frame(encode_btp(auth_message(1, "alice", SECRET)), NOW)
    events: list[Event] = []
    for request_id in range(100):
        events = session.receive_frame(encode_btp(ilp_message(request_id + 2, PREPARE)), NOW)
        if events:
            break
    assert closes(events)
    assert session.state is State.CLOSED


# --- the client side -------------------------------------------------------------------


def test_client_sends_the_ilp_plugin_btp_auth_and_opens() -> None:
    client = BtpClientSession("alice", SECRET)
    vector = next(v for v in BTP["vectors"] if v["name"] == "message_auth_ilp_plugin_btp")
    assert client.start(1).hex() == vector["hex"]
    with pytest.raises(BtpStateError):
        client.start(2)
    # a stray reply for another id is ignored while waiting
    assert client.receive_frame(bytes.fromhex("0100000009020100"), NOW) == []
    events = client.receive_frame(bytes.fromhex("0100000001020100"), NOW)
    assert events == [Authenticated("alice", False)]
    assert client.state is State.OPEN


def test_client_refused_closes() -> None:
    client = BtpClientSession("bob", "x")
    client.start(77)
    vector = next(v for v in BTP["vectors"] if v["name"] == "error_invalid_auth_token")
    events = client.receive_frame(bytes.fromhex(vector["hex"]), NOW)
    assert isinstance(events[-1], CloseConnection)
    assert "invalid auth_token" in events[-1].reason
    assert client.state is State.CLOSED


def test_client_answers_early_requests_with_an_error() -> None:
    client = BtpClientSession("bob", "x")
    client.start(1)
    events = client.receive_frame(encode_btp(ilp_message(5, PREPARE)), NOW)
    assert_error(only_frame(events), 5, "F00")
    assert client.state is State.AUTH_SENT


def test_client_garbage_while_waiting_closes() -> None:
    client = BtpClientSession("bob", "x")
    assert closes(client.receive_frame(b"\x01", NOW))


def pump(sender_frames: list[bytes], receiver: BtpServerSession | BtpClientSession) -> list[Event]:
    events: list[Event] = []
    for frame in sender_frames:
        events.extend(receiver.receive_frame(frame, NOW))
    return events


def test_client_and_server_talk() -> None:
    client = BtpClientSession("alice", SECRET)
    srv = server()
    to_client = frames(pump([client.start(0xA1)], srv))
    assert pump(to_client, client) == [Authenticated("alice", False)]
    # both directions, interleaved ids chosen by each side
    (request,) = pump([client.send_ilp(0xB0, PREPARE)], srv)
    assert request == IlpRequest(0xB0, PREPARE)
    (request_back,) = pump([srv.send_ilp(0xB0, PREPARE)], client)  # same id, other direction
    assert request_back == IlpRequest(0xB0, PREPARE)
    assert pump([srv.respond_ilp(0xB0, FULFILL, NOW)], client) == [IlpReply(0xB0, FULFILL)]
    assert pump([client.respond_ilp(0xB0, FULFILL, NOW)], srv) == [IlpReply(0xB0, FULFILL)]


# --- BTP/2.0-I -------------------------------------------------------------------------


def idempotent_pair(memory: ResponderMemory) -> tuple[BtpClientSession, BtpServerSession]:
    client = BtpClientSession("alice", SECRET, idempotent=True, memory=ResponderMemory())
    srv = server(memory=memory)
    auth = client.start(1)
    assert decode_btp(auth).protocol_data[-1] == ProtocolData(BTP_IDEMPOTENT, 1, b"1")
    events = srv.receive_frame(auth, NOW)
    assert Authenticated("alice", True) in events
    assert pump(frames(events), client) == [Authenticated("alice", True)]
    return client, srv


def test_idempotence_needs_both_sides_and_a_memory() -> None:
    # the client offers, the server has no memory: plain BTP/2.0, empty auth Response
    srv = server()
    events = srv.receive_frame(encode_btp(auth_message(1, "alice", SECRET, idempotent=True)), NOW)
    assert only_frame(events).hex() == "0100000001020100"
    assert Authenticated("alice", False) in events
    # the server has a memory, the client does not offer
    srv = server(memory=ResponderMemory())
    events = srv.receive_frame(encode_btp(auth_message(1, "alice", SECRET)), NOW)
    assert Authenticated("alice", False) in events
    # the server may decline for this peer
    srv = BtpServerSession(memory=ResponderMemory())
    srv.receive_frame(encode_btp(auth_message(1, "alice", SECRET, idempotent=True)), NOW)
    assert Authenticated("alice", False) in srv.accept_auth(NOW, allow_idempotent=False)


def test_repeat_is_replayed_byte_for_byte_across_reconnects() -> None:
    memory = ResponderMemory()
    client, srv = idempotent_pair(memory)
    frame = client.send_ilp(0x55, PREPARE)
    assert pump([frame], srv) == [IlpRequest(0x55, PREPARE)]
    # a resend while the first copy is being processed: nothing, the reply will come
    assert pump([frame], srv) == []
    reply = srv.respond_ilp(0x55, FULFILL, NOW)
    # a resend after the answer: the stored bytes, not a second request
    assert frames(pump([frame], srv)) == [reply]
    # the link drops; the client reconnects and resends the byte-identical frame
    srv.close()
    _, srv2 = idempotent_pair(memory)
    assert frames(pump([frame], srv2)) == [reply]


def test_reused_id_with_other_content_gets_f05() -> None:
    memory = ResponderMemory()
    _, srv = idempotent_pair(memory)
    assert pump([encode_btp(ilp_message(7, PREPARE))], srv) == [IlpRequest(7, PREPARE)]
    events = pump([encode_btp(ilp_message(7, PREPARE + b"x"))], srv)
    assert_error(only_frame(events), 7, "F05")


def test_idempotent_errors_are_replayed_too() -> None:
    memory = ResponderMemory()
    _, srv = idempotent_pair(memory)
    frame = encode_btp(BtpTransfer(8, 100))
    pump([frame], srv)
    error = srv.respond_error(8, "F00", "no settlement", NOW)
    assert frames(pump([frame], srv)) == [error]


def test_full_memory_answers_t00() -> None:
    memory = ResponderMemory(default_quota=1)
    _, srv = idempotent_pair(memory)
    pump([encode_btp(ilp_message(1, PREPARE))], srv)
    events = pump([encode_btp(ilp_message(2, PREPARE))], srv)
    assert_error(only_frame(events), 2, "T00")


# --- the responder memory on its own ---------------------------------------------------


def test_memory_verdicts_and_keys() -> None:
    memory = ResponderMemory()
    assert memory.admit("a", 1, b"frame", NOW).verdict is Verdict.NEW
    assert memory.admit("a", 1, b"frame", NOW).verdict is Verdict.IN_PROGRESS
    assert memory.admit("a", 1, b"other", NOW).verdict is Verdict.CONFLICT
    assert memory.admit("b", 1, b"frame", NOW).verdict is Verdict.NEW  # other account
    memory.complete("a", 1, b"reply", NOW)
    admission = memory.admit("a", 1, b"frame", NOW)
    assert (admission.verdict, admission.reply) == (Verdict.REPLAY, b"reply")
    with pytest.raises(BtpStateError):
        memory.complete("a", 1, b"again", NOW)
    with pytest.raises(BtpStateError):
        memory.complete("a", 2, b"never admitted", NOW)


def test_memory_retention_and_deadline() -> None:
    memory = ResponderMemory(retention=timedelta(seconds=120), grace=timedelta(seconds=60))
    memory.admit("a", 1, b"f1", NOW)
    memory.complete("a", 1, b"r1", NOW)
    memory.admit("a", 2, b"f2", NOW)
    memory.complete("a", 2, b"r2", NOW, deadline=NOW + timedelta(minutes=10))
    later = NOW + timedelta(seconds=121)
    assert memory.admit("a", 1, b"f1-new", later).verdict is Verdict.NEW  # window over
    assert memory.admit("a", 2, b"f2", later).verdict is Verdict.REPLAY  # deadline + 60 s
    assert memory.expire(NOW + timedelta(minutes=11)) == 1  # 2 goes; 1 is in progress again
    assert memory.admit("a", 2, b"f2", NOW + timedelta(minutes=11)).verdict is Verdict.NEW


def test_memory_never_drops_a_live_entry_when_full() -> None:
    memory = ResponderMemory(default_quota=2, retention=timedelta(seconds=120))
    for request_id in (1, 2):
        memory.admit("a", request_id, b"f", NOW)
        memory.complete("a", request_id, b"r", NOW)
    assert memory.admit("a", 3, b"f", NOW + timedelta(seconds=60)).verdict is Verdict.FULL
    assert len(memory) == 2
    # once their window is over, room is made
    assert memory.admit("a", 3, b"f", NOW + timedelta(seconds=121)).verdict is Verdict.NEW
    assert len(memory) == 1


def test_each_account_has_its_own_quota() -> None:
    memory = ResponderMemory(default_quota=2)
    memory.set_quota("flood", 3)
    for request_id in (1, 2, 3):
        assert memory.admit("flood", request_id, b"f", NOW).verdict is Verdict.NEW
        memory.complete("flood", request_id, b"r", NOW)
    assert memory.admit("flood", 4, b"f", NOW).verdict is Verdict.FULL
    # another account is not affected by the full one
    assert memory.admit("other", 1, b"f", NOW).verdict is Verdict.NEW
    assert memory.admit("other", 2, b"f", NOW).verdict is Verdict.NEW
    assert memory.admit("other", 3, b"f", NOW).verdict is Verdict.FULL  # its own default
    assert (memory.count("flood"), memory.count("other"), len(memory)) == (3, 2, 5)
    assert memory.quota("flood") == 3 and memory.quota("nobody") == 2
    # a full account still replays what it already holds
    assert memory.admit("flood", 2, b"f", NOW).verdict is Verdict.REPLAY


def test_a_full_account_finds_its_stale_entries_behind_a_live_one() -> None:
    memory = ResponderMemory(default_quota=2, sweep_interval=timedelta(seconds=1))
    memory.admit("a", 1, b"f", NOW)
    memory.complete("a", 1, b"r", NOW, deadline=NOW + timedelta(minutes=30))  # long-lived
    memory.admit("a", 2, b"f", NOW)
    memory.complete("a", 2, b"r", NOW)  # 120 s
    later = NOW + timedelta(seconds=121)
    # entry 1 (in front) is live, entry 2 behind it is stale: the full sweep finds it
    assert memory.admit("a", 3, b"f", later).verdict is Verdict.NEW
    assert memory.get("a", 2) is None and memory.get("a", 1) is not None
    # full again with live entries: FULL, and the sweep is not repeated within the interval
    assert memory.admit("a", 4, b"f", later).verdict is Verdict.FULL
    assert memory.admit("a", 4, b"f", later + timedelta(milliseconds=10)).verdict is Verdict.FULL


def test_retention_is_capped_whatever_the_deadline() -> None:
    memory = ResponderMemory(retention=timedelta(seconds=120), max_retention=timedelta(hours=1))
    memory.admit("a", 1, b"f", NOW)
    memory.complete("a", 1, b"r", NOW, deadline=datetime.max.replace(tzinfo=UTC))
    record = memory.get("a", 1)
    assert record is not None and record.keep_until == NOW + timedelta(hours=1)
    assert memory.admit("a", 1, b"f", NOW + timedelta(minutes=59)).verdict is Verdict.REPLAY
    assert memory.admit("a", 1, b"new", NOW + timedelta(hours=1)).verdict is Verdict.NEW
    with pytest.raises(ValueError):
        ResponderMemory(retention=timedelta(hours=2), max_retention=timedelta(hours=1))
    with pytest.raises(ValueError):
        memory.set_quota("a", -1)


def test_memory_abandons_stuck_entries() -> None:
    memory = ResponderMemory(abandon_after=timedelta(minutes=10))
    memory.admit("a", 1, b"f", NOW)
    assert memory.admit("a", 1, b"f", NOW + timedelta(minutes=9)).verdict is Verdict.IN_PROGRESS
    assert memory.admit("a", 1, b"f", NOW + timedelta(minutes=10)).verdict is Verdict.NEW


def test_memory_records_persist_and_restore() -> None:
    memory = ResponderMemory()
    memory.admit("a", 1, b"f", NOW)
    memory.complete("a", 1, b"r", NOW)
    saved = [
        MemoryRecord(r.account, r.request_id, r.digest, r.received_at, r.keep_until, r.reply)
        for r in memory.records()
    ]
    fresh = ResponderMemory()
    for record in saved:
        fresh.restore(record)
    found = fresh.get("a", 1)
    assert found is not None and found.reply == b"r" and found.keep_until == saved[0].keep_until
    assert fresh.get("a", 2) is None and fresh.get("b", 1) is None
    assert fresh.admit("a", 1, b"f", NOW).reply == b"r"


# --- the tables ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "states"),
    [
        (SERVER_TABLE, [State.AWAITING_AUTH, State.AUTHENTICATING, State.OPEN, State.CLOSED]),
        (CLIENT_TABLE, [State.IDLE, State.AUTH_SENT, State.OPEN, State.CLOSED]),
    ],
)
def test_tables_cover_every_reachable_pair(table: Any, states: list[State]) -> None:
    assert {(s, k) for s in states for k in FrameKind} <= set(table)
    for handler in table.values():
        assert callable(
            getattr(BtpServerSession if table is SERVER_TABLE else BtpClientSession, handler)
        )
