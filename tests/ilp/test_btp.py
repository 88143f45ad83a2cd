"""BTP/2.0 frames: golden vectors both ways, every invalid frame, Hypothesis round trips."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ilp.btp import (
    AUTH,
    AUTH_TOKEN,
    AUTH_USERNAME,
    BTP_IDEMPOTENT,
    UINT32_MAX,
    AuthRejected,
    AuthRequest,
    BtpError,
    BtpErrorCode,
    BtpMessage,
    BtpPacket,
    BtpResponse,
    BtpTransfer,
    BtpType,
    ContentType,
    ProtocolData,
    auth_credentials,
    auth_message,
    auth_response,
    btp_error,
    decode_btp,
    encode_btp,
    encode_ilp_frame,
    find_entry,
    ilp_message,
    ilp_response,
    offers_idempotent,
    peek_header,
    peek_ilp_frame,
    read_auth,
)
from ilp.errors import DecodeError, EncodeError
from ilp.oer import UINT64_MAX
from tests.conftest import load_vectors

BTP = load_vectors("btp.json")
OBSERVED = load_vectors("observed-connector-21.3.0.json")


def iso_to_generalized(iso: str) -> str:
    """``2017-12-24T16:14:32.279Z`` -> ``20171224161432.279Z`` (the vectors' JSON form)."""
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return moment.strftime("%Y%m%d%H%M%S.") + f"{moment.microsecond // 1000:03d}Z"


def packet_from_json(obj: dict[str, Any]) -> BtpPacket:
    entries = tuple(
        ProtocolData(e["protocolName"], e["contentType"], bytes.fromhex(e["data"]))
        for e in obj["protocolData"]
    )
    request_id = obj["requestId"]
    match obj["type"]:
        case 1:
            return BtpResponse(request_id, entries)
        case 2:
            return BtpError(
                request_id,
                obj["code"],
                obj["name"],
                iso_to_generalized(obj["triggeredAt"]),
                obj["data"].encode("utf-8"),
                entries,
            )
        case 6:
            return BtpMessage(request_id, entries)
        case 7:
            return BtpTransfer(request_id, int(obj["amount"]), entries)
    raise AssertionError(f"vector type {obj['type']}")


VECTORS = BTP["vectors"]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_decodes_to_object(vector: dict[str, Any]) -> None:
    assert decode_btp(bytes.fromhex(vector["hex"])) == packet_from_json(vector["object"])


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_encodes_to_bytes(vector: dict[str, Any]) -> None:
    assert encode_btp(packet_from_json(vector["object"])).hex() == vector["hex"]


INVALID = BTP["invalid"]


@pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_frame_is_rejected(vector: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        decode_btp(bytes.fromhex(vector["hex"]))


def test_edge_case_garbage_triggered_at_is_kept_raw() -> None:
    (edge,) = BTP["edge_cases"]
    raw = bytes.fromhex(edge["hex"])
    error = decode_btp(raw)
    assert isinstance(error, BtpError)
    assert error.triggered_at == "not-a-time"
    assert error.triggered_at_time is None
    assert (error.code, error.name) == ("F00", "x")
    assert encode_btp(error) == raw


@pytest.mark.parametrize(
    "frame",
    [f["hex"] for f in OBSERVED["btp_client_ilp_plugin_btp_1_5_0"]["frames_received_by_server"]]
    + [
        OBSERVED["scenarios"][name]["responseHex"]
        for name in ("auth_ok", "auth_bad_token", "auth_first_not_auth", "btp_transfer")
    ]
    + [m["btpHex"] for m in OBSERVED["scenarios"]["bobIncoming"]]
    + [m["btpHex"] for m in OBSERVED["scenarios"]["bobIncomingAfterSync"]],
)
def test_observed_frames_round_trip(frame: str) -> None:
    assert encode_btp(decode_btp(bytes.fromhex(frame))).hex() == frame


def test_observed_js_errors_decode() -> None:
    section = OBSERVED["btp_client_ilp_plugin_btp_1_5_0"]
    for key in (
        "incoming_message_without_data_handler_reply",
        "incoming_message_bad_json_entry_reply",
    ):
        case = section[key]
        error = decode_btp(bytes.fromhex(case["hex"]))
        parsed = case["parsed"]["data"]
        assert isinstance(error, BtpError)
        assert error.request_id == case["parsed"]["requestId"]
        assert (error.code, error.name, error.message) == (
            parsed["code"],
            parsed["name"],
            parsed["data"],
        )
        assert error.triggered_at == iso_to_generalized(parsed["triggeredAt"])
        assert error.triggered_at_time == datetime.fromisoformat(
            parsed["triggeredAt"].replace("Z", "+00:00")
        )


# --- the hot path agrees with the general codec ----------------------------------------


def test_peek_ilp_frame_on_vectors() -> None:
    seen = 0
    for vector in VECTORS:
        raw = bytes.fromhex(vector["hex"])
        peeked = peek_ilp_frame(raw)
        packet = decode_btp(raw)
        single_ilp = (
            isinstance(packet, BtpMessage | BtpResponse)
            and len(packet.protocol_data) == 1
            and packet.protocol_data[0].protocol_name == "ilp"
            and packet.protocol_data[0].content_type == 0
        )
        if single_ilp:
            seen += 1
            assert peeked == (packet.TYPE, packet.request_id, packet.protocol_data[0].data)
        else:
            assert peeked is None
    # message_ilp_prepare, response_ilp_fulfill, message_request_id_max, the long-form one
    assert seen == 4


def test_peek_ilp_frame_refuses_what_the_decoder_refuses() -> None:
    for vector in INVALID:
        assert peek_ilp_frame(bytes.fromhex(vector["hex"])) is None


@pytest.mark.parametrize(
    "frame",
    [
        # ilp entry with content type 1
        "0600000001090101" + "03696c70" + "0100",
        # envelope length in non-canonical long form 81 09
        "060000000181090101" + "03696c70" + "0000",
        # ilp data length in non-canonical long form 81 00
        "06000000010a0101" + "03696c70" + "008100",
        # Transfer with the same tail is not an ilp frame
        "0700000001090101" + "03696c70" + "0000",
    ],
)
def test_peek_ilp_frame_declines_near_misses(frame: str) -> None:
    assert peek_ilp_frame(bytes.fromhex(frame)) is None


@given(st.binary(max_size=200))
def test_peek_ilp_frame_never_disagrees_with_decoder(raw: bytes) -> None:
    peeked = peek_ilp_frame(raw)
    if peeked is None:
        return
    packet = decode_btp(raw)
    assert isinstance(packet, BtpMessage | BtpResponse)
    assert peeked == (packet.TYPE, packet.request_id, packet.protocol_data[0].data)


@given(
    st.sampled_from([BtpType.MESSAGE, BtpType.RESPONSE]),
    st.integers(0, UINT32_MAX),
    st.binary(max_size=70000),
)
@example(BtpType.MESSAGE, 0, b"")
@example(BtpType.RESPONSE, 1, bytes(127 - 8))  # contents exactly 127: last short form
@example(BtpType.RESPONSE, 1, bytes(128 - 8))  # contents 128: first 81 xx form
def test_encode_ilp_frame_matches_general_encoder(
    btp_type: BtpType, request_id: int, ilp: bytes
) -> None:
    frame = encode_ilp_frame(btp_type, request_id, ilp)
    packet = (ilp_message if btp_type is BtpType.MESSAGE else ilp_response)(request_id, ilp)
    contents = b"\x01\x01\x03ilp\x00" + _oer_octets(ilp)
    assert frame == bytes((btp_type,)) + request_id.to_bytes(4, "big") + _oer_octets(contents)
    assert encode_btp(packet) == frame
    assert decode_btp(frame) == packet
    assert peek_ilp_frame(frame) == (btp_type, request_id, ilp)


def _oer_octets(data: bytes) -> bytes:
    """A test-local length determinant, written from oer.md section 2, not from ilp.oer."""
    n = len(data)
    if n < 128:
        return bytes((n,)) + data
    size = (n.bit_length() + 7) // 8
    return bytes((0x80 | size,)) + n.to_bytes(size, "big") + data


def test_encode_ilp_frame_refuses_other_types() -> None:
    with pytest.raises(EncodeError):
        encode_ilp_frame(BtpType.TRANSFER, 1, b"")


# --- Hypothesis: every type round-trips, arbitrary bytes only ever raise DecodeError ---

entries_st = st.lists(
    st.builds(
        ProtocolData,
        st.text(st.characters(max_codepoint=0x7F), max_size=20),
        st.integers(0, 255),
        st.binary(max_size=300),
    ),
    max_size=5,
).map(tuple)
request_id_st = st.integers(0, UINT32_MAX)
ascii_st = st.text(st.characters(max_codepoint=0x7F), max_size=40)

packet_st: st.SearchStrategy[BtpPacket] = st.one_of(
    st.builds(BtpResponse, request_id_st, entries_st),
    st.builds(BtpMessage, request_id_st, entries_st),
    st.builds(BtpTransfer, request_id_st, st.integers(0, UINT64_MAX), entries_st),
    st.builds(
        BtpError,
        request_id_st,
        st.text(st.characters(max_codepoint=0x7F), min_size=3, max_size=3),
        ascii_st,
        ascii_st,
        st.binary(max_size=300),
        entries_st,
    ),
)


@given(packet_st)
def test_every_type_round_trips(packet: BtpPacket) -> None:
    raw = encode_btp(packet)
    assert decode_btp(raw) == packet
    assert peek_header(raw) == (packet.TYPE, packet.request_id)


@given(packet_st, st.binary(min_size=1, max_size=3))
def test_trailing_bytes_after_envelope_rejected(packet: BtpPacket, extra: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_btp(encode_btp(packet) + extra)


@given(packet_st, st.binary(min_size=1, max_size=3))
def test_trailing_bytes_inside_contents_rejected(packet: BtpPacket, extra: bytes) -> None:
    raw = encode_btp(packet)
    header, contents = raw[:5], _contents_of(raw)
    with pytest.raises(DecodeError):
        decode_btp(header + _oer_octets(contents + extra))


def _contents_of(frame: bytes) -> bytes:
    first = frame[5]
    if first < 0x80:
        return frame[6:]
    return frame[6 + (first & 0x7F) :]


@given(packet_st, st.data())
def test_every_truncation_rejected(packet: BtpPacket, data: st.DataObject) -> None:
    raw = encode_btp(packet)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(DecodeError):
        decode_btp(raw[:cut])


@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_decode_error(raw: bytes) -> None:
    try:
        packet = decode_btp(raw)
    except DecodeError:
        return
    assert encode_btp(packet) == raw


@given(packet_st, st.data())
def test_mutated_frames_only_raise_decode_error(packet: BtpPacket, data: st.DataObject) -> None:
    raw = bytearray(encode_btp(packet))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] = data.draw(st.integers(0, 255))
    try:
        decoded = decode_btp(bytes(raw))
    except DecodeError:
        return
    assert encode_btp(decoded) == bytes(raw)


# --- specific decoder rules ------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        ("0300000001020100", "BTP/1 Prepare"),
        ("0400000001020100", "BTP/1 Fulfill"),
        ("0500000001020100", "BTP/1 Reject"),
        ("6300000001020100", "unknown type 0x63"),
        ("01000000010100", "count 00 (zero-length VarUInt)"),
        ("0100000001030200" + "00", "count with a leading zero byte"),
        ("01000000018002" + "0100", "indefinite length 0x80"),
        ("0100000001810201" + "00", "long form for a short length"),
        ("010000000106010104" + "ff" + "0000", "protocol name above 0x7F"),
        ("0200000001084630" + "ff" + "00000000" + "0100", "error code above 0x7F"),
        ("02000000010a463030" + "0101" + "00" + "00" + "0100", "error name above 0x7F"),
        ("0100000001050109ff" + "0000", "count far larger than the bytes left"),
    ],
)
def test_specific_rejections(frame: str, why: str) -> None:
    with pytest.raises(DecodeError):
        decode_btp(bytes.fromhex(frame))


