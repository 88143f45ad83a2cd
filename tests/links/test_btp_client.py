"""The outgoing BTP client against our own /btp over real WebSockets; the supervisor."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.conf import settings

from ilp.packet import Fulfill, Prepare, Reject
from links import registry
from links.btp_client import BtpClient, BtpUrl, InvalidBtpUrl
from links.peers import PeerContext, aload_peer_context
from links.supervisor import Supervisor
from links.switch import PacketSwitch, get_switch, reset_switch
from payments.ledger import get_book, reset_book
from tests.links.conftest import FULFILLMENT, FakeSwitch, prepare_to
from tests.links.ws_server import serve_btp

pytestmark = pytest.mark.django_db(transaction=True)


def test_url_parsing_keeps_percent_encoding() -> None:
    url = BtpUrl.parse("btp+ws://my_user:my%20tok%3A@127.0.0.1:7000/some/path?q=1")
    assert url == BtpUrl("ws://127.0.0.1:7000/some/path?q=1", "my_user", "my%20tok%3A")
    assert BtpUrl.parse("btp+wss://h/btp") == BtpUrl("wss://h/btp", "", "")
    assert BtpUrl.parse("btp+ws://:tok@[::1]:8/x").ws_url == "ws://[::1]:8/x"
    for bad in ("ws://a:b@h/btp", "btp+ws://"):
        with pytest.raises(InvalidBtpUrl):
            BtpUrl.parse(bad)


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def two_nodes(
    make_peer: Callable[..., Any], port: int, *, idempotent: bool = False, token: str = "tok"
) -> BtpClient:
    """Node "hub" serves /btp with child "leaf"; node "leaf" dials it as peer "hub"."""
    await database_sync_to_async(make_peer)("leaf", token="tok", idempotent=idempotent)
    url = f"btp+ws://leaf:{token}@127.0.0.1:{port}/btp"
    await database_sync_to_async(make_peer)(
        "hub", relation="parent", link="btp-client", url=url, idempotent=idempotent
    )
    client = BtpClient("hub", url)
    client.start()
    return client


class CountingEvent(asyncio.Event):
    """An :class:`asyncio.Event` that remembers how often it was set."""

    def __init__(self) -> None:
        super().__init__()
        self.times_set = 0

    def set(self) -> None:
        self.times_set += 1
        super().set()


class ObservedClient(BtpClient):
    """A real :class:`BtpClient` that counts its finished connection attempts and how
    often its link came up."""

    def __init__(self, peer_name: str, url: str) -> None:
        super().__init__(peer_name, url)
        self.connected = CountingEvent()
        self.attempts = 0
        self.errors: list[BaseException] = []
        self._attempt_done = asyncio.Event()

    async def _connect_once(self) -> None:
        try:
            await super()._connect_once()
        except BaseException as exc:
            self.errors.append(exc)
            raise
        finally:
            self.attempts += 1
            self._attempt_done.set()

    async def attempts_finished(self, n: int, timeout: float = 10.0) -> None:
        """Wait until ``n`` connection attempts have ended (each failed or was closed)."""

        async def until() -> None:
            while self.attempts < n:
                self._attempt_done.clear()
                await self._attempt_done.wait()

        await asyncio.wait_for(until(), timeout)


async def test_client_and_server_exchange_prepares_both_ways(
    make_peer: Callable[..., Any], switch: FakeSwitch
) -> None:
    async with serve_btp() as port:
        client = await two_nodes(make_peer, port)
        try:
            await asyncio.wait_for(client.connected.wait(), 5)
            await wait_for(lambda: sorted(switch.ups) == ["hub", "leaf"])
            # leaf -> hub (client side sends, server side's switch answers)
            reply = await registry.get("hub").send_prepare(prepare_to(amount=7))  # type: ignore[union-attr]
            assert reply == Fulfill(FULFILLMENT, b"ok")
            assert switch.calls[-1][0] == "leaf" and switch.calls[-1][1].amount == 7
            # hub -> leaf (server side sends, client side's switch answers)
            reply = await registry.get("leaf").send_prepare(prepare_to(amount=8))  # type: ignore[union-attr]
            assert reply == Fulfill(FULFILLMENT, b"ok")
            assert switch.calls[-1][0] == "hub"

            # concurrency over the real socket
            async def slow(source: PeerContext, prepare: Prepare) -> Fulfill:
                await asyncio.sleep(0.2)
                return Fulfill(FULFILLMENT)

            switch.handler = slow
            link = registry.get("hub")
            assert link is not None
            replies = await asyncio.wait_for(
                asyncio.gather(*(link.send_prepare(prepare_to()) for _ in range(50))), 3
            )
            assert all(isinstance(r, Fulfill) for r in replies)
        finally:
            await client.stop()
        await wait_for(lambda: "hub" in switch.downs and "leaf" in switch.downs)
        assert registry.local("hub") is None and registry.local("leaf") is None


async def test_client_reconnects_after_the_server_drops(
    make_peer: Callable[..., Any], switch: FakeSwitch
) -> None:
    async with serve_btp() as port:
        client = await two_nodes(make_peer, port)
        try:
            await asyncio.wait_for(client.connected.wait(), 5)
            server_link = registry.local("leaf")
            assert server_link is not None
            await server_link.close()  # type: ignore[attr-defined]
            await wait_for(lambda: switch.ups.count("hub") == 2, timeout=5)
            await asyncio.wait_for(client.connected.wait(), 5)
            reply = await registry.get("hub").send_prepare(prepare_to())  # type: ignore[union-attr]
            assert isinstance(reply, Fulfill)
        finally:
            await client.stop()


async def test_client_with_wrong_token_never_connects(
    make_peer: Callable[..., Any], switch: FakeSwitch
) -> None:
    async with serve_btp() as port:
        await database_sync_to_async(make_peer)("leaf", token="tok")
        url = f"btp+ws://leaf:wrong@127.0.0.1:{port}/btp"
        await database_sync_to_async(make_peer)(
            "hub", relation="parent", link="btp-client", url=url
        )
        client = ObservedClient("hub", url)
        client.start()
        try:
            # Three full attempts: each one reaches the server, is refused and ends
            # (a server that never answered the auth would hold the first for 10 s).
            await client.attempts_finished(3)
            assert client.errors == []  # refused by the server, not a network failure
            assert isinstance(client.connected, CountingEvent)
            assert client.connected.times_set == 0  # never up, not even for a moment
            assert switch.ups == [] and switch.calls == []
            assert registry.local("hub") is None and registry.local("leaf") is None
        finally:
            await client.stop()


async def test_idempotent_link_over_real_socket(
    make_peer: Callable[..., Any], switch: FakeSwitch
) -> None:
    async with serve_btp() as port:
        client = await two_nodes(make_peer, port, idempotent=True)
        try:
            await asyncio.wait_for(client.connected.wait(), 5)
            assert client.link is not None and client.link.idempotent
            server_link = registry.local("leaf")
            assert server_link is not None and server_link.idempotent  # type: ignore[attr-defined]
            reply = await registry.get("hub").send_prepare(prepare_to())  # type: ignore[union-attr]
            assert isinstance(reply, Fulfill)
        finally:
            await client.stop()


@pytest.fixture
def real_switch() -> Iterator[PacketSwitch]:
    """The process-wide switch with the real book and registry (no double)."""
    reset_switch()
    reset_book()
    yield get_switch()
    reset_switch()
    reset_book()


async def test_unreachable_server_gives_t01(
    make_peer: Callable[..., Any], real_switch: PacketSwitch
) -> None:
    """While the parent's server cannot be reached, the client keeps retrying and a
    Prepare routed to that parent gets T01 from us at once (not a timeout, no money held).

    A name no other test uses: with Redis, a peer another test (or xdist worker) linked
    moments ago still counts as present for up to ``PRESENCE_TTL_S`` (then a Prepare is
    sent to its group and times out, R00, as it should for a link that just vanished)."""
    hub = f"hub-{os.urandom(4).hex()}"
    await database_sync_to_async(make_peer)("kid", relation="child", token="kidtoken")
    url = "btp+ws://a:b@127.0.0.1:9/btp"  # port 9 (discard): nothing listens
    await database_sync_to_async(make_peer)(hub, relation="parent", link="btp-client", url=url)
    kid = await aload_peer_context("kid")
    assert kid is not None
    client = ObservedClient(hub, url)
    client.start()
    try:
        await client.attempts_finished(3)
        assert len(client.errors) == 3
        assert all(isinstance(e, OSError) for e in client.errors), client.errors
        assert not client.connected.is_set() and registry.local(hub) is None
        reply = await real_switch.handle_prepare(kid, prepare_to("test.elsewhere.bob", amount=5))
        assert isinstance(reply, Reject), reply
        assert reply.code == "T01"
        assert reply.triggered_by == settings.ILP_ADDRESS
        assert reply.message == f"no connection to account. account={hub}"
        assert get_book().snapshot("peer:kid").pending_debits == 0  # the switch's book
        assert get_book().balance("peer:kid") == 0
    finally:
        await client.stop()


async def test_supervisor_starts_and_stops_clients(
    make_peer: Callable[..., Any], switch: FakeSwitch, monkeypatch: pytest.MonkeyPatch
) -> None:
    from links import supervisor as supervisor_module

    monkeypatch.setattr(supervisor_module, "SYNC_INTERVAL_S", 0.1)
    async with serve_btp() as port:
        await database_sync_to_async(make_peer)("leaf", token="tok")
        url = f"btp+ws://leaf:tok@127.0.0.1:{port}/btp"
        await database_sync_to_async(make_peer)(
            "hub", relation="parent", link="btp-client", url=url
        )
        # The runtime serves its owner channel (with Redis, a supervisor dials only the
        # peers whose lease it holds).
        await registry.current().ownership.start()
        sup = Supervisor()
        sup.start()
        try:
            await wait_for(lambda: registry.local("hub") is not None)
            reply = await registry.get("hub").send_prepare(prepare_to(condition=bytes(32)))  # type: ignore[union-attr]
            assert isinstance(reply, Reject) and reply.code == "F99"
            # disabling the peer stops its client
            from links import services

            await database_sync_to_async(services.peer_update)(name="hub", enabled=False)
            await wait_for(lambda: "hub" not in sup.clients and registry.local("hub") is None)
        finally:
            await sup.stop()
            await registry.current().ownership.stop()
