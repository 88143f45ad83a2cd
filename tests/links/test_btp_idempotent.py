"""BTP/2.0-I over /btp: replays, in-progress repeats, conflicts, durability, retries."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async

from ilp.btp import (
    BtpError,
    BtpMessage,
    BtpResponse,
    BtpTransfer,
    BtpType,
    ProtocolData,
    decode_btp,
    encode_btp,
    encode_ilp_frame,
    find_entry,
    offers_idempotent,
)
from ilp.packet import Fulfill, Prepare, encode_packet
from links import idempotency, registry
from links.models import BtpStoredResponse
from links.peers import PeerContext
from tests.links.btp_helpers import RawBtp
from tests.links.conftest import FULFILLMENT, FakeSwitch, prepare_to

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def alice(make_peer: Callable[..., Any]) -> None:
    await database_sync_to_async(make_peer)("alice", token="alicetoken")


async def authed(*, idempotent: bool = True) -> RawBtp:
    raw = await RawBtp().open()
    reply = await raw.auth(idempotent=idempotent)
    assert isinstance(reply, BtpResponse)
    assert offers_idempotent(reply) == idempotent
    return raw


def frame_for(request_id: int, prepare: Prepare) -> bytes:
    return encode_ilp_frame(BtpType.MESSAGE, request_id, encode_packet(prepare))


async def test_repeat_gets_identical_reply_processed_once(alice: None, switch: FakeSwitch) -> None:
    raw = await authed()
    frame = frame_for(77, prepare_to())
    await raw.send(frame)
    first = await raw.next_raw()
    await raw.send(frame)
    second = await raw.next_raw()
    assert first == second and first is not None
    assert len(switch.calls) == 1
    row = await BtpStoredResponse.objects.aget(peer_name="alice", request_id=77)
    assert bytes(row.response) == first
    assert row.expires_at >= row.received_at + timedelta(seconds=120)


async def test_repeat_in_progress_is_not_processed_twice(alice: None, switch: FakeSwitch) -> None:
    gate = asyncio.Event()

    async def slow(source: PeerContext, prepare: Prepare) -> Fulfill:
        await gate.wait()
        return Fulfill(FULFILLMENT)

    switch.handler = slow
    raw = await authed()
    frame = frame_for(78, prepare_to())
    await raw.send(frame)
    await raw.send(frame)
    assert await raw.nothing_within(0.2)
    gate.set()
    reply = await raw.next_raw()
    assert reply is not None
    await raw.send(frame)
    assert await raw.next_raw() == reply
    assert len(switch.calls) == 1


async def test_same_id_other_content_is_f05(alice: None, switch: FakeSwitch) -> None:
    raw = await authed()
    await raw.send(frame_for(79, prepare_to(amount=1)))
    assert await raw.next() is not None
    await raw.send(frame_for(79, prepare_to(amount=2)))
    error = await raw.next()
    assert isinstance(error, BtpError) and error.code == "F05" and error.request_id == 79
    assert len(switch.calls) == 1


async def test_replay_survives_reconnect_and_restart(alice: None, switch: FakeSwitch) -> None:
    raw = await authed()
    frame = frame_for(80, prepare_to())
    await raw.send(frame)
    reply = await raw.next_raw()
    await raw.close()
    raw = await authed()  # reconnect: same process memory
    await raw.send(frame)
    assert await raw.next_raw() == reply
    await raw.close()
    idempotency.reset()  # "restart": memory gone, the database remains
    raw = await authed()
    await raw.send(frame)
    assert await raw.next_raw() == reply
    assert len(switch.calls) == 1


async def test_side_protocol_replayed_too(alice: None, switch: FakeSwitch) -> None:
    raw = await authed()
    frame = encode_btp(BtpMessage(81, (ProtocolData("foo", 0, b"x"),)))
    await raw.send(frame)
    first = await raw.next_raw()
    await raw.send(frame)
    assert await raw.next_raw() == first


async def test_transfer_is_refused_and_the_refusal_replayed(
    alice: None, switch: FakeSwitch
) -> None:
    raw = await authed()
    frame = encode_btp(BtpTransfer(83, 1000))
    await raw.send(frame)
    first = await raw.next_raw()
    assert first is not None
    error = decode_btp(first)
    assert isinstance(error, BtpError) and (error.code, error.request_id) == ("F00", 83)
    await raw.send(frame)
    assert await raw.next_raw() == first
    row = await BtpStoredResponse.objects.aget(peer_name="alice", request_id=83)
    assert bytes(row.response) == first


async def test_plain_peer_is_not_deduplicated(alice: None, switch: FakeSwitch) -> None:
    raw = await authed(idempotent=False)
    frame = frame_for(82, prepare_to())
    await raw.send(frame)
    await raw.next()
    await raw.send(frame)
    await raw.next()
    assert len(switch.calls) == 2
    assert not await BtpStoredResponse.objects.filter(peer_name="alice").aexists()


async def test_per_peer_flag_turns_it_on(make_peer: Callable[..., Any], switch: FakeSwitch) -> None:
    await database_sync_to_async(make_peer)("alice", token="alicetoken", idempotent=True)
    raw = await RawBtp().open()
    reply = await raw.auth()  # no btp_idempotent offer
    assert isinstance(reply, BtpResponse) and reply.protocol_data == ()
    frame = frame_for(83, prepare_to())
    await raw.send(frame)
    first = await raw.next_raw()
    await raw.send(frame)
    assert await raw.next_raw() == first
    assert len(switch.calls) == 1


async def test_our_requests_are_retried_until_answered(
    alice: None, switch: FakeSwitch, monkeypatch: pytest.MonkeyPatch
) -> None:
    from links import btp_link

    monkeypatch.setattr(btp_link, "RETRY_FIRST_S", 0.05)
    raw = await authed()
    link = registry.get("alice")
    assert link is not None
    task = asyncio.ensure_future(link.send_prepare(prepare_to()))
    first = await raw.next_raw()
    again = await raw.next_raw(timeout=1)
    assert first == again and first is not None  # byte-identical resend
    # reconnect: the request goes out again at once on the new connection
    await raw.close()
    assert not task.done()
    raw = await authed()
    assert await raw.next_raw() == first
    request_id = int.from_bytes(first[1:5], "big")
    fulfill = encode_packet(Fulfill(FULFILLMENT))
    await raw.send(encode_ilp_frame(BtpType.RESPONSE, request_id, fulfill))
    assert await asyncio.wait_for(task, 2) == Fulfill(FULFILLMENT)
    await raw.send(encode_ilp_frame(BtpType.RESPONSE, request_id, fulfill))  # late duplicate
    assert await raw.nothing_within(0.1)  # ignored, never answered


async def test_plain_link_never_resends(alice: None, switch: FakeSwitch) -> None:
    raw = await authed(idempotent=False)
    link = registry.get("alice")
    assert link is not None
    task = asyncio.ensure_future(link.send_prepare(prepare_to(expires_in=1.5)))
    frame = await raw.next()
    assert isinstance(frame, BtpMessage) and find_entry(frame, "ilp") is not None
    assert await raw.nothing_within(1.2)
    reject = await task
    assert reject.code == "R00"  # type: ignore[union-attr]


async def test_prune(alice: None, switch: FakeSwitch) -> None:
    raw = await authed()
    await raw.send(frame_for(84, prepare_to()))
    await raw.next()
    prune = database_sync_to_async(idempotency.prune_stored_responses)
    assert await prune(datetime.now(UTC)) == 0
    assert await prune(datetime.now(UTC) + timedelta(days=2)) == 1


async def test_in_progress_reply_follows_the_peer_to_its_new_connection(
    alice: None, switch: FakeSwitch
) -> None:
    gate = asyncio.Event()

    async def slow(source: PeerContext, prepare: Prepare) -> Fulfill:
        await gate.wait()
        return Fulfill(FULFILLMENT)

    switch.handler = slow
    raw = await authed()
    frame = frame_for(90, prepare_to())
    await raw.send(frame)
    await asyncio.sleep(0.05)
    await raw.close()  # the socket dies while the switch works
    raw = await authed()
    await raw.send(frame)  # the retry on the new connection: held as in progress
    assert await raw.nothing_within(0.1)
    gate.set()
    reply = await raw.next_raw()
    assert reply is not None and reply[0] == 1 and int.from_bytes(reply[1:5], "big") == 90
    assert len(switch.calls) == 1
