"""SPSP content negotiation on the sender's side: one query offers both protocols and the
answer's ``Content-Type`` says which one the receiver chose (RFC 0009 SPSP4 vs PSK2)."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from ilp.stream import ReceiptSetup
from payments.sending.errors import SpspError
from payments.sending.spsp import query_spsp

SECRET = bytes(range(32))
BODY = {
    "destination_account": "test.far.carol.abc",
    "shared_secret": base64.b64encode(SECRET).decode(),
}


def _server(content_type: str, seen: list[str], status: int = 200) -> httpx.AsyncClient:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["accept"])
        return httpx.Response(
            status, content=json.dumps(BODY).encode(), headers={"Content-Type": content_type}
        )

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


@pytest.mark.parametrize(
    ("content_type", "protocol"),
    [
        ("application/spsp4+json", "stream"),
        ("application/spsp4+json; charset=utf-8", "stream"),
        ("application/spsp+json", "psk2"),
        ("application/json", "psk2"),  # PSK2-era servers that label it plain JSON
    ],
)
async def test_the_answer_content_type_chooses_the_protocol(
    content_type: str, protocol: str
) -> None:
    seen: list[str] = []
    async with _server(content_type, seen) as client:
        details = await query_spsp("http://127.0.0.1:9/carol", client=client)
    assert seen == ["application/spsp4+json, application/spsp+json;q=0.9"]
    assert details.protocol == protocol
    assert details.shared_secret == SECRET and details.destination_account.endswith(".abc")


async def test_asking_for_one_protocol_refuses_the_other() -> None:
    seen: list[str] = []
    async with _server("application/spsp+json", seen) as client:
        with pytest.raises(SpspError, match="asked for STREAM, the receiver answered PSK2"):
            await query_spsp("http://127.0.0.1:9/bob", protocol="stream", client=client)
        details = await query_spsp("http://127.0.0.1:9/bob", protocol="psk2", client=client)
    assert seen == ["application/spsp4+json", "application/spsp+json"]
    assert details.protocol == "psk2"
    async with _server("application/spsp4+json", seen) as client:
        with pytest.raises(SpspError, match="asked for PSK2, the receiver answered STREAM"):
            await query_spsp("http://127.0.0.1:9/carol", protocol="psk2", client=client)
    async with _server("application/json", seen, status=406) as client:
        with pytest.raises(SpspError, match=r"does not offer STREAM \(HTTP 406\)"):
            await query_spsp("http://127.0.0.1:9/bob", protocol="stream", client=client)
    with pytest.raises(SpspError, match="unknown protocol"):
        await query_spsp("http://127.0.0.1:9/bob", protocol="psk3")


async def test_a_psk2_endpoint_that_refuses_the_offer_is_asked_for_psk2_alone() -> None:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["accept"])
        if "spsp4" in request.headers["accept"]:
            return httpx.Response(406)
        return httpx.Response(
            200,
            content=json.dumps(BODY).encode(),
            headers={"Content-Type": "application/spsp+json"},
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
        details = await query_spsp("http://127.0.0.1:9/shop", client=client)
    assert details.protocol == "psk2"
    assert seen == ["application/spsp4+json, application/spsp+json;q=0.9", "application/spsp+json"]


async def test_receipt_details_go_with_the_query() -> None:
    setup = ReceiptSetup(bytes(range(16)), bytes(range(32)))
    headers: list[httpx.Headers] = []

    def handle(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers)
        return httpx.Response(
            200,
            content=json.dumps(BODY).encode(),
            headers={"Content-Type": "application/spsp4+json"},
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
        await query_spsp("http://127.0.0.1:9/carol", receipts=setup, client=client)
    assert base64.b64decode(headers[0]["receipt-nonce"]) == setup.nonce
    assert base64.b64decode(headers[0]["receipt-secret"]) == setup.secret
