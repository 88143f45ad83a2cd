from __future__ import annotations

from typing import Any

import pytest

from receivers.pointers import (
    InvalidPaymentPointer,
    PaymentPointer,
    parse_payment_pointer,
    pointer_for,
    public_base_url,
    site_pointer,
    spsp_url,
    spsp_url_for,
)
from tests.conftest import load_vectors

SPSP = load_vectors("receiver/spsp.json")


def vector(name: str) -> dict[str, Any]:
    return next(v for v in SPSP["vectors"] if v["name"] == name)


RULES = vector("payment_pointer_resolution_rules")["expected"]["results"]


@pytest.mark.parametrize("case", RULES, ids=[c["input"] for c in RULES])
def test_pointer_syntax_follows_the_draft(case: dict[str, Any]) -> None:
    text, verdict = case["input"], case["specVerdict"]
    if verdict.startswith("valid"):
        pointer = parse_payment_pointer(text)
        assert pointer.url == case["url"]
        assert str(pointer) == text
    else:
        with pytest.raises(InvalidPaymentPointer):
            parse_payment_pointer(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("$example.com:8443/bob", "port"),
        ("$example.com/bob?x=1", "query"),
        ("$example.com/bob#frag", "fragment"),
        ("$user@example.com/bob", "userinfo"),
        ("$", "host is empty"),
        ("example.com/bob", "starts with '\\$'"),
        ("$exämple.com/bob", "ASCII"),
    ],
)
def test_invalid_pointers_say_why(text: str, reason: str) -> None:
    with pytest.raises(InvalidPaymentPointer, match=reason):
        parse_payment_pointer(text)


def test_pointer_value_validates_on_construction() -> None:
    assert PaymentPointer("example.com", "/bob").url == "https://example.com/bob"
    with pytest.raises(InvalidPaymentPointer):
        PaymentPointer("example.com:80", "/bob")


def test_raw_urls_and_pointers_resolve_to_spsp_urls() -> None:
    assert spsp_url("$example.com") == "https://example.com/.well-known/pay"
    assert spsp_url("https://example.com/spsp/alice") == "https://example.com/spsp/alice"
    assert spsp_url("https://example.com") == "https://example.com/.well-known/pay"
    with pytest.raises(InvalidPaymentPointer):
        spsp_url("ftp://example.com/x")


def test_issued_pointers(settings: Any) -> None:
    assert pointer_for("bob", base_url="https://pay.example.org") == "$pay.example.org/bob"
    assert spsp_url_for("bob", base_url="https://pay.example.org/") == "https://pay.example.org/bob"
    assert site_pointer(base_url="https://pay.example.org") == "$pay.example.org"
    # A public URL behind a path prefix keeps it.
    assert pointer_for("bob", base_url="https://example.org/ilp/") == "$example.org/ilp/bob"
    # The pointers we issue under https are valid pointers that resolve back to our URL.
    pointer = parse_payment_pointer(pointer_for("bob", base_url="https://pay.example.org"))
    assert pointer.url == spsp_url_for("bob", base_url="https://pay.example.org")

    settings.ILP_PUBLIC_URL = ""
    assert public_base_url() == "http://127.0.0.1:8000"
    settings.ILP_PUBLIC_URL = "https://node.example/"
    assert public_base_url() == "https://node.example"
