"""Outgoing payments through this node's switch to our own receivers (SPSP over real
HTTP from the live server, PSK2 chunks through the real switch and receiver)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from channels.layers import get_channel_layer

from payments.models import IncomingPayment, LedgerAccount, Posting, Receipt
from payments.models_outgoing import OutgoingChunk, OutgoingPayment
from payments.sending import (
    RunOptions,
    outgoing_payment_create,
    outgoing_payment_run,
)
from payments.sending.errors import (
    IdempotencyKeyReused,
    InsufficientBalance,
    OutgoingNotAllowed,
    SpspError,
)
from tests.sending.conftest import balance, eventually, fund, in_thread, make_receiver

pytestmark = pytest.mark.django_db(transaction=True)


def create(**kwargs: Any) -> OutgoingPayment:
    kwargs.setdefault("start", False)
    return outgoing_payment_create(**kwargs)


async def test_pays_our_own_receiver_through_the_switch(live_server: Any) -> None:
    await in_thread(make_receiver)("bob")
    await in_thread(fund)("receiver:alice", 100_000)
    payment = await in_thread(create)(
        source_account_code="receiver:alice",
        receiver=f"{live_server.url}/bob",
        amount=25_000,
        protocol="psk2",  # checks PSK2's Payment ID; STREAM: tests/sending/test_stream_e2e.py
    )
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(payment.group_name, channel)

    done = await outgoing_payment_run(payment_id=payment.pk)

    assert done is not None

    assert done.status == OutgoingPayment.Status.COMPLETED, done.last_error
    assert int(done.amount_sent) == 25_000 and int(done.amount_delivered) == 25_000
    assert int(done.amount_reserved) == int(done.amount_debited) == 25_000
    assert done.shared_secret == ""  # wiped once over
    assert done.chunks_fulfilled >= 1 and done.totals_trusted

    def books() -> dict[str, Any]:
        return {
            "alice": balance("receiver:alice"),
            "bob": balance("receiver:bob"),
            "receipts": sum(int(r.amount) for r in Receipt.objects.all()),
            "incoming": list(IncomingPayment.objects.values_list("payment_id", "total")),
            "chunks": list(
                OutgoingChunk.objects.filter(payment=payment).values_list("state", "amount")
            ),
        }

    await eventually(lambda: balance("receiver:bob") == 25_000)
    b = await in_thread(books)()
    assert b["alice"] == 75_000 and b["bob"] == 25_000 and b["receipts"] == 25_000
    assert b["incoming"] == [(payment.payment_id, 25_000)]  # one PSK2 payment id at bob
    assert {s for s, _ in b["chunks"]} == {"fulfilled"}
    assert sum(int(a) for _, a in b["chunks"]) == 25_000

    # Live progress on the channel layer: quoting, sending, per chunk, completed.
    statuses = []
    while True:
        try:
            event = await asyncio.wait_for(layer.receive(channel), 0.2)
        except TimeoutError:
            break
        assert event["type"] == "outgoing.progress"
        statuses.append(event["payment"]["status"])
    assert statuses[0] == "quoting" and statuses[-1] == "completed"
    assert statuses.count("sending") >= done.chunks_fulfilled

    # A second run is a no-op (status check).
    assert await outgoing_payment_run(payment_id=payment.pk) is None


async def test_destination_amount_with_a_small_first_chunk(live_server: Any) -> None:
    await in_thread(make_receiver)("bob")
    await in_thread(fund)("receiver:alice", 10_000)
    payment = await in_thread(create)(
        source_account_code="receiver:alice",
        receiver=f"{live_server.url}/bob",
        amount=3_000,
        mode="destination",
    )
    done = await outgoing_payment_run(payment_id=payment.pk)
    assert done is not None
    assert done.status == "completed", done.last_error
    assert int(done.amount_delivered) == 3_000 and int(done.quote_source_amount or 0) == 3_000
    # Reserved the quote plus slippage, kept only what was spent.
    assert int(done.amount_reserved) == int(done.amount_sent) == 3_000
    assert await in_thread(balance)("receiver:alice") == 7_000


async def test_the_task_runs_it_eagerly_on_commit(live_server: Any) -> None:
    await in_thread(make_receiver)("bob")
    await in_thread(fund)("receiver:alice", 5_000)
    # start=True: queued on commit; eager Celery runs it inside the call (on this loop).
    payment = await in_thread(outgoing_payment_create)(
        source_account_code="receiver:alice", receiver=f"{live_server.url}/bob", amount=1_234
    )
    row = await in_thread(OutgoingPayment.objects.get)(pk=payment.pk)
    assert row.status == "completed" and int(row.amount_delivered) == 1_234


def test_insufficient_balance_is_refused_atomically() -> None:
    fund("receiver:alice", 1_000)
    with pytest.raises(InsufficientBalance) as exc:
        create(source_account_code="receiver:alice", receiver="$example.com/bob", amount=1_001)
    assert exc.value.http_status == 409 and exc.value.details["available"] == "1000"
    assert not OutgoingPayment.objects.exists()

    first = create(source_account_code="receiver:alice", receiver="$example.com/bob", amount=700)
    assert int(first.amount_reserved) == 700
    # The reservation counts against the next one, in any process (it is a row).
    with pytest.raises(InsufficientBalance):
        create(source_account_code="receiver:alice", receiver="$example.com/carol", amount=301)
    second = create(source_account_code="receiver:alice", receiver="$example.com/carol", amount=300)
    assert OutgoingPayment.objects.count() == 2 and second.pk != first.pk
    # A finished payment keeps only what it spent reserved: here nothing.
    OutgoingPayment.objects.filter(pk=first.pk).update(status="failed", amount_reserved=0)
    create(source_account_code="receiver:alice", receiver="$example.com/dan", amount=700)
    # A node account without a floor may go negative (the operator pays out of equity)...
    LedgerAccount.objects.create(code="node:operator", kind="node", asset_code="XRP", asset_scale=9)
    create(source_account_code="node:operator", receiver="$example.com/bob", amount=10**12)
    # ... unless it has one.
    LedgerAccount.objects.filter(code="node:operator").update(min_balance=-5)
    with pytest.raises(InsufficientBalance):
        create(source_account_code="node:operator", receiver="$example.com/bob", amount=6)


def test_validation_and_idempotency() -> None:
    fund("receiver:alice", 1_000)
    fund("peer:somebody", 1_000, kind="peer")
    ok = {"source_account_code": "receiver:alice", "receiver": "$example.com/bob"}
    with pytest.raises(OutgoingNotAllowed):
        create(**ok, amount=0)
    with pytest.raises(OutgoingNotAllowed):
        create(**ok, amount=2**64)
    with pytest.raises(OutgoingNotAllowed, match="receiver or node"):
        create(source_account_code="peer:somebody", receiver="$example.com/bob", amount=1)
    with pytest.raises(OutgoingNotAllowed, match="no account"):
        create(source_account_code="receiver:nobody", receiver="$example.com/bob", amount=1)
    with pytest.raises(SpspError):
        create(source_account_code="receiver:alice", receiver="$user@example.com", amount=1)
    with pytest.raises(OutgoingNotAllowed, match="destination-fixed"):
        create(**ok, amount=5, max_source_amount=10)

    one = create(**ok, amount=500, idempotency_key="order-1")
    again = create(**ok, amount=500, idempotency_key="order-1")
    assert again.pk == one.pk and OutgoingPayment.objects.count() == 1
    with pytest.raises(IdempotencyKeyReused):
        create(**ok, amount=501, idempotency_key="order-1")
    assert int(OutgoingPayment.objects.get().amount_reserved) == 500


async def test_spsp_failure_fails_the_payment_and_releases_the_reservation(
    live_server: Any,
) -> None:
    await in_thread(fund)("receiver:alice", 1_000)
    payment = await in_thread(create)(
        source_account_code="receiver:alice", receiver=f"{live_server.url}/nobody", amount=400
    )
    done = await outgoing_payment_run(payment_id=payment.pk)
    assert done is not None and done.status == "failed"
    assert "HTTP 404" in done.last_error
    assert int(done.amount_reserved) == 0 and done.finished_at is not None
    # Only the funding: nothing was debited.
    assert await in_thread(Posting.objects.filter(account__code="receiver:alice").count)() == 1
    assert await in_thread(balance)("receiver:alice") == 1_000


async def test_a_quote_that_cannot_be_met_fails_before_any_chunk(live_server: Any) -> None:
    """Destination-fixed with a maximum below the quote: nothing is sent."""
    await in_thread(make_receiver)("bob")
    await in_thread(fund)("receiver:alice", 10_000)
    payment = await in_thread(create)(
        source_account_code="receiver:alice",
        receiver=f"{live_server.url}/bob",
        amount=3_000,
        mode="destination",
        max_source_amount=2_000,
    )
    done = await outgoing_payment_run(
        payment_id=payment.pk, options=RunOptions(chunk_expiry=timedelta(seconds=5))
    )
    assert done is not None and done.status == "failed" and "more than the 2000" in done.last_error
    assert not await in_thread(OutgoingChunk.objects.exists)()
    assert await in_thread(balance)("receiver:alice") == 10_000


async def test_pays_a_shop_order_invoice_exactly(live_server: Any) -> None:
    """An SPSP answer with ``balance`` (an invoice): a destination amount over what is left
    is refused before anything is sent; the exact amount pays the order."""
    from receivers.shop import order_create, order_refresh

    bob = await in_thread(make_receiver)("bob")
    await in_thread(fund)("receiver:alice", 10_000)
    order = await in_thread(order_create)(receiver=bob, amount=3_000, description="tea")
    url = f"{live_server.url}/shop/{order.id}/spsp"
    too_much = await in_thread(create)(
        source_account_code="receiver:alice", receiver=url, amount=3_001, mode="destination"
    )
    refused = await outgoing_payment_run(payment_id=too_much.pk)
    assert refused is not None and refused.status == "failed"
    assert "accepts 3000 more" in refused.last_error
    exact = await in_thread(create)(
        source_account_code="receiver:alice", receiver=url, amount=3_000, mode="destination"
    )
    done = await outgoing_payment_run(payment_id=exact.pk)
    assert done is not None
    assert done.status == "completed", done.last_error
    assert int(done.amount_delivered) == 3_000
    paid = await in_thread(order_refresh)(order=order)
    assert paid.status == "paid" and int(paid.received) == 3_000
    assert await in_thread(balance)("receiver:alice") == 7_000


async def test_a_receiver_given_by_address_and_secret_is_paid_without_an_spsp_query(
    live_server: Any,
) -> None:
    """``pay_to`` (what an HTTP-ILP ``Pay`` header gives): PSK2 straight to that address,
    with the same reservation, chunk rows and booking; the SPSP URL is never asked."""
    from payments.sending import query_spsp

    await in_thread(make_receiver)("bob")
    await in_thread(fund)("receiver:alice", 10_000)
    details = await query_spsp(f"{live_server.url}/bob", protocol="psk2")
    payment = await in_thread(create)(
        source_account_code="receiver:alice",
        receiver="https://api.example/paid",  # only names what is paid: never queried
        amount=2_500,
        mode="destination",
        max_source_amount=3_000,
        pay_to=details,
    )
    assert payment.spsp_url == "" and payment.protocol == "psk2"
    assert int(payment.amount_reserved) == 3_000

    done = await outgoing_payment_run(payment_id=payment.pk)

    assert done is not None and done.status == OutgoingPayment.Status.COMPLETED, done
    assert int(done.amount_delivered) == 2_500 and int(done.amount_debited) == 2_500
    assert done.shared_secret == ""
    await eventually(lambda: balance("receiver:bob") == 2_500)
    assert await in_thread(balance)("receiver:alice") == 7_500
    chunks = await in_thread(list)(
        OutgoingChunk.objects.filter(payment=payment).values_list("state", flat=True)
    )
    assert chunks and set(chunks) == {"fulfilled"}


def test_a_receiver_given_by_address_is_not_paid_over_stream() -> None:
    from payments.sending import SpspDetails

    fund("receiver:alice", 1_000)
    with pytest.raises(OutgoingNotAllowed, match="PSK2"):
        create(
            source_account_code="receiver:alice",
            receiver="https://api.example/paid",
            amount=10,
            protocol="stream",
            pay_to=SpspDetails("test.node.receivers.bob.x", b"\x01" * 32),
        )
