"""Pure PSK2 sender helpers (``shared/spec/receiver/sender.md`` §2).

Builders turn a shared secret and the sender's choices into a Prepare the way
ilp-protocol-psk2 does (draft 1 as 0.2.1's ``sendSingleChunk`` / quotes / chunked
payments, draft 2 as 0.3+'s ``sendRequest``), and :func:`read_reply` turns the Fulfill or
Reject that came back into a :class:`ChunkResult`. Randomness (IVs, Payment IDs, probe
conditions) and the expiry are passed in; the loop that sends, waits and retries belongs to
the caller.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum
from fractions import Fraction
from typing import Final

from ilp.errors import DecodeError, EncodeError
from ilp.packet import Fulfill, Prepare, Reply
from ilp.psk2 import (
    QUOTE_AMOUNT,
    ChunkRejection,
    ChunkRequest,
    ChunkResponse,
    Rejection,
    Request,
    Response,
    condition_for_data,
    decrypt_psk2,
    encrypt_psk2,
)

__all__ = [
    "MIN_SHARED_SECRET_LENGTH",
    "PROBE_AMOUNT",
    "ChunkResult",
    "ChunkedPayment",
    "Progress",
    "build_chunk",
    "build_quote",
    "build_request",
    "read_reply",
]

# The reference senders assert this; SPSP hands out exactly 32 bytes.
MIN_SHARED_SECRET_LENGTH: Final = 32
# The source amount 0.2.1's quoteDestinationAmount (and ilp-fetch) probe with.
PROBE_AMOUNT: Final = 1000


def _check_secret(shared_secret: bytes) -> None:
    if not isinstance(shared_secret, bytes):
        raise TypeError(f"shared_secret must be bytes, not {type(shared_secret).__name__}")
    if len(shared_secret) < MIN_SHARED_SECRET_LENGTH:
        raise EncodeError(f"shared_secret must be at least {MIN_SHARED_SECRET_LENGTH} bytes")


def _check_condition(condition: bytes) -> None:
    if not isinstance(condition, bytes) or len(condition) != 32:
        raise EncodeError("a probe condition is 32 random bytes")


def _prepare(
    shared_secret: bytes,
    destination: str,
    packet: ChunkRequest | Request,
    *,
    source_amount: int,
    expires_at: datetime,
    iv: bytes,
    condition: bytes | None,
) -> Prepare:
    _check_secret(shared_secret)
    data = encrypt_psk2(shared_secret, packet, iv)
    if condition is None:
        condition = condition_for_data(shared_secret, data)
    else:
        _check_condition(condition)
    return Prepare(source_amount, expires_at, condition, destination, data)


def build_chunk(
    shared_secret: bytes,
    destination: str,
    *,
    payment_id: bytes,
    sequence: int,
    payment_amount: int,
    chunk_amount: int,
    source_amount: int,
    expires_at: datetime,
    iv: bytes,
    last: bool,
    application_data: bytes = b"",
    junk: bytes = b"",
) -> Prepare:
    """A fulfillable draft-1 chunk: type 1 if ``last`` else 0.

    ``sendSingleChunk`` is ``payment_amount = 2**64 - 1``, ``chunk_amount =
    minDestinationAmount`` (0 accepts anything), ``sequence = 0``, ``last = True``. A
    chunked payment keeps one ``payment_id`` and counts ``sequence`` up; its
    ``payment_amount`` is the destination total, or 2^64-1 for a fixed source amount.
    ``junk`` pads the plaintext (receivers ignore it).
    """
    request = ChunkRequest(
        payment_id, sequence, payment_amount, chunk_amount, application_data, last=last, junk=junk
    )
    return _prepare(
        shared_secret,
        destination,
        request,
        source_amount=source_amount,
        expires_at=expires_at,
        iv=iv,
        condition=None,
    )


def build_quote(
    shared_secret: bytes,
    destination: str,
    *,
    payment_id: bytes,
    source_amount: int,
    expires_at: datetime,
    iv: bytes,
    condition: bytes,
) -> Prepare:
    """A draft-1 informational quote (0.2.1 ``quoteSourceAmount``): type 1, sequence 0,
    Payment Amount = Chunk Amount = 2^64-1, and ``condition`` = 32 random bytes so that
    nobody can fulfill it. The receiver answers F99 with a type-3 error whose Chunk Amount
    is what arrived (:attr:`ChunkResult.delivered`). ``quoteDestinationAmount`` probes with
    ``source_amount = PROBE_AMOUNT``."""
    request = ChunkRequest(payment_id, 0, QUOTE_AMOUNT, QUOTE_AMOUNT, last=True)
    return _prepare(
        shared_secret,
        destination,
        request,
        source_amount=source_amount,
        expires_at=expires_at,
        iv=iv,
        condition=condition,
    )


def build_request(
    shared_secret: bytes,
    destination: str,
    *,
    request_id: int,
    min_destination_amount: int,
    source_amount: int,
    expires_at: datetime,
    iv: bytes,
    data: bytes = b"",
    unfulfillable_condition: bytes | None = None,
) -> Prepare:
    """A draft-2 request (0.3+ ``sendRequest``): type 4 with ``min_destination_amount`` in
    the amount field. With ``unfulfillable_condition`` (32 random bytes) it is a probe; the
    receiver reports the arrived amount in a type-6 error. (0.5.0 writes 0 into the amount
    field of its probes; pass 0 to do the same.)"""
    request = Request(request_id, min_destination_amount, data)
    return _prepare(
        shared_secret,
        destination,
        request,
        source_amount=source_amount,
        expires_at=expires_at,
        iv=iv,
        condition=unfulfillable_condition,
    )


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """What a reply says about one Prepare.

    ``fulfilled`` is true only for a Fulfill whose fulfillment matches the condition (when
    the Prepare was given to :func:`read_reply`). ``response`` is the decrypted PSK2
    response or error when the data could be trusted, and ``problem`` says why not
    otherwise ("" when nothing was wrong, also for a Reject that simply had no data).
    """

    fulfilled: bool
    code: str = ""
    message: str = ""
    triggered_by: str = ""
    response: ChunkResponse | ChunkRejection | Response | Rejection | None = None
    problem: str = ""

    @property
    def delivered(self) -> int | None:
        """The amount that arrived at the receiver in this Prepare, if it said so."""
        r = self.response
        if r is None:
            return None
        return r.amount if isinstance(r, Response | Rejection) else r.chunk_amount

    @property
    def total(self) -> int | None:
        """Draft 1: the receiver's running total for the Payment ID (Payment Amount)."""
        r = self.response
        return r.payment_amount if isinstance(r, ChunkResponse | ChunkRejection) else None

    @property
    def application_data(self) -> bytes:
        r = self.response
        if r is None:
            return b""
        return r.data if isinstance(r, Response | Rejection) else r.application_data

    @property
    def is_quote_answer(self) -> bool:
        """What a draft-1 quote requires: F99 carrying a type-3 error (sender.md §2.2)."""
        return self.code == "F99" and isinstance(self.response, ChunkRejection)


