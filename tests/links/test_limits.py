"""Per-peer abuse limits: the buckets (deterministic clock), the edge (T05/T04 before the
switch, in-flight slots released when the reply is known), the CCP route cap, add_peer."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from ilp.ccp import Route, RouteUpdateRequest, encode_route_update_request
from ilp.conditions import PEER_CONDITION
from ilp.packet import Fulfill, Prepare, Reject
from links import limits
from links.limits import (
    BANDWIDTH_EXCEEDED,
    RATE_LIMITED,
    TOO_MANY_IN_FLIGHT,
    EdgeLimiter,
    InvalidLimits,
    PeerLimits,
)
from links.peers import PeerContext

try:
    from tests.links.test_switch_support import FULFILLMENT, Rig, make_rig, peer, prepare
except ImportError:  # rootdir-less import mode
    from test_switch_support import (  # type: ignore[no-redef]
        FULFILLMENT,
        Rig,
        make_rig,
        peer,
        prepare,
    )

S = 1_000_000_000  # nanoseconds


class Clock:
    """A nanosecond clock that only moves when told."""

    def __init__(self) -> None:
        self.now = 10 * S

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * S)


def lim(**kw: Any) -> PeerLimits:
    return PeerLimits(**kw)


# --- PeerLimits -------------------------------------------------------------------------------


def test_defaults_leave_room_for_the_load_scenario() -> None:
    d = limits.DEFAULT_LIMITS
    assert (d.packets_per_second, d.burst, d.max_in_flight) == (10_000, 20_000, 1_000)
    assert (d.replay_quota, d.max_routes, d.throughput_per_second) == (120_000, 10_000, None)
    ctx = peer("alice")
    assert ctx.limits is limits.DEFAULT_LIMITS


@pytest.mark.parametrize(
    "bad",
    [
        {"packets_per_second": 0},
        {"burst": 0},
        {"max_in_flight": 0},
        {"max_routes": -1},
        {"replay_quota": -1},
        {"throughput_per_second": 0},
        {"throughput_per_second": 2**64},
        {"burst": 1.5},
        {"packets_per_second": True},
    ],
)
def test_invalid_limits_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidLimits):
        PeerLimits(**bad)


# --- the buckets --------------------------------------------------------------------------------


def test_packet_bucket_allows_the_burst_then_t05_and_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = EdgeLimiter(clock)
    rules = lim(packets_per_second=10, burst=5)
    for _ in range(5):
        assert limiter.admit("a", rules, 0) is None
        limiter.release("a")
    assert limiter.admit("a", rules, 0) == RATE_LIMITED
    assert RATE_LIMITED[0] == "T05"
    clock.advance(0.1)  # one token back
    assert limiter.admit("a", rules, 0) is None
    limiter.release("a")
    assert limiter.admit("a", rules, 0) == RATE_LIMITED
    clock.advance(60)  # refills up to the burst, not beyond
    admitted = 0
    while limiter.admit("a", rules, 0) is None:
        limiter.release("a")
        admitted += 1
    assert admitted == 5


def test_refill_is_exact_however_often_the_bucket_is_read() -> None:
    clock = Clock()
    limiter = EdgeLimiter(clock)
    rules = lim(packets_per_second=3, burst=1)
    assert limiter.admit("a", rules, 0) is None
    limiter.release("a")
    # 1/3 s in 1 ns steps would round every refill to nothing in a naive integer bucket
    for _ in range(1000):
        clock.now += 1
        assert limiter.admit("a", rules, 0) == RATE_LIMITED
    clock.now += S // 3 - 1000 + 1
    assert limiter.admit("a", rules, 0) is None


def test_peers_have_their_own_buckets() -> None:
    clock = Clock()
    limiter = EdgeLimiter(clock)
    rules = lim(packets_per_second=1, burst=2)
    for _ in range(2):
        assert limiter.admit("a", rules, 0) is None
    assert limiter.admit("a", rules, 0) == RATE_LIMITED
    assert limiter.admit("b", rules, 0) is None


def test_throughput_limits_the_amount_per_second_with_21_3_0s_answer() -> None:
    clock = Clock()
    limiter = EdgeLimiter(clock)
    rules = lim(throughput_per_second=1000)
    assert limiter.admit("a", rules, 600) is None
    assert limiter.admit("a", rules, 400) is None
    assert limiter.admit("a", rules, 1) == BANDWIDTH_EXCEEDED
    assert BANDWIDTH_EXCEEDED == ("T04", "exceeded money bandwidth, throttling.")
    assert limiter.admit("a", rules, 0) is None  # no amount, no throughput used
    clock.advance(0.25)
    assert limiter.admit("a", rules, 251) == BANDWIDTH_EXCEEDED
    assert limiter.admit("a", rules, 250) is None
    clock.advance(10)
    assert limiter.admit("a", rules, 1001) == BANDWIDTH_EXCEEDED  # never more than 1 s worth
    assert limiter.admit("a", rules, 1000) is None
    assert limiter.in_flight("a") == 5  # refused packets took no slot


def test_in_flight_cap_counts_until_release() -> None:
    limiter = EdgeLimiter(Clock())
    rules = lim(max_in_flight=2)
    assert limiter.admit("a", rules, 0) is None
    assert limiter.admit("a", rules, 5) is None
    assert limiter.admit("a", rules, 0) == TOO_MANY_IN_FLIGHT
    limiter.release("a")
    assert limiter.admit("a", rules, 0) is None
    assert limiter.in_flight("a") == 2


def test_new_settings_are_adopted_and_keep_the_levels() -> None:
    clock = Clock()
    limiter = EdgeLimiter(clock)
    generous = lim(packets_per_second=1, burst=100)
    for _ in range(98):
        assert limiter.admit("a", generous, 0) is None
        limiter.release("a")
    # the same settings reloaded (another object, equal): nothing refilled
    same = dataclasses.replace(generous)
    assert same is not generous
    for _ in range(2):
        assert limiter.admit("a", same, 0) is None
        limiter.release("a")
    assert limiter.admit("a", same, 0) == RATE_LIMITED
    # a smaller burst caps the level; a throughput limit turned on starts full
    clock.advance(50)
    tighter = lim(packets_per_second=1, burst=3, throughput_per_second=10)
    taken = 0
    while limiter.admit("a", tighter, 1) is None:
        limiter.release("a")
        taken += 1
    assert taken == 3


# --- CCP: routes per peer ---------------------------------------------------------------------


THEIR_TABLE = bytes.fromhex("bffbf6ad0ddc4d3ba1e5b4f0537365bd")


def _update(
    *,
    from_epoch: int,
    to_epoch: int,
    routes: tuple[str, ...] = (),
    withdrawn: tuple[str, ...] = (),
    table: bytes = THEIR_TABLE,
) -> Prepare:
    data = encode_route_update_request(
        RouteUpdateRequest(
            table,
            to_epoch,
            from_epoch,
            to_epoch,
            45_000,
            "test.bob",
            tuple(Route(p, ("test.bob",), b"\x07" * 32) for p in routes),
            withdrawn,
        )
    )
    return Prepare(
        0, datetime.now(UTC) + timedelta(seconds=60), PEER_CONDITION, "peer.route.update", data
    )


@pytest.fixture
def rigs() -> Iterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for rig in made:
        rig.switch.close()


def capped_bob(max_routes: int) -> PeerContext:
    return dataclasses.replace(peer("bob", "peer"), limits=lim(max_routes=max_routes))


async def test_ccp_routes_beyond_max_routes_are_ignored_and_the_session_goes_on(
    rigs: list[Rig], caplog: pytest.LogCaptureFixture
) -> None:
    bob = capped_bob(3)
    rig = make_rig([bob])
    rigs.append(rig)
    rig.link("bob")
    table = rig.switch.routing
    caplog.set_level(logging.WARNING, logger="links.ccp")
    first = ("test.b1", "test.b2", "test.b3", "test.b4", "test.b5")
    reply = await rig.switch.handle_prepare(bob, _update(from_epoch=0, to_epoch=5, routes=first))
    assert isinstance(reply, Fulfill)  # answered normally
    assert set(table.learned_from("bob")) == {"test.b1", "test.b2", "test.b3"}
    assert table.get("test.b4") is None and table.get("test.b5") is None
    # more beyond the cap: ignored again, logged once
    reply = await rig.switch.handle_prepare(
        bob, _update(from_epoch=5, to_epoch=6, routes=("test.b6",))
    )
    assert isinstance(reply, Fulfill)
    warnings = [r for r in caplog.records if "max_routes" in r.getMessage()]
    assert len(warnings) == 1
    # a route already held may be updated at the cap; a withdrawal makes room
    reply = await rig.switch.handle_prepare(
        bob,
        _update(from_epoch=6, to_epoch=7, routes=("test.b1", "test.b7"), withdrawn=("test.b2",)),
    )
    assert isinstance(reply, Fulfill)
    assert set(table.learned_from("bob")) == {"test.b1", "test.b3", "test.b7"}
    status = rig.switch.ccp.status()["receivers"]["bob"]  # type: ignore[index]
    assert status["routes"] == 3 and status["ignored"] == 3
    assert status["epoch"] == 7  # the session followed every update


async def test_ccp_route_cap_is_per_peer_and_resets_with_a_new_table(rigs: list[Rig]) -> None:
    bob = capped_bob(2)
    carl = dataclasses.replace(peer("carl", "peer"), limits=lim(max_routes=2))
    rig = make_rig([bob, carl])
    rigs.append(rig)
    rig.link("bob")
    rig.link("carl")
    table = rig.switch.routing
    await rig.switch.handle_prepare(
        bob, _update(from_epoch=0, to_epoch=3, routes=("test.x1", "test.x2", "test.x3"))
    )
    await rig.switch.handle_prepare(
        carl, _update(from_epoch=0, to_epoch=2, routes=("test.y1", "test.y2"))
    )
    assert set(table.learned_from("bob")) == {"test.x1", "test.x2"}
    assert set(table.learned_from("carl")) == {"test.y1", "test.y2"}
    # bob restarts with another routing table: its old routes go, the cap starts afresh
    await rig.switch.handle_prepare(
        bob,
        _update(
            from_epoch=0, to_epoch=2, routes=("test.z1", "test.z2", "test.z3"), table=bytes(16)
        ),
    )
    assert set(table.learned_from("bob")) == {"test.z1", "test.z2"}


async def test_ccp_zero_max_routes_takes_no_route(rigs: list[Rig]) -> None:
    bob = capped_bob(0)
    rig = make_rig([bob])
    rigs.append(rig)
    rig.link("bob")
    reply = await rig.switch.handle_prepare(
        bob, _update(from_epoch=0, to_epoch=1, routes=("test.b1",))
    )
    assert isinstance(reply, Fulfill)
    assert rig.switch.routing.learned_from("bob") == {}


# --- add_peer -----------------------------------------------------------------------------------


def _add_peer(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("add_peer", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.mark.django_db
def test_add_peer_sets_every_limit_and_prints_them() -> None:
    from links.peers import context_from_peer
    from links.selectors import peer_get

    out, err = _add_peer(
        "alice",
        "--relation=child",
        "--link=btp-server",
        "--min-balance=-5000",
        "--packets-per-second=50",
        "--burst=70",
        "--throughput=123456",
        "--max-in-flight=9",
        "--replay-quota=300",
        "--max-routes=11",
    )
    row = peer_get(name="alice")
    assert row is not None
    assert context_from_peer(row).limits == PeerLimits(
        packets_per_second=50,
        burst=70,
        throughput_per_second=123456,
        max_in_flight=9,
        replay_quota=300,
        max_routes=11,
    )
    assert "limits in force:" in out
    assert "it may owe us at most 5000 (min balance -5000)" in out
    assert "packets: 50/s, burst 70, in flight 9; throughput: 123456/s" in out
    assert "replay quota: 300; CCP routes: 11" in out
    assert "WARNING" not in err
    # a re-run keeps what it does not name; 'none' lifts the throughput limit
    out, err = _add_peer("alice", "--relation=child", "--link=btp-server", "--throughput=none")
    row = peer_get(name="alice")
    assert row is not None
    assert context_from_peer(row).limits == PeerLimits(
        packets_per_second=50, burst=70, max_in_flight=9, replay_quota=300, max_routes=11
    )
    assert "throughput: unbounded" in out


@pytest.mark.django_db
def test_add_peer_without_min_balance_warns_of_unbounded_credit() -> None:
    out, err = _add_peer("bob", "--relation=child", "--link=btp-server")
    assert "it may owe us without bound" in out
    assert "packets: 10000/s, burst 20000, in flight 1000; throughput: unbounded" in out
    assert "WARNING: peer bob has no --min-balance: it may owe this node without bound" in err
    out, err = _add_peer("bob", "--relation=child", "--link=btp-server", "--min-balance=0")
    assert "WARNING" not in err
    assert "it may owe us at most 0 (min balance 0)" in out


@pytest.mark.django_db
@pytest.mark.parametrize(
    "flag", ["--burst=0", "--packets-per-second=-1", "--max-in-flight=0", "--throughput=0"]
)
def test_add_peer_refuses_bad_limits(flag: str) -> None:
    with pytest.raises(CommandError):
        _add_peer("carol", "--relation=child", "--link=btp-server", flag)


@pytest.mark.django_db
def test_peer_set_limits_service_validates_as_a_whole() -> None:
    from links.services import PeerError, peer_create, peer_set_limits

    peer_create(name="dave", relation="peer", link="btp-server", token="t")
    assert peer_set_limits(name="dave", changes={"max_routes": 5}).max_routes == 5
    with pytest.raises(PeerError):
        peer_set_limits(name="dave", changes={"burst": 0})
    with pytest.raises(PeerError):
        peer_set_limits(name="dave", changes={"nonsense": 1})


# --- at the edge: before the switch, slots released when the reply is known --------------------


@pytest.fixture
def clock() -> Iterator[Clock]:
    fake = Clock()
    limits.reset_edge_limiter(fake)
    yield fake
    limits.reset_edge_limiter()


@pytest.fixture
def edge_rig(rigs: list[Rig]) -> Iterator[tuple[Rig, PeerContext]]:
    from links import edge

    kid = peer("kid")
    bob = peer("bob", "peer", address="test.bob")
    rig = make_rig([kid, bob])
    rigs.append(rig)
    edge.override_switch(rig.switch)
    yield rig, kid
    edge.override_switch(None)


def with_limits(ctx: PeerContext, **kw: Any) -> PeerContext:
    return dataclasses.replace(ctx, limits=lim(**kw))


_serial = iter(range(10**9))


def to_bob(amount: int = 100) -> Prepare:
    """A distinct Prepare each time (the switch answers a repeat of the very same packet
    from its own memory)."""
    return prepare("test.bob.x", amount, data=next(_serial).to_bytes(8, "big"))


async def test_t05_under_a_burst_then_served_again_after_the_refill(
    clock: Clock, edge_rig: tuple[Rig, PeerContext]
) -> None:
    from links import edge

    rig, kid = edge_rig
    bob_link = rig.link("bob")
    kid = with_limits(kid, packets_per_second=2, burst=3)
    replies = [await edge.handle_prepare(kid, to_bob()) for _ in range(5)]
    assert [type(r) for r in replies] == [Fulfill, Fulfill, Fulfill, Reject, Reject]
    refused = replies[3]
    assert isinstance(refused, Reject)
    assert (refused.code, refused.message) == ("T05", "too many requests, throttling.")
    assert refused.triggered_by == edge.our_address()
    assert len(bob_link.seen) == 3  # refused ones never reached the switch
    assert rig.book.pending() == 0
    clock.advance(0.5)  # one packet's worth
    assert isinstance(await edge.handle_prepare(kid, to_bob()), Fulfill)
    assert isinstance(await edge.handle_prepare(kid, to_bob()), Reject)


async def test_zero_amount_prepares_count_against_the_rate(
    clock: Clock, edge_rig: tuple[Rig, PeerContext]
) -> None:
    from links import edge

    rig, kid = edge_rig
    rig.link("bob")
    kid = with_limits(kid, packets_per_second=1, burst=2)
    for _ in range(2):
        assert isinstance(await edge.handle_prepare(kid, to_bob(0)), Fulfill)
    reply = await edge.handle_prepare(kid, to_bob(0))
    assert isinstance(reply, Reject) and reply.code == "T05"
    # peer protocols too (21.3.0's rate limit sees all incoming data)
    ildcp = Prepare(
        0, datetime.now(UTC) + timedelta(seconds=30), PEER_CONDITION, "peer.config", b""
    )
    reply = await edge.handle_prepare(kid, ildcp)
    assert isinstance(reply, Reject) and reply.code == "T05"


async def test_throughput_over_the_limit_gets_t04_and_holds_nothing(
    clock: Clock, edge_rig: tuple[Rig, PeerContext]
) -> None:
    from links import edge

    rig, kid = edge_rig
    bob_link = rig.link("bob")
    kid = with_limits(kid, throughput_per_second=1000)
    assert isinstance(await edge.handle_prepare(kid, to_bob(700)), Fulfill)
    reply = await edge.handle_prepare(kid, to_bob(301))
    assert isinstance(reply, Reject)
    assert (reply.code, reply.message) == ("T04", "exceeded money bandwidth, throttling.")
    assert isinstance(await edge.handle_prepare(kid, to_bob(300)), Fulfill)
    assert [p.amount for p in bob_link.seen] == [700, 300]
    assert rig.book.pending() == 0
    assert rig.book.balance("peer:kid") == -1000
    clock.advance(1)
    assert isinstance(await edge.handle_prepare(kid, to_bob(1000)), Fulfill)


async def test_in_flight_cap_with_a_slow_next_hop(
    clock: Clock, edge_rig: tuple[Rig, PeerContext]
) -> None:
    from links import edge

    rig, kid = edge_rig
    gate = asyncio.Event()
    arrived = asyncio.Queue[Prepare]()

    async def slow(p: Prepare) -> Fulfill:
        arrived.put_nowait(p)
        await gate.wait()
        return Fulfill(FULFILLMENT)

    bob_link = rig.link("bob", slow)
    n = 4
    kid = with_limits(kid, max_in_flight=n)
    # zero-amount Prepares take no hold in the switch, but they do take a slot
    tasks = [
        asyncio.ensure_future(edge.handle_prepare(kid, to_bob(0 if i % 2 else 10)))
        for i in range(n)
    ]
    for _ in range(n):
        await asyncio.wait_for(arrived.get(), 5)
    assert limits.edge_limiter().in_flight("kid") == n
    extra = await edge.handle_prepare(kid, to_bob(10))
    assert isinstance(extra, Reject)
    assert (extra.code, extra.message) == ("T05", "too many packets in flight, throttling.")
    assert len(bob_link.seen) == n
    gate.set()
    assert all(isinstance(r, Fulfill) for r in await asyncio.gather(*tasks))
    assert limits.edge_limiter().in_flight("kid") == 0
    assert isinstance(await edge.handle_prepare(kid, to_bob(10)), Fulfill)
    assert limits.edge_limiter().in_flight("kid") == 0


async def test_a_slot_is_released_whatever_the_reply(
    clock: Clock, edge_rig: tuple[Rig, PeerContext]
) -> None:
    from links import edge

    rig, kid = edge_rig
    kid = with_limits(kid, max_in_flight=1)

    async def boom(p: Prepare) -> Fulfill:
        raise RuntimeError("link fell over")

    rig.link("bob", boom)
    for _ in range(3):  # T01 from the switch each time: the slot comes back each time
        reply = await edge.handle_prepare(kid, to_bob())
        assert isinstance(reply, Reject) and reply.code == "T01"
    reply = await edge.handle_prepare(kid, prepare("test.nowhere.x"))
    assert isinstance(reply, Reject) and reply.code == "F02"
    assert limits.edge_limiter().in_flight("kid") == 0


async def test_a_hung_up_caller_keeps_the_slot_until_the_forward_ends(
    clock: Clock, edge_rig: tuple[Rig, PeerContext]
) -> None:
    from links import edge

    rig, kid = edge_rig
    gate = asyncio.Event()
    arrived = asyncio.Event()

    async def slow(p: Prepare) -> Fulfill:
        arrived.set()
        await gate.wait()
        return Fulfill(FULFILLMENT)

    rig.link("bob", slow)
    kid = with_limits(kid, max_in_flight=1)
    caller = asyncio.ensure_future(edge.handle_prepare(kid, to_bob()))
    await asyncio.wait_for(arrived.wait(), 5)
    caller.cancel()  # e.g. an HTTP client hanging up: the forward goes on
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert limits.edge_limiter().in_flight("kid") == 1
    reply = await edge.handle_prepare(kid, to_bob())
    assert isinstance(reply, Reject) and reply.code == "T05"
    gate.set()
    await edge.drain()
    assert limits.edge_limiter().in_flight("kid") == 0
    assert rig.book.balance("peer:kid") == -100  # the forward was recorded


@pytest.mark.django_db(transaction=True)
async def test_t05_over_btp_for_a_peer_with_a_small_burst(
    clock: Clock, switch: Any, make_peer: Callable[..., Any]
) -> None:
    from channels.db import database_sync_to_async

    from links.services import peer_set_limits
    from tests.links.btp_helpers import RawBtp
    from tests.links.test_btp_consumer import ilp_reply

    def setup() -> None:
        make_peer("alice", token="alicetoken")
        peer_set_limits(name="alice", changes={"packets_per_second": 1, "burst": 2})

    await database_sync_to_async(setup)()
    raw = await RawBtp().open()
    assert (await raw.auth()) is not None
    codes = []
    for i in range(4):
        rid = await raw.send_prepare(prepare("test.local.bob", 10), request_id=100 + i)
        reply = ilp_reply(await raw.next(5))
        codes.append(reply.code if isinstance(reply, Reject) else "fulfilled")
        assert rid == 100 + i
    assert codes == ["fulfilled", "fulfilled", "T05", "T05"]
    assert len(switch.calls) == 2
    await raw.close()
