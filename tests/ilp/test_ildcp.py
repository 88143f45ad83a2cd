from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ilp.conditions import PEER_CONDITION, PEER_FULFILLMENT
from ilp.errors import DecodeError
from ilp.ildcp import (
    ILDCP_DESTINATION,
    ILDCP_REQUEST_LIFETIME,
    IldcpResponse,
    decode_ildcp_fulfill,
    decode_ildcp_response,
    encode_ildcp_response,
    ildcp_fulfill,
    ildcp_request,
    ildcp_response_from_fulfill,
    validate_ildcp_request,
)
from ilp.packet import ErrorCode, Fulfill, RejectError, decode_packet, decode_prepare, encode_packet
from tests.conftest import load_vectors
from tests.ilp.jsonvectors import packet_from_json, parse_time
from tests.ilp.strategies import addresses

VECTORS = load_vectors("ildcp.json")
RESPONSES = [
    pytest.param(v, id=v["name"]) for v in VECTORS["vectors"] if "clientAddress" in v["object"]
]


def expected(vector: dict[str, Any]) -> IldcpResponse:
    obj = vector["object"]
    return IldcpResponse(obj["clientAddress"], obj["assetScale"], obj["assetCode"])


def test_constants() -> None:
    constants = VECTORS["constants"]
    assert constants["destination"] == ILDCP_DESTINATION
    assert timedelta(milliseconds=constants["default_expiry_ms"]) == ILDCP_REQUEST_LIFETIME


def test_request_vector() -> None:
    (vector,) = (v for v in VECTORS["vectors"] if v["name"] == "request")
    expires_at = parse_time(vector["object"]["prepare"]["expiresAt"])
    request = ildcp_request(expires_at)
    assert encode_packet(request).hex() == vector["hex"]
    assert decode_prepare(bytes.fromhex(vector["hex"])) == request
    validate_ildcp_request(request, expires_at - timedelta(seconds=1))


@pytest.mark.parametrize("vector", RESPONSES)
def test_response_data_decodes(vector: dict[str, Any]) -> None:
    assert decode_ildcp_response(bytes.fromhex(vector["data_hex"])) == expected(vector)


@pytest.mark.parametrize("vector", RESPONSES)
def test_response_encodes(vector: dict[str, Any]) -> None:
    response = expected(vector)
    assert encode_ildcp_response(response).hex() == vector["data_hex"]
    assert encode_packet(ildcp_fulfill(response)).hex() == vector["hex"]
    assert packet_from_json(vector["object"]["fulfill"]) == ildcp_fulfill(response)


@pytest.mark.parametrize("vector", RESPONSES)
def test_response_packet_decodes(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    assert decode_ildcp_fulfill(raw) == expected(vector)
    fulfill = decode_packet(raw)
    assert isinstance(fulfill, Fulfill)
    assert ildcp_response_from_fulfill(fulfill) == expected(vector)


@pytest.mark.parametrize(
    "vector", [v for v in VECTORS["vectors"] if v["object"].get("type") == "reject"]
)
def test_observed_rejects_decode(vector: dict[str, Any]) -> None:
    assert decode_packet(bytes.fromhex(vector["hex"])) == packet_from_json(vector["object"])


@pytest.mark.parametrize(
    "vector", [pytest.param(v, id=v["name"]) for v in VECTORS["invalid"] if v["side"] == "response"]
)
def test_invalid_response_is_a_decode_error(vector: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        decode_ildcp_fulfill(bytes.fromhex(vector["hex"]))
    fulfill = decode_packet(bytes.fromhex(vector["hex"]))  # the packet itself is well formed
    assert isinstance(fulfill, Fulfill)
    with pytest.raises(DecodeError):
        ildcp_response_from_fulfill(fulfill)


def test_wrong_fulfillment_error_points_at_the_fulfillment() -> None:
    (vector,) = (v for v in VECTORS["invalid"] if v["name"] == "response_wrong_fulfillment")
    with pytest.raises(DecodeError) as caught:
        decode_ildcp_fulfill(bytes.fromhex(vector["hex"]))
    assert caught.value.offset == 2


def test_trailing_byte_error_points_at_the_byte() -> None:
    (vector,) = (v for v in VECTORS["invalid"] if v["name"] == "response_trailing_bytes")
    raw = bytes.fromhex(vector["hex"])
    with pytest.raises(DecodeError) as caught:
        decode_ildcp_fulfill(raw)
    assert caught.value.offset == len(raw) - 1


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("request_wrong_condition", "correct condition"),
        ("request_wrong_destination", "not an IL-DCP request"),
        ("request_expired", "expired"),
    ],
)
def test_invalid_requests_are_refused_with_f00(name: str, message: str) -> None:
    (vector,) = (v for v in VECTORS["invalid"] if v["name"] == name)
    prepare = decode_prepare(bytes.fromhex(vector["hex"]))
    with pytest.raises(RejectError) as caught:
        validate_ildcp_request(prepare, datetime(2019, 1, 1, tzinfo=UTC))
    assert caught.value.code == ErrorCode.F00
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("test", 9, "USD"), ValueError),
        (("test.a", 256, "USD"), ValueError),
        (("test.a", -1, "USD"), ValueError),
        (("test.a", 9, b"USD"), TypeError),
        (("test.a", 9, "\ud800"), ValueError),
    ],
)
def test_response_validates_on_construction(args: tuple[Any, ...], error: type) -> None:
    with pytest.raises(error):
        IldcpResponse(*args)


def test_request_uses_the_peer_pair() -> None:
    request = ildcp_request(datetime(2030, 1, 1, tzinfo=UTC))
    assert (request.amount, request.data) == (0, b"")
    assert request.execution_condition == PEER_CONDITION
    assert ildcp_fulfill(IldcpResponse("g.a", 2, "EUR")).fulfillment == PEER_FULFILLMENT


def test_invalid_utf8_asset_code_is_refused() -> None:
    with pytest.raises(DecodeError, match="UTF-8"):
        decode_ildcp_response(b"\x03g.a\x02\x02\xff\xfe")


@given(addresses(), st.integers(0, 255), st.text(st.characters(exclude_categories=["Cs"])))
def test_round_trip(address: str, scale: int, code: str) -> None:
    response = IldcpResponse(address, scale, code)
    assert decode_ildcp_response(encode_ildcp_response(response)) == response
    assert decode_ildcp_fulfill(encode_packet(ildcp_fulfill(response))) == response
