from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given

from ilp.echo import (
    ECHO_PREFIX,
    MIN_ECHO_DATA_LENGTH,
    EchoRequest,
    EchoResponse,
    decode_echo,
    echo_response_prepare,
    encode_echo,
    is_echo,
)
from ilp.errors import DecodeError
from ilp.packet import decode_prepare, encode_packet
from tests.conftest import load_vectors
from tests.ilp.jsonvectors import packet_from_json
from tests.ilp.strategies import addresses

VECTORS = load_vectors("echo.json")
NAMED = {v["name"]: v for v in VECTORS["vectors"]}


def test_constants() -> None:
    constants = VECTORS["constants"]
    assert ECHO_PREFIX.hex() == constants["prefix_hex"]
    assert constants["minimum_data_length"] == MIN_ECHO_DATA_LENGTH


def test_request_data_vector() -> None:
    vector = NAMED["echo_request_data"]
    message = EchoRequest(vector["object"]["sourceAddress"])
    assert decode_echo(bytes.fromhex(vector["hex"])) == message
    assert encode_echo(message).hex() == vector["hex"]


def test_response_data_vector() -> None:
    vector = NAMED["echo_response_data"]
    assert decode_echo(bytes.fromhex(vector["hex"])) == EchoResponse()
    assert encode_echo(EchoResponse()).hex() == vector["hex"]


@pytest.mark.parametrize("name", ["echo_request_prepare", "echo_response_prepare", "echo_fulfill"])
def test_packet_vectors(name: str) -> None:
    vector = NAMED[name]
    packet = packet_from_json(vector["object"])
    assert encode_packet(packet).hex() == vector["hex"]


def test_connector_echo_is_built_from_the_ping() -> None:
    ping = decode_prepare(bytes.fromhex(NAMED["echo_request_prepare"]["hex"]))
    request = decode_echo(ping.data)
    assert isinstance(request, EchoRequest)
    echo = echo_response_prepare(ping, request, ping.expires_at - timedelta(seconds=1))
    assert encode_packet(echo).hex() == NAMED["echo_response_prepare"]["hex"]


REFUSED = ["data_too_short", "bad_prefix", "type_0_without_address", "trailing_bytes_after_address"]


@pytest.mark.parametrize("vector", [pytest.param(v, id=v["name"]) for v in VECTORS["invalid"]])
def test_invalid_vectors(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["data_hex"])
    prepare = decode_prepare(bytes.fromhex(vector["hex"]))
    assert prepare.data == data
    if vector["name"] in REFUSED:  # F01 at the responder: the data itself is bad
        with pytest.raises(DecodeError):
            decode_echo(data)
    elif vector["name"] == "type_1_sent_to_connector":  # well formed, wrong direction
        assert decode_echo(data) == EchoResponse()
    else:  # unroutable_source: well formed, the switch answers F02
        assert decode_echo(data) == EchoRequest("test.elsewhere.zz")


def test_reasons_follow_the_connector() -> None:
    with pytest.raises(DecodeError, match=r"too short for echo request\. length=16"):
        decode_echo(ECHO_PREFIX)
    with pytest.raises(DecodeError, match="ECHO prefix"):
        decode_echo(b"X" * 17)
    with pytest.raises(DecodeError, match="unknown echo type 2"):
        decode_echo(ECHO_PREFIX + b"\x02")
    with pytest.raises(DecodeError, match="trailing"):
        decode_echo(ECHO_PREFIX + b"\x01\x00")
    with pytest.raises(DecodeError, match="sourceAddress"):
        decode_echo(ECHO_PREFIX + b"\x00\x04test")


def test_error_offsets_are_relative_to_base() -> None:
    with pytest.raises(DecodeError) as caught:
        decode_echo(ECHO_PREFIX + b"\x00\x05test.", base=100)
    assert caught.value.offset == 100 + len(ECHO_PREFIX) + 1


def test_is_echo() -> None:
    assert is_echo(ECHO_PREFIX + b"\x01")
    assert is_echo(ECHO_PREFIX)  # claims to be echo; decoding decides
    assert not is_echo(b"ECHO")
    assert not is_echo(b"")


def test_request_validates_on_construction() -> None:
    with pytest.raises(ValueError):
        EchoRequest("test")


@given(addresses())
def test_round_trip(address: str) -> None:
    assert decode_echo(encode_echo(EchoRequest(address))) == EchoRequest(address)
