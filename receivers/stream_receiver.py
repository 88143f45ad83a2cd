"""STREAM receiving on the packet hot path: ``<node>.receivers.<name>[.<tag>].~<token>``.

:func:`receivers.psk2_receiver.receive_prepare` hands over every Prepare whose last address
segment starts with ``~`` (after it has found the receiver's account and parsed the tag);
the switch has already placed a hold of ``prepare.amount`` on the source account under
``packet_key``. This module does the I/O around the pure decisions of
:mod:`ilp.stream.receiver` (``docs/STREAM.md`` section 4):

1. open the address (:func:`receivers.addresses.open_stream`: stateless, any process and any
   restart accepts it; not ours → **F06**), then the Prepare (R00 expired, F06 unreadable);
2. :func:`ilp.stream.receiver.handle_request` with this process's :class:`ConnectionState`
   of the connection (a bounded LRU cache, :data:`CONNECTIONS_MAX`; losing an entry loses no
   money, only stream bookkeeping): **F99** with the encrypted reply for rate probes,
   amounts below the sender's minimum, closes and violations, nothing credited;
3. on accept with an amount, ``await book.commit([source -amount], [receipt +amount])`` and
   only then the Fulfill (commit failure: **T00**, the pending credit is cancelled). The
   receipt's ``payment_id`` is the connection id (``SHA-256(destination)[:16]``), so a
   connection is **one** ``IncomingPayment``; its ``sequence`` is the STREAM sequence; its
   key is ``stream:<packet key>`` (``tag:<tag>:<packet key>`` on a tagged address, as
   PSK2), from the hold's ``packet_key``, the key of the source posting. A repeated
   Prepare is therefore recorded once; a *different* Prepare re-using a sequence is a
   different transfer of value and is recorded as such (keying it on the sequence alone
   would take the money from the source without crediting the receiver). The connection
   id is a digest of the destination, which every connector on the path reads, so it is
   no credential: ``stream:`` receipts credit no pay token (a token's own tagged pointer
   does, :mod:`receivers.paid`);
4. when the connection was set up with RFC 0039 receipt details, the Fulfill carries a
   ``StreamReceipt`` for stream 1 with the connection's **durable** total
   (``book.payment_total`` after the commit), as ``@interledger/stream-receiver`` does. The
   same total answers ``StreamMaxMoney`` of stream 1 on 0-amount fulfillable packets that
   carry ``StreamMoney`` on stream 1 (how a sender that lost track asks what arrived); other
   0-amount packets (ilp-protocol-stream's closing ``StreamClose``) read nothing.

An address whose tag is an Open Payments incoming payment's id is also held to that
payment's ``expiresAt``, completion and ``incomingAmount`` (:mod:`receivers.open_payments.limits`:
F99, nothing credited), checked before and around the commit; one made on a web-monetized
page's visitor wallet address credits that visitor too (its receipt key starts with the
visitor's tag).

Steady state does no database query per packet: the secret is derived, the state is in
memory, the total is the book's in-memory figure after its first read (which happens only
with receipts, or for a 0-amount total query).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Final

from django.conf import settings

from ilp.oer import UINT64_MAX
from ilp.packet import Fulfill, Prepare, Reject
from ilp.stream import IV_LENGTH, Frame, ReceiptSetup, StreamMaxMoneyFrame, StreamMoneyFrame
from ilp.stream.receiver import (
    Accept,
    ConnectionState,
    Opened,
    ReceiverLimits,
    Refusal,
    Refuse,
    cancel,
    handle_request,
    new_connection,
    open_prepare,
    receipt_frame,
    settle,
)
from payments.ledger import PostingDraft, ReceiptDraft, get_book
from receivers.addresses import node_address, open_stream, stream_receipt_key
from receivers.live import notify_tag
from receivers.open_payments import limits as op_limits

__all__ = ["CONNECTIONS_MAX", "StreamStats", "is_stream_destination", "receive_stream", "stats"]

logger = logging.getLogger(__name__)

MSG_COMMIT_FAILED: Final = "could not record the payment"
# Connections whose state this process remembers (LRU). Each holds at most
# NODE_MAX_BUFFERED_DATA bytes of stream data: the node reads no STREAM data, so it only
# keeps what flow control lets a sender push, which bounds the cache at ~16 MiB.
CONNECTIONS_MAX: Final = 4096
NODE_MAX_BUFFERED_DATA: Final = 4096


@dataclass(slots=True)
class StreamStats:
    """Counters of this process's STREAM receiving (metrics; tests read them)."""

    prepares: int = 0
    fulfilled: int = 0
    rejected: int = 0
    commit_failures: int = 0
    total_lookups: int = 0