def test_decode_error_names_an_offset() -> None:
    # envelope_length_overrun: the length byte is at offset 5
    with pytest.raises(DecodeError) as info:
        decode_btp(bytes.fromhex("06000000017f0100"))
    assert info.value.offset >= 5


def test_decode_accepts_bytearray_and_memoryview() -> None:
    raw = bytes.fromhex(BTP["vectors"][3]["hex"])
    assert decode_btp(bytearray(raw)) == decode_btp(memoryview(raw)) == decode_btp(raw)  # type: ignore[arg-type]


def test_unknown_content_type_is_kept() -> None:
    packet = BtpMessage(9, (ProtocolData("x", 200, b"y"),))
    assert decode_btp(encode_btp(packet)).protocol_data[0].content_type == 200


# --- construction validates ------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: BtpMessage(-1),
        lambda: BtpMessage(UINT32_MAX + 1),
        lambda: BtpMessage(True),
        lambda: BtpMessage(1, [ProtocolData("ilp", 0, b"")]),  # type: ignore[arg-type]
        lambda: BtpMessage(1, ("ilp",)),  # type: ignore[arg-type]
        lambda: BtpTransfer(1, -1),
        lambda: BtpTransfer(1, UINT64_MAX + 1),
        lambda: ProtocolData("caf\u00e9", 0, b""),
        lambda: ProtocolData("ilp", 256, b""),
        lambda: ProtocolData("ilp", -1, b""),
        lambda: ProtocolData("ilp", 0, "text"),  # type: ignore[arg-type]
        lambda: ProtocolData("ilp", True, b""),
        lambda: BtpError(1, "F0", "x", "20170101000000.000Z"),
        lambda: BtpError(1, "F000", "x", "20170101000000.000Z"),
        lambda: BtpError(1, "F00", "N\u00e4me", "20170101000000.000Z"),
        lambda: BtpError(1, "F00", "x", "20170101000000.000Z", "text"),  # type: ignore[arg-type]
    ],
)
def test_invalid_values_refused(build: Any) -> None:
    with pytest.raises(EncodeError):
        build()


