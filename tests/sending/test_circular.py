"""Circular payments: out through one link of ours, back in through the other end."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from ilp.conditions import sha256
from ilp.packet import Fulfill, Prepare, Reject
from links.sender_link import register_local_destinations
from links.switch import get_switch
from payments.ledger import get_book
from payments.models_outgoing import CircularPayment
from payments.sending import OPERATOR_ACCOUNT
from payments.sending.circular import (
    circular_fulfillment,
    circular_payment_create,
    circular_payment_resolve,
    circular_payment_run,
    circular_receive,
)
from payments.sending.errors import InsufficientBalance
from tests.sending.conftest import NODE, Faults, balance, btp_pair, in_thread, install_faults

pytestmark = pytest.mark.django_db(transaction=True)


async def test_circular_payment_goes_out_one_link_and_comes_back_the_other() -> None:
    # What get_switch() should do (open_sender also does it on the process's switch).
    register_local_destinations(get_switch())
    async with btp_pair():
        circular = await in_thread(circular_payment_create)(
            out_peer="hub", amount=1_000, start=False
        )
        assert circular.destination == f"{NODE}.circular.{circular.token}"
        done = await circular_payment_run(circular_id=circular.pk)
    assert done is not None
    assert done.status == "completed", done.last_error
    assert done.in_peer == "leaf" and int(done.amount_in or 0) == 1_000 and done.cost == 0
    assert done.rtt_ms is not None and done.rtt_ms > 0 and done.arrived_at is not None
    books = await in_thread(
        lambda: {c: balance(c) for c in (OPERATOR_ACCOUNT, "peer:hub", "peer:leaf")}
    )()
    # Out: operator -1000, hub +1000. In: leaf -1000, operator +1000. The loop cost 0.
    assert books == {OPERATOR_ACCOUNT: 0, "peer:hub": 1_000, "peer:leaf": -1_000}
    # Runs once.
    assert await circular_payment_run(circular_id=circular.pk) is None


async def test_a_circular_payment_that_does_not_come_back_fails_and_books_nothing() -> None:
    async with btp_pair():
        circular = await in_thread(circular_payment_create)(out_peer="hub", amount=500, start=False)
        # Somewhere on the way there is no route for it.
        install_faults(faults := Faults(plan={1: Reject("F02", "test.x", "no route found.")}))
        done = await circular_payment_run(circular_id=circular.pk)
    assert faults.count == 1
    assert done is not None and done.status == "failed" and done.code == "F02"
    assert done.amount_in is None
    assert await in_thread(balance)(OPERATOR_ACCOUNT) == 0
    assert await in_thread(balance)("peer:hub") == 0
    snapshot = get_book().snapshot(OPERATOR_ACCOUNT)
    assert snapshot.pending_debits == 0


def _prepare(
    token: str, *, amount: int = 10, condition: bytes | None = None, ttl: float = 10
) -> Prepare:
    return Prepare(
        amount,
        timezone.now() + timedelta(seconds=ttl),
        condition if condition is not None else sha256(circular_fulfillment(token)),
        f"{NODE}.circular.{token}",
        b"",
    )


async def test_circular_receive_refusals() -> None:
    from payments.ledger import ensure_account

    await in_thread(ensure_account)("peer:back", kind="peer")
    now = timezone.now()

    async def receive(prepare: Prepare, key: str) -> Fulfill | Reject:
        return await circular_receive(prepare, source_account="peer:back", packet_key=key, now=now)

    # Unknown token with a consistent condition: F06.
    reply = await receive(_prepare("00" * 16), "k1")
    assert isinstance(reply, Reject) and reply.code == "F06"
    circular = await in_thread(circular_payment_create)(out_peer="hub", amount=10, start=False)
    # Known token, wrong condition: F05. Expired: R00.
    reply = await receive(_prepare(circular.token, condition=os.urandom(32)), "k2")
    assert isinstance(reply, Reject) and reply.code == "F05"
    reply = await receive(_prepare(circular.token, ttl=-1), "k3")
    assert isinstance(reply, Reject) and reply.code == "R00"
    # Not sent yet (pending): F06.
    reply = await receive(_prepare(circular.token), "k4")
    assert isinstance(reply, Reject) and reply.code == "F06"
    # Sending: fulfilled once, a second copy is unexpected.
    await in_thread(CircularPayment.objects.filter(pk=circular.pk).update)(status="sending")
    reply = await receive(_prepare(circular.token, amount=9), "k5")
    assert isinstance(reply, Fulfill) and sha256(reply.fulfillment) == sha256(
        circular_fulfillment(circular.token)
    )
    reply = await receive(_prepare(circular.token, amount=9), "k6")
    assert isinstance(reply, Reject) and reply.code == "F06"
    assert get_book().snapshot("peer:back").pending_debits == 0  # every refusal released
    assert await in_thread(balance)("peer:back") == -9
    assert await in_thread(balance)(OPERATOR_ACCOUNT) == 9  # credited back (not sent yet)


def test_resolving_a_circular_payment_whose_runner_died() -> None:
    from payments.ledger import ensure_account

    ensure_account("peer:hub", kind="peer")
    came_back = circular_payment_create(out_peer="hub", amount=100, start=False)
    lost = circular_payment_create(out_peer="hub", amount=100, start=False)
    past = timezone.now() - timedelta(minutes=1)
    CircularPayment.objects.filter(pk__in=[came_back.pk, lost.pk]).update(
        status="sending", expires_at=past, out_account="peer:hub"
    )
    CircularPayment.objects.filter(pk=came_back.pk).update(amount_in=99, in_peer="leaf")
    assert circular_payment_resolve(circular_id=came_back.pk) == "completed"
    assert circular_payment_resolve(circular_id=lost.pk) == "failed"
    assert circular_payment_resolve(circular_id=came_back.pk) == "completed"  # idempotent
    assert balance("peer:hub") == 100 and balance(OPERATOR_ACCOUNT) == -100


def test_circular_reservations_and_the_command() -> None:
    from payments.ledger import ensure_account

    ensure_account(OPERATOR_ACCOUNT, kind="node")
    ensure_account("receiver:alice", kind="receiver")
    with pytest.raises(InsufficientBalance):
        circular_payment_create(out_peer="hub", amount=1, source_account_code="receiver:alice")
    with pytest.raises(CommandError, match="no enabled peer"):
        call_command("circular_payment", "--out", "nosuch", "--amount", "5")
    assert CircularPayment.objects.get().status == "failed"
