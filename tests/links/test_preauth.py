"""/btp before authentication, over a real WebSocket (``WebsocketCommunicator``): frames
that arrive while the auth is looked up are held (bounded) and served in order; too many
or too large → BTP Error F00, then close; over-long credentials are refused unlooked-up."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async

from ilp.btp import BtpError, BtpResponse, BtpType, auth_message, encode_btp, encode_ilp_frame
from ilp.packet import Fulfill, encode_packet
from links import btp_link
from links.limits import MAX_AUTH_TOKEN_LENGTH, MAX_PREAUTH_BYTES, MAX_PREAUTH_FRAMES
from links.peers import MAX_PEER_NAME_LENGTH, PeerContext
from tests.links.btp_helpers import RawBtp
from tests.links.conftest import FakeSwitch, prepare_to
from tests.links.test_btp_consumer import ilp_reply

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def alice(make_peer: Callable[..., Any]) -> None:
    await database_sync_to_async(make_peer)("alice", token="alicetoken")


class GatedAuth:
    """Replaces ``btp_link._authenticate``: each lookup waits for :meth:`open` (and is
    counted), then runs the real one."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started = asyncio.Event()
        self.calls: list[tuple[str, int]] = []
        self.real = btp_link._authenticate

    async def __call__(self, username: str, token: str) -> PeerContext | None:
        self.calls.append((username, len(token)))
        self.started.set()
        await self.gate.wait()
        return await self.real(username, token)


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch) -> Iterator[GatedAuth]:
    gate = GatedAuth()
    monkeypatch.setattr(btp_link, "_authenticate", gate)
    yield gate
    gate.gate.set()


def auth_frame(username: str = "alice", token: str = "alicetoken") -> tuple[int, bytes]:
    rid = random.getrandbits(32)
    return rid, encode_btp(auth_message(rid, username, token))


def ilp_frame(request_id: int, amount: int = 10) -> bytes:
    return encode_ilp_frame(BtpType.MESSAGE, request_id, encode_packet(prepare_to(amount=amount)))


async def test_frames_sent_during_the_auth_lookup_are_served_in_order_after_it(
    alice: None, switch: FakeSwitch, gated: GatedAuth
) -> None:
    raw = await RawBtp().open()
    rid, frame = auth_frame()
    await raw.send(frame)
    await asyncio.wait_for(gated.started.wait(), 5)
    ids = [1001, 1002, 1003]
    for i, request_id in enumerate(ids):
        await raw.send(ilp_frame(request_id, amount=10 + i))
    assert await raw.nothing_within(0.1)  # held, not served before the auth is decided
    assert switch.calls == []
    gated.gate.set()
    reply = await raw.next(5)
    assert isinstance(reply, BtpResponse) and reply.request_id == rid
    answers = {}
    for _ in ids:
        packet = await raw.next(5)
        assert packet is not None
        answers[packet.request_id] = ilp_reply(packet)
    assert set(answers) == set(ids)
    assert all(isinstance(a, Fulfill) for a in answers.values())
    # handed to the link in the order they arrived
    assert [p.amount for _, p in switch.calls] == [10, 11, 12]
    # and the connection goes on normally
    await raw.send(ilp_frame(2000))
    packet = await raw.next(5)
    assert packet is not None and packet.request_id == 2000
    await raw.close()


async def test_too_many_frames_before_auth_get_an_error_and_a_close(
    alice: None, switch: FakeSwitch, gated: GatedAuth
) -> None:
    raw = await RawBtp().open()
    _, frame = auth_frame()
    await raw.send(frame)
    await asyncio.wait_for(gated.started.wait(), 5)
    for i in range(MAX_PREAUTH_FRAMES + 1):
        await raw.send(ilp_frame(5000 + i))
    error = await raw.next(5)
    assert isinstance(error, BtpError), error
    assert error.code == "F00" and error.name == "NotAcceptedError"
    assert error.request_id == 5000 + MAX_PREAUTH_FRAMES
    assert b"too much data before authentication completed" in error.data
    assert await raw.next(5) is None  # closed
    gated.gate.set()
    await asyncio.sleep(0)
    assert switch.calls == []  # nothing held was ever served
    assert switch.ups == []  # and the late auth result opened nothing


async def test_too_many_bytes_before_auth_get_an_error_and_a_close(
    alice: None, switch: FakeSwitch, gated: GatedAuth
) -> None:
    raw = await RawBtp().open()
    _, frame = auth_frame()
    await raw.send(frame)
    await asyncio.wait_for(gated.started.wait(), 5)
    big = bytes([BtpType.MESSAGE]) + (7).to_bytes(4, "big") + bytes(MAX_PREAUTH_BYTES // 2)
    await raw.send(big)
    assert await raw.nothing_within(0.05)  # within the cap: held
    await raw.send(big)
    error = await raw.next(5)
    assert isinstance(error, BtpError) and error.code == "F00" and error.request_id == 7
    assert await raw.next(5) is None
    assert switch.calls == []


async def test_an_over_long_token_is_refused_without_a_lookup(
    alice: None, switch: FakeSwitch, gated: GatedAuth
) -> None:
    raw = await RawBtp().open()
    rid, frame = auth_frame(token="x" * (MAX_AUTH_TOKEN_LENGTH + 1))
    await raw.send(frame)
    error = await raw.next(5)
    assert isinstance(error, BtpError) and error.code == "F00" and error.request_id == rid
    assert (
        error.data == f"auth_token too long (at most {MAX_AUTH_TOKEN_LENGTH} characters)".encode()
    )
    assert await raw.next(5) is None
    assert gated.calls == []
    assert switch.ups == []


async def test_an_over_long_username_is_refused_without_a_lookup(
    alice: None, switch: FakeSwitch, gated: GatedAuth
) -> None:
    raw = await RawBtp().open()
    rid, frame = auth_frame(username="a" * (MAX_PEER_NAME_LENGTH + 1))
    await raw.send(frame)
    error = await raw.next(5)
    assert isinstance(error, BtpError) and error.request_id == rid
    assert error.data.startswith(b"auth_username too long")
    assert await raw.next(5) is None
    assert gated.calls == []


async def test_credentials_at_the_caps_are_looked_up(
    alice: None, switch: FakeSwitch, gated: GatedAuth
) -> None:
    gated.gate.set()
    raw = await RawBtp().open()
    rid, frame = auth_frame(token="y" * MAX_AUTH_TOKEN_LENGTH)
    await raw.send(frame)
    error = await raw.next(5)
    assert isinstance(error, BtpError) and error.request_id == rid
    assert error.data == b"invalid auth_token"  # looked up: a wrong token
    assert gated.calls == [("alice", MAX_AUTH_TOKEN_LENGTH)]
    raw = await RawBtp().open()
    reply = await raw.auth()  # the right one still opens the link
    assert isinstance(reply, BtpResponse)
    assert switch.ups == ["alice"]
    await raw.close()
