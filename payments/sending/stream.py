"""Sending over STREAM (RFC 0029): the quote, the packets and the resume of an outgoing
payment whose receiver answered SPSP4 (see :mod:`payments.sending.spsp`).

The runner of :mod:`payments.sending.runner` (lease, reservation, money per chunk, progress)
is the same for both protocols; this module is what differs, on top of the pure
:mod:`ilp.stream.sender`:

- **Quote** (:func:`stream_quote`): a rate probe with unfulfillable packets
  (:class:`ilp.stream.sender.RateProbe`): a source-fixed payment probes its own amount (a
  first packet of that size is then proven), a destination-fixed one starts at the path's
  limit (at most 10^12); F08 and T04 go down, R01 up. The first probe asks for the
  receiver's asset. The probes use sequences 1, 2, … of the connection.
- **Packets** (:func:`stream_send`): :class:`ilp.stream.sender.StreamPayment`, one
  ``StreamMoney`` packet in flight, each with the quoted rate less
  :data:`~payments.sending.runner.SLIPPAGE_PERCENT` as its minimum. Every packet is an
  :class:`~payments.models_outgoing.OutgoingChunk` row (``sequence`` = its STREAM sequence)
  written before it is sent, booked like a PSK2 chunk; ``delivered`` is the receiver's
  authentic ``prepare_amount``. The payment ends with a best-effort ``ConnectionClose``.
- **Resume**: the chunk rows are the truth. A new runner re-derives the connection from
  the stored shared secret and destination address and goes on with sequences beyond the
  last recorded (``next_sequence``), so no packet is ever sent twice under one sequence.
  A packet in doubt is decided by the runner's rules; asking the receiver
  (:func:`stream_total`) is a 0-amount fulfillable packet whose Fulfill's
  ``StreamMaxMoney`` carries the stream's running total (its sequence is stored before
  it leaves).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from django.utils import timezone
from django.utils.crypto import salted_hmac

from ilp.oer import UINT64_MAX
from ilp.packet import Fulfill, Prepare, Reject, Reply
from ilp.stream import ReceiptSetup
from ilp.stream.sender import (
    MAX_PROBE_AMOUNT,
    Progress,
    RateProbe,
    StreamConnection,
    StreamPayment,
)
from payments.models_outgoing import OutgoingPayment
from payments.sending import runner as r
from payments.sending.errors import OutgoingNotAllowed, SendFailed, SpspError
from payments.sending.spsp import SpspDetails

__all__ = ["receipt_setup", "stream_quote", "stream_send", "stream_total"]

log = logging.getLogger(__name__)

# Derivation salt: changing it would break the resume of payments in flight.
RECEIPT_SALT = "payments.outgoing.stream.receipts"
IV_LENGTH = 12
CONDITION_LENGTH = 32
TOTAL_PROBES = 6


def _int(value: Any) -> int:
    return int(value or 0)


def receipt_setup(payment: OutgoingPayment) -> ReceiptSetup:
    """The RFC 0039 nonce and secret this payment gives its receiver in the SPSP query
    (derived from the payment, never stored): receipts on its Fulfills then tell the
    receiver's running total, which a resumed run can trust."""
    nonce = salted_hmac(RECEIPT_SALT, f"nonce:{payment.payment_id}", algorithm="sha256")
    secret = salted_hmac(RECEIPT_SALT, f"secret:{payment.payment_id}", algorithm="sha256")
    return ReceiptSetup(nonce.digest()[:16], secret.digest())


def _connection(run: r.Run) -> StreamConnection:
    return StreamConnection(run.secret, run.payment.destination_address, receipt_setup(run.payment))


# --- the quote ------------------------------------------------------------------------------


