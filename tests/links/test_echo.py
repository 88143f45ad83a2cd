"""Echo through the switch, against echo.json (ilp-connector 21.3.0's bytes and replies)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ilp.conditions import sha256
from ilp.packet import Fulfill, Prepare, Reject, RejectError, decode_prepare, encode_packet
from links.echo import echo_prepare, parse_echo_request
from tests.conftest import load_vectors

try:
    from tests.links.test_switch_support import fixed_clock, make_rig, peer, reject_with
except ImportError:  # rootdir-less import mode
    from test_switch_support import fixed_clock, make_rig, peer, reject_with  # type: ignore[no-redef]

ECHO = load_vectors("echo.json")
VECTORS = {v["name"]: v for v in ECHO["vectors"]}
INVALID = {v["name"]: v for v in ECHO["invalid"]}
T0 = datetime(2018, 1, 1, tzinfo=UTC)  # the vectors' pings expire at T0 + 20 s
ALICE = peer("alice")


def ping() -> Prepare:
    return decode_prepare(bytes.fromhex(VECTORS["echo_request_prepare"]["hex"]))


async def test_echo_round_trip_matches_21_3_0_bytes() -> None:
    rig = make_rig([ALICE], clock=fixed_clock(T0))
    echo_fulfill = bytes.fromhex(VECTORS["echo_fulfill"]["hex"])
    fulfillment = bytes.fromhex(VECTORS["echo_fulfill"]["object"]["fulfillment"])
    assert sha256(fulfillment) == ping().execution_condition

    async def pinger(prepare: Prepare) -> Fulfill:
        assert encode_packet(prepare).hex() == VECTORS["echo_response_prepare"]["hex"]
        return Fulfill(fulfillment)

    alice = rig.link("alice", pinger)
    reply = await rig.switch.handle_prepare(ALICE, ping())
    assert encode_packet(reply) == echo_fulfill
    assert len(alice.seen) == 1
    # amount 7 came in from alice and went back out to her: net zero, nothing pending
    assert rig.book.balance("peer:alice") == 0
    assert rig.book.pending() == 0 and rig.book.total() == 0


async def test_pingers_reject_is_returned_unchanged() -> None:
    rig = make_rig([ALICE], clock=fixed_clock(T0))
    theirs = Reject("F99", "test.conn.alice", "no thanks")
    rig.link("alice", reject_with(theirs))
    assert await rig.switch.handle_prepare(ALICE, ping()) == theirs
    assert rig.book.pending() == 0


async def test_echo_to_another_child_goes_through_the_route() -> None:
    bob = peer("bob")
    rig = make_rig([ALICE, bob], clock=fixed_clock(T0))
    fulfillment = bytes.fromhex(VECTORS["echo_fulfill"]["object"]["fulfillment"])

    async def pinger(prepare: Prepare) -> Fulfill:
        return Fulfill(fulfillment)

    bob_link = rig.link("bob", pinger)
    data = bytes.fromhex("4543484f4543484f4543484f4543484f000d") + b"test.conn.bob"
    p = Prepare(7, T0 + timedelta(seconds=20), ping().execution_condition, "test.conn", data)
    assert isinstance(await rig.switch.handle_prepare(ALICE, p), Fulfill)
    assert bob_link.seen[0].destination == "test.conn.bob"
    assert rig.book.balance("peer:alice") == -7 and rig.book.balance("peer:bob") == 7


@pytest.mark.parametrize(
    ("name", "code", "message"),
    [
        ("data_too_short", "F01", "packet data too short for echo request. length=16"),
        ("bad_prefix", "F01", "packet data does not start with ECHO prefix."),
        ("type_1_sent_to_connector", "F01", "unexpected ping response."),
        ("type_0_without_address", "F01", None),  # 21.3.0: F00 (untyped decode error)
        ("trailing_bytes_after_address", "F01", None),  # 21.3.0 ignores the byte
        ("unroutable_source", "F02", "no route found. to=test.elsewhere.zz"),
    ],
)
async def test_echo_errors(name: str, code: str, message: str | None) -> None:
    rig = make_rig([ALICE], clock=fixed_clock(T0))
    alice = rig.link("alice")
    reply = await rig.switch.handle_prepare(
        ALICE, decode_prepare(bytes.fromhex(INVALID[name]["hex"]))
    )
    assert isinstance(reply, Reject)
    assert (reply.code, reply.triggered_by) == (code, "test.conn")
    if message is not None:
        assert reply.message == message
    assert alice.seen == []


async def test_echo_with_no_time_left_is_r02() -> None:
    rig = make_rig([ALICE], clock=fixed_clock(T0 + timedelta(seconds=19, milliseconds=500)))
    alice = rig.link("alice")
    reply = await rig.switch.handle_prepare(ALICE, ping())
    assert isinstance(reply, Reject) and reply.code == "R02"
    assert alice.seen == []


async def test_echo_needs_a_live_link() -> None:
    rig = make_rig([ALICE], clock=fixed_clock(T0))
    reply = await rig.switch.handle_prepare(ALICE, ping())
    assert isinstance(reply, Reject) and reply.code == "T01"


async def test_echo_respects_max_packet_amount() -> None:
    small = peer("alice", max_packet_amount=5)
    rig = make_rig([small], clock=fixed_clock(T0))
    rig.link("alice")
    reply = await rig.switch.handle_prepare(small, ping())
    assert isinstance(reply, Reject) and reply.code == "F08"


def test_parse_and_build_are_pure() -> None:
    request = parse_echo_request(bytes.fromhex(VECTORS["echo_request_data"]["hex"]))
    assert request.source_address == "test.conn.alice"
    out = echo_prepare(ping(), request, amount=7, window=timedelta(seconds=1), now=T0)
    assert encode_packet(out).hex() == VECTORS["echo_response_prepare"]["hex"]
    scaled = echo_prepare(ping(), request, amount=7000, window=timedelta(seconds=1), now=T0)
    assert scaled.amount == 7000
    with pytest.raises(RejectError):
        echo_prepare(ping(), request, amount=7, window=timedelta(seconds=21), now=T0)
