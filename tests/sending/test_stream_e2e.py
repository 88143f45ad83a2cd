"""Paying the node's own STREAM receiver end to end: SPSP4 over real HTTP from the live
server (the pointer chooses STREAM by content negotiation), STREAM packets through the real
switch, or out over a real BTP link (our client ``hub`` dials our own /btp as ``leaf``) and
back into the far end's switch and receiver. Faults are injected around the real sender
where a real one cannot be provoked on demand (a process dying mid-payment)."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest
from django.db.models import Sum

from payments.models import IncomingPayment, Receipt
from payments.models_outgoing import OutgoingChunk, OutgoingPayment
from payments.sending import RunOptions, outgoing_payment_create, outgoing_payment_run
from tests.sending.conftest import (
    Crash,
    Faults,
    balance,
    btp_pair,
    eventually,
    fund,
    in_thread,
    install_faults,
    make_receiver,
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
        start=False,
        **kwargs,
    )
    return payment


def view(payment: OutgoingPayment) -> dict[str, Any]:
    chunks = list(OutgoingChunk.objects.filter(payment=payment).order_by("sequence"))
    at_bob = Receipt.objects.filter(account__code="receiver:bob")
    return {
        "alice": balance("receiver:alice"),
        "hub": balance("peer:hub"),
        "leaf": balance("peer:leaf"),
        "received": int(at_bob.aggregate(s=Sum("amount"))["s"] or 0),
        "receipts": at_bob.count(),
        "incoming": list(IncomingPayment.objects.values_list("payment_id", "total")),
        "states": [c.state for c in chunks],
        "sequences": [c.sequence for c in chunks],
    }


async def test_pays_our_own_stream_receiver_through_the_switch(live_server: Any) -> None:
    payment = await start(live_server, 25_000)
    done = await outgoing_payment_run(payment_id=payment.pk)
    assert done is not None and done.status == "completed", done.last_error
    assert done.protocol == "stream"
    assert int(done.amount_sent) == int(done.amount_delivered) == 25_000
    assert int(done.amount_reserved) == int(done.amount_debited) == 25_000
    # Every fulfilled packet carried a receipt of the receiver's durable total that matched.
    assert done.totals_trusted
    await eventually(lambda: balance("receiver:bob") == 25_000)
    v = await in_thread(view)(payment)
    assert v["alice"] == 1_000_000 - 25_000 and v["received"] == 25_000
    assert set(v["states"]) == {"fulfilled"} and v["receipts"] == len(v["states"])
    # One STREAM connection is one incoming payment (its id: SHA-256 of the destination).
    connection_id = hashlib.sha256(done.destination_address.encode()).digest()[:16].hex()
    assert v["incoming"] == [(connection_id, 25_000)]
    assert "~" in done.destination_address.rsplit(".", 1)[1]


async def test_destination_amount_over_stream(live_server: Any) -> None:
    payment = await start(live_server, 7_000, mode="destination")
    done = await outgoing_payment_run(payment_id=payment.pk)
    assert done is not None and done.status == "completed", done.last_error
    assert done.protocol == "stream" and int(done.amount_delivered) == 7_000
    await eventually(lambda: balance("receiver:bob") == 7_000)


async def test_pays_over_a_real_btp_link_within_its_packet_limit(live_server: Any) -> None:
    async with btp_pair(leaf_max_packet=700):
        payment = await start(live_server, 5_000, via_peer="hub")
        faults = Faults()
        install_faults(faults)
        done = await outgoing_payment_run(payment_id=payment.pk, options=SHORT)
        assert done is not None and done.status == "completed", done.last_error
        v = await in_thread(view)(payment)
    assert done.protocol == "stream" and int(done.amount_delivered) == 5_000
    assert v["alice"] == 1_000_000 - 5_000 and v["hub"] == 5_000 and v["leaf"] == -5_000
    assert v["received"] == 5_000 and v["receipts"] == v["states"].count("fulfilled")
    # The probes found the 700 limit: no chunk (a packet with money) was larger.
    chunks = set(await in_thread(_conditions)(payment))
    money = [p for p in faults.sent if p.execution_condition.hex() in chunks]
    assert len(money) == len(v["states"]) and max(p.amount for p in money) <= 700


def _conditions(payment: OutgoingPayment) -> list[str]:
    return list(OutgoingChunk.objects.filter(payment=payment).values_list("condition", flat=True))


@pytest.mark.parametrize("when", ["crash-after", "crash-before"])
async def test_a_stream_payment_resumed_after_a_crash_delivers_exactly_once(
    live_server: Any, when: str
) -> None:
    """The process "dies" at the 5th send (probe F08, probe, packets 1, 2, then 3): after
    our own receiver took packet 3 but before we booked it, or after its row was written
    but before it left. The next run asks the receiver's durable total with a fresh
    sequence, books packet 3 only if it arrived, never sends it again, and finishes."""
    async with btp_pair(leaf_max_packet=500):
        payment = await start(live_server, 3_000, via_peer="hub")
        install_faults(faults := Faults(plan={5: when}))
        with pytest.raises(Crash):
            await outgoing_payment_run(payment_id=payment.pk, options=SHORT)
        v = await in_thread(view)(payment)
        assert v["states"] == ["fulfilled", "fulfilled", "sending"]
        assert v["received"] == (1_500 if when == "crash-after" else 1_000)
        in_doubt = v["sequences"][2]
        await in_thread(OutgoingPayment.objects.filter(pk=payment.pk).update)(lease_until=None)

        install_faults(resumed := Faults())
        done = await outgoing_payment_run(payment_id=payment.pk, options=SHORT)
        assert done is not None and done.status == "completed", done.last_error
        v = await in_thread(view)(payment)
    assert v["states"][2] == ("fulfilled" if when == "crash-after" else "lost")
    if when == "crash-after":
        assert faults.sent[-1] not in resumed.sent
    # The resumed run's first packet is the 0-amount total query, under a new sequence;
    # every later chunk row has a sequence beyond the one in doubt.
    assert resumed.sent[0].amount == 0
    assert all(s > in_doubt for s in v["sequences"][3:])
    assert len(v["sequences"]) == len(set(v["sequences"]))
    assert v["received"] == 3_000 == int(done.amount_delivered) == int(done.amount_sent)
    assert v["alice"] == 1_000_000 - 3_000 and v["hub"] == 3_000
    assert v["receipts"] == v["states"].count("fulfilled")
