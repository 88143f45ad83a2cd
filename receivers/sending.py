"""Paying from this node: the HTTP-ILP client flow and two ways to get Prepares out.

- :class:`BtpSender` dials any node's BTP endpoint (``btp+ws://user:token@host/btp``) with
  ``websockets`` and :mod:`ilp.btp`, authenticates like ilp-plugin-btp and sends each
  Prepare as a BTP Message; it answers the other side's own Prepares with F02 (it
  receives nothing).
- :class:`LocalSwitchSender` hands Prepares to this process's packet switch
  (``links.switch.get_switch().handle_prepare``) as the local source ``operator``
  (account ``node:operator``, kind ``node``: the node pays from its own books). It reaches
  what the switch reaches from *this* process: our own receivers, through the database
  every process shares. (It imports ``links`` lazily: the one place ``receivers`` calls up
  the import chain, for a command.)

:func:`http_ilp_call` is ilp-fetch's flow (http-ilp.md §2.3, draft 1 as ilp-fetch 1.0.1):
call with ``Pay-Token``; on 402 read ``Pay``; quote ``PROBE_AMOUNT`` to learn the rate;
send one chunk of ``ceil(price / arrived * 1000)`` (at most ``max_price``) whose Payment
ID and application data are the token bytes, to the destination the 402 named (which was
issued for the token), so every crediting convention sees it; falls back to a chunked
payment when the path's packets are too small (F08); then call again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx
import websockets
from django.conf import settings
from django.utils import timezone
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
from ilp.psk2 import PAYMENT_ID_LENGTH
from ilp.psk2_sender import (
    PROBE_AMOUNT,
    ChunkedPayment,
    Progress,
    build_chunk,
    build_quote,
    read_reply,
)
from receivers.paid import PAY_TOKEN_HEADER, PayHeader, PayToken, new_pay_token, parse_pay

logger = logging.getLogger(__name__)

UINT64_MAX = 2**64 - 1
EXPIRY = timedelta(seconds=30)
OPERATOR_ACCOUNT = "node:operator"
OPERATOR_NAME = "operator"


class SendError(Exception):
    """A Prepare could not be sent, or the payment failed; the message says why."""


class IlpSender(Protocol):
    async def connect(self) -> None: ...
    async def send(self, prepare: Prepare) -> Reply: ...
    async def close(self) -> None: ...


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


# --- the local switch ----------------------------------------------------------------------------


class LocalSwitchSender:
    """Sends through this process's packet switch as the source ``operator``."""

    def __init__(self) -> None:
        self._source: Any = None

    async def connect(self) -> None:
        from channels.db import database_sync_to_async

        from links.peers import PeerContext
        from payments.ledger import ensure_account

        await database_sync_to_async(ensure_account)(OPERATOR_ACCOUNT, kind="node")
        self._source = PeerContext(
            name=OPERATOR_NAME,
            relation="child",
            account_code=OPERATOR_ACCOUNT,
            address=f"{settings.ILP_ADDRESS}.{OPERATOR_NAME}",
            asset_code=settings.ILP_ASSET_CODE,
            asset_scale=settings.ILP_ASSET_SCALE,
            max_packet_amount=UINT64_MAX,
            send_routes=False,
            receive_routes=False,
        )

    async def send(self, prepare: Prepare) -> Reply:
        from links.switch import get_switch

        return await get_switch().handle_prepare(self._source, prepare)

    async def close(self) -> None:
        from links.switch import reset_switch

        reset_switch()


# --- PSK2 ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Paid:
    """What a payment did: source units sent, destination units the receiver reported."""

    sent: int
    delivered: int
    chunks: int


def _expiry() -> Any:
    return timezone.now() + EXPIRY


async def quote_rate(sender: IlpSender, pay: PayHeader, payment_id: bytes) -> int:
    """What ``PROBE_AMOUNT`` source units deliver (a draft-1 quote: F99 + type-3 error)."""
    prepare = build_quote(
        pay.shared_secret,
        pay.destination,
        payment_id=payment_id,
        source_amount=PROBE_AMOUNT,
        expires_at=_expiry(),
        iv=os.urandom(12),
        condition=os.urandom(32),
    )
    reply = await sender.send(prepare)
    result = read_reply(pay.shared_secret, reply, prepare=prepare)
    if not result.is_quote_answer or not result.delivered:
        raise SendError(f"quote failed: {result.code} {result.message} {result.problem}".strip())
    return result.delivered