async def stream_quote(run: r.Run, details: SpspDetails) -> None:
    """Probe the rate to the STREAM receiver of ``details`` and move the payment to
    ``sending`` (``quoting`` → ``sending``; reserves a destination-fixed payment's quote)."""
    payment = run.payment
    run.secret = details.shared_secret
    connection = StreamConnection(
        details.shared_secret, details.destination_account, receipt_setup(payment)
    )
    destination_mode = payment.mode == OutgoingPayment.Mode.DESTINATION
    amount = _int(payment.amount)
    remaining = details.remaining
    if remaining is not None and destination_mode and amount > remaining:
        raise SpspError(f"the receiver accepts {remaining} more, not {amount}")
    cap = max(1, min(run.sender.max_packet_amount, UINT64_MAX))
    if destination_mode:
        limit = min(cap, MAX_PROBE_AMOUNT, _int(payment.max_source_amount) or MAX_PROBE_AMOUNT)
        first = limit
    else:
        first = limit = min(amount, cap)
    probe = RateProbe(
        connection,
        amount=first,
        limit=limit,
        sequence=max(1, int(payment.next_sequence)),
        max_wait_ms=run.options.max_wait_ms,
    )
    while True:
        prepare = probe.next_probe(
            expires_at=r.expiry(run.options),
            iv=os.urandom(IV_LENGTH),
            condition=os.urandom(CONDITION_LENGTH),
        )
        if prepare is None:
            break
        reply = await r.send(run, prepare)
        probe.on_reply(prepare, reply)
        if probe.wait_ms:
            await asyncio.sleep(probe.wait_ms / 1000)
    if probe.result is None:
        raise SendFailed(f"the quote failed: {probe.failure}")
    result = probe.result
    run.max_chunk = result.max_packet
    if result.max_packet is not None:
        cap = min(cap, result.max_packet)
    if destination_mode:
        quote_source = -(-amount * result.source_amount // result.delivered)
        quote_destination = amount
        reserve = (
            _int(payment.max_source_amount)
            if payment.max_source_amount is not None
            else -(-quote_source * (100 + r.SLIPPAGE_PERCENT) // 100)
        )
        if quote_source > reserve:
            raise OutgoingNotAllowed(
                f"delivering {amount} costs about {quote_source}, more than the {reserve} allowed"
            )
        if reserve > _int(payment.amount_reserved):
            await r.db_reserve_after_quote(payment, run.owner, reserve)
        chunk_size = min(quote_source, cap)
    else:
        quote_source = amount
        quote_destination = amount * result.delivered // result.source_amount
        if quote_destination == 0:
            raise SendFailed(f"the quote failed: {amount} would deliver nothing")
        chunk_size = result.source_amount
    if result.asset is not None:
        log.info("payments: outgoing %s: the receiver's asset is %s/%s", payment.pk, *result.asset)
    run.payment = await r.db_save(
        payment,
        run.owner,
        status=OutgoingPayment.Status.SENDING,
        protocol=OutgoingPayment.Protocol.STREAM,
        destination_address=details.destination_account,
        shared_secret=details.shared_secret.hex(),
        quote_source_amount=quote_source,
        quote_destination_amount=quote_destination,
        chunk_size=max(1, chunk_size),
        next_sequence=probe.sequence,
        started_at=payment.started_at or timezone.now(),
    )
    await r.progress(run.payment, run.options)


# --- the packets ----------------------------------------------------------------------------


def _plan(run: r.Run) -> StreamPayment:
    p = run.payment
    destination_mode = p.mode == OutgoingPayment.Mode.DESTINATION
    rate = Fraction(_int(p.quote_destination_amount), max(1, _int(p.quote_source_amount)))
    if rate <= 0:
        raise SendFailed("the quote found no rate to this receiver")
    return StreamPayment(
        _connection(run),
        source_amount=None if destination_mode else _int(p.amount),
        destination_amount=_int(p.amount) if destination_mode else None,
        rate=rate,
        min_rate=rate * (100 - r.SLIPPAGE_PERCENT) / 100,
        chunk_size=max(1, int(p.chunk_size)),
        # Chunks grow after each Fulfill: never past our own link's limit or the path's.
        max_packet=min(run.max_chunk or UINT64_MAX, run.sender.max_packet_amount, UINT64_MAX),
        max_wait_ms=run.options.max_wait_ms,
        amount_sent=_int(p.amount_sent),
        amount_delivered=_int(p.amount_delivered),
        sequence=max(1, int(p.next_sequence)),
        chunks_fulfilled=p.chunks_fulfilled,
        chunks_rejected=p.chunks_rejected,
    )


@dataclass(slots=True)
class _Packets:
    """The ``StreamMoney`` packets of one payment, for
    :func:`payments.sending.runner.send_chunks`."""

    plan: StreamPayment
    unit: str = "packet"

    def next_chunk(self, run: r.Run) -> r.NextChunk | None:
        plan = self.plan
        prepare = plan.next_packet(expires_at=r.expiry(run.options), iv=os.urandom(IV_LENGTH))
        if prepare is None:
            return None
        return r.NextChunk(prepare, plan.sequence - 1, plan.pending_minimum)

    def on_reply(self, run: r.Run, prepare: Prepare, reply: Reply) -> r.ChunkOutcome:
        plan = self.plan
        before = plan.amount_delivered
        progress = plan.on_reply(prepare, reply)
        answer = plan.last
        assert answer is not None
        failure = plan.failure if progress is Progress.FAILED else None
        if isinstance(reply, Fulfill) and answer.fulfilled:
            exact = (
                plan.total_received is not None and answer.total_received == plan.amount_delivered
            )
            return r.ChunkOutcome(
                True, plan.amount_delivered - before, total_exact=exact, failure=failure
            )
        return r.ChunkOutcome(False, message=answer.describe(), failure=failure)

    def state(self, run: r.Run) -> dict[str, Any]:
        plan = self.plan
        return {
            "amount_sent": plan.amount_sent,
            "amount_delivered": plan.amount_delivered,
            "chunks_fulfilled": plan.chunks_fulfilled,
            "chunks_rejected": plan.chunks_rejected,
            "chunk_size": max(1, plan.chunk_size),
            "next_sequence": plan.sequence,
        }

    def wait_ms(self) -> int:
        return self.plan.wait_ms


async def stream_send(run: r.Run) -> None:
    """Send the payment's packets until it is paid (``completed``) or fails
    (:class:`SendFailed`); then close the connection (best effort)."""
    plan = _plan(run)
    try:
        await r.send_chunks(run, _Packets(plan))
    except SendFailed:
        await _close(run, plan)
        raise
    await _close(run, plan)


async def _close(run: r.Run, plan: StreamPayment) -> None:
    """``ConnectionClose`` to the receiver, once; its answer does not matter."""
    if plan.chunks_fulfilled == 0 and not plan.established:
        return
    prepare = plan.connection.close_packet(
        sequence=plan.sequence,
        expires_at=r.expiry(run.options),
        iv=os.urandom(IV_LENGTH),
        condition=os.urandom(CONDITION_LENGTH),
    )
    plan.sequence += 1
    try:
        await r.send(run, prepare)
    except Exception:  # best effort: the payment is already decided
        log.info("payments: outgoing %s: ConnectionClose failed", run.payment.pk, exc_info=True)


# --- resuming -------------------------------------------------------------------------------


async def stream_total(run: r.Run, sequence: int) -> int | None:
    """The receiver's running total of stream 1 (``None`` when it would not say), from a
    0-amount fulfillable packet under a sequence beyond ``sequence`` and every recorded
    one, stored before it leaves."""
    connection = _connection(run)
    payment = run.payment
    wait = 0.1
    next_sequence = max(int(payment.next_sequence), sequence + 1)
    for _ in range(TOTAL_PROBES):
        payment = await r.db_save(payment, run.owner, next_sequence=next_sequence + 1)
        prepare = connection.total_packet(
            sequence=next_sequence, expires_at=r.expiry(run.options), iv=os.urandom(IV_LENGTH)
        )
        next_sequence += 1
        reply = await r.send(run, prepare)
        answer = connection.read_reply(prepare, reply)
        if answer.authentic:
            return answer.total_received
        if isinstance(reply, Reject) and reply.code[:1] in ("T", "R"):
            await asyncio.sleep(wait)
            wait *= 2
            continue
        return None
    return None