def test_enum_fields_are_stored_plain() -> None:
    entry = ProtocolData("ilp", ContentType.TEXT_PLAIN_UTF8, b"")
    assert type(entry.content_type) is int
    error = BtpError(1, BtpErrorCode.T00, "UnreachableError", "20170101000000.000Z")
    assert type(error.code) is str
    assert repr(error) == repr(decode_btp(encode_btp(error)))


# --- builders --------------------------------------------------------------------------


def test_auth_message_is_what_ilp_plugin_btp_sends() -> None:
    vector = next(v for v in VECTORS if v["name"] == "message_auth_ilp_plugin_btp")
    assert encode_btp(auth_message(1, "alice", "alice_secret")).hex() == vector["hex"]
    empty = next(v for v in VECTORS if v["name"] == "message_auth_empty_username")
    assert encode_btp(auth_message(2, "", "carl_secret")).hex() == empty["hex"]


def test_auth_message_matches_observed_percent_encoded_token() -> None:
    frame = OBSERVED["btp_client_ilp_plugin_btp_1_5_0"]["frames_received_by_server"][0]["hex"]
    request_id = int(frame[2:10], 16)
    assert encode_btp(auth_message(request_id, "my_user", "my%20tok%3A")).hex() == frame


def test_auth_message_offering_idempotence() -> None:
    message = auth_message(5, "a", "b", idempotent=True)
    assert message.protocol_data[3] == ProtocolData(BTP_IDEMPOTENT, 1, b"1")
    assert offers_idempotent(message)
    assert read_auth(message) == AuthRequest("a", "b", idempotent=True)