stats = StreamStats()


class _Connections:
    """The per-connection states of this process: a cache with a bound, not the truth."""

    def __init__(self, maximum: int) -> None:
        self._lock = threading.Lock()
        self._states: OrderedDict[bytes, ConnectionState] = OrderedDict()
        self._maximum = maximum

    def get(self, key: bytes, limits: ReceiverLimits) -> ConnectionState:
        with self._lock:
            state = self._states.get(key)
            if state is None:
                return new_connection(limits)
            self._states.move_to_end(key)
            return state

    def put(self, key: bytes, state: ConnectionState) -> None:
        with self._lock:
            self._states[key] = state
            self._states.move_to_end(key)
            while len(self._states) > self._maximum:
                self._states.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._states.clear()


connections = _Connections(CONNECTIONS_MAX)


class _IvSource:
    """Fresh 12-byte IVs from ``os.urandom``, cut from one read of 512 (see psk2_receiver)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._pos = 0

    def take(self) -> bytes:
        with self._lock:
            pos = self._pos
            if pos + IV_LENGTH > len(self._buffer):
                self._buffer = os.urandom(IV_LENGTH * 512)
                pos = 0
            self._pos = pos + IV_LENGTH
            return self._buffer[pos : pos + IV_LENGTH]


_ivs = _IvSource()


def is_stream_destination(rest: str) -> bool:
    """Whether the part of an address after ``<name>.`` ends in a STREAM token segment."""
    return rest.rpartition(".")[2][:1] == "~"


def _limits() -> ReceiverLimits:
    # Receiver accounts are in the node's asset (receivers.services creates them so).
    return _limits_for(str(settings.ILP_ASSET_CODE), int(settings.ILP_ASSET_SCALE))


@lru_cache(maxsize=4)
def _limits_for(asset_code: str, asset_scale: int) -> ReceiverLimits:
    return ReceiverLimits(asset_code, asset_scale, max_buffered_data=NODE_MAX_BUFFERED_DATA)


async def receive_stream(
    prepare: Prepare,
    *,
    account_code: str,
    prefix: str,
    tag: bytes | None,
    source_account: str,
    packet_key: str,
    now: datetime,
) -> Fulfill | Reject:
    """Fulfill or Reject a STREAM Prepare for the receiver whose address is ``prefix``
    (``<node>.receivers.<name>`` or its tagged form; ``tag`` parsed from it). Never raises
    for anything a peer can send; on a Reject the hold is left to the switch."""
    stats.prepares += 1
    reply = await _receive(prepare, account_code, prefix, tag, source_account, packet_key, now)
    if isinstance(reply, Fulfill):
        stats.fulfilled += 1
    else:
        stats.rejected += 1
    return reply


async def _receive(
    prepare: Prepare,
    account_code: str,
    prefix: str,
    tag: bytes | None,
    source_account: str,
    packet_key: str,
    now: datetime,
) -> Fulfill | Reject:
    node = node_address()
    address = open_stream(prepare.destination, prefix)
    opened = open_prepare(prepare, None if address is None else address.shared_secret, now=now)
    if isinstance(opened, Refusal):
        return opened.to_reject(node)
    assert address is not None  # a secret was found, so the address opened
    limits = _limits()
    key = address.connection_id
    # An Open Payments incoming payment (its id is the tag): expiry, completion and
    # incomingAmount are enforced here (receivers.open_payments.limits).
    try:
        payment = None if tag is None else await op_limits.limits_for(tag)
    except Exception:
        logger.exception("receivers: incoming payment lookup failed for %s", account_code)
        return Reject("T00", node, MSG_COMMIT_FAILED)
    if payment is not None:
        closed = op_limits.refuse_closed(payment, now)
        if closed is not None:
            return opened.reject(closed.frames, iv=_ivs.take(), triggered_by=node)
    decision = handle_request(
        connections.get(key, limits),
        opened.request,
        amount=prepare.amount,
        fulfillable=opened.condition_matches,
        limits=limits,
    )
    # Adopted at once (before any await): concurrent packets of the connection see the
    # pending credit of this one.
    connections.put(key, decision.state)
    if isinstance(decision, Refuse):
        return opened.reject(decision.frames, iv=_ivs.take(), triggered_by=node)
    if payment is None or payment.incoming_amount is None or not decision.amount:
        return await _accept(
            opened,
            decision,
            address.receipt,
            account_code,
            tag,
            source_account,
            packet_key,
            key,
            payment=payment,
        )
    return await _accept_capped(
        opened,
        decision,
        payment,
        address.receipt,
        account_code,
        tag,
        source_account,
        packet_key,
        key,
    )


async def _accept_capped(
    opened: Opened,
    decision: Accept,
    payment: op_limits.PaymentLimits,
    setup: ReceiptSetup | None,
    account_code: str,
    tag: bytes | None,
    source_account: str,
    packet_key: str,
    key: bytes,
) -> Fulfill | Reject:
    """:func:`_accept` for a packet toward an incoming payment with ``incomingAmount``:
    its amount is held as in flight, checked against the durable total, then committed."""
    node = node_address()
    held = op_limits.reserve(key, decision.amount)
    try:
        try:
            received = await get_book().payment_total(account_code, key)
        except Exception:
            logger.exception("receivers: STREAM total lookup failed for %s", account_code)
            connections.put(key, cancel(connections.get(key, _limits()), decision))
            return Reject("T00", node, MSG_COMMIT_FAILED)
        stream_id = decision.credits[0][0] if decision.credits else 1
        refused = op_limits.check(payment, held, received=received, stream_id=stream_id)
        if refused is not None:
            connections.put(key, cancel(connections.get(key, _limits()), decision))
            return opened.reject(refused.frames, iv=_ivs.take(), triggered_by=node)
        return await _accept(
            opened,
            decision,
            setup,
            account_code,
            tag,
            source_account,
            packet_key,
            key,
            payment=payment,
        )
    finally:
        held.release()


async def _accept(
    opened: Opened,
    decision: Accept,
    setup: ReceiptSetup | None,
    account_code: str,
    tag: bytes | None,
    source_account: str,
    packet_key: str,
    key: bytes,
    *,
    payment: op_limits.PaymentLimits | None = None,
) -> Fulfill | Reject:
    node = node_address()
    amount = decision.amount
    book = get_book()
    if amount:
        # An incoming payment made on a page visitor's wallet address: keyed for the
        # visitor too (receivers.open_payments.limits.receipt_key).
        receipt_key = (
            stream_receipt_key(packet_key)
            if tag is None
            else op_limits.receipt_key(payment, tag, packet_key)
        )
        try:
            await book.commit(
                [PostingDraft(source_account, -amount, packet_key)],
                [ReceiptDraft(account_code, key, opened.sequence, amount, receipt_key)],
            )
        except Exception:
            stats.commit_failures += 1
            connections.put(key, cancel(connections.get(key, _limits()), decision))
            logger.exception(
                "receivers: STREAM commit failed for packet %s to %s; rejecting",
                packet_key,
                account_code,
            )
            return Reject("T00", node, MSG_COMMIT_FAILED)
        connections.put(key, settle(connections.get(key, _limits()), decision))
        if tag is not None:
            notify_tag(tag)
        if payment is not None and payment.visitor is not None:
            notify_tag(payment.visitor)
    else:
        connections.put(key, settle(connections.get(key, _limits()), decision))
    frames: tuple[Frame, ...] = decision.frames
    # The durable total goes into a receipt, or answers a 0-amount total query. Only those
    # read it: the first read of a connection is a query on the ledger writer, and every
    # ilp-protocol-stream payment ends with a 0-amount StreamClose that asks nothing.
    asks_total = amount == 0 and _asks_total(opened, decision)
    if (setup is not None and amount) or asks_total:
        try:
            stats.total_lookups += 1
            total = await book.payment_total(account_code, key)
        except Exception:
            # The money is recorded: fulfil without the figure rather than lose the packet.
            logger.exception("receivers: STREAM total lookup failed for %s", account_code)
        else:
            if asks_total:
                frames += (StreamMaxMoneyFrame(1, UINT64_MAX, min(total, UINT64_MAX)),)
            if setup is not None and amount:
                frames += (receipt_frame(setup, total),)
    return opened.fulfill(frames, iv=_ivs.take())


def _asks_total(opened: Opened, decision: Accept) -> bool:
    """A 0-amount packet with ``StreamMoney`` on stream 1, the connection's only stream: how
    a sender that lost track asks what arrived (``ilp.stream.sender``'s total packet)."""
    if 1 not in decision.state.streams or len(decision.state.streams) != 1:
        return False
    return any(
        isinstance(frame, StreamMoneyFrame) and frame.stream_id == 1
        for frame in opened.request.frames
    )
