"""Draft-1 PSK2 payment totals when chunks of one payment land on several processes
(``receivers.psk2_receiver._paid_so_far``): the total is the receipts in the database,
not one process's memory. Runs in the Postgres+Redis pass (several processes)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from ilp.packet import Fulfill, Reject
from ilp.psk2 import ChunkRejection
from ilp.psk2_sender import read_reply
from payments.models import LedgerAccount, Receipt
from tests.conftest import requires_redis
from tests.receivers.test_psk2_receiver import chunk, receive, setup  # noqa: F401 (fixture)

pytestmark = [requires_redis, pytest.mark.django_db(transaction=True)]


@sync_to_async
def receipt_from_another_process(payment_id: bytes, sequence: int, amount: int) -> None:
    """What another process's writer commits for a chunk that landed there."""
    Receipt.objects.create(
        account=LedgerAccount.objects.get(code="receiver:bob"),
        payment_id=payment_id.hex(),
        sequence=sequence,
        amount=amount,
        key=f"elsewhere-{sequence}",
    )


async def test_a_chunk_received_by_another_process_counts_toward_the_total(
    setup: dict[str, Any],  # noqa: F811 (the imported fixture)
) -> None:
    payment_id = os.urandom(16)
    for sequence, amount in enumerate([300, 500]):
        prepare = chunk(
            setup, amount=amount, payment_id=payment_id, sequence=sequence, payment_amount=1000,
            last=False,
        )  # fmt: skip
        assert isinstance(await receive(prepare, f"here-{sequence}"), Fulfill)
    await receipt_from_another_process(payment_id, 2, 200)
    # The payment reached its Payment Amount through the other process: refused here.
    extra = chunk(setup, amount=10, payment_id=payment_id, sequence=3, payment_amount=1000)
    reply = await receive(extra, "here-3")
    result = read_reply(setup["secret"], reply, prepare=extra)
    assert isinstance(reply, Reject) and reply.code == "F99"
    assert isinstance(result.response, ChunkRejection)
    assert result.total == 1000
