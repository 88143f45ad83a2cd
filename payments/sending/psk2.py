"""Sending over PSK2 (draft 1, as ilp-protocol-psk2 and ilp-fetch speak it): the quote,
the chunks and the total probe of an outgoing payment whose receiver answered SPSP over
PSK2 — and :func:`psk2_pay_once`, a single small payment for the paid-API client.

A payment's chunks are planned by :class:`ilp.psk2_sender.ChunkedPayment` (x1.1 on
success, x0.5 and back-off on T/R, capped F99 retries) plus F08 shrinking from the
Reject's data; the runner's rules (:mod:`payments.sending.runner`) write each chunk row
before its Prepare leaves and book it.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from ilp.oer import UINT64_MAX
from ilp.packet import Fulfill, Prepare, Reject, Reply
from ilp.psk2 import (
    IV_LENGTH,
    QUOTE_AMOUNT,
    ChunkRejection,
    ChunkRequest,
    decrypt_psk2,
    encrypt_psk2,
)
from ilp.psk2_sender import PROBE_AMOUNT, ChunkedPayment, Progress, read_reply
from payments.models_outgoing import OutgoingPayment
from payments.sending import runner as r
from payments.sending.errors import OutgoingNotAllowed, SpspError
from payments.sending.quote import MAX_PROBES, f08_size, probe_rate
from payments.sending.spsp import SpspDetails

__all__ = ["MAX_F08_IN_A_ROW", "psk2_quote", "psk2_send", "psk2_total"]

MAX_F08_IN_A_ROW = 10


def _int(value: Any) -> int:
    return int(value or 0)


# --- the quote ------------------------------------------------------------------------------


async def psk2_quote(run: r.Run, details: SpspDetails) -> None:
    """Probe the rate to the PSK2 receiver of ``details`` and move the payment to
    ``sending`` (reserves a destination-fixed payment's quote)."""
    payment = run.payment
    run.secret = details.shared_secret
    destination = details.destination_account
    destination_mode = payment.mode == OutgoingPayment.Mode.DESTINATION
    amount = _int(payment.amount)
    remaining = details.remaining
    if remaining is not None and destination_mode and amount > remaining:
        raise SpspError(f"the receiver accepts {remaining} more, not {amount}")
    cap = max(1, min(run.sender.max_packet_amount, UINT64_MAX))
    # Source-fixed: probe the amount itself (a first chunk of that size is then proven);
    # destination-fixed: the reference probe size.
    first = min(amount, cap) if not destination_mode else min(PROBE_AMOUNT, cap)
    probe = await probe_rate(
        lambda prepare: r.send(run, prepare),
        run.secret,
        destination,
        amount=first,
        grow_until=first if not destination_mode else cap,
        expiry=run.options.chunk_expiry,
        max_wait_s=run.options.max_wait_ms / 1000,
    )
    run.max_chunk = probe.max_packet
    if probe.max_packet is not None:
        cap = min(cap, probe.max_packet)
    if destination_mode:
        quote_source = -(-amount * probe.source_amount // probe.delivered)
        quote_destination = amount
        limit = payment.max_source_amount
        reserve = (
            _int(limit)
            if limit is not None
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
        quote_destination = amount * probe.delivered // probe.source_amount
        chunk_size = probe.source_amount
    run.payment = await r.db_save(
        payment,
        run.owner,
        status=OutgoingPayment.Status.SENDING,
        protocol=OutgoingPayment.Protocol.PSK2,
        destination_address=destination,
        shared_secret=run.secret.hex(),
        quote_source_amount=quote_source,
        quote_destination_amount=quote_destination,
        chunk_size=max(1, chunk_size),
        started_at=payment.started_at or timezone.now(),
    )
    await r.progress(run.payment, run.options)


# --- the chunks -----------------------------------------------------------------------------


def _plan(run: r.Run) -> ChunkedPayment:
    p = run.payment
    destination_mode = p.mode == OutgoingPayment.Mode.DESTINATION
    return ChunkedPayment(
        run.secret,
        p.destination_address,
        bytes.fromhex(p.payment_id),
        source_amount=None if destination_mode else _int(p.amount),
        destination_amount=_int(p.amount) if destination_mode else None,
        chunk_size=max(1, int(p.chunk_size)),
        max_wait_ms=run.options.max_wait_ms,
        amount_sent=_int(p.amount_sent),
        amount_delivered=_int(p.amount_delivered),
        sequence=int(p.next_sequence),
        chunks_fulfilled=p.chunks_fulfilled,
        chunks_rejected=p.chunks_rejected,
    )


def _chunk_minimum(prepare: Prepare, secret: bytes) -> int:
    request = decrypt_psk2(secret, prepare.data)
    return request.chunk_amount if isinstance(request, ChunkRequest) else 0


@dataclass(slots=True)
class _Chunks:
    """The draft-1 chunks of one payment, for :func:`payments.sending.runner.send_chunks`."""

    plan: ChunkedPayment
    unit: str = "chunk"

    def next_chunk(self, run: r.Run) -> r.NextChunk | None:
        plan = self.plan
        if run.max_chunk is not None:
            plan.chunk_size = min(plan.chunk_size, run.max_chunk)
        prepare = plan.next_chunk(expires_at=r.expiry(run.options), iv=os.urandom(IV_LENGTH))
        if prepare is None:
            return None
        return r.NextChunk(prepare, plan.sequence, _chunk_minimum(prepare, run.secret))

    def on_reply(self, run: r.Run, prepare: Prepare, reply: Reply) -> r.ChunkOutcome:
        plan = self.plan
        result = read_reply(run.secret, reply, prepare=prepare)
        if isinstance(reply, Fulfill):
            run.f08_in_a_row = 0
            if result.fulfilled:
                before = plan.amount_delivered
                plan.on_reply(reply)
                delivered = result.delivered or 0
                exact = result.total is not None and result.total == before + delivered
                return r.ChunkOutcome(True, delivered, total_exact=exact)
        progress = plan.on_reply(reply)
        if isinstance(reply, Reject) and reply.code == "F08" and progress is Progress.FAILED:
            run.f08_in_a_row += 1
            if run.f08_in_a_row <= MAX_F08_IN_A_ROW:
                plan.failure = ""
                plan.chunk_size = run.max_chunk = f08_size(reply, prepare.amount)
                progress = Progress.CONTINUE
        if progress is not Progress.FAILED:
            plan.sequence += 1  # every attempt has its own sequence (and row)
        return r.ChunkOutcome(
            False,
            message=f"invalid fulfill: {result.problem}",
            failure=plan.failure if progress is Progress.FAILED else None,
        )

    def state(self, run: r.Run) -> dict[str, Any]:
        plan = self.plan
        size = plan.chunk_size if run.max_chunk is None else min(plan.chunk_size, run.max_chunk)
        return {
            "amount_sent": plan.amount_sent,
            "amount_delivered": plan.amount_delivered,
            "chunks_fulfilled": plan.chunks_fulfilled,
            "chunks_rejected": plan.chunks_rejected,
            "chunk_size": max(1, size),
            "next_sequence": plan.sequence,
        }

    def wait_ms(self) -> int:
        return self.plan.wait_ms


async def psk2_send(run: r.Run) -> None:
    """Send the payment's chunks until it is paid (``completed``) or fails."""
    await r.send_chunks(run, _Chunks(_plan(run)))


# --- resuming -------------------------------------------------------------------------------


async def psk2_total(run: r.Run, sequence: int, amount: int) -> int | None:
    """The receiver's running total for our Payment ID, from an unfulfillable draft-1
    request whose minimum cannot be met (it answers F99 + type-3 error with the total
    before any condition check). ``None`` when it would not say."""
    p = run.payment
    destination_mode = p.mode == OutgoingPayment.Mode.DESTINATION
    request = ChunkRequest(
        bytes.fromhex(p.payment_id),
        max(sequence, 1),  # receivers that look totals up skip sequence 0 (nothing yet)
        _int(p.amount) if destination_mode else QUOTE_AMOUNT,
        QUOTE_AMOUNT,
    )
    wait = 0.1
    size = max(1, min(1000, amount))
    for _ in range(MAX_PROBES):
        prepare = Prepare(
            size,
            r.expiry(run.options),
            os.urandom(32),
            p.destination_address,
            encrypt_psk2(run.secret, request, os.urandom(IV_LENGTH)),
        )
        reply = await r.send(run, prepare)
        result = read_reply(run.secret, reply, prepare=prepare)
        if result.code == "F99" and isinstance(result.response, ChunkRejection):
            return result.response.payment_amount
        if isinstance(reply, Reject) and reply.code == "F08":
            size = f08_size(reply, size)
            continue
        if isinstance(reply, Reject) and reply.code == "R01":
            size = min(size * 10, UINT64_MAX)  # rounded to nothing on the way: bigger
            continue
        if isinstance(reply, Reject) and reply.code[:1] in ("T", "R"):
            await asyncio.sleep(wait)
            wait *= 2
            continue
        return None
    return None
