"""BTP/2.0-I state that follows the peer across processes (Redis): the replay memory
(``links.idempotency.SharedReplay``) and the outbox hand-over (``links.btp_link``).

Two node runtimes in this process stand for two Daphne processes on one Redis: each has
its own in-process memories, switch double, registry and owner channel; a peer's
connection is served by the runtime its WebSocket application runs under.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from channels.db import database_sync_to_async

from ilp.btp import BtpResponse, BtpType, decode_btp, encode_ilp_frame, find_entry
from ilp.btp_session import Verdict
from ilp.packet import Fulfill, Prepare, Reply, decode_prepare, encode_packet
from interledger_site.runtime import NodeRuntime
from links import idempotency, registry
from links.idempotency import SharedReplay
from links.peers import PeerContext
from tests.conftest import requires_redis
from tests.links.btp_helpers import APP, RawBtp
from tests.links.conftest import FULFILLMENT, FakeSwitch, prepare_to

REDIS_URL = os.environ.get("REDIS_URL", "")


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


# --- the store ---------------------------------------------------------------------------------


@pytest.fixture
async def store() -> AsyncIterator[Callable[[], SharedReplay]]:
    prefix = f"ilp:test:replay:{uuid.uuid4().hex}:"
    made: list[SharedReplay] = []

    def make() -> SharedReplay:
        made.append(SharedReplay(REDIS_URL, prefix))
        return made[-1]

    yield make
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
    for s in made:
        await s.aclose()


D1 = hashlib.sha256(b"one").digest()
D2 = hashlib.sha256(b"two").digest()


@requires_redis
async def test_claims_across_processes(store: Callable[[], SharedReplay]) -> None:
    a, b = store(), store()
    assert await a.claim("alice", 7, D1, 10, 30_000) == (Verdict.NEW, None)
    assert await b.claim("alice", 7, D1, 10, 30_000) == (Verdict.IN_PROGRESS, None)
    assert await b.claim("alice", 7, D2, 10, 30_000) == (Verdict.CONFLICT, None)
    await a.complete("alice", 7, D1, b"the reply", 120_000)
    assert await b.claim("alice", 7, D1, 10, 30_000) == (Verdict.REPLAY, b"the reply")
    assert await b.claim("bob", 7, D1, 10, 30_000) == (Verdict.NEW, None)  # per peer


@requires_redis
async def test_the_quota_is_the_peers_share_of_the_node(
    store: Callable[[], SharedReplay],
) -> None:
    a, b = store(), store()
    assert (await a.claim("alice", 1, D1, 2, 30_000))[0] is Verdict.NEW
    assert (await b.claim("alice", 2, D1, 2, 30_000))[0] is Verdict.NEW
    assert (await a.claim("alice", 3, D1, 2, 30_000))[0] is Verdict.FULL
    assert (await b.claim("carol", 3, D1, 2, 30_000))[0] is Verdict.NEW  # others unaffected
    a.abandon("alice", 1, D1)  # a request that will not be answered after all
    # abandon is queued, not awaited: a's next call carries it (its writes go before its
    # claims), so once that call answers, the slot is free in Redis (CI once raced it).
    assert (await a.claim("dave", 1, D1, 2, 30_000))[0] is Verdict.NEW
    assert (await b.claim("alice", 3, D1, 2, 30_000))[0] is Verdict.NEW


@requires_redis
async def test_a_dead_process_in_progress_mark_runs_out(
    store: Callable[[], SharedReplay],
) -> None:
    dead, alive = store(), store()
    assert (await dead.claim("alice", 9, D1, 10, 300))[0] is Verdict.NEW
    await dead.aclose()  # killed while processing: no reply, no abandon
    assert (await alive.claim("alice", 9, D1, 10, 30_000))[0] is Verdict.IN_PROGRESS
    deadline = time.monotonic() + 20
    while (verdict := (await alive.claim("alice", 9, D1, 10, 30_000))[0]) is not Verdict.NEW:
        assert verdict is Verdict.IN_PROGRESS
        assert time.monotonic() < deadline, "the dead process's mark never ran out"
        await asyncio.sleep(0.05)


@requires_redis
async def test_claims_of_one_iteration_share_a_call(store: Callable[[], SharedReplay]) -> None:
    a = store()
    verdicts = await asyncio.gather(*(a.claim("alice", i, D1, 1000, 30_000) for i in range(50)))
    assert {v for v, _ in verdicts} == {Verdict.NEW}
    assert a.calls <= 2


# --- over /btp, two runtimes -----------------------------------------------------------------


def served_by(runtime: NodeRuntime) -> Any:
    """The /btp application running under ``runtime`` (as if in that process)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        with runtime.activated():
            await APP(scope, receive, send)

    return app


async def connect(runtime: NodeRuntime) -> RawBtp:
    raw = RawBtp()
    from channels.testing import WebsocketCommunicator

    raw.comm = WebsocketCommunicator(served_by(runtime), "/btp")
    await raw.open()
    reply = await raw.auth(idempotent=True)
    assert isinstance(reply, BtpResponse)
    return raw


