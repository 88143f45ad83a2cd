"""links.switch: dispatch, forwarding, money, dedupe, and the bad-input ILP cases."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from hypothesis import given, settings
from hypothesis import strategies as st

from ilp.btp import BtpResponse, find_entry
from ilp.conditions import PEER_CONDITION, sha256
from ilp.errors import DecodeError
from ilp.oer import UINT64_MAX, encode_var_octets
from ilp.packet import (
    Fulfill,
    Prepare,
    Reject,
    decode_amount_too_large_data,
    decode_prepare,
    decode_reply,
    encode_packet,
)
from links.switch import FEE_ACCOUNT, convert_amount, dashboard_stats, packet_key
from payments.ledger import PostingDraft

try:
    from tests.links.test_switch_support import (
        CONDITION,
        FULFILLMENT,
        NODE,
        fixed_clock,
        fulfill_with,
        make_rig,
        never,
        peer,
        prepare,
        reject_with,
    )
except ImportError:  # rootdir-less import mode: tests/links is on sys.path itself
    from test_switch_support import (  # type: ignore[no-redef]
        CONDITION,
        FULFILLMENT,
        NODE,
        fixed_clock,
        fulfill_with,
        make_rig,
        never,
        peer,
        prepare,
        reject_with,
    )

from tests.conftest import load_vectors
from tests.links.btp_helpers import RawBtp
from tests.links.conftest import FakeSwitch

ALICE = peer("alice")
CARL = peer("carl")
BOB = peer("bob", "peer", address="test.bob")
MOM = peer("mom", "parent")


def observed(name: str) -> dict:  # type: ignore[type-arg]
    return load_vectors("observed-connector-21.3.0.json")["scenarios"][name]  # type: ignore[no-any-return]


def assert_reject(reply: object, code: str, message: str | None = None) -> Reject:
    assert isinstance(reply, Reject), reply
    assert reply.code == code, reply
    assert reply.triggered_by == NODE
    if message is not None:
        assert reply.message == message
    return reply


async def settle(done: Callable[[], bool], what: str) -> None:
    """Let the loop run until ``done()`` (a few hundred turns at most; no clock)."""
    for _ in range(1000):
        if done():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


def awaited_by(future: asyncio.Future[Any] | None) -> bool:
    """Whether something waits on ``future`` (a copy of a packet in flight does)."""
    return future is not None and bool(future._callbacks)  # type: ignore[attr-defined]


# --- forwarding: happy path ------------------------------------------------------------


async def test_forward_fulfill_commits_before_reply_and_shortens_expiry() -> None:
    rig = make_rig([ALICE, CARL])
    carl = rig.link("carl", fulfill_with(FULFILLMENT, b"hi"))
    p = prepare("test.conn.carl.sub", 123, expires_in=10)
    reply = await rig.switch.handle_prepare(ALICE, p)
    assert reply == Fulfill(FULFILLMENT, b"hi")
    (out,) = carl.seen
    assert out.amount == 123
    assert out.destination == p.destination
    assert out.execution_condition == p.execution_condition
    assert out.data == p.data
    assert out.expires_at == p.expires_at - timedelta(seconds=1)  # 21.3.0: 10 s -> 9 s
    key = packet_key("alice", p)
    assert len(rig.book.commits) == 1
    postings = {(d.account_code, d.amount, d.key) for d in rig.book.commits[0]}
    assert postings == {("peer:alice", -123, f"{key}:in"), ("peer:carl", 123, f"{key}:out")}
    assert rig.book.balance("peer:alice") == -123  # alice paid: moves by -N
    assert rig.book.balance("peer:carl") == 123
    assert rig.book.pending() == 0
    assert rig.book.total() == 0


async def test_expiry_is_capped_at_max_hold_time() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    rig = make_rig([ALICE, CARL], clock=fixed_clock(now))
    carl = rig.link("carl")
    await rig.switch.handle_prepare(ALICE, prepare("test.conn.carl", 1, expires_in=120, now=now))
    assert carl.seen[0].expires_at == now + timedelta(seconds=30)


async def test_fee_is_floored_for_the_sender_and_booked() -> None:
    rig = make_rig([ALICE, CARL], fee_ppm=2000)  # 0.2 %
    carl = rig.link("carl")
    p = prepare("test.conn.carl", 1001)
    assert isinstance(await rig.switch.handle_prepare(ALICE, p), Fulfill)
    assert carl.seen[0].amount == 998  # floor(1001 * 0.998) = 998 (998.998)
    key = packet_key("alice", p)
    assert rig.book.applied[f"{key}:fee"].account_code == FEE_ACCOUNT
    assert rig.book.balance(FEE_ACCOUNT) == 3
    assert rig.book.total() == 0


async def test_scale_conversion_floors_and_keeps_remainder_as_fee() -> None:
    carl6 = peer("carl", asset_scale=6)
    rig = make_rig([ALICE, carl6])
    carl = rig.link("carl")
    assert isinstance(
        await rig.switch.handle_prepare(ALICE, prepare("test.conn.carl", 123456)), Fulfill
    )
    assert carl.seen[0].amount == 123
    assert rig.book.balance("peer:alice") == -123456
    assert rig.book.balance("peer:carl") == 123
    assert rig.book.balance(FEE_ACCOUNT) == 456  # in alice's units (the node's asset)


async def test_scale_conversion_to_zero_is_r01() -> None:
    rig = make_rig([ALICE, peer("carl", asset_scale=6)])
    carl = rig.link("carl")
    reply = await rig.switch.handle_prepare(ALICE, prepare("test.conn.carl", 999))
    assert_reject(reply, "R01")
    assert carl.seen == []


async def test_scale_up_conversion() -> None:
    rig = make_rig([peer("alice", asset_scale=6), CARL])
    carl = rig.link("carl")
    await rig.switch.handle_prepare(peer("alice", asset_scale=6), prepare("test.conn.carl", 5))
    assert carl.seen[0].amount == 5000


async def test_scaling_up_beyond_uint64_is_f08() -> None:
    alice0 = peer("alice", asset_scale=0)
    rig = make_rig([alice0, CARL])
    carl = rig.link("carl")
    reply = await rig.switch.handle_prepare(alice0, prepare("test.conn.carl", 10**11))
    assert_reject(reply, "F08")
    assert decode_amount_too_large_data(reply.data) == (10**11, UINT64_MAX // 10**9)
    assert carl.seen == [] and rig.book.pending() == 0


async def test_different_asset_codes_are_refused() -> None:
    rig = make_rig([ALICE, peer("erin", asset_code="EUR", asset_scale=2)])
    rig.link("erin")
    assert_reject(await rig.switch.handle_prepare(ALICE, prepare("test.conn.erin", 5)), "F02")


@given(
    amount=st.integers(0, UINT64_MAX),
    from_scale=st.integers(0, 20),
    to_scale=st.integers(0, 20),
    ppm=st.integers(0, 1_000_000),
)
def test_convert_amount_never_creates_money(
    amount: int, from_scale: int, to_scale: int, ppm: int
) -> None:
    out, fee = convert_amount(amount, from_scale, to_scale, ppm)
    assert out >= 0 and 0 <= fee <= amount
    # the value of `out` in source units is an integer, and fee + value == amount exactly
    value = out * 10**from_scale
    assert value % 10**to_scale == 0
    assert fee + value // 10**to_scale == amount


def test_convert_amount_same_scale_floor() -> None:
    assert convert_amount(1000, 9, 9, 2000) == (998, 2)
    assert convert_amount(999, 9, 6, 0) == (0, 999)
    assert convert_amount(1, 2, 9, 0) == (10**7, 0)


# --- forwarding: failures ----------------------------------------------------------------


async def test_no_route_matches_21_3_0_bytes() -> None:
    rig = make_rig([ALICE])
    reply = await rig.switch.handle_prepare(ALICE, prepare("test.nowhere.x"))
    assert encode_packet(reply).hex() == observed("unreachable")["responseHex"]


async def test_destination_under_own_address_without_child_is_f02_not_f00() -> None:
    rig = make_rig([ALICE])
    assert_reject(await rig.switch.handle_prepare(ALICE, prepare("test.conn.nobody")), "F02")
    assert_reject(await rig.switch.handle_prepare(ALICE, prepare("test.conn.receivers")), "F02")


async def test_self_and_local_schemes_never_take_the_default_route() -> None:
    rig = make_rig([ALICE, MOM])
    mom = rig.link("mom")
    for dest in ("self.x", "local.y"):
        assert_reject(await rig.switch.handle_prepare(ALICE, prepare(dest)), "F02")
    assert mom.seen == []


async def test_default_route_goes_to_the_parent() -> None:
    rig = make_rig([ALICE, MOM])
    mom = rig.link("mom")
    assert isinstance(await rig.switch.handle_prepare(ALICE, prepare("test.far.away")), Fulfill)
    assert mom.seen[0].destination == "test.far.away"


async def test_never_routes_back_to_the_source() -> None:
    rig = make_rig([ALICE])
    alice = rig.link("alice")
    reply = await rig.switch.handle_prepare(ALICE, prepare("test.conn.alice.inner"))
    assert_reject(reply, "F02")
    assert isinstance(reply, Reject) and reply.message.startswith(
        "refusing to route payments back to sender."
    )
    assert alice.seen == []


async def test_next_hop_without_live_link_is_t01() -> None:
    rig = make_rig([ALICE, CARL])
    reply = await rig.switch.handle_prepare(ALICE, prepare("test.conn.carl"))
    assert_reject(reply, "T01", "no connection to account. account=carl")


async def test_amount_too_large_matches_21_3_0_bytes() -> None:
    dave = peer("dave", max_packet_amount=1000)
    rig = make_rig([dave, CARL])
    reply = await rig.switch.handle_prepare(dave, prepare("test.conn.carl", 2000))
    assert encode_packet(reply).hex() == observed("amount_too_large")["responseHex"]
    assert decode_amount_too_large_data(reply.data) == (2000, 1000)


async def test_already_expired_is_r02() -> None:
    rig = make_rig([ALICE, CARL])
    carl = rig.link("carl")
    reply = await rig.switch.handle_prepare(ALICE, prepare("test.conn.carl", expires_in=-1))
    assert_reject(reply, "R02")
    assert isinstance(reply, Reject) and reply.message.startswith(
        "source transfer has already expired."
    )
    assert carl.seen == []


async def test_expires_too_soon_is_r02_with_21_3_0_text() -> None:
    now = datetime(2026, 11, 25, 21, 22, 26, 72000, tzinfo=UTC)
    rig = make_rig([ALICE, CARL], clock=fixed_clock(now))
    rig.link("carl")
    p = prepare("test.conn.carl", expires_in=1.5, now=now)
    reply = await rig.switch.handle_prepare(ALICE, p)
    assert_reject(
        reply,
        "R02",
        "source transfer expires too soon to complete payment. "
        "actualSourceExpiry=2026-11-25T21:22:27.572Z requiredSourceExpiry=2026-11-25T21:22:28.072Z "
        "currentTime=2026-11-25T21:22:26.072Z",
    )  # == observed("expiry_too_soon")


async def test_source_over_its_limit_is_t04_and_nothing_is_held() -> None:
    rig = make_rig([ALICE, CARL])
    rig.book.account("peer:alice", min_balance=-100)
    carl = rig.link("carl")
    reply = await rig.switch.handle_prepare(ALICE, prepare("test.conn.carl", 101))
    assert_reject(reply, "T04", "exceeded maximum balance.")
    assert carl.seen == []
    assert rig.book.pending() == 0
    assert isinstance(
        await rig.switch.handle_prepare(ALICE, prepare("test.conn.carl", 100)), Fulfill
    )


async def test_next_hop_over_its_limit_is_t04_before_forwarding() -> None:
    rig = make_rig([ALICE, CARL])
    rig.book.account("peer:carl", max_balance=50)
    carl = rig.link("carl")
    reply = await rig.switch.handle_prepare(ALICE, prepare("test.conn.carl", 51))
    assert_reject(reply, "T04")
    assert carl.seen == []
    assert rig.book.pending() == 0  # alice's hold was released


async def test_holds_count_while_in_flight() -> None:
    rig = make_rig([ALICE, CARL])
    rig.book.account("peer:alice", min_balance=-150)
    gate = asyncio.Event()

    async def slow(p: Prepare) -> Fulfill:
        await gate.wait()
        return Fulfill(FULFILLMENT)

    carl = rig.link("carl", slow)
    first = asyncio.create_task(rig.switch.handle_prepare(ALICE, prepare("test.conn.carl", 100)))
    await settle(lambda: len(carl.seen) == 1, "the first packet reached carl")
    second = await rig.switch.handle_prepare(ALICE, prepare("test.conn.carl", 100, data=b"2"))
    assert_reject(second, "T04")
    gate.set()
    assert isinstance(await first, Fulfill)
    assert rig.book.balance("peer:alice") == -100


async def test_wrong_fulfillment_is_f05_and_nothing_is_booked() -> None:
    rig = make_rig([ALICE, CARL])
    rig.link("carl", fulfill_with(bytes(32)))
    reply = await rig.switch.handle_prepare(ALICE, prepare("test.conn.carl"))
    assert_reject(reply, "F05", "fulfillment did not match expected value.")
    assert rig.book.commits == [] and rig.book.pending() == 0


async def test_reject_from_next_hop_is_relayed_unchanged() -> None:
    rig = make_rig([ALICE, CARL])
    theirs = Reject("F99", "test.conn.carl", "nope", b"\x01\x02")
    rig.link("carl", reject_with(theirs))
    assert await rig.switch.handle_prepare(ALICE, prepare("test.conn.carl")) == theirs
    assert rig.book.commits == [] and rig.book.pending() == 0


async def test_unreadable_reply_is_t00_and_transport_failure_is_t01() -> None:
    rig = make_rig([ALICE, CARL])

    async def garbage(p: Prepare) -> Fulfill:
        raise DecodeError("truncated packet", 3)

    async def broken(p: Prepare) -> Fulfill:
        raise ConnectionResetError("socket closed")

    async def nonsense(p: Prepare) -> object:
        return b"\x0d\x00"

    rig.link("carl", garbage)
    assert_reject(await rig.switch.handle_prepare(ALICE, prepare("test.conn.carl")), "T00")
    rig.link("carl", broken)
    assert_reject(await rig.switch.handle_prepare(ALICE, prepare("test.conn.carl")), "T01")
    rig.link("carl", nonsense)
    assert_reject(await rig.switch.handle_prepare(ALICE, prepare("test.conn.carl")), "T00")
    assert rig.book.pending() == 0


async def test_timeout_is_r00_and_releases_holds() -> None:
    rig = make_rig([ALICE, CARL], window_ms=100)
    rig.link("carl", never())
    started = asyncio.get_running_loop().time()
    reply = await rig.switch.handle_prepare(ALICE, prepare("test.conn.carl", expires_in=0.35))
    assert_reject(reply, "R00")
    elapsed = asyncio.get_running_loop().time() - started
    assert 0.15 < elapsed < 1.0  # the outgoing expiry (0.25 s), not the incoming one
    assert rig.book.pending() == 0


async def test_commit_failure_is_t00_and_releases_holds() -> None:
    rig = make_rig([ALICE, CARL])
    rig.link("carl")
    rig.book.fail_commits = True
    reply = await rig.switch.handle_prepare(ALICE, prepare("test.conn.carl"))
    assert_reject(reply, "T00")
    assert rig.book.pending() == 0 and rig.book.applied == {}


async def test_zero_amount_is_forwarded_without_booking() -> None:
    rig = make_rig([ALICE, CARL])
    carl = rig.link("carl")
    assert isinstance(await rig.switch.handle_prepare(ALICE, prepare("test.conn.carl", 0)), Fulfill)
    assert carl.seen[0].amount == 0
    assert rig.book.commits == []


# --- the packet key --------------------------------------------------------------------------


def test_packet_key_is_stable_and_covers_every_field() -> None:
    base = prepare("test.conn.carl", 5, now=datetime(2026, 1, 1, tzinfo=UTC))
    assert packet_key("alice", base) == packet_key(
        "alice",
        Prepare(
            **{
                f: getattr(base, f)
                for f in ("amount", "expires_at", "execution_condition", "destination", "data")
            }
        ),
    )
    variants = [
        packet_key("bob", base),
        packet_key("alice", Prepare(6, base.expires_at, CONDITION, base.destination)),
        packet_key(
            "alice",
            Prepare(5, base.expires_at + timedelta(milliseconds=1), CONDITION, base.destination),
        ),
        packet_key("alice", Prepare(5, base.expires_at, bytes(32), base.destination)),
        packet_key("alice", Prepare(5, base.expires_at, CONDITION, base.destination + "x")),
        packet_key("alice", Prepare(5, base.expires_at, CONDITION, base.destination, b"d")),
    ]
    assert len({packet_key("alice", base), *variants}) == 7


def test_packet_key_starts_with_the_expiry_so_keys_sort_by_time() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    p = prepare("test.conn.carl", 5, now=start)
    key = packet_key("alice", p)
    expiry_ms = (p.expires_at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    assert key[:11] == f"{expiry_ms:011x}" and len(key) == 43
    assert int(key[11:], 16).bit_length() > 64  # the 16 bytes of the hash follow
    # Later expiries sort later, whatever their hashes (random conditions here): the
    # ledger's key indexes take each batch's keys at their right edge.
    keys = [
        packet_key(
            "alice",
            Prepare(
                5, start + timedelta(milliseconds=i), sha256(bytes([i % 256, i // 256])), "g.x"
            ),
        )
        for i in range(300)
    ]
    assert sorted(keys) == keys


def test_packet_key_clamps_the_expiry_prefix_but_hashes_the_real_expiry() -> None:
    early = Prepare(5, datetime(1969, 12, 31, tzinfo=UTC), CONDITION, "g.x")
    earlier = Prepare(5, datetime(1969, 12, 30, tzinfo=UTC), CONDITION, "g.x")
    late = Prepare(5, datetime(2600, 1, 1, tzinfo=UTC), CONDITION, "g.x")
    later = Prepare(5, datetime(2700, 1, 1, tzinfo=UTC), CONDITION, "g.x")
    assert packet_key("alice", early)[:11] == packet_key("alice", earlier)[:11] == "0" * 11
    assert packet_key("alice", late)[:11] == packet_key("alice", later)[:11] == "f" * 11
    assert packet_key("alice", early) != packet_key("alice", earlier)
    assert packet_key("alice", late) != packet_key("alice", later)


def waiting_copies(rig: Any) -> asyncio.Future[Any] | None:
    """The future the copies of the one packet in progress wait on (``None``: none yet;
    the switch makes it when the first copy arrives)."""
    (in_flight,) = rig.switch._inflight.values()
    future: asyncio.Future[Any] | None = in_flight
    return future


async def test_retransmission_in_flight_is_forwarded_and_booked_once() -> None:
    rig = make_rig([ALICE, CARL])
    gate = asyncio.Event()

    async def slow(p: Prepare) -> Fulfill:
        await gate.wait()
        return Fulfill(FULFILLMENT)

    carl = rig.link("carl", slow)
    p = prepare("test.conn.carl", 100)
    first = asyncio.create_task(rig.switch.handle_prepare(ALICE, p))
    second = asyncio.create_task(rig.switch.handle_prepare(ALICE, p))
    await settle(lambda: len(carl.seen) == 1, "the first copy reached carl")
    await settle(lambda: awaited_by(waiting_copies(rig)), "the second copy waits for the first")
    gate.set()
    assert await first == await second == Fulfill(FULFILLMENT)
    assert len(carl.seen) == 1
    assert rig.book.balance("peer:alice") == -100
    # and once more after it was fulfilled: answered from memory
    assert await rig.switch.handle_prepare(ALICE, p) == Fulfill(FULFILLMENT)
    assert len(carl.seen) == 1 and len(rig.book.commits) == 1


async def test_a_packet_without_copies_makes_no_future() -> None:
    rig = make_rig([ALICE, CARL])
    gate = asyncio.Event()

    async def slow(p: Prepare) -> Fulfill:
        await gate.wait()
        return Fulfill(FULFILLMENT)

    carl = rig.link("carl", slow)
    first = asyncio.create_task(rig.switch.handle_prepare(ALICE, prepare("test.conn.carl", 100)))
    await settle(lambda: len(carl.seen) == 1, "the packet reached carl")
    assert list(rig.switch._inflight.values()) == [None]
    gate.set()
    assert await first == Fulfill(FULFILLMENT)
    assert rig.switch._inflight == {}


async def test_same_packet_from_another_peer_is_another_packet() -> None:
    dave = peer("dave")
    rig = make_rig([ALICE, CARL, dave])
    carl = rig.link("carl")
    p = prepare("test.conn.carl", 10)
    await rig.switch.handle_prepare(ALICE, p)
    await rig.switch.handle_prepare(dave, p)
    assert len(carl.seen) == 2


# --- local receivers ---------------------------------------------------------------------------


async def test_receiver_gets_the_hold_and_the_packet_key() -> None:
    rig = make_rig([ALICE])
    p = prepare("test.conn.receivers.demo.tok", 50)
    assert isinstance(await rig.switch.handle_prepare(ALICE, p), Fulfill)
    ((seen, account, key),) = rig.receiver.calls
    assert (seen, account, key) == (p, "peer:alice", packet_key("alice", p))
    assert rig.book.balance("peer:alice") == -50 and rig.book.pending() == 0


async def test_receiver_reject_releases_the_hold() -> None:
    rig = make_rig([ALICE])
    rig.receiver.reply = Reject("F06", NODE, "unexpected payment")
    reply = await rig.switch.handle_prepare(ALICE, prepare("test.conn.receivers.demo.tok", 50))
    assert isinstance(reply, Reject) and reply.code == "F06"
    assert rig.book.pending() == 0 and rig.book.commits == []


async def test_receiver_respects_source_limit() -> None:
    rig = make_rig([ALICE])
    rig.book.account("peer:alice", min_balance=0)
    reply = await rig.switch.handle_prepare(ALICE, prepare("test.conn.receivers.demo.tok", 1))
    assert_reject(reply, "T04")
    assert rig.receiver.calls == []


async def test_receiver_crash_is_t00() -> None:
    rig = make_rig([ALICE])

    async def boom(*args: object, **kwargs: object) -> Fulfill:
        raise RuntimeError("bug")

    rig.switch.receiver = boom
    assert_reject(await rig.switch.handle_prepare(ALICE, prepare("test.conn.receivers.x.y")), "T00")
    assert rig.book.pending() == 0


async def test_recent_fulfills_are_purged_as_they_expire() -> None:
    from links.switch import RECENT_PURGE_EVERY

    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    rig = make_rig([ALICE], clock=lambda: now[0])
    half = RECENT_PURGE_EVERY // 2
    for i in range(RECENT_PURGE_EVERY):
        if i == half:
            now[0] += timedelta(seconds=20)  # the first half has expired
        p = prepare(f"test.conn.receivers.demo.t{i}", 1, expires_in=10, now=now[0])
        assert isinstance(await rig.switch.handle_prepare(ALICE, p), Fulfill)
    assert len(rig.switch._recent) == RECENT_PURGE_EVERY - half


async def test_a_far_future_fulfill_does_not_pin_the_later_ones() -> None:
    """Insertion order is not expiry order: one Prepare expiring in a year, then many
    expiring in 10 s; once those expired, a purge drops them all and keeps the far one."""
    from links.switch import RECENT_PURGE_EVERY

    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    rig = make_rig([ALICE], clock=lambda: now[0])
    far = prepare("test.conn.receivers.demo.far", 1, expires_in=365 * 86400, now=now[0])
    assert isinstance(await rig.switch.handle_prepare(ALICE, far), Fulfill)
    for i in range(RECENT_PURGE_EVERY - 2):
        p = prepare(f"test.conn.receivers.demo.s{i}", 1, expires_in=10, now=now[0])
        assert isinstance(await rig.switch.handle_prepare(ALICE, p), Fulfill)
    now[0] += timedelta(seconds=20)
    last = prepare("test.conn.receivers.demo.last", 1, expires_in=10, now=now[0])
    assert isinstance(await rig.switch.handle_prepare(ALICE, last), Fulfill)  # purges
    assert set(rig.switch._recent) == {packet_key("alice", far), packet_key("alice", last)}
    # the far one is still answered from memory, without the receiver
    seen = len(rig.receiver.calls)
    assert isinstance(await rig.switch.handle_prepare(ALICE, far), Fulfill)
    assert len(rig.receiver.calls) == seen


async def test_a_remembered_fulfill_is_answered_equal_and_left_by_the_collector() -> None:
    """The cache answers a retransmission with the same Fulfill without the receiver, and
    keeps nothing the cyclic collector must walk on every full collection (a Fulfill
    object is tracked for as long as it lives; its bytes in a tuple are not, once a
    young collection has seen them)."""
    import gc

    rig = make_rig([ALICE])
    p = prepare("test.conn.receivers.demo.again", 1)
    first = await rig.switch.handle_prepare(ALICE, p)
    assert isinstance(first, Fulfill)
    calls = len(rig.receiver.calls)
    again = await rig.switch.handle_prepare(ALICE, p)
    assert again == first
    assert len(rig.receiver.calls) == calls
    gc.collect(0)
    assert not gc.is_tracked(rig.switch._recent[packet_key("alice", p)])


async def test_recent_fulfills_are_capped_whatever_their_expiry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Full cache: the entry closest to its expiry goes, never more than the cap is kept."""
    monkeypatch.setattr("links.switch.RECENT_FULFILLS_MAX", 8)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    rig = make_rig([ALICE], clock=lambda: now)
    far = prepare("test.conn.receivers.demo.far", 1, expires_in=365 * 86400, now=now)
    await rig.switch.handle_prepare(ALICE, far)
    for i in range(50):
        p = prepare(f"test.conn.receivers.demo.s{i}", 1, expires_in=10 + i, now=now)
        await rig.switch.handle_prepare(ALICE, p)
    assert len(rig.switch._recent) == 8
    assert len(rig.switch._recent_expiry) == 8
    kept = set(rig.switch._recent)
    assert packet_key("alice", far) in kept  # the latest expiries are the ones kept
    for i in range(43, 50):
        p = prepare(f"test.conn.receivers.demo.s{i}", 1, expires_in=10 + i, now=now)
        assert packet_key("alice", p) in kept