def read_reply(
    shared_secret: bytes, reply: Reply, *, prepare: Prepare | None = None
) -> ChunkResult:
    """Parse the Fulfill or Reject that answered a PSK2 Prepare.

    With ``prepare`` (recommended), the fulfillment is checked against its condition and
    the response must echo its Payment ID and Sequence (or Request ID); 0.2.1 raises on
    either mismatch, here they become ``problem`` with ``response = None``.
    """
    _check_secret(shared_secret)
    fulfill = isinstance(reply, Fulfill)
    if isinstance(reply, Fulfill):
        if (
            prepare is not None
            and hashlib.sha256(reply.fulfillment).digest() != prepare.execution_condition
        ):
            return ChunkResult(False, problem="the fulfillment does not match the condition")
        result = ChunkResult(True)
    else:
        result = ChunkResult(False, reply.code, reply.message, reply.triggered_by)
    if not reply.data:
        # F06/F05 from a draft-1 receiver carry no data; a Fulfill always should.
        return (
            replace(result, problem="the Fulfill carries no PSK2 response") if fulfill else result
        )
    try:
        answer = decrypt_psk2(shared_secret, reply.data)
    except DecodeError:
        return replace(result, problem="the data is not PSK2 under this secret")
    if isinstance(answer, ChunkRequest | Request) or fulfill != isinstance(
        answer, ChunkResponse | Response
    ):
        kind = "Fulfill" if fulfill else "Reject"
        return replace(result, problem=f"unexpected PSK2 type {answer.type} in a {kind}")
    if prepare is not None and not _answers(shared_secret, prepare, answer):
        return replace(result, problem="the response is for another request")
    return replace(result, response=answer)


