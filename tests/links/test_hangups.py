"""A forward is the node's, not the client's (issue 10, item 1).

Once a Prepare has gone to the next hop its outcome is recorded whatever happens to the
source's connection: the Fulfill that comes back later is committed (postings written,
``check_ledger`` clean), a Reject releases the holds. Real pieces throughout: the
process-wide switch and book, Django's ASGI handler for HTTP-OER (which cancels the view
when the client disconnects) and the ``/btp`` consumer for the BTP peers.
"""

from __future__ import annotations

import asyncio
import io
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from asgiref.testing import ApplicationCommunicator
from django.core.asgi import get_asgi_application
from django.core.management import call_command
from django.db import connections

from ilp.btp import BtpMessage, BtpResponse, BtpType, encode_ilp_frame, find_entry
from ilp.packet import Fulfill, Prepare, Reject, decode_prepare, decode_reply, encode_packet
from links import edge, registry
from links.services import peer_create
from links.switch import packet_key, reset_switch
from payments.ledger import get_book, reset_book
from payments.models import Posting
from tests.links.btp_helpers import RawBtp
from tests.links.conftest import CONDITION, FULFILLMENT

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def node() -> Iterator[None]:
    """Children ``oer`` (http-sync) and ``alice`` (btp-server) who may owe 10 000, and
    ``carl`` (btp-server), the next hop."""
    reset_switch()
    reset_book()
    peer_create(
        name="oer", relation="child", link="http-sync", token="oertoken", min_balance=-10_000
    )
    peer_create(
        name="alice", relation="child", link="btp-server", token="alicetoken", min_balance=-10_000
    )
    peer_create(name="carl", relation="child", link="btp-server", token="carltoken")
    connections.close_all()
    yield
    reset_switch()
    reset_book()
    registry.current().clear()
    connections.close_all()


@sync_to_async
def postings() -> list[tuple[str, int, str]]:
    try:
        return sorted(
            (p.account.code, int(p.amount), p.key)
            for p in Posting.objects.select_related("account")
        )
    finally:
        connections.close_all()


@sync_to_async
def check_ledger() -> None:
    try:
        call_command("check_ledger", stdout=io.StringIO())  # raises on any difference
    finally:
        connections.close_all()


def prepare(amount: int = 1000) -> Prepare:
    return Prepare(
        amount, datetime.now(UTC) + timedelta(seconds=30), CONDITION, "test.local.carl.x", b""
    )


async def connect(name: str) -> RawBtp:
    raw = await RawBtp().open()
    reply = await raw.auth(name, f"{name}token")
    assert isinstance(reply, BtpResponse), reply
    return raw


async def next_prepare(raw: RawBtp) -> tuple[int, Prepare]:
    """The next Prepare the node forwards to this peer (its BTP request id and the packet)."""
    packet = await raw.next(timeout=5)
    assert isinstance(packet, BtpMessage), packet
    entry = find_entry(packet, "ilp")
    assert entry is not None
    return packet.request_id, decode_prepare(entry.data)


async def answer(raw: RawBtp, request_id: int, reply: Fulfill | Reject) -> None:
    await raw.send(encode_ilp_frame(BtpType.RESPONSE, request_id, encode_packet(reply)))