@pytest.fixture
async def two(
    make_peer: Callable[..., Any],
) -> AsyncIterator[tuple[NodeRuntime, NodeRuntime, FakeSwitch, FakeSwitch]]:
    await database_sync_to_async(make_peer)("alice", token="alicetoken", idempotent=True)
    a, b = NodeRuntime(name="a"), NodeRuntime(name="b")
    prefix = f"ilp:test:replay:{uuid.uuid4().hex}:"  # one node, apart from other tests
    for rt in (a, b):
        assert rt.replay.shared is not None
        rt.replay.shared.prefix = prefix
    switch_a, switch_b = FakeSwitch(), FakeSwitch()
    a.switch_override, b.switch_override = switch_a, switch_b
    for rt in (a, b):
        with rt.activated():  # its owner channel's tasks run under it, as start() does
            await rt.ownership.start()
    yield a, b, switch_a, switch_b
    for rt in (a, b):
        await rt.stop()


def frame_for(request_id: int, prepare: Prepare) -> bytes:
    return encode_ilp_frame(BtpType.MESSAGE, request_id, encode_packet(prepare))


pytestmark_db = pytest.mark.django_db(transaction=True)


@requires_redis
@pytestmark_db
async def test_a_request_in_progress_elsewhere_is_replayed_not_processed_again(
    two: tuple[NodeRuntime, NodeRuntime, FakeSwitch, FakeSwitch],
) -> None:
    a, b, switch_a, switch_b = two
    gate = asyncio.Event()

    async def slow(source: PeerContext, prepare: Prepare) -> Reply:
        await gate.wait()
        return Fulfill(FULFILLMENT, b"from a")

    switch_a.handler = slow
    frame = frame_for(4242, prepare_to())
    on_a = await connect(a)
    await on_a.send(frame)
    await until(lambda: len(switch_a.calls) == 1)
    await on_a.close()  # the peer's connection drops while a works on it
    on_b = await connect(b)  # ... and it reconnects to the other process
    await on_b.send(frame)
    assert await on_b.nothing_within(0.3)  # in progress on a: not processed here
    assert switch_b.calls == []
    gate.set()
    # a's answer goes to Redis (and the database) although its socket is gone.
    deadline = time.monotonic() + 10
    while True:  # the peer's retries, until the answer is there
        await on_b.send(frame)
        if not await on_b.nothing_within(0.3):
            reply = await on_b.next_raw()
            break
        assert time.monotonic() < deadline, "never answered"
    assert reply is not None
    packet = decode_btp(reply)
    assert isinstance(packet, BtpResponse) and packet.request_id == 4242
    ilp = find_entry(packet, "ilp")
    assert ilp is not None and ilp.data == encode_packet(Fulfill(FULFILLMENT, b"from a"))
    await on_b.send(frame)  # replayed from b's own memory now
    assert await on_b.next_raw() == reply
    assert (len(switch_a.calls), len(switch_b.calls)) == (1, 0)  # processed once
    await on_b.close()


@requires_redis
@pytestmark_db
async def test_a_replay_on_the_other_process_gets_the_same_answer(
    two: tuple[NodeRuntime, NodeRuntime, FakeSwitch, FakeSwitch],
) -> None:
    a, b, switch_a, switch_b = two
    frame = frame_for(4343, prepare_to())
    on_a = await connect(a)
    await on_a.send(frame)
    first = await on_a.next_raw()
    await on_a.close()
    b.replay.restored.add("alice")  # b restored alice's rows before: only Redis knows
    on_b = await connect(b)
    await on_b.send(frame)
    assert await on_b.next_raw() == first
    assert (len(switch_a.calls), len(switch_b.calls)) == (1, 0)
    await on_b.close()


@requires_redis
@pytestmark_db
async def test_pending_requests_follow_the_peer_to_the_new_owner(
    two: tuple[NodeRuntime, NodeRuntime, FakeSwitch, FakeSwitch],
) -> None:
    a, b, _, _ = two
    on_a = await connect(a)
    await until(lambda: a.registry.local("alice") is not None)
    prepare = prepare_to(expires_in=20)

    async def send_from_a() -> Reply:
        with a.activated():
            link = registry.get("alice")
            assert link is not None
            return await link.send_prepare(prepare)

    sending = asyncio.ensure_future(send_from_a())
    raw = await on_a.next_raw()
    assert raw is not None
    request = decode_btp(raw)
    await on_a.close()  # the peer got it, but its connection drops before it answers
    await until(lambda: a.registry.local("alice") is None)
    on_b = await connect(b)
    again = await on_b.next_raw(timeout=10)
    assert again == raw  # the same request id and bytes, from the new owner
    entry = find_entry(request, "ilp")
    assert entry is not None and decode_prepare(entry.data) == prepare
    fulfill = encode_packet(Fulfill(FULFILLMENT, b"via b"))
    await on_b.send(encode_ilp_frame(BtpType.RESPONSE, request.request_id, fulfill))
    reply = await asyncio.wait_for(sending, 10)
    assert reply == Fulfill(FULFILLMENT, b"via b")  # a's caller got the answer given on b
    await on_b.close()


def test_reset_keeps_the_runtime_memories_object() -> None:
    before = idempotency.memories()
    before.restored.add("x")
    idempotency.reset()
    assert idempotency.memories() is before and not before.restored
