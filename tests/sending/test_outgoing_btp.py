"""Outgoing payments through a chosen peer: our BTP client ``hub`` dials our own /btp as
``leaf`` over a real WebSocket, and the far end's real switch hands the chunks to our
receiver ``bob``, over PSK2 (the same over STREAM: ``tests/sending/test_stream_e2e.py``). Faults are injected around the real sender where a real one cannot be
provoked on demand (a process dying mid-payment, a transient or final Reject)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db.models import Sum

from payments.models import Posting, Receipt
from payments.models_outgoing import OutgoingChunk, OutgoingPayment
from payments.sending import (
    SUSPENSE_ACCOUNT,
    RunOptions,
    outgoing_payment_create,
    outgoing_payment_lease_left,
    outgoing_payment_run,
    outgoing_payments_due,
    runner,
)
from payments.sending.errors import BookingFailed
from payments.sending.tasks import send_outgoing_payment
from tests.sending.conftest import (
    Crash,
    Faults,
    as_worker,
    balance,
    btp_pair,
    eventually,
    fund,
    in_thread,
    install_faults,
    make_receiver,
    t_reject,
)

pytestmark = pytest.mark.django_db(transaction=True)

SHORT = RunOptions(chunk_expiry=timedelta(seconds=3), max_wait_ms=200)


async def start(live_server: Any, amount: int, **kwargs: Any) -> OutgoingPayment:
    await in_thread(make_receiver)("bob")
    await in_thread(fund)("receiver:alice", 1_000_000)
    payment: OutgoingPayment = await in_thread(outgoing_payment_create)(
        source_account_code="receiver:alice",
        receiver=f"{live_server.url}/bob",
        amount=amount,
        via_peer="hub",
        start=False,
        **{"protocol": "psk2", **kwargs},
    )
    return payment


def ledger_view(payment: OutgoingPayment) -> dict[str, Any]:
    chunks = list(OutgoingChunk.objects.filter(payment=payment).order_by("sequence"))
    return {
        "alice": balance("receiver:alice"),
        "hub": balance("peer:hub"),
        "leaf": balance("peer:leaf"),
        "received": int(
            Receipt.objects.filter(account__code="receiver:bob").aggregate(s=Sum("amount"))["s"]
            or 0
        ),
        "receipts": Receipt.objects.filter(account__code="receiver:bob").count(),
        "states": [c.state for c in chunks],
        "sequences": [c.sequence for c in chunks],
        "fulfilled": sum(int(c.amount) for c in chunks if c.state == "fulfilled"),
    }


async def test_pays_our_receiver_over_a_real_btp_link_with_f08_shrinking(
    live_server: Any,
) -> None:
    # The far end only takes 700 per packet from us: F08 with its limit in the data.
    async with btp_pair(leaf_max_packet=700):
        payment = await start(live_server, 5_000)
        done = await outgoing_payment_run(payment_id=payment.pk, options=SHORT)
        assert done is not None
        assert done.status == "completed", done.last_error
        view = await in_thread(ledger_view)(payment)
    assert int(done.amount_sent) == int(done.amount_delivered) == 5_000
    # Both ends are our books: alice paid, we owe hub what it carried, leaf (the same
    # connection seen from the far side) paid bob.
    assert view["alice"] == 1_000_000 - 5_000
    assert view["hub"] == 5_000 and view["leaf"] == -5_000
    assert view["received"] == 5_000 and view["fulfilled"] == 5_000
    assert view["receipts"] == view["states"].count("fulfilled")
    # The quote found the limit; no chunk was ever larger.
    chunks = await in_thread(list)(OutgoingChunk.objects.filter(payment=payment))
    assert max(int(c.amount) for c in chunks) <= 700 and len(chunks) >= 8
    assert int(done.chunk_size) <= 700
    await eventually(lambda: balance("receiver:bob") == 5_000)


async def test_f08_on_a_chunk_shrinks_it(live_server: Any) -> None:
    """The quote passes whole, the limit appears later (a narrower path): F08, smaller."""
    async with btp_pair(leaf_max_packet=10**6):
        payment = await start(live_server, 3_000)
        faults = Faults(plan={2: _f08(3_000, 1_000)})
        install_faults(faults)
        done = await outgoing_payment_run(payment_id=payment.pk, options=SHORT)
        assert done is not None
        assert done.status == "completed", done.last_error
        view = await in_thread(ledger_view)(payment)
    assert view["states"][0] == "rejected" and view["states"][1:] == ["fulfilled"] * (
        len(view["states"]) - 1
    )
    assert [int(p.amount) for p in faults.sent[1:]] == [1_000, 1_000, 1_000]
    assert view["received"] == 3_000 and view["alice"] == 1_000_000 - 3_000


def _f08(received: int, maximum: int) -> Any:
    from ilp.packet import Reject, amount_too_large_data

    return Reject("F08", "test.x", "too large", amount_too_large_data(received, maximum))


async def test_t_rejects_are_retried_with_backoff_and_smaller_chunks(live_server: Any) -> None:
    async with btp_pair():
        payment = await start(live_server, 2_000)
        faults = Faults(plan={2: t_reject("T04"), 3: t_reject("T01")})
        install_faults(faults)
        done = await outgoing_payment_run(payment_id=payment.pk, options=SHORT)
        assert done is not None
        assert done.status == "completed", done.last_error
        view = await in_thread(ledger_view)(payment)
    assert view["states"][:2] == ["rejected", "rejected"]
    # x0.5 twice, then x1.1 per success; every attempt its own sequence.
    assert [int(p.amount) for p in faults.sent[1:3]] == [500, 550]
    assert view["sequences"] == list(range(len(view["states"])))
    assert view["received"] == 2_000 and view["alice"] == 1_000_000 - 2_000
    assert done.chunks_rejected == 2


async def test_an_f_reject_stops_the_payment_and_releases_the_rest(live_server: Any) -> None:
    async with btp_pair(leaf_max_packet=400):
        payment = await start(live_server, 2_000)
        faults = Faults(plan={5: t_reject("F02")})  # quote F08, quote, 2 chunks, then F02
        install_faults(faults)
        done = await outgoing_payment_run(payment_id=payment.pk, options=SHORT)
        assert done is not None and done.status == "failed"
        view = await in_thread(ledger_view)(payment)
    assert "final error: F02" in done.last_error
    assert view["states"] == ["fulfilled", "fulfilled", "rejected"]
    spent = view["fulfilled"]
    assert spent == int(done.amount_debited) == int(done.amount_reserved) == 800
    assert view["alice"] == 1_000_000 - spent and view["received"] == spent
    assert done.shared_secret == "" and done.lease_owner == ""
    # Nothing left held in memory for it either.
    from payments.ledger import get_book

    assert get_book().snapshot("receiver:alice").pending_debits == 0


@pytest.mark.parametrize("when", ["crash-after", "crash-before"])
async def test_a_runner_that_dies_mid_payment_is_resumed_without_resending(
    live_server: Any, when: str
) -> None:
    """The process "dies" at the 4th send (quote, then chunks 0, 1, 2): after the far end
    fulfilled chunk 2 but before we booked it, or after chunk 2 was persisted but before
    it left. A new run resolves chunk 2 from the receiver's running total, books it only
    if it arrived, never sends it again, and finishes the payment."""
    async with btp_pair(leaf_max_packet=500):
        payment = await start(live_server, 3_000)
        faults = Faults(plan={5: when})  # quote F08, quote, chunks 0, 1, then chunk 2
        install_faults(faults)
        with pytest.raises(Crash):
            await outgoing_payment_run(payment_id=payment.pk, options=SHORT)
        row = await in_thread(OutgoingPayment.objects.get)(pk=payment.pk)
        assert row.status == "sending" and row.lease_owner  # the dead run's lease
        view = await in_thread(ledger_view)(payment)
        assert view["states"] == ["fulfilled", "fulfilled", "sending"]
        arrived = 1_500 if when == "crash-after" else 1_000
        assert view["received"] == arrived and view["alice"] == 1_000_000 - 1_000

        # Another run cannot take it while the lease holds (a redelivered task says when
        # to try again)...
        assert await outgoing_payment_run(payment_id=payment.pk, options=SHORT) is None
        left = await in_thread(outgoing_payment_lease_left)(payment_id=payment.pk)
        assert left is not None and 60 < left <= 130
        skipped = await as_worker(send_outgoing_payment.apply)(kwargs={"payment_id": payment.pk})
        assert skipped.result == "skipped"
        assert await in_thread(outgoing_payments_due)() == []
        # ... and the sweeper hands it on once the lease has run out.
        await in_thread(OutgoingPayment.objects.filter(pk=payment.pk).update)(
            lease_until=row.created_at
        )
        assert await in_thread(outgoing_payments_due)() == [payment.pk]

        # The redelivered task (or the sweeper's) resumes it.
        install_faults(resumed := Faults())
        result = await as_worker(send_outgoing_payment.apply)(kwargs={"payment_id": payment.pk})
        assert result.result == "completed"
        done = await in_thread(OutgoingPayment.objects.get)(pk=payment.pk)
        view = await in_thread(ledger_view)(payment)
    expected = "fulfilled" if when == "crash-after" else "lost"
    assert view["states"][:3] == ["fulfilled", "fulfilled", expected]
    # Chunk 2 was never sent again: the resumed run sent one total probe, then chunks
    # with new sequences only.
    if when == "crash-after":
        assert faults.sent[-1] not in resumed.sent
    assert view["sequences"] == list(range(len(view["states"])))
    assert len(resumed.sent) == 1 + len(view["states"]) - 3
    # Exactly the amount, once: at the receiver, from alice, to hub.
    assert view["received"] == 3_000 and view["alice"] == 1_000_000 - 3_000
    assert view["hub"] == 3_000 and int(done.amount_delivered) == 3_000
    assert view["receipts"] == view["states"].count("fulfilled")


async def test_a_first_chunk_in_doubt_is_charged_to_suspense(live_server: Any) -> None:
    """No chunk has proven the receiver's totals yet, so "nothing more arrived" cannot be
    told from "this receiver does not count": the chunk is charged, booked to the node's
    suspense account, and the payment fails (nothing is sent again)."""
    async with btp_pair():
        payment = await start(live_server, 1_000)
        install_faults(Faults(plan={2: "crash-before"}))
        with pytest.raises(Crash):
            await outgoing_payment_run(payment_id=payment.pk, options=SHORT)
        await in_thread(OutgoingPayment.objects.filter(pk=payment.pk).update)(lease_until=None)
        install_faults(resumed := Faults())
        done = await outgoing_payment_run(payment_id=payment.pk, options=SHORT)
        view = await in_thread(ledger_view)(payment)
    assert done is not None and done.status == "failed" and SUSPENSE_ACCOUNT in done.last_error
    assert view["states"] == ["unknown"] and view["received"] == 0
    assert len(resumed.sent) == 1  # the total probe only
    assert view["alice"] == 1_000_000 - 1_000
    assert await in_thread(balance)(SUSPENSE_ACCOUNT) == 1_000
    assert int(done.amount_in_doubt) == 1_000 == int(done.amount_reserved)
    keys = await in_thread(list)(Posting.objects.filter(key__startswith=f"outgoing:{payment.pk}:"))
    assert sorted(p.key for p in keys) == [
        f"outgoing:{payment.pk}:0",
        f"outgoing:{payment.pk}:0:suspense",
    ]


async def test_a_chunk_that_cannot_be_booked_stops_the_run_without_failing_it(
    live_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BookingFailed is a PaymentsError, but not the payment's failure: the money moved.
    The run stops and gives its lease back (the task retries), the chunk stays in doubt,
    and the next run books it once and completes the payment."""

    async def ledger_down(**_: Any) -> None:
        raise BookingFailed("cannot book: the ledger writer is down")

    async with btp_pair():
        payment = await start(live_server, 1_000)
        with monkeypatch.context() as patched:
            patched.setattr(runner, "book_chunk", ledger_down)
            with pytest.raises(BookingFailed):
                await outgoing_payment_run(payment_id=payment.pk, options=SHORT)
        row = await in_thread(OutgoingPayment.objects.get)(pk=payment.pk)
        assert row.status == "sending" and row.lease_owner == "" and row.last_error == ""
        assert (await in_thread(ledger_view)(payment))["states"] == ["sending"]
        done = await outgoing_payment_run(payment_id=payment.pk, options=SHORT)
        view = await in_thread(ledger_view)(payment)
    assert done is not None and done.status == "completed"
    assert view["states"] == ["fulfilled"] and view["received"] == 1_000
    assert view["alice"] == 1_000_000 - 1_000 and view["hub"] == 1_000


async def test_no_live_link_fails_clearly(live_server: Any) -> None:
    await in_thread(make_receiver)("bob")
    await in_thread(fund)("receiver:alice", 1_000)
    payment = await in_thread(outgoing_payment_create)(
        source_account_code="receiver:alice",
        receiver=f"{live_server.url}/bob",
        amount=100,
        via_peer="nobody",
        start=False,
    )
    done = await outgoing_payment_run(payment_id=payment.pk, options=SHORT)
    assert done is not None and done.status == "failed" and "no enabled peer" in done.last_error
    assert int(done.amount_reserved) == 0