# --- registered local destinations (register_local) ------------------------------------------


async def test_register_local_gets_the_hold_and_the_packet_key() -> None:
    rig = make_rig([ALICE, CARL])
    calls: list[tuple[str, Prepare, str, datetime]] = []

    async def handler(source: object, p: Prepare, key: str, now: datetime) -> Fulfill:
        calls.append((getattr(source, "name", ""), p, key, now))
        assert rig.book.pending() == 1  # the switch held the amount first
        await rig.book.commit([PostingDraft("peer:alice", -p.amount, key)])
        return Fulfill(FULFILLMENT)

    rig.switch.register_local("circular", handler)
    p = prepare("test.conn.circular.tok", 40)
    assert isinstance(await rig.switch.handle_prepare(ALICE, p), Fulfill)
    ((name, seen, key, now),) = calls
    assert (name, seen, key) == ("alice", p, packet_key("alice", p))
    assert now.tzinfo is not None
    assert rig.book.balance("peer:alice") == -40 and rig.book.pending() == 0
    # A retransmission is answered from memory, not handed to the handler again.
    assert isinstance(await rig.switch.handle_prepare(ALICE, p), Fulfill)
    assert len(calls) == 1
    # Only <node>.<segment>.…: the bare segment and other prefixes are not local.
    assert_reject(await rig.switch.handle_prepare(ALICE, prepare("test.conn.circular", 1)), "F02")
    assert_reject(
        await rig.switch.handle_prepare(ALICE, prepare("test.conn.circularx.t", 1)), "F02"
    )
    assert len(calls) == 1


