"""CCP routes shared between processes through Redis (``links.shared``).

Two switches stand for two processes of one node: each has its own routing table and CCP
service, and its own :class:`~links.shared.SharedRoutes` task talking to the same Redis.
Process A holds the CCP session with ``bob``; process B has no session with ``bob`` (its
"link" to bob stands for the way to bob's link owner). Runs in the Postgres+Redis pass.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis
from django.conf import settings

from ilp.ccp import Route
from ilp.packet import Fulfill, Reject
from links import shared
from tests.conftest import requires_redis
from tests.links.test_ccp import update
from tests.links.test_switch_support import Rig, make_rig, peer, prepare

pytestmark = [requires_redis]

BOB = peer("bob", "peer")
KID = peer("kid")


@dataclass
class Process:
    rig: Rig
    routes: shared.SharedRoutes
    task: asyncio.Task[None]


async def _clear_keys() -> None:
    client = aioredis.Redis.from_url(settings.REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"ilp:{settings.ILP_ADDRESS}:ccp:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def processes() -> AsyncIterator[Callable[[str], Process]]:
    await _clear_keys()
    made: list[Process] = []

    def make(name: str) -> Process:
        rig = make_rig([BOB, KID])
        routes = shared.attach_routes(rig.switch.ccp, writer=f"test-{name}")
        task = asyncio.get_running_loop().create_task(routes.run())
        process = Process(rig, routes, task)
        made.append(process)
        return process

    yield make
    for process in made:
        process.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await process.task
        process.rig.switch.close()
        await process.routes.client.aclose()
    await _clear_keys()


async def until(process: Process, predicate: Callable[[], bool]) -> None:
    """Wait for ``predicate``, checked after each sync step of ``process`` (a 30 s guard
    only turns a hang into a failure)."""
    async with asyncio.timeout(30):
        while not predicate():
            await process.routes.wait_synced()


def route(prefix: str, *path: str) -> Route:
    return Route(prefix, path or ("test.bob",), bytes(32))


async def test_a_route_learned_in_one_process_is_used_by_another(
    processes: Callable[[str], Process],
) -> None:
    a, b = processes("a"), processes("b")
    assert b.rig.switch.routing.lookup("test.bob.alice") is None
    reply = await a.rig.switch.handle_prepare(BOB, update(routes=(route("test.bob"),)))
    assert isinstance(reply, Fulfill)
    await until(b, lambda: b.rig.switch.routing.get("test.bob") is not None)
    learned = b.rig.switch.routing.get("test.bob")
    assert learned is not None
    assert (learned.next_hop, learned.origin, learned.relation) == ("bob", "ccp", "peer")
    assert learned.path == ("test.bob",)
    # B forwards by it: the packet goes to bob's link, not F02.
    link = b.rig.link("bob")
    out = await b.rig.switch.handle_prepare(KID, prepare("test.bob.alice", 10))
    assert isinstance(out, Fulfill)
    assert link.seen[-1].destination == "test.bob.alice"
    # A's own table is not rewritten by its own snapshot.
    assert a.rig.switch.routing.get("test.bob").next_hop == "bob"  # type: ignore[union-attr]

    # A withdrawal in A reaches B.
    reply = await a.rig.switch.handle_prepare(
        BOB, update(from_epoch=1, to_epoch=2, routes=(route("test.bob2"),), withdrawn=("test.bob",))
    )
    assert isinstance(reply, Fulfill)
    await until(b, lambda: b.rig.switch.routing.get("test.bob") is None)
    assert b.rig.switch.routing.get("test.bob2") is not None
    out = await b.rig.switch.handle_prepare(KID, prepare("test.bob.alice", 10))
    assert isinstance(out, Reject) and out.code == "F02"

    # Bob's session in A ends: every process forgets what bob advertised.
    a.rig.switch.link_down("bob")
    await until(b, lambda: b.rig.switch.routing.get("test.bob2") is None)


async def test_a_process_that_starts_later_loads_the_shared_routes(
    processes: Callable[[str], Process],
) -> None:
    a = processes("a")
    await a.rig.switch.handle_prepare(BOB, update(routes=(route("test.bob"), route("test.bob3"))))
    await until(a, lambda: "bob" in a.routes._mine)
    late = processes("late")
    await until(late, lambda: late.rig.switch.routing.get("test.bob3") is not None)
    assert late.rig.switch.routing.get("test.bob") is not None


async def test_routes_of_a_dead_writer_expire_elsewhere(
    processes: Callable[[str], Process], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A writer killed -9 neither withdraws nor renews: its hash lapses with the hold-down.
    monkeypatch.setattr(shared, "MIN_TTL_MS", 300)
    monkeypatch.setattr(shared, "TTL_SLACK_MS", 0)
    a, b = processes("a"), processes("b")
    await a.rig.switch.handle_prepare(BOB, update(routes=(route("test.bob"),), hold_down=300))
    await until(b, lambda: b.rig.switch.routing.get("test.bob") is not None)
    a.task.cancel()  # "killed": no more writes, no delete
    await until(b, lambda: b.rig.switch.routing.get("test.bob") is None)


async def test_heartbeats_keep_the_routes_and_a_lost_hash_is_written_again(
    processes: Callable[[str], Process],
) -> None:
    a, b = processes("a"), processes("b")
    await a.rig.switch.handle_prepare(BOB, update(routes=(route("test.bob"),)))
    await until(b, lambda: b.rig.switch.routing.get("test.bob") is not None)
    await _clear_keys()  # Redis lost it (restart without persistence)
    await until(b, lambda: b.rig.switch.routing.get("test.bob") is None)
    await a.rig.switch.handle_prepare(BOB, update(from_epoch=1, to_epoch=1))  # heartbeat
    await until(b, lambda: b.rig.switch.routing.get("test.bob") is not None)


async def test_the_session_moving_to_another_process(
    processes: Callable[[str], Process],
) -> None:
    a, b = processes("a"), processes("b")
    await a.rig.switch.handle_prepare(BOB, update(routes=(route("test.bob"),)))
    await until(b, lambda: b.rig.switch.routing.get("test.bob") is not None)
    # Bob reconnects to B and resyncs there (full table from epoch 0); A's link goes down.
    await b.rig.switch.handle_prepare(
        BOB, update(table=bytes(range(1, 17)), routes=(route("test.bob"), route("test.bob4")))
    )
    a.rig.switch.link_down("bob")
    await until(a, lambda: a.rig.switch.routing.get("test.bob4") is not None)
    assert a.rig.switch.routing.get("test.bob") is not None
    assert b.rig.switch.routing.get("test.bob4") is not None
