"""``manage.py pay`` and the admin's add forms, end to end (eager Celery, our live SPSP)."""

from __future__ import annotations

import threading
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import connections
from django.test import Client

from payments.models import LedgerAccount
from payments.models_outgoing import CircularPayment, OutgoingChunk, OutgoingPayment
from payments.sending import OPERATOR_ACCOUNT, outgoing_payment_create
from payments.sending.errors import InsufficientBalance
from tests.conftest import requires_postgres
from tests.sending.conftest import balance, fund, make_receiver

pytestmark = pytest.mark.django_db(transaction=True)


def pay(*args: str) -> str:
    out = StringIO()
    call_command("pay", *args, stdout=out)
    return out.getvalue()


def test_pay_command_pays_and_prints_progress(live_server: Any) -> None:
    make_receiver("bob")
    fund("receiver:alice", 10_000)
    out = pay(f"{live_server.url}/bob", "4000", "--from", "alice", "--key", "cli-1")
    assert "[quoting]" in out and "[completed] sent 4000 delivered 4000" in out
    payment = OutgoingPayment.objects.get()
    assert payment.status == "completed" and payment.idempotency_key == "cli-1"
    assert balance("receiver:alice") == 6_000
    # The same key again pays nothing more.
    out = pay(f"{live_server.url}/bob", "4000", "--from", "alice", "--key", "cli-1")
    assert OutgoingPayment.objects.count() == 1 and balance("receiver:alice") == 6_000


def test_pay_command_destination_amount_from_the_operator(live_server: Any) -> None:
    make_receiver("bob")
    out = pay(f"{live_server.url}/bob", "1500", "--destination-amount")
    assert "[completed]" in out and "delivered 1500" in out
    # The node's own account may go negative (it pays out of equity).
    assert balance(OPERATOR_ACCOUNT) == -1_500


def test_pay_command_refusals(live_server: Any) -> None:
    fund("receiver:alice", 100)
    with pytest.raises(CommandError, match="can send 100, not 500"):
        pay(f"{live_server.url}/bob", "500", "--from", "alice")
    with pytest.raises(CommandError, match="HTTP 404"):
        pay(f"{live_server.url}/nobody", "50", "--from", "alice")
    assert OutgoingPayment.objects.get().status == "failed"
    with pytest.raises(CommandError, match="not a payment pointer"):
        pay("$user@host/x", "5", "--from", "alice")


@pytest.fixture
def staff(client: Client, django_user_model: type[User]) -> Client:
    django_user_model.objects.create_superuser("root", "root@example.org", "pw")
    client.login(username="root", password="pw")
    return client


def test_admin_starts_a_payment_once_and_shows_it_read_only(
    staff: Client, live_server: Any
) -> None:
    make_receiver("bob")
    alice = fund("receiver:alice", 10_000)
    page = staff.get("/admin/payments/outgoingpayment/add/")
    assert page.status_code == 200
    key = page.context["adminform"].form.fields["request_key"].initial
    data = {
        "source_account": alice.pk,
        "receiver": f"{live_server.url}/bob",
        "amount": "2500",
        "mode": "source",
        "via_peer": "",
        "request_key": key,
    }
    response = staff.post("/admin/payments/outgoingpayment/add/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    # A double submit of the same form starts nothing new.
    staff.post("/admin/payments/outgoingpayment/add/", data)
    payment = OutgoingPayment.objects.get()
    assert payment.status == "completed" and payment.requested_by is not None
    assert balance("receiver:alice") == 7_500
    detail = staff.get(f"/admin/payments/outgoingpayment/{payment.pk}/change/")
    assert detail.status_code == 200 and b"2500" in detail.content
    assert OutgoingChunk.objects.filter(payment=payment).exists()
    # Refusals are form errors, not server errors.
    data.update(amount="999999", request_key="another")
    refused = staff.post("/admin/payments/outgoingpayment/add/", data)
    assert refused.status_code == 200 and b"can send 7500" in refused.content
    assert staff.get("/admin/payments/circularpayment/add/").status_code == 200


def test_admin_circular_add_reports_a_missing_link(staff: Client) -> None:
    response = staff.post(
        "/admin/payments/circularpayment/add/",
        {"out_peer": "nosuch", "amount_out": "10", "source": OPERATOR_ACCOUNT, "request_key": "x"},
    )
    assert response.status_code == 302
    circular = CircularPayment.objects.get()
    assert circular.status == "failed" and "no enabled peer" in circular.last_error


@requires_postgres
def test_concurrent_reservations_never_overspend() -> None:
    """Row lock on the source account: of 8 racing 300-unit payments from 1000, 3 fit."""
    fund("receiver:alice", 1_000)
    LedgerAccount.objects.get(code="receiver:alice")
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def attempt(n: int) -> None:
        try:
            barrier.wait()
            outgoing_payment_create(
                source_account_code="receiver:alice",
                receiver=f"$example.com/r{n}",
                amount=300,
                start=False,
            )
            outcomes.append("ok")
        except InsufficientBalance:
            outcomes.append("refused")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok"] * 3 + ["refused"] * 5
    assert sum(int(p.amount_reserved) for p in OutgoingPayment.objects.all()) == 900


def test_the_sweeper_starts_payments_nobody_ran(live_server: Any) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from payments.sending.tasks import resume_outgoing_payments

    make_receiver("bob")
    fund("receiver:alice", 1_000)
    payment = outgoing_payment_create(
        source_account_code="receiver:alice",
        receiver=f"{live_server.url}/bob",
        amount=600,
        start=False,  # as if the broker lost the task
    )
    assert resume_outgoing_payments() == 0  # too recent to be called lost
    OutgoingPayment.objects.filter(pk=payment.pk).update(
        created_at=timezone.now() - timedelta(minutes=5)
    )
    assert resume_outgoing_payments() == 1
    payment.refresh_from_db()
    assert payment.status == "completed" and balance("receiver:alice") == 400
    assert resume_outgoing_payments() == 0