async def test_register_local_reject_or_crash_releases_the_hold() -> None:
    rig = make_rig([ALICE])

    async def refuse(source: object, p: Prepare, key: str, now: datetime) -> Reject:
        return Reject("F06", NODE, "unexpected payment")

    async def boom(source: object, p: Prepare, key: str, now: datetime) -> Fulfill:
        raise RuntimeError("bug")

    rig.switch.register_local("circular", refuse)
    assert_reject(await rig.switch.handle_prepare(ALICE, prepare("test.conn.circular.a", 5)), "F06")
    rig.switch.register_local("circular", boom)  # replaces
    assert_reject(await rig.switch.handle_prepare(ALICE, prepare("test.conn.circular.b", 5)), "T00")
    assert rig.book.pending() == 0 and rig.book.commits == []
    rig.book.account("peer:alice", min_balance=0)
    assert_reject(await rig.switch.handle_prepare(ALICE, prepare("test.conn.circular.c", 5)), "T04")
    rig.switch.unregister_local("circular")
    assert_reject(await rig.switch.handle_prepare(ALICE, prepare("test.conn.circular.d", 5)), "F02")


def test_register_local_refuses_bad_segments() -> None:
    rig = make_rig([])

    async def handler(source: object, p: Prepare, key: str, now: datetime) -> Fulfill:
        return Fulfill(FULFILLMENT)

    for bad in ("", "a.b", "sp ace", "receivers"):
        with pytest.raises(ValueError):
            rig.switch.register_local(bad, handler)


