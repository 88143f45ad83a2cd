"""CCP through the switch: route control/update both ways, epochs, withdrawals, filters."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from ilp.ccp import (
    Mode,
    Route,
    RouteControlRequest,
    RouteUpdateRequest,
    decode_route_control_request,
    decode_route_update_request,
    encode_route_control_request,
    encode_route_update_request,
)
from ilp.conditions import PEER_CONDITION, PEER_FULFILLMENT
from ilp.packet import Fulfill, Prepare, Reject, decode_prepare, encode_packet
from links.ccp import MAX_EPOCHS_PER_UPDATE
from links.peers import PeerContext
from links.routing import RouteEntry, RouteOrigin
from tests.conftest import load_vectors

try:
    from tests.links.test_switch_support import Rig, make_rig, peer, prepare, reject_with
except ImportError:  # rootdir-less import mode
    from test_switch_support import Rig, make_rig, peer, prepare, reject_with  # type: ignore[no-redef]

CCP = {v["name"]: v for v in load_vectors("ccp.json")["vectors"]}
OBSERVED = load_vectors("observed-connector-21.3.0.json")["scenarios"]
TABLE = bytes(range(16))
THEIR_TABLE = bytes.fromhex("bffbf6ad0ddc4d3ba1e5b4f0537365bd")
FULFILL_HEX = CCP["response"]["hex"]

# the harness connector as our child, with the node's default for children: routes on
KID = peer("kid", send_routes=True, receive_routes=False)
PLAIN_CHILD = peer("alice")  # send_routes / receive_routes off (21.3.0 defaults)
BOB = peer("bob", "peer")  # address unknown: only CCP gives routes to it
MOM = peer("mom", "parent")


@pytest.fixture
def rigs() -> Iterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for rig in made:
        rig.switch.close()


def rig_for(rigs: list[Rig], peers: list[PeerContext], **kw: object) -> Rig:
    rig = make_rig(peers, **kw)  # type: ignore[arg-type]
    rigs.append(rig)
    return rig


def control(mode: Mode = Mode.SYNC, table: bytes = bytes(16), epoch: int = 0) -> Prepare:
    data = encode_route_control_request(RouteControlRequest(mode, table, epoch))
    return Prepare(
        0, datetime.now(UTC) + timedelta(seconds=60), PEER_CONDITION, "peer.route.control", data
    )


def update(
    *,
    table: bytes = THEIR_TABLE,
    from_epoch: int = 0,
    to_epoch: int = 1,
    speaker: str = "test.bob",
    routes: tuple[Route, ...] = (),
    withdrawn: tuple[str, ...] = (),
    hold_down: int = 45_000,
) -> Prepare:
    data = encode_route_update_request(
        RouteUpdateRequest(
            table, to_epoch, from_epoch, to_epoch, hold_down, speaker, routes, withdrawn
        )
    )
    return Prepare(
        0, datetime.now(UTC) + timedelta(seconds=60), PEER_CONDITION, "peer.route.update", data
    )


def route(prefix: str, *path: str) -> Route:
    return Route(prefix, path or ("test.bob",), b"\x07" * 32)


def updates_seen(rig: Rig, name: str) -> list[RouteUpdateRequest]:
    return [
        decode_route_update_request(p.data)
        for p in rig.links[name].seen
        if p.destination == "peer.route.update"
    ]


def controls_seen(rig: Rig, name: str) -> list[RouteControlRequest]:
    return [
        decode_route_control_request(p.data)
        for p in rig.links[name].seen
        if p.destination == "peer.route.control"
    ]


async def wait_for(predicate: object, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


def ok(reply: object) -> None:
    assert isinstance(reply, Fulfill), reply
    assert encode_packet(reply).hex() == FULFILL_HEX


# --- who may speak CCP ---------------------------------------------------------------------


async def test_route_control_from_a_plain_child_is_refused_like_21_3_0(rigs: list[Rig]) -> None:
    rig = rig_for(rigs, [PLAIN_CHILD])
    reply = await rig.switch.handle_prepare(PLAIN_CHILD, control())
    expected = OBSERVED["peer_route_control_from_child"]["parsed"]
    assert isinstance(reply, Reject)
    assert (reply.code, reply.triggered_by, reply.message) == (
        expected["code"],
        expected["triggeredBy"],
        expected["message"],
    )


async def test_flag_specific_refusals(rigs: list[Rig]) -> None:
    rig = rig_for(rigs, [BOB])
    no_send = peer("bob", "peer", send_routes=False, receive_routes=True)
    reply = await rig.switch.handle_prepare(no_send, control())
    assert isinstance(reply, Reject) and reply.code == "F00"
    assert reply.message.startswith("rejecting route control message")
    no_receive = peer("bob", "peer", send_routes=True, receive_routes=False)
    reply = await rig.switch.handle_prepare(no_receive, update())
    assert isinstance(reply, Reject) and reply.message.startswith("rejecting route update")
    reply = await rig.switch.handle_prepare(PLAIN_CHILD, update())
    assert isinstance(reply, Reject)
    assert reply.message == "cannot process route update messages from non-peers."


async def test_expired_and_malformed_requests(rigs: list[Rig]) -> None:
    rig = rig_for(rigs, [BOB])
    old = control()
    expired = Prepare(
        0, datetime.now(UTC) - timedelta(seconds=1), PEER_CONDITION, old.destination, old.data
    )
    reply = await rig.switch.handle_prepare(BOB, expired)
    assert isinstance(reply, Reject) and reply.code == "F00"
    assert reply.message == "CCP route control request packet is expired."
    bad = Prepare(0, old.expires_at, PEER_CONDITION, old.destination, old.data + b"\x00")
    reply = await rig.switch.handle_prepare(BOB, bad)
    assert isinstance(reply, Reject) and reply.code == "F01"
    bad_update = Prepare(0, old.expires_at, PEER_CONDITION, "peer.route.update", b"\x01\x02")
    reply = await rig.switch.handle_prepare(BOB, bad_update)
    assert isinstance(reply, Reject) and reply.code == "F01"


# --- sending our routes (the interop multihop mode B case) ----------------------------------


async def test_child_route_control_gets_our_routes(rigs: list[Rig]) -> None:
    rig = rig_for(rigs, [KID, PLAIN_CHILD])
    rig.link("kid")
    request = decode_prepare(bytes.fromhex(CCP["control_sync_initial"]["hex"]))
    request = Prepare(
        0,
        datetime.now(UTC) + timedelta(seconds=60),
        PEER_CONDITION,
        request.destination,
        request.data,
    )
    ok(await rig.switch.handle_prepare(KID, request))
    await wait_for(lambda: updates_seen(rig, "kid"))
    first = updates_seen(rig, "kid")[0]
    assert first.routing_table_id == TABLE
    assert first.from_epoch_index == 0
    assert first.to_epoch_index == first.current_epoch_index == 2
    assert first.speaker == "test.conn" and first.hold_down_time == 45_000
    by_prefix = {r.prefix: r for r in first.new_routes}
    assert set(by_prefix) == {"test.conn", "test.conn.receivers"}  # children not advertised
    assert by_prefix["test.conn"].path == ("test.conn",)
    secret = b"s" * 32
    assert (
        by_prefix["test.conn"].auth
        == hashlib.sha256(hmac.new(secret, b"test.conn", "sha256").digest()).digest()
    )
    assert first.withdrawn_routes == ()
    sent = rig.links["kid"].seen[0]
    assert (sent.amount, sent.execution_condition) == (0, PEER_CONDITION)


async def test_heartbeats_follow_every_interval(rigs: list[Rig]) -> None:
    rig = rig_for(rigs, [KID], interval_s=0.2)
    rig.link("kid")
    ok(await rig.switch.handle_prepare(KID, control()))
    await wait_for(lambda: len(updates_seen(rig, "kid")) >= 3)
    first, second, third = updates_seen(rig, "kid")[:3]
    assert first.new_routes
    for beat in (second, third):
        assert beat.is_heartbeat
        assert beat.from_epoch_index == beat.to_epoch_index == first.to_epoch_index


async def test_route_changes_reach_the_child_quickly(rigs: list[Rig]) -> None:
    rig = rig_for(rigs, [KID, BOB])
    rig.link("kid")
    ok(await rig.switch.handle_prepare(KID, control()))
    await wait_for(lambda: updates_seen(rig, "kid"))
    ok(await rig.switch.handle_prepare(BOB, update(routes=(route("test.bob"),))))
    await wait_for(lambda: len(updates_seen(rig, "kid")) >= 2)
    change = updates_seen(rig, "kid")[1]
    assert [(r.prefix, r.path) for r in change.new_routes] == [
        ("test.bob", ("test.conn", "test.bob"))
    ]
    assert change.new_routes[0].auth == hashlib.sha256(b"\x07" * 32).digest()
    ok(
        await rig.switch.handle_prepare(
            BOB, update(from_epoch=1, to_epoch=2, withdrawn=("test.bob",))
        )
    )
    await wait_for(lambda: len(updates_seen(rig, "kid")) >= 3)
    assert updates_seen(rig, "kid")[2].withdrawn_routes == ("test.bob",)


async def test_resume_from_a_known_epoch_and_full_resync_on_unknown_table(rigs: list[Rig]) -> None:
    rig = rig_for(rigs, [KID])
    rig.link("kid")
    ok(await rig.switch.handle_prepare(KID, control(table=TABLE, epoch=2)))
    await wait_for(lambda: updates_seen(rig, "kid"))
    assert updates_seen(rig, "kid")[0].from_epoch_index == 2
    assert updates_seen(rig, "kid")[0].is_heartbeat
    ok(await rig.switch.handle_prepare(KID, control(table=b"\x01" * 16, epoch=2)))
    await wait_for(lambda: len(updates_seen(rig, "kid")) >= 2)
    assert updates_seen(rig, "kid")[1].from_epoch_index == 0


async def test_idle_stops_updates(rigs: list[Rig]) -> None:
    rig = rig_for(rigs, [KID], interval_s=0.1)
    rig.link("kid")
    ok(await rig.switch.handle_prepare(KID, control()))
    await wait_for(lambda: updates_seen(rig, "kid"))
    ok(await rig.switch.handle_prepare(KID, control(Mode.IDLE)))
    count = len(updates_seen(rig, "kid"))
    await asyncio.sleep(0.35)
    assert len(updates_seen(rig, "kid")) == count


async def test_failed_send_restores_the_epoch(rigs: list[Rig]) -> None:
    rig = rig_for(rigs, [KID])
    ok(await rig.switch.handle_prepare(KID, control()))  # no link yet
    assert await rig.switch.ccp.send_update("kid") is False
    assert rig.switch.ccp.senders["kid"].last_known_epoch == 0
    rig.link("kid")
    assert await rig.switch.ccp.send_update("kid") is True
    assert rig.switch.ccp.senders["kid"].last_known_epoch == 2


def test_update_filters_per_receiving_peer() -> None:
    rig = make_rig([KID, BOB, MOM])
    ccp = rig.switch.ccp
    rig.switch.routing.update_learned(
        "bob",
        add=[RouteEntry("test.bob", "bob", RouteOrigin.CCP, "peer", ("test.bob",), b"\x01" * 32)],
    )
    rig.switch.routing.update_learned(
        "kid",
        add=[RouteEntry("test.deep", "kid", RouteOrigin.CCP, "child", ("test.x",), b"\x02" * 32)],
    )
    to_bob = ccp.build_update(BOB, 0)
    assert "test.bob" in to_bob.withdrawn_routes  # never back to where it came from
    assert {r.prefix for r in to_bob.new_routes} == {
        "test.conn",
        "test.conn.receivers",
        "test.deep",
    }
    to_mom = ccp.build_update(MOM, 0)
    assert "test.bob" in to_mom.withdrawn_routes  # parents hear of children and local only
    assert {r.prefix for r in to_mom.new_routes} == {
        "test.conn",
        "test.conn.receivers",
        "test.deep",
    }
    to_kid = ccp.build_update(KID, 0)
    assert {r.prefix for r in to_kid.new_routes} == {"test.conn", "test.conn.receivers", "test.bob"}
    assert to_kid.withdrawn_routes == ("test.deep",)


def test_observed_update_to_bob_has_21_3_0_shape() -> None:
    """21.3.0 told bob: route test.conn (path [test.conn]) and withdrawn test.bob."""
    rig = make_rig([BOB], table_id=bytes.fromhex("f21f8eecbb74481e8a7bef9b536e77a0"))
    rig.switch.set_peers([BOB])
    # 21.3.0 also had no receivers route; compare the parts it had
    rig.switch.routing.update_learned(
        "bob",
        add=[RouteEntry("test.bob", "bob", RouteOrigin.CCP, "peer", ("test.bob",), b"\x01" * 32)],
    )
    got = rig.switch.ccp.build_update(BOB, 0)
    want = OBSERVED["bobIncomingAfterSync"][0]["parsed"]
    assert got.routing_table_id.hex() == want["routingTableId"].replace("-", "")
    assert (got.from_epoch_index, got.hold_down_time, got.speaker) == (0, 45000, "test.conn")
    assert [r.path for r in got.new_routes if r.prefix == "test.conn"] == [("test.conn",)]
    assert list(got.withdrawn_routes) == want["withdrawnRoutes"]


def test_at_most_50_epochs_per_update_and_last_state_wins() -> None:
    rig = make_rig([KID, BOB])
    routing = rig.switch.routing
    for i in range(40):
        entry = RouteEntry(f"test.r{i}", "bob", RouteOrigin.CCP, "peer", ("test.bob",), bytes(32))
        routing.update_learned("bob", add=[entry])
        if i % 2:
            routing.update_learned("bob", withdraw=[f"test.r{i}"])
    ccp = rig.switch.ccp
    current = ccp.forwarding.current_epoch
    assert current == 2 + 40 + 20
    first = ccp.build_update(KID, 0)
    assert first.to_epoch_index == MAX_EPOCHS_PER_UPDATE
    second = ccp.build_update(KID, first.to_epoch_index)
    assert second.to_epoch_index == current
    assert not set(first.withdrawn_routes) & {r.prefix for r in first.new_routes}
    assert "test.r1" in first.withdrawn_routes  # added then withdrawn: sent once, withdrawn


def test_dragon_filtering() -> None:
    rig = make_rig([KID, BOB, peer("zed", "peer"), peer("kid2")])
    routing = rig.switch.routing
    routing.update_learned(
        "bob", add=[RouteEntry("test.x", "bob", RouteOrigin.CCP, "peer", ("test.bob",), bytes(32))]
    )
    routing.update_learned(
        "zed",
        add=[RouteEntry("test.x.y", "zed", RouteOrigin.CCP, "peer", ("test.zed",), bytes(32))],
    )
    advertised = rig.switch.ccp.forwarding.advertised
    assert "test.x" in advertised and "test.x.y" not in advertised  # not strictly better
    routing.update_learned(
        "kid2",
        add=[RouteEntry("test.x.z", "kid2", RouteOrigin.CCP, "child", ("test.k",), bytes(32))],
    )
    assert "test.x.z" in rig.switch.ccp.forwarding.advertised  # child beats peer: kept
    routing.update_learned("bob", withdraw=["test.x"])
    assert "test.x.y" in rig.switch.ccp.forwarding.advertised  # re-checked once uncovered


# --- receiving routes -------------------------------------------------------------------------


async def test_update_vector_is_applied_and_routes_forward(rigs: list[Rig]) -> None:
    bob = peer("bob", "peer", node="test.node")
    kid = peer("kid", node="test.node")
    rig = rig_for(rigs, [bob, kid], node="test.node")
    vector = decode_prepare(bytes.fromhex(CCP["update_two_routes_two_withdrawn"]["hex"]))
    fresh = Prepare(
        0,
        datetime.now(UTC) + timedelta(seconds=60),
        PEER_CONDITION,
        vector.destination,
        vector.data,
    )
    # the vector continues epoch 34 of a table we never saw: a gap, ignored, rewind asked
    rig.link("bob")
    ok(await rig.switch.handle_prepare(bob, fresh))
    assert rig.switch.routing.get("test.a") is None
    await wait_for(lambda: controls_seen(rig, "bob"))
    assert controls_seen(rig, "bob")[0].last_known_routing_table_id == THEIR_TABLE
    assert controls_seen(rig, "bob")[0].last_known_epoch == 0
    # the same routes from epoch 0 are applied
    routes = decode_route_update_request(vector.data).new_routes
    ok(
        await rig.switch.handle_prepare(
            bob, update(routes=routes, from_epoch=0, to_epoch=52, speaker="test.conn")
        )
    )
    assert rig.switch.routing.get("test.a").next_hop == "bob"  # type: ignore[union-attr]
    assert rig.switch.routing.get("test.b.c").path == ("test.conn",)  # type: ignore[union-attr]
    assert rig.switch.routing.get("test.b.c").epoch == 52  # type: ignore[union-attr]
    link = rig.link("bob")
    assert isinstance(await rig.switch.handle_prepare(kid, prepare("test.a.someone", 10)), Fulfill)
    assert link.seen[-1].destination == "test.a.someone"


async def test_epochs_stale_heartbeat_and_withdrawals(rigs: list[Rig]) -> None:
    rig = rig_for(rigs, [BOB])
    ok(
        await rig.switch.handle_prepare(
            BOB, update(routes=(route("test.bob"), route("test.bob2")), to_epoch=2)
        )
    )
    receiver = rig.switch.ccp.receivers["bob"]
    assert receiver.epoch == 2
    ok(await rig.switch.handle_prepare(BOB, update(from_epoch=2, to_epoch=2)))  # heartbeat
    assert receiver.epoch == 2
    ok(
        await rig.switch.handle_prepare(
            BOB, update(from_epoch=0, to_epoch=1, withdrawn=("test.bob",))
        )
    )
    assert rig.switch.routing.get("test.bob") is not None  # stale: ignored
    ok(
        await rig.switch.handle_prepare(
            BOB, update(from_epoch=2, to_epoch=3, withdrawn=("test.bob",))
        )
    )
    assert rig.switch.routing.get("test.bob") is None
    assert rig.switch.routing.get("test.bob2") is not None
    assert receiver.epoch == 3


async def test_new_routing_table_id_drops_old_routes(rigs: list[Rig]) -> None:
    rig = rig_for(rigs, [BOB])
    ok(await rig.switch.handle_prepare(BOB, update(routes=(route("test.bob"),))))
    ok(
        await rig.switch.handle_prepare(
            BOB, update(table=b"\x09" * 16, routes=(route("test.other"),))
        )
    )
    assert rig.switch.routing.get("test.bob") is None
    assert rig.switch.routing.get("test.other") is not None
    assert rig.switch.ccp.receivers["bob"].routing_table_id == b"\x09" * 16


async def test_import_filters(rigs: list[Rig]) -> None:
    rig = rig_for(rigs, [BOB])
    routes = (
        route("test.good"),
        route("test.loop", "test.bob", "test.conn"),  # went through us already
        route("test.conn"),  # our own address
        route("test.conn.receivers"),  # inside our own address space
        route("g.other"),  # another global prefix
    )
    ok(await rig.switch.handle_prepare(BOB, update(routes=routes)))
    learned = set(rig.switch.routing.learned_from("bob"))
    assert learned == {"test.good"}


async def test_hold_down_expiry_drops_routes_and_asks_again(rigs: list[Rig]) -> None:
    rig = rig_for(rigs, [BOB])
    rig.link("bob")
    ok(await rig.switch.handle_prepare(BOB, update(routes=(route("test.bob"),), hold_down=1)))
    assert rig.switch.ccp.expire_routes(now=10**12) == ["bob"]
    assert rig.switch.routing.get("test.bob") is None
    await wait_for(lambda: controls_seen(rig, "bob"))
    assert controls_seen(rig, "bob")[-1].last_known_routing_table_id == bytes(16)


async def test_link_up_asks_for_routes_with_the_21_3_0_bytes_and_retries(rigs: list[Rig]) -> None:
    rig = rig_for(rigs, [BOB])
    rig.switch.ccp.control_retry_s = 0.05
    link = rig.link("bob", reject_with(Reject("F00", "test.bob", "not yet")))
    rig.switch.link_up(BOB)
    await wait_for(lambda: len(controls_seen(rig, "bob")) >= 2)
    assert link.seen[0].data.hex() == CCP["control_sync_initial"]["data_hex"]

    async def accept(p: Prepare) -> Fulfill:
        return Fulfill(PEER_FULFILLMENT)

    link.handler = accept
    task = rig.switch.ccp.receivers["bob"].control_task
    assert task is not None
    await wait_for(task.done)
    count = len(controls_seen(rig, "bob"))
    await asyncio.sleep(0.15)
    assert len(controls_seen(rig, "bob")) == count  # accepted: no more retries


async def test_children_without_receive_routes_are_not_asked(rigs: list[Rig]) -> None:
    rig = rig_for(rigs, [KID])
    rig.link("kid")
    rig.switch.link_up(KID)
    await asyncio.sleep(0.05)
    assert controls_seen(rig, "kid") == []


async def test_link_down_forgets_routes_and_stops_sending(rigs: list[Rig]) -> None:
    rig = rig_for(rigs, [BOB, KID], interval_s=0.1)
    rig.link("kid")
    ok(await rig.switch.handle_prepare(BOB, update(routes=(route("test.bob"),))))
    ok(await rig.switch.handle_prepare(KID, control()))
    await wait_for(lambda: updates_seen(rig, "kid"))
    rig.switch.link_down("bob")
    assert rig.switch.routing.get("test.bob") is None
    rig.switch.link_down("kid")
    count = len(updates_seen(rig, "kid"))
    await asyncio.sleep(0.3)
    assert len(updates_seen(rig, "kid")) == count
