from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ilp.errors import DecodeError, EncodeError
from ilp.packet import (
    MAX_DATA_LENGTH,
    AmountTooLarge,
    ErrorCode,
    Fulfill,
    PacketType,
    Prepare,
    Reject,
    RejectError,
    amount_too_large_data,
    decode_amount_too_large_data,
    decode_fulfill,
    decode_packet,
    decode_prepare,
    decode_reject,
    decode_reply,
    encode_fulfill,
    encode_packet,
    encode_prepare,
    encode_reject,
    error_class,
)
from tests.conftest import load_vectors
from tests.ilp.jsonvectors import packet_from_json
from tests.ilp.strategies import fulfills, packets, prepares, rejects

VECTORS = load_vectors("ilp-packet.json")


def by_name(section: str) -> list[Any]:
    return [pytest.param(v, id=v["name"]) for v in VECTORS[section]]


# --- vectors -------------------------------------------------------------------------


@pytest.mark.parametrize("vector", by_name("vectors"))
def test_vector_decodes_to_its_object(vector: dict[str, Any]) -> None:
    assert decode_packet(bytes.fromhex(vector["hex"])) == packet_from_json(vector["object"])


@pytest.mark.parametrize("vector", by_name("vectors"))
def test_vector_object_encodes_to_its_bytes(vector: dict[str, Any]) -> None:
    assert encode_packet(packet_from_json(vector["object"])).hex() == vector["hex"]