# --- peer protocols ----------------------------------------------------------------------------


def _vector(file: str, name: str) -> dict:  # type: ignore[type-arg]
    return next(v for v in load_vectors(file)["vectors"] if v["name"] == name)


async def test_ildcp_response_bytes_match_21_3_0() -> None:
    now = datetime(2018, 1, 1, tzinfo=UTC)
    rig = make_rig([ALICE], clock=fixed_clock(now))
    request = decode_prepare(bytes.fromhex(_vector("ildcp.json", "request")["hex"]))
    reply = await rig.switch.handle_prepare(ALICE, request)
    assert encode_packet(reply).hex() == _vector("ildcp.json", "response_usd_9")["hex"]


async def test_ildcp_uses_the_accounts_asset_and_segment() -> None:
    now = datetime(2018, 1, 1, tzinfo=UTC)
    erin = peer("erin", address="test.conn.erin-seg", asset_code="EUR", asset_scale=2)
    rig = make_rig([erin], clock=fixed_clock(now))
    request = decode_prepare(bytes.fromhex(_vector("ildcp.json", "request")["hex"]))
    reply = await rig.switch.handle_prepare(erin, request)
    assert encode_packet(reply).hex() == _vector("ildcp.json", "response_segment_override")["hex"]


async def test_ildcp_refused_to_non_children_and_when_expired() -> None:
    rig = make_rig([BOB], clock=fixed_clock(datetime(2018, 1, 1, 0, 2, tzinfo=UTC)))
    vectors = {v["name"]: v for v in load_vectors("ildcp.json")["vectors"]}
    request = decode_prepare(bytes.fromhex(vectors["request"]["hex"]))
    reply = await rig.switch.handle_prepare(BOB, request)
    assert encode_packet(reply).hex() == vectors["reject_not_a_child"]["hex"]
    reply = await rig.switch.handle_prepare(ALICE, request)  # expired at 00:01
    assert encode_packet(reply).hex() == vectors["reject_expired_request"]["hex"]


