"""One owner per link (links.ownership): several runtimes, as several processes would be.

Runtimes in one test process share one lease store: in the default pass an in-memory one
(with the in-memory channel layer, which spans the runtimes of one process); in the
Postgres+Redis pass the real Redis leases and channel layer, exactly what separate
Daphne processes and Celery workers use.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import websockets
from channels.db import database_sync_to_async

from ilp.btp import (
    BtpMessage,
    BtpResponse,
    BtpType,
    decode_btp,
    encode_btp,
    encode_ilp_frame,
    find_entry,
    peek_ilp_frame,
)
from ilp.packet import Fulfill, Prepare, Reject, decode_prepare, encode_packet
from interledger_site.runtime import NodeRuntime
from links import registry
from links.ownership import Leases, MemoryLeases, RedisLeases, settle_layer
from tests.conftest import on_redis
from tests.links.conftest import prepare_to

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_layer")]


@pytest.fixture
def fresh_layer() -> Iterator[None]:
    """A channel layer of this test's own: channels_redis keeps per-channel asyncio locks
    across calls, and one left by a previous test's (closed) loop breaks the next."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


FULFILLMENT = b"\x07" * 32
CONDITION = hashlib.sha256(FULFILLMENT).digest()
LEASE_S = 1.5  # short, so a takeover after a crash happens within the test
DEADLINE_S = 20.0


@dataclass
class Parent:
    """A BTP parent (ilp-plugin-btp server's behaviour): accepts any auth, fulfils every
    Prepare with :data:`FULFILLMENT`, counts connections and Prepares."""

    port: int = 0
    authenticated: int = 0
    open_now: int = 0
    prepares: list[Prepare] = field(default_factory=list)  # ours (not CCP/ILDCP on link-up)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def _changed(self) -> None:
        self.changed.set()

    async def until(self, predicate: Callable[[], bool]) -> None:
        async def wait() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), DEADLINE_S)

    async def serve(self, ws: Any) -> None:
        authed = False
        try:
            async for raw in ws:
                if not isinstance(raw, bytes):
                    continue
                frame = peek_ilp_frame(raw)
                if frame is not None and authed and frame[0] == BtpType.MESSAGE:
                    _, request_id, ilp = frame
                    prepare = decode_prepare(ilp)
                    if prepare.destination.startswith("test.parent."):
                        self.prepares.append(prepare)
                    self._changed()
                    reply = encode_packet(Fulfill(FULFILLMENT, b""))
                    await ws.send(encode_ilp_frame(BtpType.RESPONSE, request_id, reply))
                    continue
                packet = decode_btp(raw)
                if isinstance(packet, BtpMessage) and find_entry(packet, "auth") is not None:
                    authed = True
                    self.authenticated += 1
                    self.open_now += 1
                    self._changed()
                    await ws.send(encode_btp(BtpResponse(packet.request_id)))
        finally:
            if authed:
                self.open_now -= 1
                self._changed()


@contextlib.asynccontextmanager
async def serve_parent() -> AsyncIterator[Parent]:
    parent = Parent()
    async with websockets.serve(parent.serve, "127.0.0.1", 0, compression=None) as server:
        parent.port = next(iter(server.sockets)).getsockname()[1]
        yield parent


def lease_store() -> Leases:
    if on_redis():
        from django.conf import settings

        return RedisLeases(str(settings.REDIS_URL))
    return MemoryLeases()


@pytest.fixture
def fast_supervisor(monkeypatch: pytest.MonkeyPatch) -> None:
    from links import supervisor as supervisor_module

    monkeypatch.setattr(supervisor_module, "SYNC_INTERVAL_S", 0.2)


async def until(predicate: Callable[[], bool]) -> None:
    async def wait() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(wait(), DEADLINE_S)


def owner_of(runtimes: list[NodeRuntime], peer: str) -> list[NodeRuntime]:
    return [rt for rt in runtimes if peer in rt.supervisor.clients]


