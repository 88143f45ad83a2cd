"""Pure STREAM sender (RFC 0029) for a send-only client, the way ``@interledger/pay``
0.4.0-alpha.9 (Rafiki's sender) talks to STREAM receivers.

Three pieces, each sans-IO (IVs, probe conditions and expiries are passed in; the loop that
sends, sleeps and stores belongs to the caller):

- :class:`StreamConnection`: the keys of one connection (shared secret + destination
  address from SPSP4), building Prepares that carry an encrypted STREAM packet and reading
  the Fulfill or Reject that came back (:class:`StreamReply`).
- :class:`RateProbe`: the quote. Unfulfillable packets (a random condition) whose reply's
  ``prepare_amount`` is what arrived; it starts at the amount asked for (at most
  :data:`MAX_PROBE_AMOUNT`) and goes down on F08 (to the limit the Reject's data names, or
  half) and T04 (a power of ten lower), up on R01 / nothing arriving, and waits and retries
  the same amount on other T/R errors.
- :class:`StreamPayment`: the money. One packet in flight, each ``StreamMoney`` on stream 1
  with a minimum destination amount (``prepare_amount``) from the quoted rate less slippage;
  the amount delivered is the receiver's authentic ``prepare_amount``.

Like pay, the sender announces no address of its own (it cannot receive STREAM packets):
until a reply is authentic every packet carries ``ConnectionMaxStreamId(1)`` and
``ConnectionMaxData(0)``, and the first probe asks for the receiver's asset details with an
empty ``ConnectionNewAddress``, which ``ilp-protocol-stream`` answers with
``ConnectionAssetDetails`` without starting a send loop towards us. A payment ends with
:meth:`StreamConnection.close_packet` (``ConnectionClose``, best effort).

**Sequences.** Every packet of a connection, probes included, has a fresh sequence
(:attr:`StreamPayment.sequence` counts up and is never reused, also across a resume: the
caller persists it before a fulfillable packet leaves). :meth:`StreamConnection.total_packet`
asks for the receiver's running total of stream 1 with a fulfillable packet of amount 0
(``StreamMaxMoney.total_received`` of the Fulfill), which is how a resumed payment decides
about a packet that was in flight when its runner died.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum
from fractions import Fraction
from typing import Any, Final

from ilp.errors import DecodeError
from ilp.oer import UINT64_MAX
from ilp.packet import Fulfill, Prepare, Reject, Reply, decode_amount_too_large_data
from ilp.stream import (
    ConnectionAssetDetailsFrame,
    ConnectionCloseFrame,
    ConnectionMaxDataFrame,
    ConnectionMaxStreamIdFrame,
    ConnectionNewAddressFrame,
    ErrorCode,
    Frame,
    InvalidReceipt,
    ReceiptSetup,
    StreamCloseFrame,
    StreamMaxMoneyFrame,
    StreamMoneyFrame,
    StreamPacket,
    StreamPacketType,
    StreamReceiptFrame,
    condition_for_data,
    decrypt_packet,
    encrypt_packet,
    verify_receipt,
)

__all__ = [
    "MAX_PROBE_AMOUNT",
    "MAX_SEQUENCE",
    "STREAM_ID",
    "ProbeResult",
    "Progress",
    "RateProbe",
    "StreamConnection",
    "StreamPayment",
    "StreamReply",
    "f08_limit",
]

# The one stream a payment uses (pay's DEFAULT_STREAM_ID; a client opens odd ids).
STREAM_ID: Final = 1
# pay's largest test packet; a path carrying this much needs no finer probing.
MAX_PROBE_AMOUNT: Final = 10**12
# pay ends a connection after 2^31 packets (RFC 0029 §5.1.3: AES-GCM with random IVs).
MAX_SEQUENCE: Final = 2**31 - 1
CONDITION_LENGTH: Final = 32


class Progress(Enum):
    """What ``on_reply`` says to do next."""

    CONTINUE = "continue"  # ask for the next packet again (after ``wait_ms``)
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class StreamReply:
    """What one reply says.

    ``fulfilled``: a Fulfill whose fulfillment matches the Prepare's condition. ``authentic``:
    the data decrypted under the connection's key to a STREAM reply for the same sequence
    (a Fulfill always is one if the receiver follows the RFC; a Reject only when the
    receiver itself rejected). ``delivered`` is the reply's ``prepare_amount`` (what
    arrived) and ``frames`` its frames, both only when authentic. ``problem`` says what was
    wrong with the reply when it is not to be trusted ("" otherwise).
    """

    fulfilled: bool
    code: str = ""
    message: str = ""
    triggered_by: str = ""
    data: bytes = b""
    authentic: bool = False
    delivered: int | None = None
    frames: tuple[Frame, ...] = ()
    problem: str = ""
    receipt_total: int | None = None

    @property
    def is_fulfill(self) -> bool:
        return not self.code

    @property
    def closed(self) -> ConnectionCloseFrame | StreamCloseFrame | None:
        """The receiver's ``ConnectionClose``, or ``StreamClose`` of our stream."""
        for frame in self.frames:
            if isinstance(frame, ConnectionCloseFrame):
                return frame
            if isinstance(frame, StreamCloseFrame) and frame.stream_id == STREAM_ID:
                return frame
        return None

    @property
    def receive_max(self) -> StreamMaxMoneyFrame | None:
        """The receiver's ``StreamMaxMoney`` for our stream (its limit and running total)."""
        for frame in self.frames:
            if isinstance(frame, StreamMaxMoneyFrame) and frame.stream_id == STREAM_ID:
                return frame
        return None

    @property
    def total_received(self) -> int | None:
        """The receiver's running total: its ``StreamMaxMoney`` for our stream, else the
        total of a STREAM receipt that verified under the connection's receipt secret."""
        frame = self.receive_max
        return self.receipt_total if frame is None else frame.total_received

    @property
    def asset(self) -> tuple[str, int] | None:
        """The receiver's asset (``ConnectionAssetDetails``), if this reply names it."""
        for frame in self.frames:
            if isinstance(frame, ConnectionAssetDetailsFrame):
                return frame.source_asset_code, frame.source_asset_scale
        return None

    @property
    def receipt(self) -> bytes | None:
        """The STREAM receipt (RFC 0039) for our stream, if the receiver gave one."""
        for frame in self.frames:
            if isinstance(frame, StreamReceiptFrame) and frame.stream_id == STREAM_ID:
                return frame.receipt
        return None

    def describe(self) -> str:
        """One line for logs and ``last_error``."""
        if self.is_fulfill:
            return "fulfilled" if self.fulfilled else f"invalid fulfill: {self.problem}"
        why = f"{self.code} {self.message}".strip()
        closed = self.closed
        if closed is not None:
            why += f" ({_close_reason(closed)})"
        return why


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:  # an unknown close code is legal on the wire
        return f"code {code}"