@pytest.mark.parametrize(
    "name", [v["name"] for v in load_vectors("balance.json")["vectors"] if v["name"] != "request"]
)
async def test_balance_response_bytes(name: str) -> None:
    vector = _vector("balance.json", name)
    rig = make_rig([ALICE], clock=fixed_clock(datetime(2018, 1, 1, tzinfo=UTC)))
    rig.book.account("peer:alice", balance=int(vector["object"]["balance"]))
    request = decode_prepare(bytes.fromhex(_vector("balance.json", "request")["hex"]))
    reply = await rig.switch.handle_prepare(ALICE, request)
    assert encode_packet(reply).hex() == vector["hex"]


async def test_balance_moves_by_minus_n_after_paying_n() -> None:
    rig = make_rig([ALICE, CARL])
    rig.link("carl")
    request = Prepare(0, datetime.now(UTC) + timedelta(seconds=60), PEER_CONDITION, "peer.balance")
    before = await rig.switch.handle_prepare(ALICE, request)
    await rig.switch.handle_prepare(ALICE, prepare("test.conn.receivers.demo.t", 1234))
    after = await rig.switch.handle_prepare(ALICE, request)
    assert isinstance(before, Fulfill) and isinstance(after, Fulfill)
    delta = int.from_bytes(after.data, "big", signed=True) - int.from_bytes(
        before.data, "big", signed=True
    )
    assert delta == -1234


