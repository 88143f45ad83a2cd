"""Per-peer limits shared across processes (``links.limits.SharedLimiter``, Redis).

Two limiters on one Redis prefix stand for two processes of one node: a peer's rate,
throughput and in-flight cap hold for the node, not per process; a dead process's slots
free themselves at their expiry; with Redis away, each process admits its share.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest

from ilp.packet import Fulfill, Prepare, Reject
from links.limits import (
    BANDWIDTH_EXCEEDED,
    LEASE_FRACTION,
    RATE_LIMITED,
    TOO_MANY_IN_FLIGHT,
    EdgeLimiter,
    PeerLimits,
    SharedLimiter,
    Slot,
)
from links.peers import PeerContext
from tests.conftest import requires_redis
from tests.links.conftest import FakeSwitch, prepare_to

REDIS_URL = os.environ.get("REDIS_URL", "")


def soon(seconds: float = 30.0) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


@pytest.fixture
async def pair() -> AsyncIterator[Callable[..., SharedLimiter]]:
    """Limiters on one fresh prefix: each one a process of the same node."""
    prefix = f"ilp:test:limits:{uuid.uuid4().hex}:"
    made: list[SharedLimiter] = []

    def make(**kw: object) -> SharedLimiter:
        limiter = SharedLimiter(REDIS_URL, prefix, **kw)  # type: ignore[arg-type]
        made.append(limiter)
        return limiter

    yield make
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
    for limiter in made:
        await limiter.aclose()


@requires_redis
async def test_a_peer_gets_its_rate_once_across_two_processes(
    pair: Callable[..., SharedLimiter],
) -> None:
    a, b = pair(), pair()
    rules = PeerLimits(packets_per_second=1, burst=20)
    started = time.monotonic()
    outcomes = []
    for i in range(40):  # alternating processes, as a load balancer would
        outcomes.append(await (a if i % 2 else b).admit_prepare("kid", rules, 0, soon()))
    elapsed = time.monotonic() - started
    admitted = [o for o in outcomes if isinstance(o, Slot)]
    refused = [o for o in outcomes if not isinstance(o, Slot)]
    # The burst once for the node (plus what refilled meanwhile at 1/s), not once per process.
    assert 20 <= len(admitted) <= 20 + int(elapsed) + 1
    assert set(refused) == {RATE_LIMITED}
    # Two in-memory limiters (what each process had before) admit the burst twice.
    local_a, local_b = EdgeLimiter(), EdgeLimiter()
    local = sum((local_a if i % 2 else local_b).admit("kid", rules, 0) is None for i in range(40))
    assert local == 40


@requires_redis
async def test_in_flight_is_counted_for_the_node(pair: Callable[..., SharedLimiter]) -> None:
    a, b = pair(), pair()
    rules = PeerLimits(max_in_flight=3)
    s1 = await a.admit_prepare("kid", rules, 10, soon())
    s2 = await a.admit_prepare("kid", rules, 10, soon())
    s3 = await b.admit_prepare("kid", rules, 10, soon())
    assert all(isinstance(s, Slot) for s in (s1, s2, s3))
    assert await b.admit_prepare("kid", rules, 10, soon()) == TOO_MANY_IN_FLIGHT
    assert await a.admit_prepare("kid", rules, 10, soon()) == TOO_MANY_IN_FLIGHT
    assert await a.leased_slots("kid") == 3
    assert isinstance(s1, Slot)
    a.release_slot(s1)  # released on A: B has the room
    s4 = await b.admit_prepare("kid", rules, 10, soon())
    assert isinstance(s4, Slot)
    for limiter, slot in ((a, s2), (b, s3), (b, s4)):
        assert isinstance(slot, Slot)
        limiter.release_slot(slot)
    await a.admit_prepare("other", rules, 0, soon())  # flushes A's queued release
    await b.admit_prepare("other", rules, 0, soon())
    # A release made while its lease's call is in flight goes with the lease's next call:
    # the ticker's at the latest (a CI run in a slow hour still had one slot leased here).
    deadline = time.monotonic() + 5
    while await a.leased_slots("kid"):
        assert time.monotonic() < deadline, "the released slots were never given back"
        await asyncio.sleep(0.02)


@requires_redis
async def test_throughput_is_counted_for_the_node(pair: Callable[..., SharedLimiter]) -> None:
    a, b = pair(), pair()
    rules = PeerLimits(throughput_per_second=100)
    assert isinstance(await a.admit_prepare("kid", rules, 60, soon()), Slot)
    assert await b.admit_prepare("kid", rules, 60, soon()) == BANDWIDTH_EXCEEDED
    assert isinstance(await b.admit_prepare("kid", rules, 0, soon()), Slot)


async def admit_once(limiter: SharedLimiter, rules: PeerLimits, amount: int = 0) -> object:
    """A Prepare admitted and answered at once (its slot released)."""
    outcome = await limiter.admit_prepare("kid", rules, amount, soon())
    if isinstance(outcome, Slot):
        limiter.release_slot(outcome)
    return outcome


@requires_redis
async def test_a_dead_process_slots_expire(pair: Callable[..., SharedLimiter]) -> None:
    dead, alive = pair(), pair()
    # Its slots' lease: 200 ms of use + 100 ms of hold at most + no margin.
    dead.lease_valid_ms, dead.max_hold_ms, dead.slot_margin_ms = 200, 100, 0
    assert dead.slot_ttl_ms == 300
    rules = PeerLimits(max_in_flight=2)
    assert isinstance(await dead.admit_prepare("kid", rules, 1, soon()), Slot)
    assert isinstance(await dead.admit_prepare("kid", rules, 1, soon()), Slot)
    leased_at = time.monotonic()
    # The process is killed: it neither releases nor gives its lease back.
    dead.close()
    assert await alive.admit_prepare("kid", rules, 1, soon()) == TOO_MANY_IN_FLIGHT
    deadline = time.monotonic() + 20
    while True:  # admitted once the dead process's lease has expired
        outcome = await alive.admit_prepare("kid", rules, 1, soon())
        if isinstance(outcome, Slot):
            break
        assert outcome == TOO_MANY_IN_FLIGHT
        assert time.monotonic() < deadline, "the dead process's slots never expired"
        await asyncio.sleep(0.02)
    assert time.monotonic() - leased_at >= 0.25  # not before the lease's expiry
    assert await alive.leased_slots("kid") == 1


@requires_redis
async def test_two_processes_admit_at_most_the_limit_plus_their_leases(
    pair: Callable[..., SharedLimiter],
) -> None:
    """Over any window: at most burst + rate x window + N x the largest lease."""
    a, b = pair(), pair()
    for p in (a, b):
        p.idle_ns = 10**12  # hold the leases through the pause below
    rules = PeerLimits(packets_per_second=2_000, burst=2_000)
    max_lease = 2_000 // LEASE_FRACTION
    # Warm up at ~1,000 packets/s each way, so each process holds a lease sized for it.
    for i in range(300):
        assert isinstance(await admit_once(a if i % 2 else b, rules), Slot)
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.1)  # the last top-ups are back
    for p in (a, b):
        lease = p._side().leases["kid"]
        assert 0 < lease.tokens <= max_lease  # leased ahead of need, and no more than that
    await asyncio.sleep(1.1)  # the bucket is full again; the leases are still out
    started = time.monotonic()
    outcomes = [await admit_once(a if i % 2 else b, rules) for i in range(6_000)]
    window = time.monotonic() - started
    admitted = sum(isinstance(o, Slot) for o in outcomes)
    assert {o for o in outcomes if not isinstance(o, Slot)} == {RATE_LIMITED}
    assert 2_000 <= admitted <= 2_000 + 2_000 * window + 2 * max_lease
    # How few calls the packet path makes is test_the_packet_path_spends_the_lease_without_a_call's
    # subject: here the refused packets' calls follow the refill clock, i.e. this machine's
    # speed (a busy CI box made 665 for 6,300), so they are not counted.
    # Each process on its own (what the in-memory limiters did) admits the burst twice.
    local_a, local_b = EdgeLimiter(), EdgeLimiter()
    local = 0
    for i in range(6_000):
        one = local_a if i % 2 else local_b
        if one.admit("kid", rules, 0) is None:
            one.release("kid")
            local += 1
    assert local >= 4_000


@requires_redis
async def test_the_in_flight_cap_holds_exactly_across_processes(
    pair: Callable[..., SharedLimiter],
) -> None:
    a, b = pair(), pair()
    for p in (a, b):
        p.idle_ns, p.tick_s = 100_000_000, 0.02
    rules = PeerLimits(max_in_flight=64)
    outcomes = await asyncio.gather(
        *(p.admit_prepare("kid", rules, 1, soon()) for _ in range(50) for p in (a, b))
    )
    slots = [(o, p) for o, p in zip(outcomes, [a, b] * 50, strict=True) if isinstance(o, Slot)]
    refused = [o for o in outcomes if not isinstance(o, Slot)]
    # Never more than the cap (a process may hold a few spare slots: the early refusals).
    assert 64 - 2 * (64 // LEASE_FRACTION) <= len(slots) <= 64
    assert set(refused) == {TOO_MANY_IN_FLIGHT}
    assert a.in_flight("kid") + b.in_flight("kid") == len(slots)
    assert len(slots) <= await a.leased_slots("kid") <= 64
    for slot, p in slots:
        p.release_slot(slot)
    deadline = time.monotonic() + 5
    while await a.leased_slots("kid"):  # spare slots go back; idle leases too
        assert time.monotonic() < deadline, "the leases were never given back"
        await asyncio.sleep(0.02)
    assert a._side().leases["kid"].tokens == b._side().leases["kid"].tokens == 0


@requires_redis
async def test_throughput_across_processes_is_the_limit_plus_their_leases(
    pair: Callable[..., SharedLimiter],
) -> None:
    a, b = pair(), pair()
    rules = PeerLimits(throughput_per_second=1_600)
    started = time.monotonic()
    outcomes = [await admit_once(a if i % 2 else b, rules, 60) for i in range(200)]
    window = time.monotonic() - started
    admitted = sum(isinstance(o, Slot) for o in outcomes)
    assert {o for o in outcomes if not isinstance(o, Slot)} == {BANDWIDTH_EXCEEDED}
    assert 1_600 - 2 * 100 <= admitted * 60 <= 1_600 + 1_600 * window + 2 * 100 + 60


@requires_redis
async def test_a_closing_process_gives_its_lease_back(pair: Callable[..., SharedLimiter]) -> None:
    a, b = pair(), pair()
    rules = PeerLimits(packets_per_second=1, burst=16)  # leases of one token
    slot = await a.admit_prepare("kid", rules, 0, soon())
    assert isinstance(slot, Slot)
    assert a._side().leases["kid"].tokens == 1  # taken ahead of need
    a.release_slot(slot)
    await a.aclose()  # gives it back (a killed process would not: one token lost)
    assert await a.leased_slots("kid") == 0
    outcomes = [await b.admit_prepare("kid", rules, 0, soon()) for _ in range(20)]
    assert sum(isinstance(o, Slot) for o in outcomes) == 15


def test_a_lease_is_sized_by_the_recent_rate_and_capped() -> None:
    from links.limits import _Lease

    rules = PeerLimits(packets_per_second=10_000, burst=20_000, max_in_flight=1_000)
    lease = _Lease("kid", "kid", rules, 0, None)  # type: ignore[arg-type]
    assert (lease.target_tokens, lease.max_tokens, lease.max_headroom) == (1, 625, 62)
    lease.count = 250  # 250 packets in 100 ms: 2,500/s, a lease of 100 ms of it
    lease.size(100_000_000)
    assert lease.target_tokens == 251
    lease.count = 10_000  # 100,000/s: capped
    lease.size(200_000_000)
    assert lease.target_tokens == 625
    tiny = _Lease("kid", "kid", PeerLimits(max_in_flight=3), 0, None)  # type: ignore[arg-type]
    assert tiny.max_headroom == 0  # no spare slots: each admission asks Redis


@requires_redis
async def test_one_call_per_loop_iteration(pair: Callable[..., SharedLimiter]) -> None:
    a = pair()
    rules = PeerLimits()
    slots = await asyncio.gather(*(a.admit_prepare("kid", rules, 1, soon()) for _ in range(60)))
    assert all(isinstance(s, Slot) for s in slots)
    # The first packet's call goes alone; the 59 queued behind it share the next one.
    assert a.stats.calls <= 2
    assert a.stats.waits == 60  # each waited for a call (no lease yet)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_redis_away_each_process_admits_its_share() -> None:
    down = SharedLimiter(f"redis://127.0.0.1:{_closed_port()}/0", "ilp:test:limits:down:")
    down.processes = 2  # what Redis counted on the last call before it went away
    rules = PeerLimits(packets_per_second=1, burst=10, max_in_flight=1_000)
    outcomes = [await down.admit_prepare("kid", rules, 0, soon()) for _ in range(10)]
    admitted = [o for o in outcomes if isinstance(o, Slot)]
    assert len(admitted) == 5  # half the burst: the other process has the other half
    assert outcomes[-1] == RATE_LIMITED
    assert down.stats.failures >= 1
    for slot in admitted:  # slots taken locally go back locally
        down.release_slot(slot)
    assert down.local.in_flight("kid") == 0
    await down.aclose()


@requires_redis
async def test_the_edge_refuses_over_the_node_limit_from_either_runtime(
    pair: Callable[..., SharedLimiter],
) -> None:
    from interledger_site.runtime import NodeRuntime
    from links import edge
    from links.peers import PeerContext as Ctx

    kid = Ctx(
        name="kid",
        relation="child",
        account_code="peer:kid",
        address="test.local.kid",
        asset_code="XRP",
        asset_scale=9,
        max_packet_amount=2**64 - 1,
        send_routes=False,
        receive_routes=False,
        limits=PeerLimits(max_in_flight=2),
    )
    gate = asyncio.Event()
    runtimes = [NodeRuntime(name="one"), NodeRuntime(name="two")]
    switches: list[FakeSwitch] = []
    for rt in runtimes:
        rt.limiter = pair()

        async def held(source: PeerContext, p: Prepare) -> Fulfill:
            await gate.wait()
            return Fulfill(bytes(range(32)))

        fake = FakeSwitch(handler=held)
        rt.switch_override = fake
        switches.append(fake)
    tasks = []
    for rt in runtimes:
        with rt.activated():
            tasks.append(asyncio.ensure_future(edge.handle_prepare(kid, prepare_to())))
    while sum(len(s.calls) for s in switches) < 2:
        await asyncio.sleep(0.01)
    for rt in runtimes:
        with rt.activated():
            extra = await edge.handle_prepare(kid, prepare_to())
        assert isinstance(extra, Reject)
        assert (extra.code, extra.message) == TOO_MANY_IN_FLIGHT
    gate.set()
    assert all(isinstance(r, Fulfill) for r in await asyncio.gather(*tasks))
    with runtimes[1].activated():
        assert isinstance(await edge.handle_prepare(kid, prepare_to()), Fulfill)
    for rt in runtimes:
        rt.close()


@requires_redis
async def test_the_packet_path_spends_the_lease_without_a_call(
    pair: Callable[..., SharedLimiter],
) -> None:
    a = pair()
    rules = PeerLimits()  # the defaults: leases of up to 625 tokens, 62 spare slots
    held = []
    for _ in range(40):
        held.append(await a.admit_prepare("kid", rules, 1, soon()))
        await asyncio.sleep(0)
    for _ in range(2_000):
        outcome = await admit_once(a, rules)
        assert isinstance(outcome, Slot)
        await asyncio.sleep(0)  # the next packet comes with the next read from the link
    # A call per lease (ahead of need, sized to the rate), not per packet or iteration.
    assert a.stats.calls <= 2_040 // 100
    # Only while the leases ramp up (tokens doubling from one, spare slots growing with
    # the packets in flight) did packets wait for one: 1% of them at most.
    assert a.stats.waits <= 2_040 // 100
    assert a.in_flight("kid") == 40
    assert 40 <= await a.leased_slots("kid") <= 40 + 1_000 // LEASE_FRACTION + 2
    for slot in held:
        assert isinstance(slot, Slot)
        a.release_slot(slot)
    assert a.in_flight("kid") == 0


@requires_redis
async def test_slots_follow_the_peak_not_the_swing(pair: Callable[..., SharedLimiter]) -> None:
    """Replies come in group commits: the packets in flight swing from all to none and
    back. The slots are sized on the recent peak, so the swing costs no call per cycle."""
    a = pair()
    a.tick_s = 0.05
    rules = PeerLimits()  # 1,000 in flight: up to 62 spare slots
    for _ in range(3):  # warm up: the leases ramp up
        held = []
        for _ in range(50):
            held.append(await a.admit_prepare("kid", rules, 1, soon()))
            await asyncio.sleep(0.0005)
        for slot in held:
            assert isinstance(slot, Slot)
            a.release_slot(slot)  # the group commit answers them all at once
        await asyncio.sleep(0.002)
    calls, waits = a.stats.calls, a.stats.waits
    started = time.monotonic()
    for _ in range(20):
        held = []
        for _ in range(50):  # the sender's next Prepares, spread over a few ms
            held.append(await a.admit_prepare("kid", rules, 1, soon()))
            await asyncio.sleep(0.0005)
        for slot in held:
            assert isinstance(slot, Slot)
            a.release_slot(slot)
        await asyncio.sleep(0.002)
    # 1,000 packets: token top-ups (a lease is ~100 ms of the rate) and at most one
    # renewal per tick, not calls per swing (sized on the moment's count, the slots went
    # back and forth: ~400 calls). The ticks count by the clock: a slow machine takes
    # longer over the same packets (a CI run: 68 calls in a slow hour).
    ticks = int((time.monotonic() - started) / a.tick_s) + 1
    assert a.stats.calls - calls <= 50 + ticks
    assert a.stats.waits - waits <= 5
