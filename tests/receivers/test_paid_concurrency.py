"""Concurrent calls on one pay token never overspend (PostgreSQL: real row locks)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from asgiref.sync import async_to_sync
from django.db import connection, connections
from django.test import Client

from ilp.packet import Fulfill
from ilp.psk2 import b64url_encode
from receivers.models import PaidToken, Receiver
from receivers.paid import PayToken, paid_receiver_get_or_create, paid_token_charge
from receivers.testing import ensure_payer, parse_pay, pay_draft1
from tests.conftest import requires_postgres

pytestmark = [requires_postgres, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

PRICE = 100
T = TypeVar("T")


@pytest.fixture(autouse=True)
def _price(settings: Any) -> None:
    settings.ILP_PAID_API_PRICE = PRICE


def in_threads(n: int, fn: Callable[[], T]) -> list[T]:
    """Run ``fn`` in ``n`` threads released at the same moment; each closes its connection."""
    barrier = threading.Barrier(n)
    results: list[T] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            barrier.wait()
            value = fn()
            with lock:
                results.append(value)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


def funded_token(amount: int) -> str:
    ensure_payer()
    token = b64url_encode(os.urandom(16))
    response = Client().get("/api/v1/demo/paid", HTTP_PAY_TOKEN=token)
    pay = parse_pay(response["Pay"])
    reply = async_to_sync(pay_draft1)(pay.destination, pay.shared_secret, amount)
    assert isinstance(reply, Fulfill)
    return token


def test_on_postgres() -> None:
    assert connection.vendor == "postgresql"


def test_concurrent_charges_never_overspend() -> None:
    token = PayToken.parse(funded_token(3 * PRICE + 50))
    receiver = paid_receiver_get_or_create("paidapi")
    outcomes = in_threads(
        16, lambda: paid_token_charge(receiver=receiver, token=token, price=PRICE)
    )
    assert sum(o.ok for o in outcomes) == 3
    assert sorted(o.balance for o in outcomes if o.ok) == [50, 150, 250]
    assert all(o.balance == 50 for o in outcomes if not o.ok)
    row = PaidToken.objects.get(token=token.text)
    assert (int(row.charged), row.calls) == (3 * PRICE, 3)


def test_concurrent_http_calls_never_overspend() -> None:
    token = funded_token(2 * PRICE)
    statuses = in_threads(
        10, lambda: Client().get("/api/v1/demo/paid", HTTP_PAY_TOKEN=token).status_code
    )
    assert sorted(statuses) == [200] * 2 + [402] * 8
    assert int(PaidToken.objects.get(token=token).charged) == 2 * PRICE


def test_concurrent_first_calls_create_the_receiver_once() -> None:
    statuses = in_threads(8, lambda: Client().get("/api/v1/demo/paid").status_code)
    assert statuses == [402] * 8
    assert Receiver.objects.filter(name="paidapi").count() == 1
