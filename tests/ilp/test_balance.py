from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ilp.balance import (
    BALANCE_DESTINATION,
    balance_from_fulfill,
    balance_fulfill,
    balance_request,
    decode_balance,
    decode_balance_fulfill,
    encode_balance,
)
from ilp.conditions import PEER_CONDITION, PEER_FULFILLMENT
from ilp.errors import DecodeError, EncodeError
from ilp.packet import Fulfill, decode_packet, encode_packet
from tests.conftest import load_vectors
from tests.ilp.jsonvectors import packet_from_json, parse_time

VECTORS = load_vectors("balance.json")
RESPONSES = [pytest.param(v, id=v["name"]) for v in VECTORS["vectors"] if "balance" in v["object"]]


def test_constants() -> None:
    constants = VECTORS["constants"]
    assert constants["destination"] == BALANCE_DESTINATION
    assert PEER_CONDITION.hex() == constants["condition"]
    assert PEER_FULFILLMENT.hex() == constants["fulfillment"]


def test_request_vector() -> None:
    (vector,) = (v for v in VECTORS["vectors"] if v["name"] == "request")
    request = balance_request(parse_time(vector["object"]["expiresAt"]))
    assert request == packet_from_json(vector["object"])
    assert encode_packet(request).hex() == vector["hex"]


@pytest.mark.parametrize("vector", RESPONSES)
def test_response_vector(vector: dict[str, Any]) -> None:
    balance = int(vector["object"]["balance"])
    raw = bytes.fromhex(vector["hex"])
    assert encode_balance(balance).hex() == vector["data_hex"]
    assert decode_balance(bytes.fromhex(vector["data_hex"])) == balance
    assert encode_packet(balance_fulfill(balance)).hex() == vector["hex"]
    assert decode_balance_fulfill(raw) == balance
    assert packet_from_json(vector["object"]["fulfill"]) == balance_fulfill(balance)


@pytest.mark.parametrize("vector", [pytest.param(v, id=v["name"]) for v in VECTORS["invalid"]])
def test_invalid_vector(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    with pytest.raises(DecodeError):
        decode_balance_fulfill(raw)
    fulfill = decode_packet(raw)
    assert isinstance(fulfill, Fulfill)
    with pytest.raises(DecodeError):
        balance_from_fulfill(fulfill)
    if "data_hex" in vector:
        with pytest.raises(DecodeError):
            decode_balance(bytes.fromhex(vector["data_hex"]))


@pytest.mark.parametrize("n", [2**63, -(2**63) - 1])
def test_out_of_range_balance_is_an_encode_error(n: int) -> None:
    with pytest.raises(EncodeError):
        encode_balance(n)


def test_request_is_a_peer_request() -> None:
    request = balance_request(datetime(2030, 1, 1, tzinfo=UTC))
    assert (request.amount, request.destination, request.data) == (0, "peer.balance", b"")
    assert request.execution_condition == PEER_CONDITION


@given(st.integers(-(2**63), 2**63 - 1))
def test_round_trip(n: int) -> None:
    assert decode_balance(encode_balance(n)) == n
    assert decode_balance_fulfill(encode_packet(balance_fulfill(n))) == n
