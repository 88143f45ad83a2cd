from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ilp.errors import DecodeError, EncodeError
from ilp.oer import (
    UINT64_MAX,
    Reader,
    Writer,
    encode_int64,
    encode_length,
    encode_uint,
    encode_var_octets,
    encode_var_uint,
    format_generalized_time,
    format_ilp_timestamp,
    parse_generalized_time,
    parse_ilp_timestamp,
    read_length_at,
)
from tests.conftest import load_vectors
from tests.ilp.strategies import wire_times

VECTORS = load_vectors("oer.json")
FIXED_SIZES = {"uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8}


def whole(read: Callable[[Reader], Any], raw: bytes) -> Any:
    """Read one value that must fill ``raw`` exactly."""
    reader = Reader(raw)
    value = read(reader)
    reader.finish()
    return value


def decode(kind: str, raw: bytes) -> Any:
    if kind == "length_prefix":
        return whole(Reader.read_length, raw)
    if kind == "var_octet_string":
        return whole(Reader.read_var_octets, raw)
    if kind == "var_uint":
        return whole(Reader.read_var_uint, raw)
    if kind in FIXED_SIZES:
        return whole(lambda r: r.read_uint(FIXED_SIZES[kind]), raw)
    if kind == "int64":
        return whole(Reader.read_int64, raw)
    if kind == "interledger_timestamp":
        return parse_ilp_timestamp(raw)
    if kind == "generalized_time_var_string":
        return parse_generalized_time(whole(Reader.read_ia5, raw))
    raise AssertionError(kind)


def encode(kind: str, value: Any) -> bytes:
    if kind == "length_prefix":
        return encode_length(value)
    if kind == "var_octet_string":
        return encode_var_octets(value)
    if kind == "var_uint":
        return encode_var_uint(value)
    if kind in FIXED_SIZES:
        return encode_uint(value, FIXED_SIZES[kind])
    if kind == "int64":
        return encode_int64(value)
    if kind == "interledger_timestamp":
        return format_ilp_timestamp(value)
    if kind == "generalized_time_var_string":
        return encode_var_octets(format_generalized_time(value).encode("ascii"))
    raise AssertionError(kind)


def expected_value(vector: dict[str, Any]) -> Any:
    kind, obj = vector["kind"], vector["object"]
    if kind == "var_octet_string":
        return bytes.fromhex(obj["value"])
    if kind in ("interledger_timestamp", "generalized_time_var_string"):
        return datetime.fromisoformat(obj["value"])
    if kind == "length_prefix":
        return int(obj["length"])
    return int(obj["value"])


@pytest.mark.parametrize("vector", [pytest.param(v, id=v["name"]) for v in VECTORS["vectors"]])
def test_vector_decodes(vector: dict[str, Any]) -> None:
    assert decode(vector["kind"], bytes.fromhex(vector["hex"])) == expected_value(vector)


@pytest.mark.parametrize("vector", [pytest.param(v, id=v["name"]) for v in VECTORS["vectors"]])
def test_vector_encodes(vector: dict[str, Any]) -> None:
    assert encode(vector["kind"], expected_value(vector)).hex() == vector["hex"]


@pytest.mark.parametrize("vector", [pytest.param(v, id=v["name"]) for v in VECTORS["invalid"]])
def test_invalid_vector_is_a_decode_error(vector: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        decode(vector["kind"], bytes.fromhex(vector["hex"]))


def test_length_errors_carry_the_absolute_offset() -> None:
    with pytest.raises(DecodeError) as caught:
        read_length_at(b"\xff\xff\x81\x05", 2, 4)
    assert caught.value.offset == 2
    nested = Reader(b"\x81\x05", base=40)
    with pytest.raises(DecodeError) as caught:
        nested.read_length()
    assert caught.value.offset == 40


def test_read_length_at_stays_inside_its_container() -> None:
    # The length bytes exist in the buffer but past the container's end.
    with pytest.raises(DecodeError, match="truncated"):
        read_length_at(b"\x82\x01\x00", 0, 2)
    assert read_length_at(b"\x82\x01\x00", 0, 3) == (256, 3)


@pytest.mark.parametrize(
    "text",
    [
        b"2017122416143227",  # 16 digits
        b"201712241614322790",  # 18 digits
        b"2017122416143227\xd9",  # a non-ASCII byte
        b"\xd9\xa0017122416143227",  # an Arabic-Indic digit is not an ASCII digit
        b"+2017122416143227",
        b"20171224161432_27",
        b"20171231236000000",  # minute 60
        b"20190229000000000",  # not a leap year
    ],
)
def test_ilp_timestamp_is_strict(text: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_ilp_timestamp(text, 9)


def test_ilp_timestamp_leap_day_and_error_offset() -> None:
    assert parse_ilp_timestamp(b"20200229235959999") == datetime(
        2020, 2, 29, 23, 59, 59, 999000, tzinfo=UTC
    )
    with pytest.raises(DecodeError) as caught:
        parse_ilp_timestamp(b"20190229000000000", 9)
    assert caught.value.offset == 9


def test_ilp_timestamp_truncates_to_the_millisecond_in_utc() -> None:
    moment = datetime(2018, 1, 1, 1, 0, 0, 999999, tzinfo=timezone(timedelta(hours=1)))
    assert format_ilp_timestamp(moment) == b"20180101000000999"
    with pytest.raises(EncodeError):
        format_ilp_timestamp(datetime(2018, 1, 1))  # noqa: DTZ001 (naive on purpose)
    with pytest.raises(EncodeError):
        format_ilp_timestamp(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))))