def http_post(body: bytes, token: str = "oertoken") -> ApplicationCommunicator:
    """An HTTP-OER POST /ilp through Django's own ASGI handler (no test client in between)."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/ilp",
        "raw_path": b"/ilp",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", b"application/octet-stream"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", random.randint(1024, 65535)),
        "server": ("testserver", 80),
    }
    return ApplicationCommunicator(get_asgi_application(), scope)


async def hang_up(comm: ApplicationCommunicator) -> None:
    """The client closes its connection: Django cancels the view."""
    await comm.send_input({"type": "http.disconnect"})
    await comm.wait(timeout=5)


async def book_holds(code: str) -> tuple[int, int]:
    snapshot = get_book().snapshot(code)
    return snapshot.pending_debits, snapshot.pending_credits


async def test_http_client_hangs_up_then_next_hop_fulfils(node: None) -> None:
    carl = await connect("carl")
    p = prepare(1000)
    comm = http_post(encode_packet(p))
    await comm.send_input({"type": "http.request", "body": encode_packet(p), "more_body": False})
    request_id, out = await next_prepare(carl)
    assert out.amount == 1000
    await hang_up(comm)
    await answer(carl, request_id, Fulfill(FULFILLMENT))
    await edge.drain()
    key = packet_key("oer", p)
    assert await postings() == sorted(
        [("peer:oer", -1000, f"{key}:in"), ("peer:carl", 1000, f"{key}:out")]
    )
    assert await book_holds("peer:oer") == (0, 0)
    assert await book_holds("peer:carl") == (0, 0)
    await check_ledger()
    await carl.close()


async def test_http_client_hangs_up_then_next_hop_rejects(node: None) -> None:
    carl = await connect("carl")
    p = prepare(700)
    comm = http_post(encode_packet(p))
    await comm.send_input({"type": "http.request", "body": encode_packet(p), "more_body": False})
    request_id, _ = await next_prepare(carl)
    await hang_up(comm)
    await answer(carl, request_id, Reject("F99", "test.local.carl", "no", b""))
    await edge.drain()
    assert await postings() == []
    assert await book_holds("peer:oer") == (0, 0)
    assert await book_holds("peer:carl") == (0, 0)
    await check_ledger()
    await carl.close()


async def test_http_client_that_stays_gets_the_fulfill(node: None) -> None:
    carl = await connect("carl")
    p = prepare(5)
    comm = http_post(encode_packet(p))
    await comm.send_input({"type": "http.request", "body": encode_packet(p), "more_body": False})
    request_id, _ = await next_prepare(carl)
    await answer(carl, request_id, Fulfill(FULFILLMENT))
    start = await comm.receive_output(timeout=5)
    body = await comm.receive_output(timeout=5)
    assert start["status"] == 200
    assert decode_reply(body["body"]) == Fulfill(FULFILLMENT)
    await edge.drain()
    assert len(await postings()) == 2
    await carl.close()


async def test_btp_source_drops_then_next_hop_fulfils(node: None) -> None:
    carl = await connect("carl")
    alice = await connect("alice")
    p = prepare(1000)
    await alice.send_prepare(p)
    request_id, _ = await next_prepare(carl)
    await alice.close()
    await answer(carl, request_id, Fulfill(FULFILLMENT))
    await edge.drain()
    key = packet_key("alice", p)
    assert await postings() == sorted(
        [("peer:alice", -1000, f"{key}:in"), ("peer:carl", 1000, f"{key}:out")]
    )
    assert await book_holds("peer:alice") == (0, 0)
    await check_ledger()
    await carl.close()


async def test_btp_client_link_drops_then_next_hop_fulfils(node: None) -> None:
    """The peer we dial (btp-client) sends a Prepare and closes the connection at once."""
    import websockets

    from ilp.btp import decode_btp, encode_btp
    from links.btp_client import BtpClient

    p = prepare(1000)
    closed = asyncio.Event()

    async def remote(ws: Any) -> None:
        auth = decode_btp(await ws.recv())
        await ws.send(encode_btp(BtpResponse(auth.request_id, ())))
        if closed.is_set():  # the client's reconnection: stay quiet
            await ws.wait_closed()
            return
        await ws.send(encode_ilp_frame(BtpType.MESSAGE, 7, encode_packet(p)))
        await ws.close()
        closed.set()

    carl = await connect("carl")
    async with websockets.serve(remote, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"btp+ws://us:tok@127.0.0.1:{port}/"
        await sync_to_async(peer_create)(
            name="remote", relation="child", link="btp-client", url=url, min_balance=-10_000
        )
        client = BtpClient("remote", url)
        client.start()
        try:
            request_id, _ = await next_prepare(carl)
            await asyncio.wait_for(closed.wait(), 5)
            await answer(carl, request_id, Fulfill(FULFILLMENT))
            await edge.drain()
        finally:
            await client.stop()
    key = packet_key("remote", p)
    assert await postings() == sorted(
        [("peer:carl", 1000, f"{key}:out"), ("peer:remote", -1000, f"{key}:in")]
    )
    await check_ledger()
    await carl.close()
