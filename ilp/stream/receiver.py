"""The STREAM receiver as pure functions over frozen state (``docs/STREAM.md`` section 4).

The caller (the node's hot path) does the I/O: it finds the shared secret of the
destination, keeps a :class:`ConnectionState` per connection, writes the money durably and
draws the IVs. This module decides. One Prepare goes through three steps:

1. :func:`open_prepare`: expiry (**R00**), no secret for the address (**F06**, no data),
   data that does not decrypt to a STREAM packet (**F06**, no data), a STREAM packet that is
   not a Prepare (**F06**). Otherwise the Prepare is *authentic*: every later answer carries
   an encrypted STREAM reply (:class:`Opened`).
2. :func:`handle_request`: the connection's rules, in the JS server's order. Control frames
   first (they apply even when the packet is refused: a sender's ``ConnectionCloseFrame`` comes
   on an unfulfillable Prepare); ``ConnectionNewAddressFrame`` (any value) is answered with
   ``ConnectionMaxStreamIdFrame`` and ``ConnectionAssetDetailsFrame``. Then new streams (client streams
   are odd and at most ``max_stream_id``, else ``ConnectionCloseFrame``), data flow control,
   ``prepare_amount`` against the amount, the condition, and the money frames (receive max
   per stream, closed streams). A refusal is :class:`Refuse`: **F99** with the reply frames,
   nothing credited. An acceptance is :class:`Accept`: the amount split over the streams
   (floor of the shares, the remainder to the lowest stream id, RFC 5.3.8), the reply
   frames, and the new state with the amounts *held* as pending.
3. The caller records the money durably, then :func:`settle` (or :func:`cancel` if the
   record failed) and answers with :meth:`Opened.fulfill` / :meth:`Opened.reject`.

A 0-amount fulfillable Prepare is accepted (stream-receiver does so; older clients loop on an
F99 to their ``StreamCloseFrame``). A Prepare with money but no ``StreamMoneyFrame`` frame is accepted
for the connection as a whole, as the JS server does. Receipts (RFC 0039) are added by the
caller with :func:`receipt_frame`, after the record, from the durable total.

Data: ``StreamDataFrame`` of accepted packets is kept per stream (contiguous bytes plus
out-of-order fragments); the connection accepts at most ``max_buffered_data`` bytes beyond
what :func:`read_data` has consumed, and closes with ``FlowControlError`` beyond it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum
from types import MappingProxyType
from typing import Final

from ilp.errors import DecodeError
from ilp.oer import UINT64_MAX
from ilp.packet import Fulfill, Prepare, Reject
from ilp.stream.crypto import decrypt_packet, encrypt_packet, fulfillment_for
from ilp.stream.frames import (
    ConnectionAssetDetailsFrame,
    ConnectionCloseFrame,
    ConnectionDataBlockedFrame,
    ConnectionMaxDataFrame,
    ConnectionMaxStreamIdFrame,
    ConnectionNewAddressFrame,
    ErrorCode,
    Frame,
    StreamCloseFrame,
    StreamDataBlockedFrame,
    StreamDataFrame,
    StreamMaxDataFrame,
    StreamMaxMoneyFrame,
    StreamMoneyFrame,
    StreamReceiptFrame,
)
from ilp.stream.packet import StreamPacket, StreamPacketType
from ilp.stream.receipts import ReceiptSetup, create_receipt

__all__ = [
    "DEFAULT_MAX_BUFFERED_DATA",
    "DEFAULT_MAX_STREAM_ID",
    "MAX_SEQUENCE",
    "MSG_EXPIRED",
    "MSG_NOT_FOR_US",
    "MSG_UNREADABLE",
    "Accept",
    "ConnectionState",
    "Opened",
    "ReceiverLimits",
    "Refusal",
    "Refuse",
    "RefuseReason",
    "StreamState",
    "cancel",
    "handle_request",
    "new_connection",
    "open_prepare",
    "read_data",
    "receipt_frame",
    "settle",
]

# JS: 2 * DEFAULT_MAX_REMOTE_STREAMS (10); raised by 2 for each stream the sender closes.
DEFAULT_MAX_STREAM_ID: Final = 20
# JS: connectionBufferSize = 2 * MAX_DATA_SIZE.
DEFAULT_MAX_BUFFERED_DATA: Final = 2 * 32767
# RFC 5.1.3: a connection ends once either side has sent 2^31 packets.
MAX_SEQUENCE: Final = 2**31
MSG_EXPIRED: Final = "Prepare expired"
MSG_NOT_FOR_US: Final = "Payment is not for this receiver"
MSG_UNREADABLE: Final = "Unable to decrypt or parse the STREAM data"
MSG_NOT_A_REQUEST: Final = "STREAM packet is not a Prepare"


# --- state --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReceiverLimits:
    """What the receiving account offers a connection.

    ``receive_max``: the most each stream may receive (``None``: no limit, and no
    ``StreamMaxMoneyFrame`` is sent, like ``@interledger/stream-receiver``).
    """

    asset_code: str
    asset_scale: int
    receive_max: int | None = None
    max_stream_id: int = DEFAULT_MAX_STREAM_ID
    max_buffered_data: int = DEFAULT_MAX_BUFFERED_DATA

    def __post_init__(self) -> None:
        ConnectionAssetDetailsFrame(self.asset_code, self.asset_scale)  # validates both
        if self.receive_max is not None and not 0 <= self.receive_max <= UINT64_MAX:
            raise ValueError("receive_max must be a UInt64")
        if self.max_stream_id < 1 or self.max_buffered_data < 0:
            raise ValueError("max_stream_id must be positive, max_buffered_data not negative")


@dataclass(frozen=True, slots=True)
class StreamState:
    """One stream. ``received`` is recorded money, ``pending`` accepted but not yet
    recorded; ``data`` the contiguous unread bytes from ``read_offset``, ``fragments`` what
    arrived beyond a gap, as ``(offset, bytes)``."""

    received: int = 0
    pending: int = 0
    closed: bool = False
    read_offset: int = 0
    data: bytes = b""
    fragments: tuple[tuple[int, bytes], ...] = ()

    @property
    def buffered(self) -> int:
        return len(self.data) + sum(len(chunk) for _, chunk in self.fragments)

    @property
    def max_offset(self) -> int:
        """One past the highest byte offset this stream has received."""
        top = self.read_offset + len(self.data)
        for offset, chunk in self.fragments:
            top = max(top, offset + len(chunk))
        return top


_EMPTY: Final[Mapping[int, StreamState]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ConnectionState:
    """One connection as this process knows it (a cache: losing it loses no money)."""

    streams: Mapping[int, StreamState] = field(default_factory=lambda: _EMPTY)
    max_stream_id: int = DEFAULT_MAX_STREAM_ID
    remote_address: str | None = None
    remote_asset: tuple[str, int] | None = None
    closed: bool = False

    @property
    def received(self) -> int:
        return sum(s.received for s in self.streams.values())


def new_connection(limits: ReceiverLimits) -> ConnectionState:
    return ConnectionState(max_stream_id=limits.max_stream_id)


def _with_streams(state: ConnectionState, streams: dict[int, StreamState]) -> ConnectionState:
    return replace(state, streams=MappingProxyType(streams))


# --- step 1: open -------------------------------------------------------------------------


class RefuseReason(Enum):
    """Why a Prepare was refused, for logs and metrics (the code is what goes on the wire)."""

    EXPIRED = "expired"
    NOT_FOR_US = "not_for_us"
    UNREADABLE = "unreadable"
    NOT_A_REQUEST = "not_a_request"
    CONNECTION_CLOSED = "connection_closed"
    PROTOCOL_VIOLATION = "protocol_violation"
    FLOW_CONTROL = "flow_control"
    AMOUNT_TOO_LOW = "amount_too_low"
    UNFULFILLABLE = "unfulfillable"
    RECEIVE_MAX = "receive_max"
    STREAM_CLOSED = "stream_closed"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Refusal:
    """An answer without STREAM data (the Prepare was not authentic, or expired)."""

    code: str
    message: str
    reason: RefuseReason

    def to_reject(self, triggered_by: str) -> Reject:
        return Reject(self.code, triggered_by, self.message)


@dataclass(frozen=True, slots=True)
class Opened:
    """An authentic STREAM Prepare: every answer to it carries an encrypted reply."""

    prepare: Prepare
    request: StreamPacket
    fulfillment: bytes
    shared_secret: bytes = field(repr=False)

    @property
    def amount(self) -> int:
        return self.prepare.amount

    @property
    def sequence(self) -> int:
        return self.request.sequence

    @property
    def condition_matches(self) -> bool:
        return hashlib.sha256(self.fulfillment).digest() == self.prepare.execution_condition

    def _reply(self, kind: StreamPacketType, frames: tuple[Frame, ...], iv: bytes) -> bytes:
        reply = StreamPacket(self.request.sequence, kind, self.prepare.amount, frames)
        return encrypt_packet(self.shared_secret, reply, iv)

    def fulfill(self, frames: tuple[Frame, ...], *, iv: bytes) -> Fulfill:
        """The Fulfill, with a type-13 reply; ``iv`` is 12 fresh random bytes."""
        return Fulfill(self.fulfillment, self._reply(StreamPacketType.FULFILL, frames, iv))

    def reject(
        self, frames: tuple[Frame, ...], *, iv: bytes, triggered_by: str, code: str = "F99"
    ) -> Reject:
        """A Reject (F99 by default, message empty) with a type-14 reply carrying the amount
        that arrived: what a rate probe is after."""
        return Reject(code, triggered_by, "", self._reply(StreamPacketType.REJECT, frames, iv))


def open_prepare(
    prepare: Prepare, shared_secret: bytes | None, *, now: datetime
) -> Opened | Refusal:
    """Step 1 (see the module docstring). ``now`` is an aware datetime."""
    if prepare.expires_at <= now:
        return Refusal("R00", MSG_EXPIRED, RefuseReason.EXPIRED)
    if shared_secret is None:
        return Refusal("F06", MSG_NOT_FOR_US, RefuseReason.NOT_FOR_US)
    try:
        request = decrypt_packet(shared_secret, prepare.data)
    except DecodeError:
        return Refusal("F06", MSG_UNREADABLE, RefuseReason.UNREADABLE)
    if request.packet_type is not StreamPacketType.PREPARE:
        return Refusal("F06", MSG_NOT_A_REQUEST, RefuseReason.NOT_A_REQUEST)
    return Opened(prepare, request, fulfillment_for(shared_secret, prepare.data), shared_secret)


# --- step 2: decide -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer F99 with ``frames`` in the reply; adopt ``state`` (control frames applied)."""

    frames: tuple[Frame, ...]
    state: ConnectionState
    reason: RefuseReason