@pytest.mark.parametrize("vector", by_name("vectors"))
def test_typed_decoder_agrees_with_generic_one(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    typed = {"prepare": decode_prepare, "fulfill": decode_fulfill, "reject": decode_reject}
    assert typed[vector["object"]["type"]](raw) == decode_packet(raw)


@pytest.mark.parametrize("vector", by_name("invalid"))
def test_invalid_vector_is_a_decode_error(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    with pytest.raises(DecodeError) as caught:
        if vector["name"] == "fulfill_where_prepare_expected":
            decode_prepare(raw)  # a valid Fulfill, in a position where a Prepare must be
        else:
            decode_packet(raw)
    assert 0 <= caught.value.offset <= len(raw)


def test_fulfill_where_prepare_expected_is_a_valid_fulfill() -> None:
    (vector,) = (v for v in VECTORS["invalid"] if v["name"] == "fulfill_where_prepare_expected")
    assert isinstance(decode_packet(bytes.fromhex(vector["hex"])), Fulfill)


def test_invalid_utf8_message_is_accepted_with_replacement() -> None:
    (vector,) = (v for v in VECTORS["edge_cases"] if v["name"] == "reject_message_invalid_utf8")
    reject = decode_reject(bytes.fromhex(vector["hex"]))
    assert reject.message == "\ufffd\ufffd"
    assert (reject.code, reject.triggered_by) == ("F99", "test.a")


def test_lowercase_code_is_accepted_as_unknown() -> None:
    (vector,) = (v for v in VECTORS["edge_cases"] if v["name"] == "reject_code_lowercase")
    reject = decode_reject(bytes.fromhex(vector["hex"]))
    assert reject.code == "f02"
    assert error_class(reject.code) == ""
    assert encode_reject(reject).hex() == vector["hex"]


# --- precise errors ------------------------------------------------------------------


def _prepare_hex(name: str) -> bytes:
    (vector,) = (v for v in VECTORS["vectors"] if v["name"] == name)
    return bytes.fromhex(vector["hex"])


@pytest.mark.parametrize(
    ("name", "offset", "words"),
    [
        ("empty_buffer", 0, "no type byte"),
        ("unknown_type_0x0b", 0, "unknown ILP packet type 11"),
        ("trailing_bytes_after_envelope", 79, "trailing"),
        ("trailing_bytes_inside_contents", 74, "trailing"),
        ("envelope_length_non_canonical_long_form", 1, "non-canonical"),
        ("expires_at_hour_24", 10, "not a real UTC time"),
        ("destination_high_bit_byte", 60, "destination"),
        ("data_too_long_32768", 75, "32767"),
    ],
)
def test_errors_name_the_offset_and_reason(name: str, offset: int, words: str) -> None:
    (vector,) = (v for v in VECTORS["invalid"] if v["name"] == name)
    with pytest.raises(DecodeError) as caught:
        decode_packet(bytes.fromhex(vector["hex"]))
    assert caught.value.offset == offset
    assert words in caught.value.reason


def test_every_truncation_of_a_prepare_is_a_decode_error() -> None:
    raw = _prepare_hex("prepare_data_len_255")
    for cut in range(len(raw)):
        with pytest.raises(DecodeError):
            decode_prepare(raw[:cut])


def test_data_long_forms_beyond_the_fast_path_are_strict() -> None:
    # A Prepare whose data length is written 0x83 00 01 00 (non-canonical 256)
    good = _prepare_hex("prepare_data_len_256")
    prepare = decode_prepare(good)
    assert len(prepare.data) == 256
    head = good[:4]  # type, 0x82 xx xx envelope
    contents = good[4:]
    data_at = 57 + 1 + len(prepare.destination)
    assert contents[data_at : data_at + 3] == b"\x82\x01\x00"
    bad_contents = contents[:data_at] + b"\x83\x00\x01\x00" + contents[data_at + 3 :]
    bad = head[:1] + b"\x82" + len(bad_contents).to_bytes(2, "big") + bad_contents
    with pytest.raises(DecodeError, match="non-canonical"):
        decode_prepare(bad)


def test_decoders_accept_bytearray_and_memoryview() -> None:
    raw = _prepare_hex("prepare_basic")
    assert decode_prepare(bytearray(raw)) == decode_prepare(memoryview(raw)) == decode_prepare(raw)
    assert type(decode_prepare(bytearray(raw)).data) is bytes


def test_decode_reply_refuses_a_prepare() -> None:
    with pytest.raises(DecodeError, match="Prepare"):
        decode_reply(_prepare_hex("prepare_basic"))
    with pytest.raises(DecodeError):
        decode_reply(b"")


@pytest.mark.parametrize("decoder", [decode_fulfill, decode_reject])
def test_typed_decoders_refuse_other_types(decoder: Any) -> None:
    with pytest.raises(DecodeError, match="expected an ILP"):
        decoder(_prepare_hex("prepare_basic"))


def test_decoded_prepare_equals_a_constructed_one_field_by_field() -> None:
    prepare = decode_prepare(_prepare_hex("prepare_basic"))
    assert prepare.amount == 107
    assert prepare.expires_at == datetime(2017, 12, 23, 1, 21, 40, 549000, tzinfo=UTC)
    assert prepare.expires_at.tzinfo is UTC
    assert prepare.destination == "example.alice"
    assert prepare.data == b"hello"
    with pytest.raises(dataclasses.FrozenInstanceError):
        prepare.amount = 1  # type: ignore[misc]


# --- construction --------------------------------------------------------------------

WHEN = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def prepare(**changes: Any) -> Prepare:
    fields: dict[str, Any] = {
        "amount": 1,
        "expires_at": WHEN,
        "execution_condition": bytes(32),
        "destination": "test.a",
        "data": b"",
    }
    fields.update(changes)
    return Prepare(**fields)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"amount": -1}, ValueError),
        ({"amount": 2**64}, ValueError),
        ({"amount": 1.0}, TypeError),
        ({"amount": True}, TypeError),
        ({"expires_at": datetime(2030, 1, 1)}, ValueError),  # noqa: DTZ001 (naive on purpose)
        ({"expires_at": "2030-01-01"}, TypeError),
        ({"execution_condition": bytes(31)}, ValueError),
        ({"execution_condition": "00" * 32}, TypeError),
        ({"destination": "test"}, ValueError),
        ({"destination": "g.caf\u00e9"}, ValueError),
        ({"data": bytes(MAX_DATA_LENGTH + 1)}, ValueError),
    ],
)
def test_prepare_validates_on_construction(changes: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        prepare(**changes)


def test_prepare_normalises_expiry_to_utc_milliseconds() -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2030, 1, 2, 5, 4, 5, 678999, tzinfo=plus_two)
    made = prepare(expires_at=local)
    assert made.expires_at == WHEN
    assert made.expires_at.tzinfo is UTC
    assert decode_prepare(encode_prepare(made)) == made


