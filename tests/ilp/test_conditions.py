from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ilp.conditions import (
    PEER_CONDITION,
    PEER_FULFILLMENT,
    condition_for,
    fulfillment_matches,
    sha256,
)
from ilp.packet import decode_fulfill, decode_prepare
from tests.conftest import load_vectors

ILP = load_vectors("ilp-packet.json")


def test_peer_pair_is_the_spec_constant() -> None:
    constants = load_vectors("ildcp.json")["constants"]
    assert PEER_FULFILLMENT.hex() == constants["fulfillment"]
    assert PEER_CONDITION.hex() == constants["condition"]
    assert fulfillment_matches(PEER_FULFILLMENT, PEER_CONDITION)


def test_fulfill_basic_fulfills_prepare_basic() -> None:
    vectors = {v["name"]: bytes.fromhex(v["hex"]) for v in ILP["vectors"]}
    prepare = decode_prepare(vectors["prepare_basic"])
    fulfill = decode_fulfill(vectors["fulfill_basic"])
    assert condition_for(fulfill.fulfillment) == prepare.execution_condition
    assert fulfillment_matches(fulfill.fulfillment, prepare.execution_condition)
    assert not fulfillment_matches(PEER_FULFILLMENT, prepare.execution_condition)


@given(st.binary(min_size=32, max_size=32))
def test_condition_for_is_sha256(fulfillment: bytes) -> None:
    assert condition_for(fulfillment) == hashlib.sha256(fulfillment).digest() == sha256(fulfillment)
    assert fulfillment_matches(fulfillment, condition_for(fulfillment))


def test_wrong_lengths() -> None:
    with pytest.raises(ValueError):
        condition_for(bytes(31))
    assert not fulfillment_matches(bytes(31), sha256(bytes(31)))
    assert not fulfillment_matches(PEER_FULFILLMENT, PEER_CONDITION[:31])
