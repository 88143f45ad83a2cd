"""Each peer has its own share of the BTP/2.0-I replay memory (issue 10): one peer
filling its quota never affects another, and a far-future expiry does not keep an
entry (or its row) for ever."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async

from ilp.btp import BtpError, BtpResponse, BtpType, encode_ilp_frame, find_entry, offers_idempotent
from ilp.oer import parse_ilp_timestamp
from ilp.packet import Fulfill, Prepare, decode_reply, encode_packet
from links import idempotency
from links.models import BtpStoredResponse
from links.services import peer_set_limits
from tests.links.btp_helpers import RawBtp
from tests.links.conftest import CONDITION, FULFILLMENT, FakeSwitch

pytestmark = pytest.mark.django_db(transaction=True)

LAST = parse_ilp_timestamp(b"99991231235959999")


def far_frame(request_id: int, amount: int = 0) -> bytes:
    prepare = Prepare(amount, LAST, CONDITION, "test.local.x", request_id.to_bytes(4, "big"))
    return encode_ilp_frame(BtpType.MESSAGE, request_id, encode_packet(prepare))


async def connect(name: str, *, granted: bool = True) -> RawBtp:
    """Authenticate offering BTP/2.0-I; ``granted``: whether the node accepts it."""
    raw = await RawBtp().open()
    reply = await raw.auth(name, f"{name}token", idempotent=True)
    assert isinstance(reply, BtpResponse)
    assert offers_idempotent(reply) == granted
    return raw


async def fulfilled(raw: RawBtp, request_id: int) -> bool:
    reply = await raw.next()
    assert reply is not None and reply.request_id == request_id, reply
    if isinstance(reply, BtpError):
        return False
    entry = find_entry(reply, "ilp")
    assert entry is not None
    return decode_reply(entry.data) == Fulfill(FULFILLMENT, b"ok")


@pytest.fixture
async def peers(make_peer: Callable[..., Any]) -> None:
    def create() -> None:
        make_peer("alice", token="alicetoken")
        make_peer("bob", token="bobtoken")
        peer_set_limits(name="alice", changes={"replay_quota": 3})

    await database_sync_to_async(create)()


async def test_one_peer_filling_its_quota_does_not_lock_out_another(
    peers: None, switch: FakeSwitch
) -> None:
    alice = await connect("alice")
    for request_id in (1, 2, 3):
        await alice.send(far_frame(request_id))
        assert await fulfilled(alice, request_id)
    # alice's share is full of live entries: her new request is refused, clearly
    await alice.send(far_frame(4))
    refused = await alice.next()
    assert isinstance(refused, BtpError) and refused.request_id == 4
    assert refused.code == "T00" and b"share of the replay memory is full" in refused.data
    # ...but what she already asked is still replayed, not processed again
    await alice.send(far_frame(2))
    assert await fulfilled(alice, 2)
    assert len(switch.calls) == 3
    # bob, another idempotent peer, is served as before
    bob = await connect("bob")
    for request_id in range(1, 21):
        await bob.send(far_frame(request_id, amount=1))
        assert await fulfilled(bob, request_id)
    assert len(switch.calls) == 23
    memory = idempotency.server_memory()
    assert memory.count("alice") == 3 and memory.count("bob") == 20
    await alice.close()
    await bob.close()


async def test_far_future_expiry_is_kept_a_bounded_time(peers: None, switch: FakeSwitch) -> None:
    alice = await connect("alice")
    before = datetime.now(UTC)
    await alice.send(far_frame(9))
    assert await fulfilled(alice, 9)
    row = await BtpStoredResponse.objects.aget(peer_name="alice", request_id=9)
    after = datetime.now(UTC)
    limit = after + idempotency.PREPARE_HORIZON + timedelta(seconds=60)
    assert before + idempotency.PREPARE_HORIZON <= row.expires_at <= limit
    await alice.close()


async def test_quota_zero_declines_btp_2_0_i(
    make_peer: Callable[..., Any], switch: FakeSwitch
) -> None:
    def create() -> None:
        make_peer("carol", token="caroltoken", idempotent=True)
        peer_set_limits(name="carol", changes={"replay_quota": 0})

    await database_sync_to_async(create)()
    carol = await connect("carol", granted=False)
    frame = far_frame(5)
    await carol.send(frame)
    assert await fulfilled(carol, 5)
    await carol.send(frame)  # not deduplicated: processed again (plain BTP/2.0)
    assert await fulfilled(carol, 5)
    assert len(switch.calls) == 2
    assert idempotency.server_memory().count("carol") == 0
    await carol.close()