@given(wire_times())
def test_ilp_timestamp_round_trip(moment: datetime) -> None:
    assert parse_ilp_timestamp(format_ilp_timestamp(moment)) == moment


@given(st.integers(0, 2**32 - 1))
def test_length_round_trip(length: int) -> None:
    raw = encode_length(length)
    assert read_length_at(raw, 0, len(raw)) == (length, len(raw))


@given(st.integers(0, UINT64_MAX))
def test_var_uint_round_trip(value: int) -> None:
    assert whole(Reader.read_var_uint, encode_var_uint(value)) == value


@given(st.integers(-(2**63), 2**63 - 1))
def test_int64_round_trip(value: int) -> None:
    assert whole(Reader.read_int64, encode_int64(value)) == value


@given(st.binary(max_size=70000))
def test_var_octets_round_trip(value: bytes) -> None:
    assert whole(Reader.read_var_octets, encode_var_octets(value)) == value


@given(st.text(max_size=50))
def test_writer_mirrors_reader(text: str) -> None:
    writer = Writer()
    writer.write_uint8(7)
    writer.write_utf8(text)
    writer.write_var_uint(300)
    reader = Reader(writer.getvalue())
    assert (reader.read_uint8(), reader.read_utf8(), reader.read_var_uint()) == (7, text, 300)
    reader.finish()


@pytest.mark.parametrize(
    ("call", "value"),
    [
        (encode_var_uint, -1),
        (encode_var_uint, UINT64_MAX + 1),
        (encode_int64, 2**63),
        (encode_length, -1),
    ],
)
def test_out_of_range_values_are_encode_errors(call: Callable[[int], bytes], value: int) -> None:
    with pytest.raises(EncodeError):
        call(value)


def test_generalized_time_reading_is_lenient() -> None:
    assert parse_generalized_time("20171224161432.2Z") == datetime(
        2017, 12, 24, 16, 14, 32, 200000, tzinfo=UTC
    )
    assert parse_generalized_time("20171224161432Z") == datetime(
        2017, 12, 24, 16, 14, 32, tzinfo=UTC
    )
    assert parse_generalized_time("not a time") is None
    assert parse_generalized_time("20171324161432.000Z") is None