def test_auth_response_bytes() -> None:
    assert encode_btp(auth_response(1)).hex() == "0100000001020100"
    # btp.md 7.1: 01 <id> <len> 01 01 | 0e "btp_idempotent" 01 01 "1"
    expected = "0100000001" + "14" + "0101" + "0e" + b"btp_idempotent".hex() + "01" + "0131"
    assert encode_btp(auth_response(1, idempotent=True)).hex() == expected
    assert offers_idempotent(decode_btp(bytes.fromhex(expected)))


def test_ilp_message_and_response_match_vectors() -> None:
    prepare = next(v for v in VECTORS if v["name"] == "message_ilp_prepare")
    ilp = bytes.fromhex(prepare["object"]["protocolData"][0]["data"])
    assert encode_btp(ilp_message(3414153908, ilp)).hex() == prepare["hex"]
    fulfill = next(v for v in VECTORS if v["name"] == "response_ilp_fulfill")
    ilp = bytes.fromhex(fulfill["object"]["protocolData"][0]["data"])
    assert encode_btp(ilp_response(3414153908, ilp)).hex() == fulfill["hex"]


def test_btp_error_matches_the_ilp_plugin_btp_auth_rejection() -> None:
    vector = next(v for v in VECTORS if v["name"] == "error_invalid_auth_token")
    now = datetime(2017, 12, 24, 16, 14, 32, 279999, tzinfo=UTC)
    error = btp_error(77, BtpErrorCode.F00, None, "invalid auth_token", now)
    assert encode_btp(error).hex() == vector["hex"]
    assert btp_error(77, "F00", "NotAcceptedError", "invalid auth_token", now) == error


def test_btp_error_always_writes_three_fraction_digits() -> None:
    now = datetime(2017, 12, 24, 16, 14, 32, tzinfo=UTC)
    assert btp_error(1, "T00", None, "", now).triggered_at == "20171224161432.000Z"


def test_btp_error_needs_a_name_for_an_unknown_code() -> None:
    now = datetime(2017, 12, 24, tzinfo=UTC)
    with pytest.raises(EncodeError):
        btp_error(1, "X42", None, "", now)
    assert btp_error(1, "X42", "Custom", "", now).name == "Custom"


