"""Helpers for BTP tests: a communicator wrapper speaking raw frames."""

from __future__ import annotations

import random
from typing import Any

from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from ilp.btp import (
    BtpPacket,
    BtpType,
    auth_message,
    decode_btp,
    encode_btp,
    encode_ilp_frame,
)
from ilp.packet import Prepare, encode_packet
from interledger_site.routing import websocket_urlpatterns

APP = URLRouter(websocket_urlpatterns)


class RawBtp:
    """A raw BTP client over ``WebsocketCommunicator`` (no plugin logic)."""

    def __init__(self, path: str = "/btp") -> None:
        self.comm = WebsocketCommunicator(APP, path)
        self.closed: dict[str, Any] | None = None

    async def open(self) -> RawBtp:
        connected, _ = await self.comm.connect()
        assert connected
        return self

    async def send(self, frame: bytes) -> None:
        await self.comm.send_to(bytes_data=frame)

    async def next_raw(self, timeout: float = 2.0) -> bytes | None:
        """The next frame, or ``None`` when the server closed the socket."""
        if self.closed is not None:
            return None
        out = await self.comm.receive_output(timeout)
        if out["type"] == "websocket.close":
            self.closed = out
            return None
        assert out["type"] == "websocket.send", out
        assert out.get("bytes") is not None, out
        return bytes(out["bytes"])

    async def next(self, timeout: float = 2.0) -> BtpPacket | None:
        raw = await self.next_raw(timeout)
        return None if raw is None else decode_btp(raw)

    async def nothing_within(self, timeout: float = 0.2) -> bool:
        return await self.comm.receive_nothing(timeout)

    async def auth(
        self, username: str = "alice", token: str = "alicetoken", *, idempotent: bool = False
    ) -> BtpPacket | None:
        rid = random.getrandbits(32)
        await self.send(encode_btp(auth_message(rid, username, token, idempotent=idempotent)))
        reply = await self.next()
        assert reply is None or reply.request_id == rid
        return reply

    async def send_prepare(self, prepare: Prepare | bytes, request_id: int | None = None) -> int:
        rid = random.getrandbits(32) if request_id is None else request_id
        ilp = prepare if isinstance(prepare, bytes) else encode_packet(prepare)
        await self.send(encode_ilp_frame(BtpType.MESSAGE, rid, ilp))
        return rid

    async def close(self) -> None:
        await self.comm.disconnect()