def _answers(
    shared_secret: bytes,
    prepare: Prepare,
    answer: ChunkResponse | ChunkRejection | Response | Rejection,
) -> bool:
    """Whether ``answer`` echoes the ids of the request inside ``prepare``."""
    try:
        request = decrypt_psk2(shared_secret, prepare.data)
    except DecodeError:
        return False
    if isinstance(request, ChunkRequest):
        return (
            isinstance(answer, ChunkResponse | ChunkRejection)
            and answer.payment_id == request.payment_id
            and answer.sequence == request.sequence
        )
    if isinstance(request, Request):
        return isinstance(answer, Response | Rejection) and answer.request_id == request.request_id
    return False


# --- chunked payments ---------------------------------------------------------------------


class Progress(Enum):
    """What :meth:`ChunkedPayment.on_reply` says to do next."""

    CONTINUE = "continue"  # call next_chunk() again (after wait_ms)
    DONE = "done"
    FAILED = "failed"


@dataclass(slots=True)
class ChunkedPayment:
    """A draft-1 chunked payment as a sans-IO state machine (0.2.1 ``sendSourceAmount`` /
    ``sendDestinationAmount``, sender.md §2.3), with the limits the reference lacked.

    Give exactly one of ``source_amount`` (fixed source) and ``destination_amount``
    (fixed destination). Then loop: ``prepare = p.next_chunk(expires_at=..., iv=...)``
    (``None`` once finished), send it, ``p.on_reply(reply)``, and sleep ``p.wait_ms``
    before the next chunk. One chunk is in flight at a time.

    Differences from 0.2.1, all from sender.md's "known bugs": F99 is retried at most
    ``max_f99_in_a_row`` times in a row, T/R errors ``max_temporary_in_a_row`` times with
    the wait capped at ``max_wait_ms``, a first-chunk F99 does not divide by zero, and the
    per-chunk minimum allows ``slippage`` (0 reproduces 0.2.1's exact-rate guard).
    """

    shared_secret: bytes = field(repr=False)
    destination: str
    payment_id: bytes
    source_amount: int | None = None
    destination_amount: int | None = None
    chunk_size: int = 1000
    slippage: Fraction = Fraction(1, 100)
    max_f99_in_a_row: int = 3
    max_temporary_in_a_row: int = 10
    max_wait_ms: int = 30_000

    amount_sent: int = 0
    amount_delivered: int = 0
    sequence: int = 0
    wait_ms: int = 0
    chunks_fulfilled: int = 0
    chunks_rejected: int = 0
    failure: str = ""
    done: bool = False
    _f99_in_a_row: int = 0
    _temporary_in_a_row: int = 0
    _pending: Prepare | None = field(default=None, repr=False)
    _pending_last: bool = False

    def __post_init__(self) -> None:
        _check_secret(self.shared_secret)
        if (self.source_amount is None) == (self.destination_amount is None):
            raise ValueError("give exactly one of source_amount and destination_amount")
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        if not 0 <= self.slippage < 1:
            raise ValueError("slippage must be in [0, 1)")

    @property
    def rate(self) -> Fraction:
        """Delivered per unit sent so far (0 before the first delivery)."""
        return (
            Fraction(self.amount_delivered, self.amount_sent) if self.amount_sent else Fraction(0)
        )

    @property
    def failed(self) -> bool:
        return bool(self.failure)

    def _left(self) -> int:
        """Source units still to send (step 1)."""
        if self.source_amount is not None:
            return self.source_amount - self.amount_sent
        assert self.destination_amount is not None
        to_deliver = self.destination_amount - self.amount_delivered
        if to_deliver <= 0:
            return 0
        if not self.amount_delivered:
            return QUOTE_AMOUNT  # rate unknown yet
        # ceil(to_deliver / rate) in integers.
        return -(-to_deliver * self.amount_sent // self.amount_delivered)

    def next_chunk(self, *, expires_at: datetime, iv: bytes) -> Prepare | None:
        """The next Prepare to send, or ``None`` when the payment is over."""
        if self._pending is not None:
            raise RuntimeError("a chunk is still in flight: call on_reply() first")
        if self.done or self.failure:
            return None
        left = self._left()
        if left <= 0:
            self.done = True
            return None
        last = left <= self.chunk_size
        if last:
            self.chunk_size = left
        minimum = int(self.rate * self.chunk_size * (1 - self.slippage))
        self._pending_last = last
        self._pending = build_chunk(
            self.shared_secret,
            self.destination,
            payment_id=self.payment_id,
            sequence=self.sequence,
            payment_amount=QUOTE_AMOUNT
            if self.destination_amount is None
            else self.destination_amount,
            chunk_amount=minimum,
            source_amount=self.chunk_size,
            expires_at=expires_at,
            iv=iv,
            last=last,
        )
        return self._pending

    def _note_total(self, result: ChunkResult) -> None:
        total = result.total
        if total is not None and total >= self.amount_delivered:
            self.amount_delivered = total

    def on_reply(self, reply: Reply) -> Progress:
        """Feed the reply to the chunk :meth:`next_chunk` returned."""
        prepare = self._pending
        if prepare is None:
            raise RuntimeError("no chunk in flight")
        self._pending = None
        result = read_reply(self.shared_secret, reply, prepare=prepare)
        if isinstance(reply, Fulfill):
            if not result.fulfilled:
                return self._fail(f"invalid fulfill: {result.problem}")
            self.amount_sent += prepare.amount
            self.chunks_fulfilled += 1
            self._note_total(result)
            self.chunk_size = (self.chunk_size * 11 + 5) // 10  # x1.1, half up
            self.wait_ms = 0
            self._f99_in_a_row = self._temporary_in_a_row = 0
            if self._pending_last:
                self.done = True
                return Progress.DONE
            self.sequence += 1
            return Progress.CONTINUE
        self.chunks_rejected += 1
        if reply.code == "F99":
            # The rate moved below our guard (or the receiver finished the payment): learn
            # the new total and retry at once, but not forever.
            self._note_total(result)
            self._f99_in_a_row += 1
            if self._f99_in_a_row > self.max_f99_in_a_row:
                return self._fail(f"F99 {self._f99_in_a_row} times in a row")
            self.wait_ms = 0
            return Progress.CONTINUE
        if reply.code[:1] in ("T", "R"):
            self._temporary_in_a_row += 1
            if self._temporary_in_a_row > self.max_temporary_in_a_row:
                return self._fail(f"{reply.code} {self._temporary_in_a_row} times in a row")
            self.chunk_size = max(1, (self.chunk_size + 1) // 2)  # x0.5, half up
            self.wait_ms = min(max(2 * self.wait_ms, 100), self.max_wait_ms)
            return Progress.CONTINUE
        return self._fail(f"Transfer rejected with final error: {reply.code}: {reply.message}")

    def _fail(self, reason: str) -> Progress:
        self.failure = reason
        return Progress.FAILED
