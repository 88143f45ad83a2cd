"""A valid Prepare that expires at the far end of the ILP timestamp range gets an answer
on every path (issue 10: date arithmetic on a peer's time saturates)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import AsyncClient

from ilp.btp import BtpResponse, BtpType, encode_ilp_frame, find_entry
from ilp.echo import EchoRequest, encode_echo
from ilp.oer import parse_ilp_timestamp
from ilp.packet import Fulfill, Prepare, Reject, decode_reply, encode_packet
from links import http_oer
from links.models import HttpAsyncRequest
from tests.links.btp_helpers import RawBtp
from tests.links.conftest import CONDITION, FULFILLMENT, FakeSwitch
from tests.links.http_server import serve_http
from tests.links.test_switch_support import FakeLink, make_rig, peer

pytestmark = pytest.mark.django_db(transaction=True)

LAST = parse_ilp_timestamp(b"99991231235959999")
FIRST = parse_ilp_timestamp(b"00010101000000000")


def far(amount: int = 10, destination: str = "test.local.bob") -> Prepare:
    return Prepare(amount, LAST, CONDITION, destination, b"")


@pytest.fixture(autouse=True)
def clean_http() -> Iterator[None]:
    http_oer.reset()
    yield
    http_oer.reset()


@pytest.mark.parametrize("idempotent", [True, False], ids=["btp2.0-i", "btp2.0"])
async def test_btp_answers_the_last_expiry(
    make_peer: Callable[..., Any], switch: FakeSwitch, idempotent: bool
) -> None:
    await database_sync_to_async(make_peer)("alice", token="alicetoken")
    raw = await RawBtp().open()
    assert isinstance(await raw.auth(idempotent=idempotent), BtpResponse)
    frame = encode_ilp_frame(BtpType.MESSAGE, 5, encode_packet(far()))
    await raw.send(frame)
    reply = await raw.next()
    assert isinstance(reply, BtpResponse) and reply.request_id == 5
    entry = find_entry(reply, "ilp")
    assert entry is not None and decode_reply(entry.data) == Fulfill(FULFILLMENT, b"ok")
    if idempotent:  # and the repeat is replayed, not processed again
        await raw.send(frame)
        assert await raw.next() == reply
    assert len(switch.calls) == 1
    await raw.close()


async def test_http_sync_answers_the_last_expiry(
    make_peer: Callable[..., Any], switch: FakeSwitch
) -> None:
    await database_sync_to_async(make_peer)("oer", link="http-sync", token="oertoken")
    response = await AsyncClient().post(
        "/ilp",
        data=encode_packet(far()),
        content_type="application/octet-stream",
        headers={"authorization": "Bearer oertoken"},
    )
    assert response.status_code == 200
    assert decode_reply(response.content) == Fulfill(FULFILLMENT, b"ok")


async def test_http_async_answers_the_last_expiry(
    make_peer: Callable[..., Any], switch: FakeSwitch
) -> None:
    got: list[bytes] = []
    done = asyncio.Event()

    async def callback_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        got.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        done.set()

    async with serve_http(callback_app) as base:
        await database_sync_to_async(make_peer)(
            "peerx", relation="peer", link="http-async", token="tx", url=base, outgoing_token="b"
        )
        request_id = "far-away-1"
        before = datetime.now(UTC)
        response = await AsyncClient().post(
            f"/ilp/{request_id}",
            data=encode_packet(far()),
            content_type="application/octet-stream",
            headers={"authorization": "Bearer tx"},
        )
        assert response.status_code == 200
        await asyncio.wait_for(done.wait(), 5)
    assert decode_reply(got[0]) == Fulfill(FULFILLMENT, b"ok")
    row = await HttpAsyncRequest.objects.aget(request_id=request_id)
    # the row's lifetime is bounded, however far the Prepare's expiry
    limit = before + http_oer.MAX_CALLBACK_LIFETIME + http_oer.KEEP_AFTER_EXPIRY
    assert row.expires_at <= limit + timedelta(seconds=5)


async def test_switch_forwards_the_last_expiry_with_a_bounded_hold() -> None:
    alice, carl = peer("alice"), peer("carl")
    rig = make_rig([alice, carl], max_hold_ms=30_000)
    link = rig.link("carl")
    prepare = Prepare(10, LAST, CONDITION, "test.conn.carl.x", b"")
    reply = await rig.switch.handle_prepare(alice, prepare)
    assert isinstance(reply, Fulfill)
    assert link.seen[0].expires_at <= datetime.now(UTC) + timedelta(seconds=30)


async def test_echo_with_the_first_expiry_is_r02_not_a_crash() -> None:
    alice = peer("alice")
    rig = make_rig([alice])
    rig.link("alice")
    ping = Prepare(0, FIRST, CONDITION, "test.conn", encode_echo(EchoRequest("test.conn.alice")))
    reply = await rig.switch.handle_prepare(alice, ping)
    assert isinstance(reply, Reject) and reply.code == "R02", reply


async def test_echo_with_the_last_expiry_is_sent_back() -> None:
    alice = peer("alice")
    rig = make_rig([alice])
    link: FakeLink = rig.link("alice")
    ping = Prepare(0, LAST, CONDITION, "test.conn", encode_echo(EchoRequest("test.conn.alice")))
    reply = await rig.switch.handle_prepare(alice, ping)
    assert isinstance(reply, Fulfill), reply
    assert link.seen[0].expires_at == LAST - timedelta(seconds=1)