async def test_balance_out_of_int64_is_t00() -> None:
    rig = make_rig([ALICE])
    rig.book.account("peer:alice", balance=2**63)
    request = Prepare(0, datetime.now(UTC) + timedelta(seconds=60), PEER_CONDITION, "peer.balance")
    assert_reject(await rig.switch.handle_prepare(ALICE, request), "T00")


async def test_peer_protocol_checks() -> None:
    rig = make_rig([ALICE])
    exp = datetime.now(UTC) + timedelta(seconds=60)
    wrong = await rig.switch.handle_prepare(ALICE, Prepare(0, exp, CONDITION, "peer.config"))
    assert_reject(wrong, "F01", "condition must be peer protocol condition.")
    paid = await rig.switch.handle_prepare(ALICE, Prepare(5, exp, PEER_CONDITION, "peer.balance"))
    assert_reject(paid, "F01")
    unknown = await rig.switch.handle_prepare(ALICE, Prepare(0, exp, PEER_CONDITION, "peer.foo"))
    assert encode_packet(unknown).hex() == observed("peer_unknown_protocol")["responseHex"]
    route = await rig.switch.handle_prepare(
        ALICE, Prepare(0, exp, PEER_CONDITION, "peer.route.foo")
    )
    assert_reject(route, "F00", "unrecognized ccp message. destination=peer.route.foo")
    assert rig.book.commits == []


