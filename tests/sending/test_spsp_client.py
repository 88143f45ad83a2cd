"""The sender's SPSP: pointer resolution (the spec's table), answer validation, and a real
query against our own SPSP endpoint."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from ilp.psk2 import b64url_encode
from payments.sending.errors import SpspError
from payments.sending.spsp import parse_spsp, query_spsp, resolve_receiver
from tests.conftest import load_vectors
from tests.sending.conftest import NODE, in_thread, make_receiver


def _vector(name: str) -> dict[str, Any]:
    data: Any = load_vectors("receiver/spsp.json")
    vectors: list[dict[str, Any]] = data.get("vectors", data)
    return next(v for v in vectors if v["name"] == name)


def test_pointer_resolution_follows_the_payment_pointer_rules() -> None:
    results = _vector("payment_pointer_resolution_rules")["expected"]["results"]
    checked = 0
    for case in results:
        text, verdict = case["input"], case["specVerdict"]
        if verdict.startswith("valid"):
            assert resolve_receiver(text) == case["url"], text
            checked += 1
        elif text.startswith("$"):
            with pytest.raises(SpspError):
                resolve_receiver(text)
            checked += 1
    assert checked >= 12


def test_loopback_development_pointers_and_raw_urls() -> None:
    assert resolve_receiver("$127.0.0.1:8000/alice") == "http://127.0.0.1:8000/alice"
    assert resolve_receiver("$localhost:8000") == "http://localhost:8000/.well-known/pay"
    assert resolve_receiver("$127.0.0.1/alice") == "http://127.0.0.1/alice"
    assert resolve_receiver("https://example.com") == "https://example.com/.well-known/pay"
    assert resolve_receiver("http://localhost:9/bob") == "http://localhost:9/bob"
    for bad in ("http://example.com/bob", "ftp://example.com/x", "https://u:p@example.com/x", ""):
        with pytest.raises(SpspError):
            resolve_receiver(bad)


def test_answer_validation() -> None:
    secret = bytes(range(32))
    good = {"destination_account": "g.x.bob", "shared_secret": base64.b64encode(secret).decode()}
    assert parse_spsp(good).shared_secret == secret
    # Either base64 alphabet, padding optional.
    assert parse_spsp({**good, "shared_secret": b64url_encode(secret)}).shared_secret == secret
    full = parse_spsp(
        {
            **good,
            "balance": {"maximum": "100000", "current": "5360"},
            "asset_info": {"code": "USD", "scale": 2},
        }
    )
    assert full.remaining == 94_640 and (full.asset_code, full.asset_scale) == ("USD", 2)
    bad: Any
    for bad in (
        [],
        {**good, "destination_account": "not an address"},
        {**good, "shared_secret": base64.b64encode(bytes(31)).decode()},
        {**good, "shared_secret": "***"},
        {**good, "balance": {"maximum": str(2**64), "current": "0"}},
        {**good, "balance": {"maximum": 5, "current": "0"}},
        {"shared_secret": good["shared_secret"]},
    ):
        with pytest.raises(SpspError):
            parse_spsp(bad)
    rfc = _vector("spsp_rfc_draft4_full_response")["expected"]
    parsed = parse_spsp(rfc["body"])
    assert parsed.shared_secret.hex() == rfc["sharedSecretHex"]


@pytest.mark.django_db(transaction=True)
async def test_query_our_own_spsp_endpoint(live_server: Any) -> None:
    await in_thread(make_receiver)("bob")
    details = await query_spsp(f"{live_server.url}/bob")
    assert details.destination_account.startswith(f"{NODE}.receivers.bob.")
    assert len(details.shared_secret) == 32
    again = await query_spsp(resolve_receiver(f"{live_server.url}/bob"))
    assert again.shared_secret != details.shared_secret  # fresh per query
    with pytest.raises(SpspError, match="HTTP 404"):
        await query_spsp(f"{live_server.url}/nobody")
    with pytest.raises(SpspError, match="failed"):
        await query_spsp("http://127.0.0.1:9/nothing-listens-here")


@pytest.mark.django_db(transaction=True)
async def test_query_refuses_private_addresses_unless_allowed(
    live_server: Any, settings: Any
) -> None:
    """The pointer is the user's choice: as every outgoing request to a user-given URL
    (payments.outbound), a loopback/private host is refused after resolution, before any
    byte is sent, unless ILP_ALLOW_PRIVATE_URLS (as this suite sets it)."""
    await in_thread(make_receiver)("bob")
    settings.ILP_ALLOW_PRIVATE_URLS = False
    with pytest.raises(SpspError, match=r"refused.*loopback"):
        await query_spsp(f"{live_server.url}/bob")
    settings.ILP_ALLOW_PRIVATE_URLS = True
    assert (await query_spsp(f"{live_server.url}/bob")).destination_account.startswith(NODE)
