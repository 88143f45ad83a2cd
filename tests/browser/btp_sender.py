"""A BTP/2.0 client for the browser tests: a sender outside the node, paying from a BTP
account of it (like ilp-plugin-btp). The node itself sends through ``payments.sending``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import websockets
from websockets.exceptions import WebSocketException

from ilp.btp import (
    BtpError,
    BtpMessage,
    BtpPacket,
    BtpResponse,
    auth_message,
    decode_btp,
    encode_btp,
    find_entry,
    ilp_message,
    ilp_response,
)
from ilp.errors import DecodeError
from ilp.packet import Prepare, Reject, Reply, decode_reply, encode_packet

logger = logging.getLogger(__name__)


class SendError(Exception):
    """A Prepare could not be sent; the message says why."""


# --- BTP ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BtpTarget:
    ws_url: str
    username: str
    token: str

    @classmethod
    def parse(cls, url: str) -> BtpTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("btp+ws", "btp+wss"):
            raise SendError(f"not a btp+ws(s):// URL: {url!r}")
        userinfo, _, hostport = parts.netloc.rpartition("@")
        if not hostport:
            raise SendError(f"no host in {url!r}")
        username, _, token = userinfo.partition(":")
        ws = urlunsplit((parts.scheme[4:], hostport, parts.path or "/", parts.query, ""))
        return cls(ws, username, token)


class BtpSender:
    """One BTP/2.0 client connection that sends Prepares (see the module docstring)."""

    def __init__(self, url: str, *, timeout: float = 35.0) -> None:
        self.target = BtpTarget.parse(url)
        self.timeout = timeout
        self._ws: websockets.ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[BtpPacket]] = {}

    async def connect(self) -> None:
        try:
            self._ws = await websockets.connect(
                self.target.ws_url,
                open_timeout=10,
                max_size=4 * 1024 * 1024,
                compression=None,
                proxy=None,
                user_agent_header=None,
            )
        except (OSError, WebSocketException, TimeoutError) as exc:
            raise SendError(f"cannot connect to {self.target.ws_url}: {exc}") from exc
        self._reader = asyncio.get_running_loop().create_task(self._read())
        reply = await self._request(
            auth_message(self._request_id(), self.target.username, self.target.token)
        )
        if isinstance(reply, BtpError):
            raise SendError(f"BTP authentication refused: {reply.code} {reply.message}")

    async def send(self, prepare: Prepare) -> Reply:
        reply = await self._request(ilp_message(self._request_id(), encode_packet(prepare)))
        if isinstance(reply, BtpError):
            raise SendError(f"BTP error {reply.code} {reply.name}: {reply.message}")
        entry = find_entry(reply, "ilp")
        if entry is None:
            raise SendError("the BTP response carries no ilp entry")
        try:
            return decode_reply(entry.data)
        except DecodeError as exc:
            raise SendError(f"unreadable ILP reply: {exc}") from exc

    async def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 2)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader

    def _request_id(self) -> int:
        while True:
            request_id = secrets.randbits(32)
            if request_id not in self._pending:
                return request_id

    async def _request(self, packet: BtpMessage) -> BtpPacket:
        assert self._ws is not None
        future: asyncio.Future[BtpPacket] = asyncio.get_running_loop().create_future()
        self._pending[packet.request_id] = future
        try:
            await self._ws.send(encode_btp(packet))
            return await asyncio.wait_for(future, self.timeout)
        except (OSError, WebSocketException) as exc:
            raise SendError(f"BTP connection failed: {exc}") from exc
        except TimeoutError:
            raise SendError("no BTP response in time") from None
        finally:
            self._pending.pop(packet.request_id, None)

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                if not isinstance(message, bytes):
                    continue
                try:
                    packet = decode_btp(message)
                except DecodeError:
                    logger.debug("BTP: unreadable frame ignored")
                    continue
                if isinstance(packet, BtpResponse | BtpError):
                    future = self._pending.get(packet.request_id)
                    if future is not None and not future.done():
                        future.set_result(packet)
                elif isinstance(packet, BtpMessage) and find_entry(packet, "ilp") is not None:
                    refusal = Reject("F02", "", "this client receives no payments")
                    await self._ws.send(
                        encode_btp(ilp_response(packet.request_id, encode_packet(refusal)))
                    )
        except WebSocketException:
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(SendError("the BTP connection closed"))