def _close_reason(frame: ConnectionCloseFrame | StreamCloseFrame) -> str:
    what = "connection" if isinstance(frame, ConnectionCloseFrame) else "stream"
    message = f": {frame.error_message}" if frame.error_message else ""
    return f"the receiver closed the {what} ({_code_name(frame.error_code)}{message})"


def f08_limit(reject: Reject, sent: int) -> tuple[int, bool]:
    """The largest amount to try after an F08 for ``sent``, and whether it is precise:
    ``sent * maximum / received`` from the Reject's data, else ``sent // 2``."""
    try:
        too_large = decode_amount_too_large_data(reject.data)
    except DecodeError:
        too_large = None
    if (
        too_large is not None
        and too_large.received_amount > too_large.maximum_amount
        and too_large.received_amount > 0
    ):
        return sent * too_large.maximum_amount // too_large.received_amount, True
    return sent // 2, False


@dataclass(frozen=True, slots=True)
class StreamConnection:
    """One STREAM connection as a send-only client sees it: builds Prepares, reads replies.

    ``receipts``: the RFC 0039 nonce and secret the sender gave the receiver (in the SPSP
    query); its receipts then tell the receiver's running total, verified."""

    shared_secret: bytes = field(repr=False)
    destination: str
    receipts: ReceiptSetup | None = field(default=None, repr=False)

    def prepare(
        self,
        *,
        sequence: int,
        amount: int,
        frames: Sequence[Frame],
        expires_at: datetime,
        iv: bytes,
        min_destination: int = 0,
        unfulfillable_condition: bytes | None = None,
    ) -> Prepare:
        """A Prepare of ``amount`` carrying a STREAM Prepare packet. Fulfillable (the
        condition derived from the encrypted data) unless ``unfulfillable_condition`` (32
        random bytes) is given: then nobody can fulfill it and the receiver answers F99
        with what arrived."""
        if not 0 <= sequence <= MAX_SEQUENCE:
            raise ValueError(f"a STREAM sequence is 0..{MAX_SEQUENCE}")
        packet = StreamPacket(sequence, StreamPacketType.PREPARE, min_destination, tuple(frames))
        data = encrypt_packet(self.shared_secret, packet, iv)
        if unfulfillable_condition is None:
            condition = condition_for_data(self.shared_secret, data)
        else:
            if len(unfulfillable_condition) != CONDITION_LENGTH:
                raise ValueError("an unfulfillable condition is 32 random bytes")
            condition = unfulfillable_condition
        return Prepare(amount, expires_at, condition, self.destination, data)

    def read_reply(self, prepare: Prepare, reply: Reply) -> StreamReply:
        """Parse the reply to ``prepare`` (one this connection built)."""
        if isinstance(reply, Fulfill):
            if hashlib.sha256(reply.fulfillment).digest() != prepare.execution_condition:
                return StreamReply(False, problem="the fulfillment does not match the condition")
            result = StreamReply(True, data=reply.data)
        else:
            result = StreamReply(
                False, reply.code, reply.message, reply.triggered_by, data=reply.data
            )
        if not reply.data:
            if isinstance(reply, Fulfill):
                return _with(result, problem="the Fulfill carries no STREAM reply")
            return result
        try:
            answer = decrypt_packet(self.shared_secret, reply.data)
            request = decrypt_packet(self.shared_secret, prepare.data)
        except DecodeError:
            # A connector's Reject (F08 carries its amounts) is not from the receiver: only
            # not authentic. A Fulfill's data must be the receiver's reply.
            if isinstance(reply, Reject):
                return result
            return _with(result, problem="the data is not a STREAM reply")
        if answer.sequence != request.sequence:
            return _with(result, problem="the STREAM reply is for another sequence")
        if answer.packet_type == StreamPacketType.PREPARE:
            return _with(result, problem="the STREAM reply is a Prepare")
        if isinstance(reply, Fulfill) and answer.packet_type == StreamPacketType.REJECT:
            # The receiver says it rejected, yet we hold a Fulfill: do not trust its frames.
            return _with(result, problem="a Fulfill whose STREAM reply says Reject")
        return _with(
            result,
            authentic=True,
            delivered=answer.prepare_amount,
            frames=tuple(answer.frames),
            receipt_total=self._receipt_total(answer.frames),
        )

    def _receipt_total(self, frames: Sequence[Frame]) -> int | None:
        if self.receipts is None:
            return None
        for frame in frames:
            if isinstance(frame, StreamReceiptFrame) and frame.stream_id == STREAM_ID:
                try:
                    receipt = verify_receipt(frame.receipt, self.receipts.secret)
                except (DecodeError, InvalidReceipt):
                    return None
                if receipt.nonce == self.receipts.nonce and receipt.stream_id == STREAM_ID:
                    return receipt.total_received
        return None

    def setup_frames(self, *, ask_asset: bool) -> tuple[Frame, ...]:
        """What a packet carries until the receiver has answered authentically: only
        stream 1 and no data from the receiver; ``ask_asset`` adds an empty
        ``ConnectionNewAddress`` (its answer names the receiver's asset)."""
        frames: list[Frame] = [ConnectionNewAddressFrame("")] if ask_asset else []
        frames += [ConnectionMaxStreamIdFrame(STREAM_ID), ConnectionMaxDataFrame(0)]
        return tuple(frames)

    def close_packet(
        self, *, sequence: int, expires_at: datetime, iv: bytes, condition: bytes
    ) -> Prepare:
        """Amount 0, unfulfillable, ``ConnectionClose(NoError)``: the end of the payment."""
        return self.prepare(
            sequence=sequence,
            amount=0,
            frames=(ConnectionCloseFrame(ErrorCode.NO_ERROR, ""),),
            expires_at=expires_at,
            iv=iv,
            unfulfillable_condition=condition,
        )

    def total_packet(self, *, sequence: int, expires_at: datetime, iv: bytes) -> Prepare:
        """Amount 0, fulfillable, ``StreamMoney`` on stream 1: the Fulfill's
        ``StreamMaxMoney`` carries the receiver's running total (no money moves)."""
        return self.prepare(
            sequence=sequence,
            amount=0,
            frames=(StreamMoneyFrame(STREAM_ID, 1),),
            expires_at=expires_at,
            iv=iv,
        )


