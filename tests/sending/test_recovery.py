"""The recovery's outgoing side in the embedded mode: a payment nobody runs (its task lost,
its runner dead) is resumed by the serving process's recovery on its own event loop."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from payments.models_outgoing import OutgoingPayment
from payments.recovery import Recovery
from payments.sending import outgoing_payment_create
from tests.sending.conftest import balance, eventually, fund, in_thread, make_receiver

pytestmark = pytest.mark.django_db(transaction=True)


def lost_payment(url: str) -> int:
    make_receiver("bob")
    fund("receiver:alice", 1_000)
    payment = outgoing_payment_create(
        source_account_code="receiver:alice",
        receiver=f"{url}/bob",
        amount=600,
        start=False,  # as if the broker lost the task ...
    )
    # ... long enough ago for the sweep to call it lost.
    OutgoingPayment.objects.filter(pk=payment.pk).update(
        created_at=timezone.now() - timedelta(minutes=5)
    )
    return int(payment.pk)


async def test_start_up_pass_resumes_a_lost_payment_on_the_loop(live_server: Any) -> None:
    payment_id = await in_thread(lost_payment)(live_server.url)
    recovery = Recovery(interval=3600)  # only the start-up pass
    recovery.start()
    try:
        report = await asyncio.wait_for(recovery.wait_passes(1), 10)
        assert report is not None and report.payments == 1 and not report.errors

        def done() -> bool:
            return OutgoingPayment.objects.get(pk=payment_id).status == "completed"

        await eventually(done, timeout=15)
        assert await in_thread(balance)("receiver:alice") == 400
        await eventually(lambda: balance("receiver:bob") == 600)
        # Completed: a later pass has nothing to resume.
        assert (await recovery.run_pass()).payments == 0
    finally:
        await recovery.stop()