def server_runtime(name: str, leases: Leases) -> NodeRuntime:
    return NodeRuntime(name=name, links=True, shared=True, leases=leases, lease_s=LEASE_S)


async def add_parent(make_peer: Callable[..., Any], name: str, port: int) -> None:
    await database_sync_to_async(make_peer)(
        name, relation="parent", link="btp-client", url=f"btp+ws://me:tok@127.0.0.1:{port}/"
    )


async def test_only_the_owner_dials_and_a_worker_send_goes_out_once(
    make_peer: Callable[..., Any], fast_supervisor: None
) -> None:
    peer = "own-parent-1"
    leases = lease_store()
    a, b = server_runtime("a", leases), server_runtime("b", leases)
    worker = NodeRuntime(name="worker", shared=True, leases=leases, lease_s=LEASE_S)
    async with serve_parent() as parent:
        await add_parent(make_peer, peer, parent.port)
        try:
            await a.start()
            await b.start()
            await parent.until(lambda: parent.authenticated >= 1)
            # Both supervisors have synced since: the loser waits for the lease.
            await until(lambda: any(peer in rt.supervisor._waiting for rt in (a, b)))
            owners = owner_of([a, b], peer)
            assert len(owners) == 1
            (owner,) = owners
            other = b if owner is a else a
            assert other.registry.local(peer) is None
            assert parent.authenticated == 1 and parent.open_now == 1

            # A "worker" (no links of its own) sends: exactly one Prepare reaches the parent.
            await until(lambda: owner.registry.local(peer) is not None)
            with worker.activated():
                link = registry.get(peer)
                assert isinstance(link, registry.RemoteLink)
                reply = await link.send_prepare(prepare_to("test.parent.x", condition=CONDITION))
            assert reply == Fulfill(FULFILLMENT, b"")
            assert len(parent.prepares) == 1
            # The non-owner server process sends through the owner too.
            with other.activated():
                reply = await registry.get(peer).send_prepare(  # type: ignore[union-attr]
                    prepare_to("test.parent.y", condition=CONDITION)
                )
            assert isinstance(reply, Fulfill)
            assert len(parent.prepares) == 2
            assert parent.authenticated == 1  # still the one connection
        finally:
            await a.stop()
            await b.stop()
            worker.close()
            await settle_layer()


@pytest.mark.parametrize("crash", [False, True], ids=["clean-stop", "crash"])
async def test_the_other_takes_over_when_the_owner_goes(
    make_peer: Callable[..., Any], fast_supervisor: None, crash: bool
) -> None:
    """A clean stop releases the lease at once; a crash (no release) leaves it to run
    out: either way the other process dials within the lease time plus a retry."""
    peer = f"own-parent-{'crash' if crash else 'stop'}"
    leases = lease_store()
    a, b = server_runtime("a", leases), server_runtime("b", leases)
    worker = NodeRuntime(name="worker", shared=True, leases=leases, lease_s=LEASE_S)
    async with serve_parent() as parent:
        await add_parent(make_peer, peer, parent.port)
        try:
            await a.start()
            await parent.until(lambda: parent.open_now == 1)
            await b.start()
            await until(lambda: peer in b.supervisor._waiting)
            assert owner_of([a, b], peer) == [a]

            await a.stop(release=not crash)
            await parent.until(lambda: parent.authenticated == 2 and parent.open_now == 1)
            assert owner_of([a, b], peer) == [b]
            assert b.ownership.holds(peer)

            await until(lambda: b.registry.local(peer) is not None)
            with worker.activated():
                reply = await registry.get(peer).send_prepare(  # type: ignore[union-attr]
                    prepare_to("test.parent.z", condition=CONDITION)
                )
            assert isinstance(reply, Fulfill)
            assert len(parent.prepares) == 1
        finally:
            await a.stop()
            await b.stop()
            worker.close()
            await settle_layer()


