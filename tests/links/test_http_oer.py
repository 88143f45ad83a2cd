"""HTTP-OER: the /ilp views (sync, async, RFC 35 form) and the client links."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.core.asgi import get_asgi_application
from django.test import AsyncClient

from ilp.packet import Fulfill, Prepare, Reject, decode_reply, encode_packet
from links import http_oer, registry
from links.models import HttpAsyncRequest, HttpAsyncState
from links.peers import PeerContext
from tests.conftest import load_vectors
from tests.links.conftest import FULFILLMENT, FakeSwitch, prepare_to
from tests.links.http_server import serve_http

pytestmark = pytest.mark.django_db(transaction=True)

VECTORS = load_vectors("http-oer.json")
JS_REQUEST = VECTORS["client_requests"][0]


@pytest.fixture(autouse=True)
def clean_http() -> Iterator[None]:
    http_oer.reset()
    yield
    http_oer.reset()


@pytest.fixture
async def oer(make_peer: Callable[..., Any]) -> None:
    await database_sync_to_async(make_peer)(
        "oer", relation="child", link="http-sync", token="oertoken"
    )


def js_headers(token: str = "oertoken", **extra: str) -> dict[str, str]:
    """The headers ilp-plugin-http 1.6.1 sends (http-oer.json), with our token."""
    headers = {
        k: v for k, v in JS_REQUEST["headers"].items() if k not in ("host", "content-length")
    }
    headers["authorization"] = f"Bearer {token}"
    headers.update(extra)
    return headers


async def post(path: str, body: bytes, **headers: str) -> Any:
    return await AsyncClient().post(
        path,
        data=body,
        content_type=headers.pop("content_type", "application/ilp+octet-stream"),
        headers=headers,
    )


async def test_health_check() -> None:
    response = await AsyncClient().get("/ilp")
    assert response.status_code == 200 and response.content == b"OK"
    assert response["Content-Type"].startswith("text/plain")


async def test_sync_fulfill_with_js_headers(oer: None, switch: FakeSwitch) -> None:
    headers = js_headers()
    response = await post("/ilp", encode_packet(prepare_to(amount=3)), **headers)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/octet-stream"
    assert decode_reply(response.content) == Fulfill(FULFILLMENT, b"ok")
    assert switch.calls[0][0] == "oer" and switch.calls[0][1].amount == 3


async def test_sync_reject_is_200(oer: None, switch: FakeSwitch) -> None:
    response = await post("/ilp", encode_packet(prepare_to(condition=bytes(32))), **js_headers())
    assert response.status_code == 200
    assert isinstance(decode_reply(response.content), Reject)


async def test_legacy_bare_token_and_peer_name_hint(
    make_peer: Callable[..., Any], switch: FakeSwitch
) -> None:
    await database_sync_to_async(make_peer)("one", link="http-sync", token="t1")
    await database_sync_to_async(make_peer)("two", link="http-sync", token="t2")
    response = await post(
        "/ilp", encode_packet(prepare_to()), authorization="t2", **{"ILP-Peer-Name": "17203"}
    )
    assert response.status_code == 200
    assert switch.calls[-1][0] == "two"
    response = await post("/ilp", encode_packet(prepare_to()), **js_headers("t1"))
    assert switch.calls[-1][0] == "one"


@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Bearer "])
async def test_bad_token_is_401(oer: None, switch: FakeSwitch, auth: str | None) -> None:
    headers = {"authorization": auth} if auth is not None else {}
    response = await post("/ilp", encode_packet(prepare_to()), **headers)
    assert response.status_code == 401
    assert response.content == b"invalid authorization"
    assert switch.calls == []


async def test_btp_peer_token_is_not_an_http_token(
    make_peer: Callable[..., Any], switch: FakeSwitch
) -> None:
    await database_sync_to_async(make_peer)("alice", token="alicetoken")
    response = await post("/ilp", encode_packet(prepare_to()), **js_headers("alicetoken"))
    assert response.status_code == 401


async def test_real_peer_name_with_wrong_token_is_401(
    make_peer: Callable[..., Any], switch: FakeSwitch
) -> None:
    """``ILP-Peer-Name`` is only a hint: the token alone decides who is calling."""
    await database_sync_to_async(make_peer)("one", link="http-sync", token="t1")
    await database_sync_to_async(make_peer)("two", link="http-sync", token="t2")
    # "one" authenticates once, so a cached success exists that must not leak to others
    response = await post("/ilp", encode_packet(prepare_to()), **js_headers("t1"))
    assert response.status_code == 200
    for headers in (
        js_headers("wrong", **{"ILP-Peer-Name": "one"}),
        {"authorization": "wrong", "ILP-Peer-Name": "one"},
        js_headers("t1x", **{"ILP-Peer-Name": "two"}),
        js_headers("wrong", **{"ILP-Peer-Name": "two"}),
    ):
        response = await post("/ilp", encode_packet(prepare_to()), **headers)
        assert response.status_code == 401, headers
        assert response.content == b"invalid authorization"
    assert [name for name, *_ in switch.calls] == ["one"]
    # a right token under another peer's name is that token's peer, never the named one
    for _ in range(2):  # the first verifies against the database, the second hits the cache
        response = await post(
            "/ilp", encode_packet(prepare_to()), **js_headers("t1", **{"ILP-Peer-Name": "two"})
        )
        assert response.status_code == 200
    assert [name for name, *_ in switch.calls] == ["one", "one", "one"]


async def test_peer_without_a_token_refuses_every_token(
    make_peer: Callable[..., Any], switch: FakeSwitch
) -> None:
    await database_sync_to_async(make_peer)("notoken", link="http-sync", token="")
    await database_sync_to_async(make_peer)("other", link="http-sync", token="t2")
    for token in ("anything", "t2x", "x" * 64):
        for headers in (
            js_headers(token),
            js_headers(token, **{"ILP-Peer-Name": "notoken"}),
            {"authorization": token, "ILP-Peer-Name": "notoken"},
        ):
            response = await post("/ilp", encode_packet(prepare_to()), **headers)
            assert response.status_code == 401, headers
    assert switch.calls == []


async def test_rfc35_token_only_identifies_the_peer(
    make_peer: Callable[..., Any], switch: FakeSwitch
) -> None:
    """RFC 35 sends no ``ILP-Peer-Name``: the bearer token alone names the peer."""
    for name in ("first", "second", "third"):
        await database_sync_to_async(make_peer)(name, link="http-sync", token=f"tok-{name}")
    for name in ("second", "third", "first", "second"):
        response = await post(
            "/ilp", encode_packet(prepare_to()), authorization=f"Bearer tok-{name}"
        )
        assert response.status_code == 200
        assert switch.calls[-1][0] == name
    assert [name for name, *_ in switch.calls] == ["second", "third", "first", "second"]


async def test_malformed_body_is_400(oer: None, switch: FakeSwitch) -> None:
    for body in (b"", b"\x0c\x05abc", encode_packet(Fulfill(bytes(32)))):
        response = await post("/ilp", body, **js_headers())
        assert response.status_code == 400
        assert b"invalid ILP Prepare" in response.content
    assert switch.calls == []


async def test_oversized_body_is_413(oer: None, switch: FakeSwitch) -> None:
    response = await post("/ilp", b"\x0c" + bytes(http_oer.MAX_BODY), **js_headers())
    assert response.status_code == 413
    assert response.content == b"request entity too large"


async def test_async_path_profile_with_real_callback_server(
    make_peer: Callable[..., Any], switch: FakeSwitch
) -> None:
    got: list[tuple[str, dict[str, str], bytes]] = []
    done = asyncio.Event()

    async def callback_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        got.append((scope["path"], headers, message["body"]))
        status = 503 if len(got) == 1 else 200  # first delivery fails: retried
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        if status == 200:
            done.set()

    async with serve_http(callback_app) as base:
        await database_sync_to_async(make_peer)(
            "peerx", relation="peer", link="http-async", token="tx", url=base, outgoing_token="back"
        )
        request_id = "42ee09c8-a6de-4ae3-8a47-4732b0cbb07b"
        body = encode_packet(prepare_to(amount=9))
        response = await post(f"/ilp/{request_id}", body, authorization="Bearer tx")
        assert response.status_code == 200 and response.content == b""
        # a repeat of the same request is acknowledged, not processed again
        response = await post(f"/ilp/{request_id}", body, authorization="Bearer tx")
        assert response.status_code == 200
        # a different body under the same id is refused
        other = encode_packet(prepare_to(amount=10))
        response = await post(f"/ilp/{request_id}", other, authorization="Bearer tx")
        assert response.status_code == 409
        await asyncio.wait_for(done.wait(), 5)
    assert len(switch.calls) == 1
    path, headers, reply = got[-1]
    assert path == f"/ilp/{request_id}"
    assert headers["authorization"] == "Bearer back"
    assert headers["request-id"] == request_id
    assert decode_reply(reply) == Fulfill(FULFILLMENT, b"ok")
    for _ in range(100):  # the attempt is recorded just after the 200
        row = await HttpAsyncRequest.objects.aget(request_id=request_id)
        if row.state == HttpAsyncState.DELIVERED:
            break
        await asyncio.sleep(0.02)
    assert row.state == HttpAsyncState.DELIVERED and row.attempts == 2


async def test_async_rfc35_header_form(make_peer: Callable[..., Any], switch: FakeSwitch) -> None:
    got: list[tuple[str, dict[str, str], bytes]] = []
    done = asyncio.Event()

    async def callback_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        got.append((scope["path"], headers, message["body"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        done.set()

    async with serve_http(callback_app) as base:
        await database_sync_to_async(make_peer)(
            "peerx", relation="peer", link="http-async", token="tx", url=base
        )
        headers = {
            "authorization": "Bearer tx",
            "Prefer": "respond-async",
            "Request-Id": "abc-1",
            "Callback-Url": f"{base}/incoming/ilp",
        }
        response = await post("/ilp", encode_packet(prepare_to()), **headers)
        assert response.status_code == 202
        await asyncio.wait_for(done.wait(), 5)
        bad = dict(headers, **{"Request-Id": "abc-2", "Callback-Url": "http://evil.example/x"})
        response = await post("/ilp", encode_packet(prepare_to()), **bad)
        assert response.status_code == 400
    path, cb_headers, reply = got[0]
    assert path == "/incoming/ilp" and cb_headers["request-id"] == "abc-1"
    assert isinstance(decode_reply(reply), Fulfill)


async def test_path_and_header_ids_must_agree(oer: None) -> None:
    response = await post(
        "/ilp/abc",
        encode_packet(prepare_to()),
        authorization="Bearer oertoken",
        **{"Request-Id": "xyz"},
    )
    assert response.status_code == 400


async def test_unknown_reply_is_400(oer: None) -> None:
    body = encode_packet(Fulfill(FULFILLMENT))
    response = await post("/ilp/nope", body, authorization="Bearer oertoken")
    assert response.status_code == 400


# --- client links over a real HTTP server running our app ----------------------------------------


async def test_sync_link_between_two_nodes(
    make_peer: Callable[..., Any], switch: FakeSwitch
) -> None:
    async with serve_http(get_asgi_application()) as base:
        # node "server side": peer "left" authenticates with "lt"; node "client side":
        # peer "right" is reached at base/ilp with token "lt".
        await database_sync_to_async(make_peer)(
            "left", relation="peer", link="http-sync", token="lt"
        )
        await database_sync_to_async(make_peer)(
            "right",
            relation="peer",
            link="http-sync",
            token="rt",
            url=f"{base}/ilp",
            outgoing_token="lt",
        )
        await http_oer.sync_http_links()
        assert "right" in switch.ups
        link = registry.get("right")
        assert isinstance(link, http_oer.HttpSyncLink)
        assert await link.send_prepare(prepare_to(amount=4)) == Fulfill(FULFILLMENT, b"ok")
        assert switch.calls[-1][0] == "left"
        replies = await asyncio.gather(*(link.send_prepare(prepare_to()) for _ in range(20)))
        assert all(isinstance(r, Fulfill) for r in replies)
        # wrong outgoing token: the server says 401 → T00
        bad = http_oer.HttpSyncLink("right", f"{base}/ilp", "nope")
        reject = await bad.send_prepare(prepare_to())
        assert isinstance(reject, Reject) and reject.code == "T00"
        # oversized: 413 → F01 (a packet the server's limit refuses)
        big = prepare_to(data=bytes(32767))
        small_limit = http_oer.MAX_BODY
        try:
            http_oer.MAX_BODY = 1000
            reject = await link.send_prepare(big)
        finally:
            http_oer.MAX_BODY = small_limit
        assert isinstance(reject, Reject) and reject.code == "F01"


async def test_sync_link_failures(make_peer: Callable[..., Any], switch: FakeSwitch) -> None:
    link = http_oer.HttpSyncLink("x", "http://127.0.0.1:9/ilp", "t")
    reject = await link.send_prepare(prepare_to())
    assert isinstance(reject, Reject) and reject.code == "T01"

    async def slow_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await asyncio.sleep(5)

    async def garbage_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"garbage"})

    async with serve_http(slow_app) as base:
        reject = await http_oer.HttpSyncLink("x", base, "t").send_prepare(
            prepare_to(expires_in=0.3)
        )
        assert isinstance(reject, Reject) and reject.code == "R00"
    async with serve_http(garbage_app) as base:
        reject = await http_oer.HttpSyncLink("x", base, "t").send_prepare(prepare_to())
        assert isinstance(reject, Reject) and reject.code == "T00"


async def test_async_link_between_two_nodes(
    make_peer: Callable[..., Any], switch: FakeSwitch
) -> None:
    async with serve_http(get_asgi_application()) as base:
        # Both "nodes" are this app: "left" sends to base as "right" expects, and the
        # callback comes back to base/ilp/<id> authenticated as "right".
        await database_sync_to_async(make_peer)(
            "left", relation="peer", link="http-async", token="lt", url=base, outgoing_token="rt"
        )
        await database_sync_to_async(make_peer)(
            "right", relation="peer", link="http-async", token="rt", url=base, outgoing_token="lt"
        )
        await http_oer.sync_http_links()
        link = registry.get("right")
        assert isinstance(link, http_oer.HttpAsyncLink)
        reply = await asyncio.wait_for(link.send_prepare(prepare_to(amount=6)), 5)
        assert reply == Fulfill(FULFILLMENT, b"ok")
        assert switch.calls[-1][0] == "left" and switch.calls[-1][1].amount == 6

        async def never(source: PeerContext, prepare: Prepare) -> Fulfill:
            await asyncio.sleep(10)
            return Fulfill(FULFILLMENT)

        switch.handler = never
        reject = await link.send_prepare(prepare_to(expires_in=0.5))
        assert isinstance(reject, Reject) and reject.code == "R00"


async def test_resume_after_restart(make_peer: Callable[..., Any], switch: FakeSwitch) -> None:
    got: list[bytes] = []
    done = asyncio.Event()

    async def callback_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        got.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        done.set()

    async with serve_http(callback_app) as base:
        await database_sync_to_async(make_peer)(
            "peerx", relation="peer", link="http-async", token="tx", url=base
        )
        from datetime import UTC, datetime, timedelta

        from links import services

        now = datetime.now(UTC)
        await database_sync_to_async(services.http_async_receive)(
            peer_name="peerx",
            request_id="cut",
            digest=b"x" * 32,
            callback_url=f"{base}/ilp/cut",
            received_at=now,
            expires_at=now + timedelta(seconds=60),
        )
        assert await http_oer.resume_pending_callbacks() == 1
        await asyncio.wait_for(done.wait(), 5)
    reject = decode_reply(got[0])
    assert isinstance(reject, Reject) and reject.code == "T00"