@dataclass(frozen=True, slots=True)
class Accept:
    """Fulfill once the money is recorded. ``credits``: ``(stream id, amount)`` pairs summing
    to at most ``amount`` (all of it when the packet has a ``StreamMoneyFrame`` frame);
    ``state`` holds them as pending until :func:`settle` or :func:`cancel`."""

    amount: int
    credits: tuple[tuple[int, int], ...]
    frames: tuple[Frame, ...]
    state: ConnectionState


def _close(code: ErrorCode, message: str) -> ConnectionCloseFrame:
    return ConnectionCloseFrame(code, message)


def handle_request(
    state: ConnectionState,
    request: StreamPacket,
    *,
    amount: int,
    fulfillable: bool,
    limits: ReceiverLimits,
) -> Accept | Refuse:
    """Step 2 (see the module docstring): ``amount`` is the Prepare's, ``fulfillable``
    whether its condition is ours (:attr:`Opened.condition_matches`)."""
    frames: list[Frame] = []
    streams = dict(state.streams)
    max_stream_id = state.max_stream_id
    remote_address = state.remote_address
    remote_asset = state.remote_asset
    closed = state.closed
    has_data_frames = False

    def refuse(reason: RefuseReason, *extra: Frame) -> Refuse:
        new = replace(
            state,
            streams=MappingProxyType(streams),
            max_stream_id=max_stream_id,
            remote_address=remote_address,
            remote_asset=remote_asset,
            closed=closed,
        )
        return Refuse((*frames, *extra), new, reason)

    if request.sequence > MAX_SEQUENCE:
        closed = True
        return refuse(
            RefuseReason.PROTOCOL_VIOLATION,
            _close(ErrorCode.PROTOCOL_VIOLATION, "too many packets on this connection"),
        )

    # Control frames: they take effect whether or not the packet is fulfilled.
    sender_closed = False
    for frame in request.frames:
        if isinstance(frame, ConnectionNewAddressFrame):
            remote_address = frame.source_account
            frames.append(ConnectionMaxStreamIdFrame(max_stream_id))
            frames.append(ConnectionAssetDetailsFrame(limits.asset_code, limits.asset_scale))
        elif isinstance(frame, ConnectionAssetDetailsFrame):
            remote_asset = (frame.source_asset_code, frame.source_asset_scale)
        elif isinstance(frame, ConnectionCloseFrame):
            sender_closed = True
        elif isinstance(frame, StreamCloseFrame):
            stream = streams.get(frame.stream_id)
            if stream is not None and not stream.closed:
                streams[frame.stream_id] = replace(stream, closed=True)
                max_stream_id += 2
                frames.append(ConnectionMaxStreamIdFrame(max_stream_id))
        elif isinstance(
            frame, StreamDataFrame | ConnectionDataBlockedFrame | StreamDataBlockedFrame
        ):
            has_data_frames = True
    if sender_closed:
        closed = True
        return refuse(RefuseReason.CONNECTION_CLOSED, ConnectionCloseFrame(ErrorCode.NO_ERROR, ""))
    if closed:
        if amount == 0 and fulfillable and not _carries_money_or_data(request):
            # ilp-protocol-stream 2.7 sends its last StreamCloseFrame (a 0-amount fulfillable
            # packet) concurrently with its ConnectionCloseFrame, so it may arrive after the
            # close. Anything but a Fulfill makes its send loop resend it, and a
            # ConnectionCloseFrame in the reply re-arms that loop for ever (end() from
            # handleControlFrames while the loop runs): hundreds of packets per payment.
            # The JS server answers it on a fresh connection; nothing is credited either way.
            new = ConnectionState(
                MappingProxyType(streams), max_stream_id, remote_address, remote_asset, closed
            )
            return Accept(0, (), tuple(frames), new)
        return refuse(
            RefuseReason.CONNECTION_CLOSED, _close(ErrorCode.NO_ERROR, "connection closed")
        )

    # New streams: opened by StreamMoneyFrame / StreamDataFrame / StreamMaxMoneyFrame / StreamMaxDataFrame.
    for frame in request.frames:
        if not isinstance(
            frame, StreamMoneyFrame | StreamDataFrame | StreamMaxMoneyFrame | StreamMaxDataFrame
        ):
            continue
        stream_id = frame.stream_id
        stream = streams.get(stream_id)
        if stream is not None:
            if stream.closed and isinstance(frame, StreamMoneyFrame | StreamDataFrame):
                return refuse(
                    RefuseReason.STREAM_CLOSED,
                    StreamCloseFrame(
                        stream_id, ErrorCode.STREAM_STATE_ERROR, "Stream is already closed"
                    ),
                )
            continue
        if stream_id % 2 == 0:
            closed = True
            return refuse(
                RefuseReason.PROTOCOL_VIOLATION,
                _close(
                    ErrorCode.PROTOCOL_VIOLATION,
                    f"Invalid Stream ID: {stream_id}. "
                    "Client-initiated streams must have odd-numbered IDs",
                ),
            )
        if stream_id > max_stream_id:
            closed = True
            return refuse(
                RefuseReason.PROTOCOL_VIOLATION,
                _close(
                    ErrorCode.STREAM_ID_ERROR,
                    "Maximum number of open streams exceeded. "
                    f"Got stream: {stream_id}, current max stream ID: {max_stream_id}",
                ),
            )
        streams[stream_id] = StreamState()

    # Data: applied to a copy, adopted only if the packet is accepted (a refused packet's
    # data is sent again by the sender).
    accepted_streams = dict(streams)
    if has_data_frames:
        frames.insert(0, ConnectionMaxDataFrame(_max_acceptable(accepted_streams, limits)))
        for frame in request.frames:
            if isinstance(frame, StreamDataFrame):
                accepted_streams[frame.stream_id] = _push_data(
                    accepted_streams[frame.stream_id], frame.offset, frame.data
                )
        used = sum(s.max_offset for s in accepted_streams.values())
        if used > _max_acceptable(streams, limits):
            closed = True
            return refuse(
                RefuseReason.FLOW_CONTROL,
                _close(ErrorCode.FLOW_CONTROL_ERROR, "Exceeded flow control limits"),
            )

    if request.prepare_amount > amount:
        return refuse(RefuseReason.AMOUNT_TOO_LOW)
    if not fulfillable:
        return refuse(RefuseReason.UNFULFILLABLE)

    money = [f for f in request.frames if isinstance(f, StreamMoneyFrame)]
    credits = _split(amount, money)
    for stream_id, credit in credits:
        stream = accepted_streams[stream_id]
        if limits.receive_max is not None and (
            stream.received + stream.pending + credit > limits.receive_max
        ):
            return refuse(
                RefuseReason.RECEIVE_MAX,
                StreamMaxMoneyFrame(
                    stream_id, limits.receive_max, min(stream.received + stream.pending, UINT64_MAX)
                ),
            )
    for stream_id, credit in credits:
        stream = accepted_streams[stream_id]
        accepted_streams[stream_id] = replace(stream, pending=stream.pending + credit)
        if limits.receive_max is not None:
            frames.append(
                StreamMaxMoneyFrame(
                    stream_id,
                    limits.receive_max,
                    min(stream.received + stream.pending + credit, UINT64_MAX),
                )
            )
    new = ConnectionState(
        MappingProxyType(accepted_streams), max_stream_id, remote_address, remote_asset, closed
    )
    return Accept(amount, credits, tuple(frames), new)


