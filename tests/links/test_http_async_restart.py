"""HTTP-OER-ASYNC across a restart: a request whose processing the restart cut (stored,
its reply not) gets the outcome the node's books hold, with the real switch, book and
receiver; never a second booking, never a second forward."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db import connections
from django.test import Client

from ilp.packet import Fulfill, Prepare, Reject, Reply, decode_reply, encode_prepare
from ilp.psk2_sender import build_chunk
from links import edge, http_oer, registry, services
from links.models import HttpAsyncRequest, HttpAsyncState
from links.peers import PeerContext, load_peer_context
from links.switch import FULFILLMENT_MEMO, packet_key, reset_switch
from payments.ledger import reset_book, wait_receipts_applied
from payments.models import Posting, Receipt
from receivers.services import receiver_create
from tests.links.http_server import serve_http

try:
    from tests.links.test_switch_support import FULFILLMENT, FakeLink, never, prepare
except ImportError:  # rootdir-less import mode
    from test_switch_support import (  # type: ignore[no-redef]
        FULFILLMENT,
        FakeLink,
        never,
        prepare,
    )

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass
class Callbacks:
    """The upstream peer's callback endpoint: every reply POSTed to it."""

    base: str = ""
    got: list[Reply] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.got.append(decode_reply((await receive())["body"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        self.arrived.set()

    async def reply(self) -> Reply:
        await asyncio.wait_for(self.arrived.wait(), 10)
        return self.got[0]


@pytest.fixture
def fresh() -> Iterator[None]:
    reset_switch()
    reset_book()
    http_oer.reset()
    yield
    http_oer.reset()
    reset_switch()
    reset_book()
    registry.current().clear()
    connections.close_all()


@pytest.fixture
async def node(fresh: None, django_user_model: type[User]) -> AsyncIterator[dict[str, Any]]:
    """Upstream peer ``up`` (HTTP-OER-ASYNC, its callbacks to a live server), next hop
    ``carl`` (a child), our receiver ``bob``."""
    callbacks = Callbacks()
    async with serve_http(callbacks.app) as base:
        callbacks.base = base

        def setup() -> dict[str, Any]:
            services.peer_create(
                name="up", relation="peer", link="http-async", token="u" * 20, url=base
            )
            services.peer_create(name="carl", relation="child", link="btp-server", token="c" * 20)
            receiver_create(user=django_user_model.objects.create_user(username="o"), name="bob")
            spsp = json.loads(Client().get("/bob", HTTP_ACCEPT="application/spsp+json").content)
            return {
                "up": load_peer_context("up"),
                "destination": spsp["destination_account"],
                "secret": base64.b64decode(spsp["shared_secret"]),
                "callbacks": callbacks,
            }

        yield await sync_to_async(setup)()
        await http_oer.stop()


@sync_to_async
def cut_request(up: PeerContext, prepare: Prepare, callbacks: Callbacks) -> str:
    """The row a process leaves when it dies mid-processing: stored, no reply, its lease
    run out."""
    request_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    body = encode_prepare(prepare)
    services.http_async_receive(
        peer_name=up.name,
        request_id=request_id,
        digest=b"d" * 32,
        callback_url=f"{callbacks.base}/ilp/{request_id}",
        received_at=now,
        expires_at=now + timedelta(seconds=90),
        lease_until=now - timedelta(seconds=1),
        prepare=body,
    )
    return request_id


@sync_to_async
def ledger() -> tuple[list[tuple[str, int, str, str]], int]:
    """Postings and receipts, once the receipts committed so far are applied."""
    assert wait_receipts_applied(10)
    rows = [
        (p.account.code, int(p.amount), p.key, p.memo)
        for p in Posting.objects.select_related("account").order_by("key")
    ]
    return rows, Receipt.objects.count()


@sync_to_async
def row_of(request_id: str) -> HttpAsyncRequest:
    return HttpAsyncRequest.objects.get(request_id=request_id)


def chunk(node: dict[str, Any], amount: int) -> Prepare:
    return build_chunk(
        node["secret"],
        node["destination"],
        payment_id=os.urandom(16),
        sequence=0,
        payment_amount=2**64 - 1,
        chunk_amount=0,
        source_amount=amount,
        expires_at=datetime.now(UTC) + timedelta(seconds=30),
        iv=os.urandom(12),
        last=True,
    )


async def restart() -> None:
    """A new process: nothing of the old one in memory; it resumes lapsed requests."""
    http_oer.reset()
    reset_switch()
    reset_book()
    assert await http_oer.resume_pending_callbacks() == 1


async def test_forwarded_fulfilled_and_booked_is_answered_with_that_fulfill(
    node: dict[str, Any],
) -> None:
    """Died after the Fulfill was committed, before the reply row: the peer gets the
    Fulfill (the ledger holds its proof), nothing is sent or booked again."""
    carl = FakeLink()
    registry.register("carl", carl)
    p = prepare("test.local.carl.x", 700)
    assert await edge.handle_prepare(node["up"], p) == Fulfill(FULFILLMENT)
    key = packet_key("up", p)
    booked, _ = await ledger()
    assert ("peer:up", -700, f"{key}:in", FULFILLMENT_MEMO + FULFILLMENT.hex()) in booked
    request_id = await cut_request(node["up"], p, node["callbacks"])

    await restart()
    registry.register("carl", carl)
    assert await node["callbacks"].reply() == Fulfill(FULFILLMENT)
    assert len(carl.seen) == 1  # not forwarded again
    assert await ledger() == (booked, 0)  # not booked again
    row = await row_of(request_id)
    assert row.state == HttpAsyncState.DELIVERED
    assert decode_reply(bytes(row.reply)) == Fulfill(FULFILLMENT)


async def test_forwarded_and_not_booked_is_rejected_and_never_sent_again(
    node: dict[str, Any],
) -> None:
    """Died while the next hop held the Prepare: the books say unpaid, so does the answer
    (T00); the Prepare is not sent on a second time (the next hop may pay the first)."""
    carl = FakeLink(never())
    registry.register("carl", carl)
    p = prepare("test.local.carl.x", 700)
    await cut_request(node["up"], p, node["callbacks"])

    await restart()
    registry.register("carl", carl)
    reply = await node["callbacks"].reply()
    assert isinstance(reply, Reject) and reply.code == "T00"
    assert carl.seen == []
    assert await ledger() == ([], 0)


async def test_forwarded_and_expired_is_r00(node: dict[str, Any]) -> None:
    registry.register("carl", FakeLink())
    await cut_request(node["up"], prepare("test.local.carl.x", 5, expires_in=-1), node["callbacks"])
    await restart()
    reply = await node["callbacks"].reply()
    assert isinstance(reply, Reject) and reply.code == "R00"


async def test_for_our_receiver_not_yet_received_is_resumed(node: dict[str, Any]) -> None:
    """Died before the receiver ran: the Prepare runs again and is received (once)."""
    p = chunk(node, 1234)
    await cut_request(node["up"], p, node["callbacks"])
    await restart()
    reply = await node["callbacks"].reply()
    assert isinstance(reply, Fulfill), reply
    booked, receipts = await ledger()
    assert [(code, amount) for code, amount, *_ in booked if code == "peer:up"] == [
        ("peer:up", -1234)
    ]
    assert receipts == 1


async def test_for_our_receiver_already_booked_is_answered_without_booking_again(
    node: dict[str, Any],
) -> None:
    """Died after the receiver booked the packet, before the reply row: the re-run
    finds the booking (idempotent on the packet key) and gives the same Fulfill."""
    p = chunk(node, 1234)
    first = await edge.handle_prepare(node["up"], p)
    assert isinstance(first, Fulfill)
    before = await ledger()
    await cut_request(node["up"], p, node["callbacks"])
    await restart()
    reply = await node["callbacks"].reply()
    assert isinstance(reply, Fulfill) and reply.fulfillment == first.fulfillment
    assert await ledger() == before