async def test_a_lost_lease_stops_the_client(
    make_peer: Callable[..., Any], fast_supervisor: None
) -> None:
    """If another process takes the lease (e.g. Redis lost it and someone else acquired
    it), the old owner's renewal fails and its client goes: never two connections for long."""
    peer = "own-parent-lost"
    leases = lease_store()
    a = server_runtime("a", leases)
    async with serve_parent() as parent:
        await add_parent(make_peer, peer, parent.port)
        try:
            await a.start()
            await parent.until(lambda: parent.open_now == 1)
            await asyncio.to_thread(leases.acquire, peer, "someone-else", 60_000, True)
            await a.ownership.renew_once()
            assert not a.ownership.holds(peer)
            await parent.until(lambda: parent.open_now == 0)
            await until(lambda: peer not in a.supervisor.clients)
        finally:
            await a.stop()
            await asyncio.to_thread(leases.release, peer, "someone-else")


async def test_a_server_peer_moves_its_ownership(make_peer: Callable[..., Any]) -> None:
    """A btp-server peer that connects to a process makes it the owner; reconnecting to
    another moves ownership there, and the first then forgets it."""

    class ServerLink:
        role = "server"

        def __init__(self) -> None:
            self.sent: list[Prepare] = []

        async def send_prepare(self, prepare: Prepare) -> Fulfill:
            self.sent.append(prepare)
            return Fulfill(FULFILLMENT, b"")

    peer = "own-child-move"
    leases = lease_store()
    a = NodeRuntime(name="a", shared=True, leases=leases, lease_s=LEASE_S)
    b = NodeRuntime(name="b", shared=True, leases=leases, lease_s=LEASE_S)
    worker = NodeRuntime(name="worker", shared=True, leases=leases, lease_s=LEASE_S)
    await a.ownership.start()
    await b.ownership.start()
    try:
        on_a, on_b = ServerLink(), ServerLink()
        with a.activated():
            a.registry.register(peer, on_a)
        await until(lambda: a.ownership.holds(peer))
        with b.activated():
            b.registry.register(peer, on_b)  # the peer reconnected to b
        await until(lambda: b.ownership.holds(peer))
        a.replay.restored.add(peer)  # a restored the peer's replay memory once
        await a.ownership.renew_once()
        assert not a.ownership.holds(peer)
        assert peer not in a.replay.restored  # rebuilt from the rows if it comes back
        with worker.activated():
            reply = await registry.get(peer).send_prepare(prepare_to(condition=CONDITION))  # type: ignore[union-attr]
        assert isinstance(reply, Fulfill)
        assert (len(on_a.sent), len(on_b.sent)) == (0, 1)
        # The old socket closing on a releases nothing (the lease is b's).
        with a.activated():
            a.registry.unregister(peer, on_a)
        await asyncio.gather(*a.ownership._pending)
        assert await b.ownership.owner_of(peer) == b.ownership.channel
        # b's link going away releases the lease: nobody owns the peer, T01 at once.
        with b.activated():
            b.registry.unregister(peer, on_b)
        await until(lambda: not b.ownership.holds(peer))
        with worker.activated():
            reply2 = await registry.get(peer).send_prepare(prepare_to())  # type: ignore[union-attr]
        assert isinstance(reply2, Reject) and reply2.code == "T01"
    finally:
        await a.stop()
        await b.stop()
        worker.close()
        await settle_layer()


def test_lease_contract() -> None:
    """Acquire if free or ours; take regardless; renew and release only by the owner."""
    leases = lease_store()
    peer = "own-contract"
    try:
        assert leases.acquire(peer, "x", 60_000, False)
        assert leases.acquire(peer, "x", 60_000, False)  # ours already
        assert not leases.acquire(peer, "y", 60_000, False)
        assert leases.owner(peer) == "x"
        assert leases.acquire(peer, "y", 60_000, True)  # taken (a server peer moved)
        assert not leases.renew(peer, "x", 60_000)
        assert leases.renew(peer, "y", 60_000)
        leases.release(peer, "x")  # not x's: no effect
        assert leases.owner(peer) == "y"
        leases.release(peer, "y")
        assert leases.owner(peer) is None
    finally:
        leases.release(peer, "x")
        leases.release(peer, "y")
