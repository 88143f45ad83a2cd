"""The process-wide switch with the real pieces: Peer rows, the real book and its writer
thread, the real registry and the real PSK2 receiver (SPSP answer → chunk → Fulfill)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db import connections
from django.test import Client, override_settings

from ilp.balance import balance_request, decode_balance
from ilp.packet import Fulfill, Prepare, Reject
from ilp.psk2_sender import build_chunk
from links import registry
from links.peers import PeerContext, load_peer_context
from links.services import peer_create
from links.switch import FEE_ACCOUNT, get_switch, packet_key, reset_switch
from payments.errors import BalanceLimitExceeded
from payments.ledger import get_book, reset_book
from payments.models import LedgerAccount, Posting
from receivers.services import receiver_create

try:
    from tests.links.test_switch_support import FULFILLMENT, FakeLink, prepare
except ImportError:  # rootdir-less import mode
    from test_switch_support import FULFILLMENT, FakeLink, prepare  # type: ignore[no-redef]

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def node(django_user_model: type[User]) -> Iterator[dict[str, Any]]:
    """Peers alice (child, may owe 10 000) and carl (child, we may owe 5 000), receiver bob."""
    reset_switch()
    reset_book()
    peer_create(
        name="alice", relation="child", link="btp-server", token="a" * 20, min_balance=-10_000
    )
    peer_create(name="carl", relation="child", link="btp-server", token="c" * 20, max_balance=5_000)
    receiver_create(user=django_user_model.objects.create_user(username="owner"), name="bob")
    response = Client().get("/bob", HTTP_ACCEPT="application/spsp+json")
    assert response.status_code == 200, response.content
    spsp = json.loads(response.content)
    alice = load_peer_context("alice")
    carl = load_peer_context("carl")
    connections.close_all()
    yield {
        "alice": alice,
        "carl": carl,
        "destination": spsp["destination_account"],
        "secret": base64.b64decode(spsp["shared_secret"]),
    }
    reset_switch()
    reset_book()
    registry.current().clear()
    connections.close_all()


@sync_to_async
def balances() -> dict[str, int]:
    try:
        return {a.code: int(a.balance) for a in LedgerAccount.objects.all()}
    finally:
        connections.close_all()


@sync_to_async
def postings() -> list[tuple[str, int, str]]:
    try:
        return [
            (p.account.code, int(p.amount), p.key)
            for p in Posting.objects.select_related("account").order_by("id")
        ]
    finally:
        connections.close_all()


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


async def peer_balance(alice: PeerContext) -> int:
    reply = await get_switch().handle_prepare(
        alice, balance_request(datetime.now(UTC) + timedelta(seconds=60))
    )
    assert isinstance(reply, Fulfill), reply
    return decode_balance(reply.data)


async def test_paying_a_receiver_moves_peer_balance_by_minus_n(node: dict[str, Any]) -> None:
    alice = node["alice"]
    before = await peer_balance(alice)
    reply = await get_switch().handle_prepare(alice, chunk(node, 1234))
    assert isinstance(reply, Fulfill), reply
    assert await peer_balance(alice) - before == -1234
    assert (await balances())["peer:alice"] == -1234


@override_settings(ILP_FEE_PPM=2000)
async def test_forward_books_source_next_hop_and_fee_durably(node: dict[str, Any]) -> None:
    reset_switch()  # pick up the fee setting
    alice = node["alice"]
    carl_link = FakeLink()
    registry.register("carl", carl_link)
    p = prepare("test.local.carl.x", 1001)
    reply = await get_switch().handle_prepare(alice, p)
    assert reply == Fulfill(FULFILLMENT)
    assert carl_link.seen[0].amount == 998
    key = packet_key("alice", p)
    rows = await postings()
    assert sorted(rows) == sorted(
        [
            ("peer:alice", -1001, f"{key}:in"),
            ("peer:carl", 998, f"{key}:out"),
            (FEE_ACCOUNT, 3, f"{key}:fee"),
        ]
    )
    assert sum(amount for _, amount, _ in rows) == 0
    # the same packet again is answered from memory: nothing sent, nothing booked
    assert await get_switch().handle_prepare(alice, p) == reply
    assert len(carl_link.seen) == 1 and len(await postings()) == 3


async def test_limits_of_the_real_book(node: dict[str, Any]) -> None:
    alice, switch = node["alice"], get_switch()
    registry.register("carl", FakeLink())
    over_carl = await switch.handle_prepare(alice, prepare("test.local.carl", 5_001))
    assert isinstance(over_carl, Reject) and over_carl.code == "T04"
    ok = await switch.handle_prepare(alice, prepare("test.local.carl", 5_000))
    assert isinstance(ok, Fulfill)
    again = await switch.handle_prepare(alice, prepare("test.local.carl", 1, data=b"x"))
    assert isinstance(again, Reject) and again.code == "T04"  # carl's max reached
    assert (await balances())["peer:carl"] == 5_000
    # alice may owe 10 000: 5 000 owed, so a 5 001 chunk to the receiver is refused
    over_alice = await switch.handle_prepare(alice, chunk(node, 5_001))
    assert isinstance(over_alice, Reject) and over_alice.code == "T04"


async def test_ildcp_through_the_real_switch(node: dict[str, Any]) -> None:
    from ilp.ildcp import decode_ildcp_response, ildcp_request

    reply = await get_switch().handle_prepare(
        node["alice"], ildcp_request(datetime.now(UTC) + timedelta(seconds=60))
    )
    assert isinstance(reply, Fulfill)
    info = decode_ildcp_response(reply.data)
    assert (info.client_address, info.asset_code, info.asset_scale) == (
        "test.local.alice",
        "USD",
        9,
    )


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` holds (checked each loop turn); fail after ``timeout``."""

    async def until() -> None:
        while not predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(until(), timeout)


async def test_link_up_loads_the_peer_and_its_account(node: dict[str, Any]) -> None:
    """A link coming up makes the switch load the peers (routes) and the peer's account
    with its stored balance and limit, before any Prepare arrives."""
    await sync_to_async(
        lambda: LedgerAccount.objects.filter(code="peer:alice").update(balance=-9_000)
    )()
    switch = get_switch()
    book = get_book()
    assert not book.is_loaded("peer:alice")
    assert switch.routing.get("test.local.carl") is None
    switch.link_up(node["alice"])
    await eventually(
        lambda: book.is_loaded("peer:alice") and switch.routing.get("test.local.carl") is not None
    )
    assert switch.peers["alice"] == node["alice"]
    assert book.balance("peer:alice") == -9_000  # the stored balance, not a fresh zero
    # its min_balance (-10 000) came with it: 1 000 more may be held, not 1 001
    with pytest.raises(BalanceLimitExceeded):
        book.hold("peer:alice", 1_001, "over")
    book.hold("peer:alice", 1_000, "at-limit")
    book.release("at-limit")

    # A peer added while the switch runs: its link coming up loads it and its account.
    await sync_to_async(peer_create)(
        name="dave", relation="child", link="btp-server", token="d" * 20, min_balance=-50
    )
    dave = await sync_to_async(load_peer_context)("dave")
    assert dave is not None and not book.is_loaded("peer:dave")
    switch.link_up(dave)
    await eventually(lambda: book.is_loaded("peer:dave"))
    assert switch.peers["dave"] == dave
    assert switch.routing.get("test.local.dave") is not None
    with pytest.raises(BalanceLimitExceeded):
        book.hold("peer:dave", 51, "over")
    book.hold("peer:dave", 50, "at-limit")
    book.release("at-limit")