def test_error_code_table() -> None:
    names = {code.value: code.error_name for code in BtpErrorCode}
    assert names["F00"] == "NotAcceptedError"
    assert names["F01"] == "InvalidFieldsError"
    assert names["F05"] == "DuplicateIdError"
    assert names["F08"] == "InsufficientBalanceError"
    assert names["T00"] == "UnreachableError"
    assert names["F99"] == names["T99"] == "ApplicationError"


def test_find_entry_takes_the_first() -> None:
    packet = BtpMessage(1, (ProtocolData("a", 0, b"1"), ProtocolData("a", 0, b"2")))
    entry = find_entry(packet, "a")
    assert entry is not None and entry.data == b"1"
    assert find_entry(packet, "b") is None


# --- auth parsing ----------------------------------------------------------------------


def _entries(*names_and_data: tuple[str, int, bytes]) -> tuple[ProtocolData, ...]:
    return tuple(ProtocolData(n, ct, d) for n, ct, d in names_and_data)


def test_auth_credentials_of_both_forms() -> None:
    for vector in VECTORS[:3]:
        packet = decode_btp(bytes.fromhex(vector["hex"]))
        creds = auth_credentials(packet)
        assert creds is not None
        assert creds.idempotent is False
    minimal = decode_btp(bytes.fromhex(VECTORS[2]["hex"]))
    assert auth_credentials(minimal) == AuthRequest("", "secret")
    full = decode_btp(bytes.fromhex(VECTORS[0]["hex"]))
    assert auth_credentials(full) == AuthRequest("alice", "alice_secret")


def test_auth_secondary_entries_in_any_order() -> None:
    packet = BtpMessage(
        1,
        _entries(
            (AUTH, 0, b""),
            (BTP_IDEMPOTENT, 1, b"1"),
            (AUTH_TOKEN, 1, b"tok"),
            (AUTH_USERNAME, 1, b"bob"),
        ),
    )
    assert read_auth(packet) == AuthRequest("bob", "tok", idempotent=True)


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (BtpTransfer(1, 1), "First message sent over BTP connection must be auth packet"),
        (BtpResponse(1), "First message sent over BTP connection must be auth packet"),
        (
            BtpMessage(1, _entries((AUTH, 0, b""))),
            "Auth packet must have auth and auth_token subprotocols",
        ),
        (
            BtpMessage(1, _entries((AUTH_TOKEN, 1, b"x"), (AUTH, 0, b""))),
            "First subprotocol must be auth",
        ),
        (
            BtpMessage(1, _entries((AUTH, 0, b""), (AUTH_USERNAME, 1, b"x"))),
            "auth_token subprotocol is required",
        ),
        (
            BtpMessage(1, _entries((AUTH, 0, b""), (AUTH_TOKEN, 1, b"\xff"))),
            "auth_token is not UTF-8 text",
        ),
    ],
)
def test_auth_rejections_carry_the_js_text(packet: BtpPacket, reason: str) -> None:
    with pytest.raises(AuthRejected) as info:
        read_auth(packet)
    assert info.value.message == reason
    assert info.value.code == "F00"
    assert auth_credentials(packet) is None


def test_idempotent_flag_needs_the_text_1() -> None:
    packet = BtpMessage(
        1, _entries((AUTH, 0, b""), (AUTH_TOKEN, 1, b"t"), (BTP_IDEMPOTENT, 1, b"0"))
    )
    assert read_auth(packet).idempotent is False


def test_token_matches_is_exact() -> None:
    creds = AuthRequest("u", "s\u00e9cret")
    assert creds.token_matches("s\u00e9cret")
    assert not creds.token_matches("s\u00e9cre")
    assert not creds.token_matches("S\u00e9cret")


@given(st.binary(max_size=300), st.integers(0, UINT32_MAX), st.data())
def test_peek_ilp_frame_on_mutated_ilp_frames(
    ilp: bytes, request_id: int, data: st.DataObject
) -> None:
    raw = bytearray(encode_ilp_frame(BtpType.MESSAGE, request_id, ilp))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] = data.draw(st.integers(0, 255))
    frame = bytes(raw)
    peeked = peek_ilp_frame(frame)
    try:
        packet = decode_btp(frame)
    except DecodeError:
        assert peeked is None
        return
    if peeked is not None:
        assert isinstance(packet, BtpMessage | BtpResponse)
        assert peeked == (packet.TYPE, packet.request_id, packet.protocol_data[0].data)