async def test_peer_destinations_are_never_forwarded() -> None:
    rig = make_rig([ALICE, MOM])
    mom = rig.link("mom")
    exp = datetime.now(UTC) + timedelta(seconds=60)
    await rig.switch.handle_prepare(ALICE, Prepare(0, exp, PEER_CONDITION, "peer.x.y"))
    assert mom.seen == []


# --- never raises ----------------------------------------------------------------------------


async def test_internal_errors_become_t00() -> None:
    rig = make_rig([ALICE, CARL])
    rig.link("carl")

    def broken(destination: str) -> None:
        raise KeyError("bug")

    rig.switch.routing.lookup = broken  # type: ignore[method-assign]
    assert_reject(await rig.switch.handle_prepare(ALICE, prepare("test.conn.carl")), "T00")


async def test_cancelled_packet_releases_holds_and_waiters_get_a_reject() -> None:
    rig = make_rig([ALICE, CARL])
    carl = rig.link("carl", never())
    p = prepare("test.conn.carl", 10)
    first = asyncio.create_task(rig.switch.handle_prepare(ALICE, p))
    await settle(lambda: len(carl.seen) == 1, "the packet reached carl")
    copy = asyncio.create_task(rig.switch.handle_prepare(ALICE, p))
    await settle(lambda: awaited_by(waiting_copies(rig)), "the copy waits for the first")
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert_reject(await copy, "T00")
    assert rig.book.pending() == 0


# --- interop scenario 9: bad input at the ILP layer -------------------------------------------