def test_prepare_copies_mutable_bytes() -> None:
    data = bytearray(b"abc")
    made = prepare(data=data)
    data[0] = 0
    assert made.data == b"abc"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("F0", "test.a"), ValueError),
        (("F\u00e92", "test.a"), ValueError),
        (("F02", "test"), ValueError),
        (("F02", "test.a", "\ud800"), ValueError),
        (("F02", "test.a", "", bytes(MAX_DATA_LENGTH + 1)), ValueError),
    ],
)
def test_reject_validates_on_construction(args: tuple[Any, ...], error: type) -> None:
    with pytest.raises(error):
        Reject(*args)


def test_fulfill_validates_on_construction() -> None:
    with pytest.raises(ValueError):
        Fulfill(bytes(33))
    with pytest.raises(ValueError):
        Fulfill(bytes(32), bytes(MAX_DATA_LENGTH + 1))


def test_reject_accepts_an_error_code_member_and_stores_plain_text() -> None:
    reject = Reject(ErrorCode.F02, "")
    assert type(reject.code) is str
    assert reject.code == "F02"


def test_encode_packet_refuses_non_packets() -> None:
    with pytest.raises(EncodeError):
        encode_packet("not a packet")  # type: ignore[arg-type]


# --- error codes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "vector", [v for v in VECTORS["vectors"] if v["name"][:8] in {f"reject_{c}" for c in "FTR"}]
)
def test_error_code_titles_match_the_spec(vector: dict[str, Any]) -> None:
    code = ErrorCode[vector["object"]["code"]]
    assert vector["description"].startswith(f"{code.value} {code.title}")


def test_every_spec_error_code_is_known() -> None:
    in_vectors = {
        v["object"]["code"]
        for v in VECTORS["vectors"]
        if v["object"]["type"] == "reject" and v["name"] == f"reject_{v['object']['code']}"
    }
    assert {c.value for c in ErrorCode} == in_vectors
    assert len(in_vectors) == 21


def test_error_class() -> None:
    assert [error_class(c) for c in ("F02", "T04", "R00", "F42", "x", "")] == [
        "F",
        "T",
        "R",
        "F",
        "",
        "",
    ]
    assert str(ErrorCode.T04) == f"{ErrorCode.T04}" == "T04"


def test_reject_error_becomes_a_reject() -> None:
    error = RejectError(ErrorCode.F02, "no route found. to=test.x")
    reject = error.to_reject("test.us")
    assert reject == Reject("F02", "test.us", "no route found. to=test.x", b"")
    assert "F02" in str(error)
    with pytest.raises(ValueError):
        RejectError("nope")


def test_packet_type_values() -> None:
    assert [int(t) for t in PacketType] == [12, 13, 14]


# --- F08 data ------------------------------------------------------------------------


def test_amount_too_large_data_matches_observed_connector() -> None:
    (vector,) = (v for v in VECTORS["vectors"] if v["name"] == "reject_observed_connector_f08")
    data = bytes.fromhex(vector["object"]["data"])
    assert amount_too_large_data(2000, 1000) == data
    assert decode_amount_too_large_data(data) == AmountTooLarge(2000, 1000)


def test_amount_too_large_data_limits() -> None:
    with pytest.raises(EncodeError):
        amount_too_large_data(2**64, 1)
    with pytest.raises(DecodeError):
        decode_amount_too_large_data(bytes(15))


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_amount_too_large_round_trip(received: int, maximum: int) -> None:
    assert decode_amount_too_large_data(amount_too_large_data(received, maximum)) == (
        received,
        maximum,
    )


# --- round trips ---------------------------------------------------------------------


@given(prepares())
def test_prepare_round_trip(p: Prepare) -> None:
    raw = encode_prepare(p)
    assert decode_prepare(raw) == p
    assert decode_packet(raw) == p


@given(fulfills())
def test_fulfill_round_trip(f: Fulfill) -> None:
    raw = encode_fulfill(f)
    assert decode_fulfill(raw) == f
    assert decode_reply(raw) == f


@given(rejects())
def test_reject_round_trip(r: Reject) -> None:
    raw = encode_reject(r)
    assert decode_reject(raw) == r
    assert decode_reply(raw) == r


@given(packets(), st.binary(min_size=1, max_size=3))
def test_trailing_bytes_are_always_refused(p: Any, extra: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_packet(encode_packet(p) + extra)
