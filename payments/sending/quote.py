"""Quoting a PSK2 receiver: the exchange rate by unfulfillable draft-1 quotes.

:func:`probe_rate` needs only a ``send`` callable, so any sender uses it: the runner's
PSK2 quote (:mod:`payments.sending.psk2`) and a single paid-API payment
(:func:`payments.sending.psk2.psk2_pay_once`). STREAM's rate probe is
:class:`ilp.stream.sender.RateProbe`, driven by :mod:`payments.sending.stream`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from django.utils import timezone

from ilp.errors import DecodeError
from ilp.packet import Prepare, Reject, Reply, decode_amount_too_large_data
from ilp.psk2 import IV_LENGTH, PAYMENT_ID_LENGTH
from ilp.psk2_sender import build_quote, read_reply
from payments.sending.errors import SendFailed
from payments.sending.runner import CHUNK_EXPIRY

__all__ = ["MAX_PROBES", "RateProbe", "f08_size", "probe_rate"]

MAX_PROBES = 6


def f08_size(reply: Reject, sent: int) -> int:
    """The next amount after an F08 (Amount Too Large): scaled by the Reject's
    ``maximum/received`` when it carries them, else halved."""
    try:
        too_large = decode_amount_too_large_data(reply.data)
    except DecodeError:
        too_large = None
    if (
        too_large is not None
        and too_large.received_amount > 0
        and too_large.maximum_amount < too_large.received_amount
    ):
        size = sent * too_large.maximum_amount // too_large.received_amount
    else:
        size = sent // 2
    return max(1, min(size, sent - 1))


@dataclass(frozen=True, slots=True)
class RateProbe:
    """What :func:`probe_rate` found: ``source_amount`` sent in the probe that answered,
    ``delivered`` what arrived of it, ``max_packet`` the path's limit if an F08 told it."""

    source_amount: int
    delivered: int
    max_packet: int | None = None


async def probe_rate(
    send: Callable[[Prepare], Awaitable[Reply]],
    shared_secret: bytes,
    destination: str,
    *,
    amount: int,
    grow_until: int | None = None,
    payment_id: bytes | None = None,
    expiry: timedelta = CHUNK_EXPIRY,
    max_wait_s: float = 30.0,
    attempts: int = MAX_PROBES,
) -> RateProbe:
    """Learn the exchange rate to a PSK2 receiver with draft-1 quotes (sender.md §2.2, §3).

    Sends an unfulfillable quote of ``amount`` through ``send``; the receiver answers F99
    with a type-3 error whose Chunk Amount is what arrived. Adapts instead of giving up
    (sender.md §3): F08 → the Reject's ``maximum/received`` scale the probe down; R01 or
    nothing arriving → x10 (at most ``grow_until``, default ``amount``); other T/R → the
    same again after a doubling back-off. :class:`SendFailed` on anything else (F02...),
    after ``attempts`` probes, or when nothing ever arrives. Usable with any sender (the
    paid-API client's too): it only needs ``send``.
    """
    limit = amount if grow_until is None else max(grow_until, amount)
    probe = amount
    max_packet: int | None = None
    wait = 0.1
    for _ in range(attempts):
        prepare = build_quote(
            shared_secret,
            destination,
            payment_id=payment_id or os.urandom(PAYMENT_ID_LENGTH),
            source_amount=probe,
            expires_at=timezone.now() + expiry,
            iv=os.urandom(IV_LENGTH),
            condition=os.urandom(32),
        )
        reply = await send(prepare)
        result = read_reply(shared_secret, reply, prepare=prepare)
        code = reply.code if isinstance(reply, Reject) else ""
        if result.is_quote_answer and result.delivered is not None:
            if result.delivered > 0:
                return RateProbe(probe, result.delivered, max_packet)
            code = "R01"  # rounded to nothing along the path
        if isinstance(reply, Reject) and code == "F08":
            probe = max_packet = f08_size(reply, probe)
            limit = min(limit, max_packet)
            continue
        if code == "R01":
            if probe >= limit:
                break
            probe = min(probe * 10, limit)
            continue
        if code[:1] in ("T", "R"):
            await asyncio.sleep(wait)
            wait = min(wait * 2, max_wait_s)
            continue
        detail = reply.message if isinstance(reply, Reject) else result.problem or "fulfilled"
        raise SendFailed(f"the quote failed: {code or 'no F99'} {detail}".strip(), code=code)
    raise SendFailed("the quote failed: nothing arrives at the receiver")
