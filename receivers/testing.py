"""Helpers for tests that pay our receivers in-process with real PSK2 packets.

They build Prepares with :mod:`ilp.psk2_sender` and feed them to
:func:`receivers.psk2_receiver.receive_prepare` exactly as the switch does (a source
account that pays, a fresh packet key), so the receipts are the ones a real payment
leaves. Not used by the site itself.
"""

from __future__ import annotations

import os
from datetime import timedelta

from django.utils import timezone

from ilp.oer import UINT64_MAX
from ilp.packet import Fulfill, Reject
from ilp.psk2_sender import build_chunk, build_request
from payments.ledger import ensure_account, peer_account
from receivers.paid import PayHeader, parse_pay
from receivers.psk2_receiver import receive_prepare

__all__ = ["PayHeader", "ensure_payer", "parse_pay", "pay_draft1", "pay_draft2"]

TEST_PAYER_ACCOUNT = peer_account("test-payer")


def ensure_payer(code: str = TEST_PAYER_ACCOUNT) -> str:
    """The (unbounded) peer account test payments come from. Sync: call before the loop."""
    ensure_account(code, kind="peer")
    return code


async def pay_draft1(
    destination: str,
    shared_secret: bytes,
    amount: int,
    *,
    payment_id: bytes | None = None,
    application_data: bytes = b"",
    sequence: int = 0,
    last: bool = True,
    payment_amount: int = UINT64_MAX,
    chunk_amount: int = 0,
    source_account: str = TEST_PAYER_ACCOUNT,
) -> Fulfill | Reject:
    """One draft-1 chunk (``sendSingleChunk`` by default) through the hot path."""
    prepare = build_chunk(
        shared_secret,
        destination,
        payment_id=payment_id if payment_id is not None else os.urandom(16),
        sequence=sequence,
        payment_amount=payment_amount,
        chunk_amount=chunk_amount,
        source_amount=amount,
        expires_at=timezone.now() + timedelta(seconds=30),
        iv=os.urandom(12),
        last=last,
        application_data=application_data,
    )
    return await receive_prepare(
        prepare, source_account=source_account, packet_key=os.urandom(16).hex(), now=timezone.now()
    )


async def pay_draft2(
    destination: str,
    shared_secret: bytes,
    amount: int,
    *,
    data: bytes = b"",
    request_id: int = 1,
    source_account: str = TEST_PAYER_ACCOUNT,
) -> Fulfill | Reject:
    """One draft-2 request (``sendRequest``) through the hot path."""
    prepare = build_request(
        shared_secret,
        destination,
        request_id=request_id,
        min_destination_amount=0,
        source_amount=amount,
        expires_at=timezone.now() + timedelta(seconds=30),
        iv=os.urandom(12),
        data=data,
    )
    return await receive_prepare(
        prepare, source_account=source_account, packet_key=os.urandom(16).hex(), now=timezone.now()
    )
