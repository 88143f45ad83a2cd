"""HTTP-OER-ASYNC with several processes: replies reach the waiting process, and only
requests whose lease ran out are resumed (``links.http_oer``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.core.asgi import get_asgi_application

from ilp.packet import Fulfill, Prepare, Reject, decode_reply
from links import http_oer, services
from links.models import HttpAsyncRequest
from links.peers import PeerContext
from tests.conftest import requires_redis
from tests.links.conftest import FULFILLMENT, FakeSwitch, prepare_to
from tests.links.http_server import serve_http

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def clean_http() -> Iterator[None]:
    http_oer.reset()
    yield
    http_oer.reset()


@pytest.fixture
async def other_process() -> AsyncIterator[http_oer.Waiters]:
    """The waiters of another process of the node (its own channel and registrations)."""
    waiters = http_oer.Waiters()
    yield waiters
    await waiters.close()
    await http_oer._waiters.close()


@requires_redis
async def test_a_reply_landing_on_another_process_completes_the_request(
    make_peer: Callable[..., Any], switch: FakeSwitch, other_process: http_oer.Waiters
) -> None:
    async with serve_http(get_asgi_application()) as base:
        # As in test_http_oer's two-node test, both "nodes" are this app; the request is
        # sent from "another process" (its own Waiters), while the callback with the reply
        # reaches this process's /ilp/<id> view.
        await database_sync_to_async(make_peer)(
            "left", relation="peer", link="http-async", token="lt", url=base, outgoing_token="rt"
        )
        await database_sync_to_async(make_peer)(
            "right", relation="peer", link="http-async", token="rt", url=base, outgoing_token="lt"
        )
        link = http_oer.HttpAsyncLink("right", base, "lt", waiters=other_process)
        async with asyncio.timeout(30):
            reply = await link.send_prepare(prepare_to(amount=6))
        assert reply == Fulfill(FULFILLMENT, b"ok")
        assert switch.calls[-1][0] == "left" and switch.calls[-1][1].amount == 6
        assert other_process.channel and other_process.channel != http_oer._waiters.channel
        assert not other_process.local  # the waiter is gone once answered

        # A reply to an id nobody waits for is still a 400, on any process.
        response = await http_oer._waiters.take(
            await _ctx("left"), "no-such-id", b"\x0d\x21" + bytes(32) + b"\x00"
        )
        assert response.status_code == 400


@requires_redis
async def test_a_reply_from_the_wrong_peer_is_refused_and_not_passed_on(
    make_peer: Callable[..., Any], other_process: http_oer.Waiters
) -> None:
    await database_sync_to_async(make_peer)("right", relation="peer", link="http-sync")
    await database_sync_to_async(make_peer)("mallory", relation="peer", link="http-sync")
    loop = asyncio.get_running_loop()
    waiting = http_oer._Waiting("right", loop.create_future())
    await other_process.add("req-1", waiting, 30)
    body = bytes.fromhex("0d21") + bytes(32) + b"\x00"
    response = await http_oer._waiters.take(await _ctx("mallory"), "req-1", body)
    assert response.status_code == 400
    response = await http_oer._waiters.take(await _ctx("right"), "req-1", body)
    assert response.status_code == 200
    async with asyncio.timeout(30):
        assert isinstance(await waiting.future, Fulfill)
    await other_process.remove("req-1")


async def _ctx(name: str) -> PeerContext:
    from links.peers import aload_peer_context

    ctx = await aload_peer_context(name)
    assert ctx is not None
    return ctx


async def _receive(peer: str, request_id: str, callback: str, lease: timedelta | None) -> None:
    now = datetime.now(UTC)
    await database_sync_to_async(services.http_async_receive)(
        peer_name=peer,
        request_id=request_id,
        digest=request_id.encode().ljust(32, b"."),
        callback_url=f"{callback}/ilp/{request_id}",
        received_at=now,
        expires_at=now + timedelta(seconds=60),
        lease_until=None if lease is None else now + lease,
    )


async def test_only_requests_whose_lease_ran_out_are_resumed(
    make_peer: Callable[..., Any], switch: FakeSwitch
) -> None:
    got: dict[str, bytes] = {}
    delivered = asyncio.Event()

    async def callback_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        got[scope["path"].rsplit("/", 1)[-1]] = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        delivered.set()

    async with serve_http(callback_app) as base:
        await database_sync_to_async(make_peer)(
            "peerx", relation="peer", link="http-async", token="tx", url=base
        )
        await _receive("peerx", "held", base, timedelta(seconds=60))  # a live process has it
        await _receive("peerx", "lapsed", base, timedelta(seconds=-1))  # its process died
        assert await http_oer.resume_pending_callbacks() == 1
        async with asyncio.timeout(30):
            await delivered.wait()
        assert set(got) == {"lapsed"}
        reject = decode_reply(got["lapsed"])
        assert isinstance(reject, Reject) and reject.code == "T00"
        # Claimed: another process starting now finds nothing to resume.
        assert await http_oer.resume_pending_callbacks() == 0
        held = await HttpAsyncRequest.objects.aget(request_id="held")
        assert held.state == "in_progress" and held.attempts == 0


async def test_a_request_in_progress_keeps_its_lease(
    make_peer: Callable[..., Any], switch: FakeSwitch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_oer, "RENEW_EVERY_S", 0.05)
    monkeypatch.setattr(http_oer, "RESUME_EVERY_S", 0.05)
    release = asyncio.Event()

    async def slow(source: PeerContext, prepare: Prepare) -> Fulfill:
        await release.wait()
        return Fulfill(FULFILLMENT, b"ok")

    switch.handler = slow

    async def callback_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    from tests.links.test_http_oer import post

    async with serve_http(callback_app) as base:
        await database_sync_to_async(make_peer)(
            "peerx", relation="peer", link="http-async", token="tx", url=base
        )
        from ilp.packet import encode_prepare

        response = await post(
            "/ilp/slow-1",
            encode_prepare(prepare_to()),
            authorization="Bearer tx",
            content_type="application/octet-stream",
        )
        assert response.status_code == 200
        first = (await HttpAsyncRequest.objects.aget(request_id="slow-1")).lease_until
        assert first is not None
        async with asyncio.timeout(30):
            while (await HttpAsyncRequest.objects.aget(request_id="slow-1")).lease_until == first:
                await asyncio.sleep(0.02)
        # Renewed, so no process resumes it while it is being processed here.
        assert await http_oer.resume_pending_callbacks() == 0
        release.set()
        async with asyncio.timeout(30):
            while (await HttpAsyncRequest.objects.aget(request_id="slow-1")).state != "delivered":
                await asyncio.sleep(0.02)
        assert not http_oer._leased