def _carries_money_or_data(request: StreamPacket) -> bool:
    return any(isinstance(f, StreamMoneyFrame | StreamDataFrame) for f in request.frames)


def _split(amount: int, money: list[StreamMoneyFrame]) -> tuple[tuple[int, int], ...]:
    """RFC 5.3.8: floor of each share, the remainder to the lowest stream id."""
    total_shares = sum(f.shares for f in money)
    if not money or total_shares == 0:
        return ()
    per_stream: dict[int, int] = {}
    for f in money:
        per_stream[f.stream_id] = per_stream.get(f.stream_id, 0) + amount * f.shares // total_shares
    remainder = amount - sum(per_stream.values())
    if remainder:
        lowest = min(per_stream)
        per_stream[lowest] += remainder
    return tuple(sorted(per_stream.items()))


def _max_acceptable(streams: Mapping[int, StreamState], limits: ReceiverLimits) -> int:
    """The connection-wide byte offset the sender may reach (JS ``getIncomingOffsets``)."""
    read = sum(s.read_offset for s in streams.values())
    return read + limits.max_buffered_data


def _push_data(stream: StreamState, offset: int, data: bytes) -> StreamState:
    """Place ``data`` at ``offset``; bytes already received (a resend) are dropped."""
    end = stream.read_offset + len(stream.data)
    if offset + len(data) <= end or not data:
        return stream
    if offset <= end:
        contiguous = stream.data + data[end - offset :]
        fragments = list(stream.fragments)
    else:
        contiguous = stream.data
        fragments = [*stream.fragments, (offset, data)]
    # Pull in every fragment that now touches the contiguous run.
    progress = True
    while progress:
        progress = False
        top = stream.read_offset + len(contiguous)
        for i, (frag_offset, chunk) in enumerate(fragments):
            if frag_offset <= top:
                if frag_offset + len(chunk) > top:
                    contiguous += chunk[top - frag_offset :]
                del fragments[i]
                progress = True
                break
    return replace(stream, data=contiguous, fragments=tuple(sorted(fragments)))