def _raw_prepare(
    destination: bytes, amount: int = 1, expires: bytes = b"20991231235959999"
) -> bytes:
    """A Prepare as a JS encoder writes it, whatever the address (JS encoders never check)."""
    body = (
        amount.to_bytes(8, "big") + expires + CONDITION + encode_var_octets(destination) + b"\x00"
    )
    return b"\x0c" + encode_var_octets(body)


@pytest.mark.parametrize(
    "destination",
    [b"test.sut.has space!", b"", b"nosuchscheme.foo.bar", b"test." + b"a" * 1100],
    ids=["bad-chars", "empty", "unknown-scheme", "too-long"],
)
@pytest.mark.django_db(transaction=True)
async def test_bad_addresses_never_reach_the_switch(
    destination: bytes, make_peer: Callable[..., Any], switch: FakeSwitch
) -> None:
    """A Prepare whose address a JS encoder wrote but ILP forbids, over a real BTP link:
    the edge answers F01 triggered by us and the switch never sees it; the link serves on."""
    from links.edge import our_address

    await database_sync_to_async(make_peer)("alice", token="alicetoken")
    raw = await RawBtp().open()
    assert isinstance(await raw.auth(), BtpResponse)
    try:
        rid = await raw.send_prepare(_raw_prepare(destination))
        frame = await raw.next(timeout=5)
        assert isinstance(frame, BtpResponse) and frame.request_id == rid, frame
        entry = find_entry(frame, "ilp")
        assert entry is not None
        reply = decode_reply(entry.data)
        assert isinstance(reply, Reject) and reply.code == "F01", reply
        assert reply.triggered_by == our_address()
        assert reply.message.startswith("invalid packet: ")
        assert switch.calls == []
        # The same bytes with a legal address do reach the switch, on the same link.
        rid = await raw.send_prepare(_raw_prepare(b"test.conn.carl"))
        frame = await raw.next(timeout=5)
        assert isinstance(frame, BtpResponse) and frame.request_id == rid, frame
        entry = find_entry(frame, "ilp")
        assert entry is not None and isinstance(decode_reply(entry.data), Fulfill)
        assert [(name, p.destination) for name, p in switch.calls] == [("alice", "test.conn.carl")]
    finally:
        await raw.close()


async def test_uint64_max_amount_is_f08() -> None:
    rig = make_rig([ALICE])
    for dest in ("test.conn.receivers.demo.tok", "test.conn.carl", "test.elsewhere"):
        reply = await rig.switch.handle_prepare(ALICE, prepare(dest, UINT64_MAX))
        assert_reject(reply, "F08")
        assert decode_amount_too_large_data(reply.data) == (UINT64_MAX, 10**12)


async def test_expired_prepare_is_an_r_code() -> None:
    rig = make_rig([ALICE, CARL])
    rig.link("carl")
    reply = await rig.switch.handle_prepare(ALICE, prepare("test.conn.carl", expires_in=-60))
    assert isinstance(reply, Reject) and reply.code in ("R00", "R02")


def test_valid_raw_prepare_helper_decodes() -> None:
    assert decode_prepare(_raw_prepare(b"test.conn.carl")).destination == "test.conn.carl"
    long = b"test." + b"a" * 300
    assert decode_prepare(_raw_prepare(long)).destination == long.decode()


# --- counters ----------------------------------------------------------------------------------


async def test_counters() -> None:
    rig = make_rig([ALICE, CARL])
    rig.link("carl")
    await rig.switch.handle_prepare(ALICE, prepare("test.conn.carl"))
    await rig.switch.handle_prepare(ALICE, prepare("test.nowhere.x"))
    snap = rig.switch.dashboard()
    assert snap["peers"]["alice"] == {
        "packets_in": 2,
        "packets_out": 0,
        "fulfilled": 1,
        "rejected": 1,
    }
    assert snap["peers"]["carl"]["packets_out"] == 1
    assert snap["packets_in"] == 2 and snap["node_address"] == NODE
    assert snap["packets_per_second"] >= 0
    assert "packets_per_second" in dashboard_stats()


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(0, 255))
def test_a_fulfill_passes_only_when_its_fulfillment_hashes_to_the_condition(
    fulfillment: bytes, bit: int
) -> None:
    """The switch checks every Fulfill: sha256(fulfillment) must be the Prepare's
    condition. The right preimage is relayed and booked; the same with one bit flipped
    is F05 from us, nothing booked, no hold left."""
    condition = sha256(fulfillment)
    wrong = bytearray(fulfillment)
    wrong[bit // 8] ^= 1 << (bit % 8)

    async def run() -> None:
        rig = make_rig([ALICE, CARL])
        rig.link("carl", fulfill_with(bytes(wrong)))
        bad = await rig.switch.handle_prepare(
            ALICE, prepare("test.conn.carl", 5, condition=condition)
        )
        assert_reject(bad, "F05", "fulfillment did not match expected value.")
        assert rig.book.commits == [] and rig.book.pending() == 0
        rig.link("carl", fulfill_with(fulfillment, b"ok"))
        good = await rig.switch.handle_prepare(
            ALICE, prepare("test.conn.carl", 5, condition=condition, data=b"2")
        )
        assert good == Fulfill(fulfillment, b"ok")
        assert rig.book.balance("peer:alice") == -5 and rig.book.balance("peer:carl") == 5
        assert rig.book.pending() == 0

    asyncio.run(run())