async def pay_destination_amount(
    sender: IlpSender,
    pay: PayHeader,
    amount: int,
    *,
    max_source: int,
    token_bytes: bytes | None,
) -> Paid:
    """Deliver ``amount`` to the ``Pay`` destination, spending at most ``max_source``."""
    payment_id = token_bytes if token_bytes is not None else os.urandom(PAYMENT_ID_LENGTH)
    arrived = await quote_rate(sender, pay, payment_id)
    source = -(-amount * PROBE_AMOUNT // arrived)  # ceil(amount / arrived * 1000)
    if source > max_source:
        raise SendError(f"paying {amount} would cost {source} here, more than {max_source}")
    prepare = build_chunk(
        pay.shared_secret,
        pay.destination,
        payment_id=payment_id,
        sequence=1,
        payment_amount=UINT64_MAX,
        chunk_amount=amount,
        source_amount=source,
        expires_at=_expiry(),
        iv=os.urandom(12),
        last=True,
        application_data=token_bytes or b"",
    )
    reply = await sender.send(prepare)
    result = read_reply(pay.shared_secret, reply, prepare=prepare)
    if result.fulfilled:
        return Paid(source, result.delivered or 0, 1)
    if result.code == "F08":
        return await _pay_chunked(sender, pay, amount, max_source=max_source)
    raise SendError(f"payment rejected: {result.code} {result.message} {result.problem}".strip())


async def _pay_chunked(sender: IlpSender, pay: PayHeader, amount: int, *, max_source: int) -> Paid:
    # A fresh Payment ID: the chunked sender trusts the receiver's running total, which
    # must not include earlier top-ups of the token (the address still names the token).
    payment = ChunkedPayment(
        pay.shared_secret, pay.destination, os.urandom(PAYMENT_ID_LENGTH), destination_amount=amount
    )
    while True:
        prepare = payment.next_chunk(expires_at=_expiry(), iv=os.urandom(12))
        if prepare is None:
            break
        if payment.amount_sent + prepare.amount > max_source:
            raise SendError(f"the chunked payment would cost more than {max_source}")
        progress = payment.on_reply(await sender.send(prepare))
        if progress is Progress.FAILED:
            raise SendError(f"chunked payment failed: {payment.failure}")
        if progress is Progress.DONE:
            break
        if payment.wait_ms:
            await asyncio.sleep(payment.wait_ms / 1000)
    return Paid(payment.amount_sent, payment.amount_delivered, payment.chunks_fulfilled)


# --- HTTP-ILP ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallResult:
    """The final answer of :func:`http_ilp_call` and what it paid on the way."""

    status: int
    body: bytes
    balance: str | None
    token: str
    paid: Paid | None


async def http_ilp_call(
    url: str,
    sender: IlpSender,
    *,
    token: str | None = None,
    method: str = "GET",
    max_price: int | None = None,
    retries: int = 10,
) -> CallResult:
    """Call ``url``; on 402 pay what ``Pay`` asks through ``sender`` and call again."""
    token = token or new_pay_token()
    parsed = PayToken.parse(token)
    headers = {PAY_TOKEN_HEADER: token}
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        response = await client.request(method, url, headers=headers)
        if response.status_code != 402:
            return _result(response, token, None)
        try:
            pay = parse_pay(response.headers.get("Pay"))
        except ValueError as exc:
            raise SendError(f"402 without a usable Pay header: {exc}") from exc
        if pay.price is None:
            raise SendError("the Pay header has no price (streaming payments are not supported)")
        needed = max(pay.price - int(response.headers.get("Pay-Balance", "0") or 0), 0)
        limit = max_price if max_price is not None else 2 * pay.price
        paid = await pay_destination_amount(
            sender, pay, needed or pay.price, max_source=limit, token_bytes=parsed.payment_id
        )
        for _ in range(retries):
            response = await client.request(method, url, headers=headers)
            if response.status_code != 402:
                break
            await asyncio.sleep(0.2)
        return _result(response, token, paid)


def _result(response: httpx.Response, token: str, paid: Paid | None) -> CallResult:
    return CallResult(
        response.status_code, response.content, response.headers.get("Pay-Balance"), token, paid
    )