# --- step 3: after the record ---------------------------------------------------------------


def settle(state: ConnectionState, accept: Accept) -> ConnectionState:
    """``state`` with ``accept``'s pending credits recorded (call after the durable write)."""
    return _move(state, accept, record=True)


def cancel(state: ConnectionState, accept: Accept) -> ConnectionState:
    """``state`` without ``accept``'s pending credits (the write failed; nothing was taken)."""
    return _move(state, accept, record=False)


def _move(state: ConnectionState, accept: Accept, *, record: bool) -> ConnectionState:
    streams = dict(state.streams)
    for stream_id, credit in accept.credits:
        stream = streams.get(stream_id)
        if stream is None:  # the state was replaced meanwhile (cache eviction)
            stream = StreamState(pending=credit)
        received = stream.received + credit if record else stream.received
        streams[stream_id] = replace(
            stream, received=received, pending=max(stream.pending - credit, 0)
        )
    return _with_streams(state, streams)


def read_data(state: ConnectionState, stream_id: int) -> tuple[bytes, ConnectionState]:
    """Take the contiguous bytes of ``stream_id`` that arrived; frees flow-control room."""
    stream = state.streams.get(stream_id)
    if stream is None or not stream.data:
        return b"", state
    streams = dict(state.streams)
    streams[stream_id] = replace(
        stream, data=b"", read_offset=stream.read_offset + len(stream.data)
    )
    return stream.data, _with_streams(state, streams)


def receipt_frame(
    setup: ReceiptSetup, total_received: int, *, stream_id: int = 1
) -> StreamReceiptFrame:
    """A ``StreamReceiptFrame`` for the connection's total (stream 1, as stream-receiver: a
    verifier summing per nonce and stream then never counts a connection twice)."""
    total = min(total_received, UINT64_MAX)
    return StreamReceiptFrame(
        stream_id, create_receipt(setup, stream_id=stream_id, total_received=total)
    )
