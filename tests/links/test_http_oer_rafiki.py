"""An http-sync link towards a Rafiki connector: Rafiki's ILP-over-HTTP endpoint takes
``Content-Type: application/octet-stream`` only (400 otherwise) and ``Authorization:
Bearer <token>``, and answers the OER reply. The stub below enforces exactly that."""

from __future__ import annotations

from typing import Any

import pytest

from ilp.packet import Fulfill, decode_prepare, encode_packet
from links import http_oer
from tests.links.conftest import FULFILLMENT, prepare_to
from tests.links.http_server import serve_http

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "rafiki-incoming-token"


def rafiki_like(seen: list[dict[str, str]]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        seen.append(headers)
        status, reply = 200, b""
        if headers.get("authorization") != f"Bearer {TOKEN}":
            status, reply = 401, b"Unauthorized"
        elif headers.get("content-type") != "application/octet-stream":
            status, reply = 400, b"Expected Content-Type of application/octet-stream"
        else:
            prepare = decode_prepare(body)
            reply = encode_packet(Fulfill(FULFILLMENT, prepare.data))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": reply})

    return app


async def test_sync_link_speaks_rfc35_to_a_rafiki_peer() -> None:
    seen: list[dict[str, str]] = []
    async with serve_http(rafiki_like(seen)) as base:
        link = http_oer.HttpSyncLink("rafiki", f"{base}/ilp", TOKEN)
        reply = await link.send_prepare(prepare_to(amount=7, data=b"stream"))
    assert reply == Fulfill(FULFILLMENT, b"stream")
    (headers,) = seen
    assert headers["content-type"] == "application/octet-stream"
    assert headers["authorization"] == f"Bearer {TOKEN}"
