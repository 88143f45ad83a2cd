from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ilp.address import (
    _PATTERN,
    MAX_ADDRESS_LENGTH,
    SCHEMES,
    InvalidAddress,
    address_from_bytes,
    is_prefix_of,
    is_valid_address,
    scheme_of,
    validate_address,
)
from ilp.errors import IlpError
from tests.ilp.strategies import addresses

VALID = [
    "g.alice",
    "g.Alice",
    "test.a",
    "test1.a",
    "test3.x.y.z",
    "peer.config",
    "self.x",
    "local.x",
    "private.x",
    "example.a_b~c-d.0",
    "g." + "a" * (MAX_ADDRESS_LENGTH - 2),
]
INVALID = [
    "",
    "g",
    "g.",
    ".g.alice",
    "g..alice",
    "g.alice.",
    "G.alice",
    "test4.a",
    "tests.a",
    "foo.bar",
    "g.al ice",
    "g.alice!",
    "g.caf\u00e9",
    "g.alice\n",
    "g.a/b",
    "g." + "a" * (MAX_ADDRESS_LENGTH - 1),
]


@pytest.mark.parametrize("address", VALID)
def test_valid_addresses(address: str) -> None:
    assert is_valid_address(address)
    assert validate_address(address) == address
    assert address_from_bytes(address.encode()) == address


@pytest.mark.parametrize("address", INVALID)
def test_invalid_addresses(address: str) -> None:
    assert not is_valid_address(address)
    with pytest.raises(InvalidAddress):
        validate_address(address)
    with pytest.raises(InvalidAddress):
        address_from_bytes(address.encode("utf-8"))


def test_high_bit_bytes_are_refused_not_stripped() -> None:
    # JS clears the high bit and reads "g.cafe"; we refuse the byte.
    with pytest.raises(InvalidAddress):
        address_from_bytes(b"g.caf\xe5")


def test_invalid_address_is_a_value_error_of_the_library() -> None:
    assert issubclass(InvalidAddress, ValueError)
    assert issubclass(InvalidAddress, IlpError)
    with pytest.raises(InvalidAddress):
        validate_address(b"g.alice")  # type: ignore[arg-type]


def test_schemes_match_the_grammar() -> None:
    alternation = re.match(r"\(\?:([^)]*)\)", _PATTERN)
    assert alternation is not None
    in_grammar: set[str] = set()
    for option in alternation.group(1).split("|"):
        if option == "test[1-3]?":
            in_grammar.update({"test", "test1", "test2", "test3"})
        else:
            in_grammar.add(option)
    assert in_grammar == SCHEMES
    for scheme in SCHEMES:
        assert is_valid_address(scheme + ".x")
        assert scheme_of(scheme + ".x.y") == scheme
    for near in ("test0", "test4", "gg", "peers", "Local"):
        assert not is_valid_address(near + ".x")


@pytest.mark.parametrize(
    ("prefix", "address", "expected"),
    [
        ("test.a", "test.a", True),
        ("test.a", "test.a.b", True),
        ("test.a", "test.ab", False),
        ("test.a.b", "test.a", False),
        ("test", "test.a", True),
        ("g.bob", "g.bobby.x", False),
        ("", "g.a", False),
    ],
)
def test_is_prefix_of_is_segment_aware(prefix: str, address: str, expected: bool) -> None:
    assert is_prefix_of(prefix, address) is expected


@given(addresses())
def test_generated_addresses_are_valid(address: str) -> None:
    assert is_valid_address(address)
    assert address_from_bytes(address.encode("ascii")) == address
    assert is_prefix_of(address, address)
    assert is_prefix_of(address, address + ".x")
    assert not is_prefix_of(address, address + "x")


@given(st.text(max_size=40))
def test_str_and_bytes_validation_agree(text: str) -> None:
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        assert not is_valid_address(text)
        return
    try:
        from_bytes = address_from_bytes(raw)
    except InvalidAddress:
        assert not is_valid_address(text)
    else:
        assert is_valid_address(text)
        assert from_bytes == text