def _with(reply: StreamReply, **changes: Any) -> StreamReply:
    return replace(reply, **changes)


# --- the quote ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """``source_amount`` sent in the probe that answered, ``delivered`` what arrived of it,
    ``max_packet`` the path's limit if an F08 told it, ``asset`` the receiver's."""

    source_amount: int
    delivered: int
    max_packet: int | None = None
    asset: tuple[str, int] | None = None


def _power_of_ten_below(amount: int) -> int:
    power = 1
    while power * 10 < amount:
        power *= 10
    return power


@dataclass(slots=True)
class RateProbe:
    """The rate probe as a state machine (see the module docstring).

    Loop: ``p = probe.next_probe(expires_at=..., iv=..., condition=random32)`` (``None``
    when over), send it, ``probe.on_reply(p, reply)``, sleep ``probe.wait_ms``. Then
    :attr:`result` or :attr:`failure`. ``limit`` is the largest amount worth probing (the
    source amount to send, or the path's packet limit); ``sequence`` the first to use.
    """

    connection: StreamConnection
    amount: int
    limit: int | None = None
    sequence: int = 1
    max_attempts: int = 12
    max_wait_ms: int = 30_000

    result: ProbeResult | None = None
    failure: str = ""
    wait_ms: int = 0
    attempts: int = 0
    max_packet: int | None = None
    asset: tuple[str, int] | None = None
    established: bool = False
    _skip_asset: bool = False
    _backoff_ms: int = 0

    def __post_init__(self) -> None:
        self.limit = min(self.limit or MAX_PROBE_AMOUNT, MAX_PROBE_AMOUNT, UINT64_MAX)
        self.amount = max(1, min(self.amount, self.limit))

    @property
    def over(self) -> bool:
        return self.result is not None or bool(self.failure)

    def next_probe(self, *, expires_at: datetime, iv: bytes, condition: bytes) -> Prepare | None:
        if self.over:
            return None
        if self.attempts >= self.max_attempts:
            self.failure = f"the rate probe found no rate in {self.attempts} probes"
            return None
        frames: tuple[Frame, ...] = ()
        if not self.established:
            frames = self.connection.setup_frames(ask_asset=not self._skip_asset)
        prepare = self.connection.prepare(
            sequence=self.sequence,
            amount=self.amount,
            frames=frames,
            expires_at=expires_at,
            iv=iv,
            unfulfillable_condition=condition,
        )
        self.sequence += 1
        self.attempts += 1
        return prepare

    def on_reply(self, prepare: Prepare, reply: Reply) -> Progress:
        answer = self.connection.read_reply(prepare, reply)
        self.wait_ms = 0
        if answer.authentic:
            self.established = True
            self.asset = answer.asset or self.asset
            closed = answer.closed
            if closed is not None:
                return self._fail(_close_reason(closed))
            if answer.is_fulfill:
                return self._fail("the receiver fulfilled an unfulfillable probe")
            assert answer.delivered is not None
            if answer.delivered > 0:
                self.result = ProbeResult(
                    prepare.amount, answer.delivered, self.max_packet, self.asset
                )
                return Progress.DONE
            return self._bigger(prepare.amount, "the probe rounded to nothing on the way")
        if answer.is_fulfill:
            return self._fail(f"the receiver fulfilled an unfulfillable probe ({answer.problem})")
        code = answer.code
        if code == "F08":
            assert isinstance(reply, Reject)
            size, _ = f08_limit(reply, prepare.amount)
            if size < 1:
                return self._fail("the path carries no packet of 1 unit (F08)")
            self.max_packet = size if self.max_packet is None else min(self.max_packet, size)
            self.amount = self.limit = min(self.amount, size)
            return Progress.CONTINUE
        if code == "T04":
            if prepare.amount == 1:
                return self._retry_later()
            self.amount = _power_of_ten_below(prepare.amount)
            return Progress.CONTINUE
        if code == "R01":
            return self._bigger(prepare.amount, "R01: the probe was too small to arrive")
        if code[:1] in ("T", "R"):
            return self._retry_later()
        if not self.established and not self._skip_asset:
            # Some receivers (interledger-rs) refuse an empty ConnectionNewAddress: once
            # more without it before believing the error.
            self._skip_asset = True
            return Progress.CONTINUE
        return self._fail(f"the rate probe was rejected: {answer.describe() or code}")

    def _bigger(self, sent: int, why: str) -> Progress:
        assert self.limit is not None
        if sent >= self.limit:
            return self._fail(f"nothing arrives at the receiver ({why})")
        self.amount = min(sent * 10, self.limit)
        return Progress.CONTINUE

    def _retry_later(self) -> Progress:
        self._backoff_ms = min(max(100, 2 * self._backoff_ms), self.max_wait_ms)
        self.wait_ms = self._backoff_ms
        return Progress.CONTINUE

    def _fail(self, reason: str) -> Progress:
        self.failure = reason
        return Progress.FAILED


# --- the money ------------------------------------------------------------------------------


@dataclass(slots=True)
class StreamPayment:
    """A STREAM payment as a state machine: one ``StreamMoney`` packet in flight at a time.

    Give exactly one of ``source_amount`` and ``destination_amount`` (receiver units).
    ``rate`` is the quoted rate (delivered per source unit), ``min_rate`` the least each
    packet must deliver per source unit (its ``prepare_amount`` is ``floor(amount *
    min_rate)``). Loop: ``p = pay.next_packet(expires_at=..., iv=...)`` (``None`` once
    over), send it, ``pay.on_reply(p, reply)``, sleep ``pay.wait_ms``. The counters
    (``amount_sent``...``sequence``) are what a resumed payment passes back in.

    After a Fulfill the chunk grows x1.1 (at most ``max_packet``); T/R halve it and wait
    (100 ms doubling, at most ``max_wait_ms``), at most ``max_temporary_in_a_row`` times;
    F08 cuts it to the path's limit (at most ``max_f08_in_a_row``); F99 below the minimum is
    retried at most ``max_f99_in_a_row`` times (the rate fell); a receiver that closes the
    stream or connection, any other F, or a Fulfill without an authentic STREAM reply or
    below the minimum ends the payment.
    """

    connection: StreamConnection
    source_amount: int | None = None
    destination_amount: int | None = None
    rate: Fraction = Fraction(1)
    min_rate: Fraction = Fraction(0)
    chunk_size: int = 1000
    max_packet: int | None = None
    max_f99_in_a_row: int = 3
    max_f08_in_a_row: int = 10
    max_temporary_in_a_row: int = 10
    max_wait_ms: int = 30_000

    amount_sent: int = 0
    amount_delivered: int = 0
    sequence: int = 1
    chunks_fulfilled: int = 0
    chunks_rejected: int = 0
    established: bool = False
    total_received: int | None = None
    receipt: bytes | None = None
    wait_ms: int = 0
    failure: str = ""
    done: bool = False
    last: StreamReply | None = None
    _f99_in_a_row: int = 0
    _f08_in_a_row: int = 0
    _temporary_in_a_row: int = 0
    _pending: Prepare | None = field(default=None, repr=False)
    _pending_minimum: int = 0

    def __post_init__(self) -> None:
        if (self.source_amount is None) == (self.destination_amount is None):
            raise ValueError("give exactly one of source_amount and destination_amount")
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        if self.rate <= 0:
            raise ValueError("the rate must be positive")
        if not 0 <= self.min_rate <= self.rate:
            raise ValueError("min_rate must be in [0, rate]")

    @property
    def pending_minimum(self) -> int:
        """The minimum destination amount of the packet in flight."""
        return self._pending_minimum

    def _left(self) -> int:
        """Source units still to send."""
        if self.source_amount is not None:
            return self.source_amount - self.amount_sent
        assert self.destination_amount is not None
        to_deliver = self.destination_amount - self.amount_delivered
        if to_deliver <= 0:
            return 0
        rate = (
            Fraction(self.amount_delivered, self.amount_sent)
            if self.amount_delivered > 0
            else self.rate
        )
        return -(-to_deliver // rate)  # ceil in Fractions stays exact

    def next_packet(self, *, expires_at: datetime, iv: bytes) -> Prepare | None:
        """The next Prepare to send, or ``None`` when the payment is over."""
        if self._pending is not None:
            raise RuntimeError("a packet is still in flight: call on_reply() first")
        if self.done or self.failure:
            return None
        left = int(self._left())
        if left <= 0:
            self.done = True
            return None
        if self.sequence > MAX_SEQUENCE:
            self.failure = "the connection has used every sequence"
            return None
        size = min(left, self.chunk_size, UINT64_MAX)
        if self.max_packet is not None:
            size = min(size, self.max_packet)
        minimum = int(size * self.min_rate)
        frames: tuple[Frame, ...] = (StreamMoneyFrame(STREAM_ID, 1),)
        if not self.established:
            frames = self.connection.setup_frames(ask_asset=False) + frames
        self._pending = self.connection.prepare(
            sequence=self.sequence,
            amount=size,
            frames=frames,
            expires_at=expires_at,
            iv=iv,
            min_destination=minimum,
        )
        self._pending_minimum = minimum
        self.sequence += 1  # every packet has its own sequence, answered or not
        return self._pending

    def _finished(self) -> bool:
        if self.source_amount is not None:
            return self.amount_sent >= self.source_amount
        assert self.destination_amount is not None
        return self.amount_delivered >= self.destination_amount

    def on_reply(self, prepare: Prepare, reply: Reply) -> Progress:
        """Feed the reply to the packet :meth:`next_packet` returned."""
        if self._pending is None or prepare is not self._pending:
            raise RuntimeError("not the packet in flight")
        self._pending = None
        minimum = self._pending_minimum
        answer = self.last = self.connection.read_reply(prepare, reply)
        if answer.authentic:
            self.established = True
            if answer.total_received is not None:
                self.total_received = answer.total_received
            self.receipt = answer.receipt or self.receipt
        if answer.is_fulfill:
            if not answer.fulfilled:
                return self._fail(f"invalid fulfill: {answer.problem}")
            # Fulfilled: the money moved. Count at least the minimum the receiver agreed to.
            self.amount_sent += prepare.amount
            delivered = max(minimum, answer.delivered or 0)
            self.amount_delivered += delivered
            self.chunks_fulfilled += 1
            self._f99_in_a_row = self._f08_in_a_row = self._temporary_in_a_row = 0
            self.wait_ms = 0
            if not answer.authentic:
                return self._fail(f"fulfilled without an authentic STREAM reply ({answer.problem})")
            if answer.delivered is not None and answer.delivered < minimum:
                return self._fail(
                    f"the receiver fulfilled {answer.delivered}, below the minimum {minimum}"
                )
            if self._finished():
                self.done = True
                return Progress.DONE
            closed = answer.closed
            if closed is not None:
                return self._fail(_close_reason(closed))
            grown = max(self.chunk_size + 1, (self.chunk_size * 11 + 5) // 10)
            self.chunk_size = grown if self.max_packet is None else min(grown, self.max_packet)
            return Progress.CONTINUE
        self.chunks_rejected += 1
        closed = answer.closed if answer.authentic else None
        if closed is not None:
            return self._fail(_close_reason(closed))
        limit = answer.receive_max
        if answer.authentic and limit is not None and limit.receive_max <= limit.total_received:
            return self._fail(
                f"the receiver takes no more (received {limit.total_received} of at most "
                f"{limit.receive_max})"
            )
        code = answer.code
        if code == "F99" and answer.authentic:
            self._f99_in_a_row += 1
            if self._f99_in_a_row > self.max_f99_in_a_row:
                got = "" if answer.delivered is None else f": {answer.delivered} arrived"
                return self._fail(
                    f"F99 {self._f99_in_a_row} times in a row (the rate fell below the "
                    f"minimum{got}, {minimum} wanted)"
                )
            if limit is not None and answer.delivered:
                # Past its receive max: send no more than still fits.
                room = limit.receive_max - limit.total_received
                fits = int(prepare.amount * room // answer.delivered)
                self.chunk_size = max(1, min(self.chunk_size, fits))
            self.wait_ms = 0
            return Progress.CONTINUE
        if code == "F08":
            assert isinstance(reply, Reject)
            self._f08_in_a_row += 1
            size, _ = f08_limit(reply, prepare.amount)
            if size < 1:
                return self._fail("the path carries no packet of 1 unit (F08)")
            if self._f08_in_a_row > self.max_f08_in_a_row:
                return self._fail(f"F08 {self._f08_in_a_row} times in a row")
            size = min(size, prepare.amount - 1) if prepare.amount > 1 else size
            self.max_packet = size if self.max_packet is None else min(self.max_packet, size)
            self.chunk_size = min(self.chunk_size, size)
            self.wait_ms = 0
            return Progress.CONTINUE
        if code[:1] in ("T", "R"):
            self._temporary_in_a_row += 1
            if self._temporary_in_a_row > self.max_temporary_in_a_row:
                return self._fail(f"{code} {self._temporary_in_a_row} times in a row")
            self.chunk_size = max(1, (prepare.amount + 1) // 2)
            self.wait_ms = min(max(2 * self.wait_ms, 100), self.max_wait_ms)
            return Progress.CONTINUE
        return self._fail(f"rejected with a final error: {answer.describe()}")

    def _fail(self, reason: str) -> Progress:
        self.failure = reason
        return Progress.FAILED
