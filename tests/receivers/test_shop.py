"""Shop orders: checkout page, the order's own SPSP receiver, paid from receipts."""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db import connections
from django.test import Client

from ilp.packet import Fulfill
from receivers.models import Order, Receiver
from receivers.services import receiver_create
from receivers.shop import (
    OrderError,
    order_create,
    order_refresh,
    orders_refresh_pending,
)
from receivers.testing import ensure_payer, pay_draft1, pay_draft2
from tests.conftest import requires_postgres

pytestmark = pytest.mark.django_db(transaction=True)

AMOUNT = 5000


@pytest.fixture
def shop(alice_user: User) -> Receiver:
    ensure_payer()
    return receiver_create(user=alice_user, name="boutique", description="Alice's shop")


@pytest.fixture
def order(shop: Receiver) -> Order:
    return order_create(receiver=shop, amount=AMOUNT, description="Two books", reference="A-17")


def spsp(order: Order, accept: str = "application/spsp+json") -> Any:
    return Client().get(f"/shop/{order.id}/spsp", HTTP_ACCEPT=accept)


async def pay(order: Order, amount: int, *, draft: int = 1) -> None:
    response = await sync_to_async(spsp)(order)
    assert response.status_code == 200, response.content
    body = json.loads(response.content)
    secret = base64.b64decode(body["shared_secret"])
    if draft == 1:
        reply = await pay_draft1(body["destination_account"], secret, amount)
    else:
        reply = await pay_draft2(body["destination_account"], secret, amount)
    assert isinstance(reply, Fulfill)


def status(order: Order) -> dict[str, Any]:
    response = Client().get(f"/shop/{order.id}/status")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


astatus = sync_to_async(status)


# --- orders -----------------------------------------------------------------------------------


def test_orders_need_an_amount_and_a_description(shop: Receiver) -> None:
    for amount in (0, -1, 2**64):
        with pytest.raises(OrderError):
            order_create(receiver=shop, amount=amount, description="x")
    with pytest.raises(OrderError):
        order_create(receiver=shop, amount=1, description="  ")


def test_checkout_offers_payment_request_and_the_pointer(order: Order) -> None:
    response = Client().get(f"/shop/{order.id}/")
    assert response.status_code == 200
    html = response.content.decode()
    pointer = f"$pay.example.org/shop/{order.id}/spsp"
    assert pointer in html
    assert 'supportedMethods: "interledger"' in html
    assert "<svg" in html  # the QR code
    assert "0.000005" in html and "XRP" in html and "A-17" in html
    config = json.loads(
        html.split('id="checkout-config" type="application/json">')[1].split("<")[0]
    )
    assert config["pointer"] == pointer
    assert (config["currency"], config["value"], config["payment_request"]) == (
        "XRP",
        "0.000005",
        True,
    )
    assert Client().get("/shop/00000000-0000-0000-0000-000000000000/").status_code == 404


def test_the_order_spsp_answer(order: Order) -> None:
    response = spsp(order)
    body = json.loads(response.content)
    destination = body["destination_account"]
    tag = base64.urlsafe_b64decode(destination.split(".")[-2] + "==")
    assert destination.startswith("test.node.receivers.boutique.") and tag == order.id.bytes
    assert body["balance"] == {"maximum": "5000", "current": "0"}
    assert body["receiver_info"]["name"] == "Alice's shop"
    assert response["Cache-Control"] == "no-cache, private"
    assert response["Access-Control-Allow-Origin"] == "*"
    assert Client().get(f"/shop/{order.id}/spsp").status_code == 302  # HTML: the checkout
    assert spsp(order, "image/png").status_code == 406
    # SPSP4 (STREAM) is answered too: tests/receivers/test_stream_shop.py.
    assert Client().options(f"/shop/{order.id}/spsp").status_code == 204


# --- getting paid -----------------------------------------------------------------------------------


async def test_marked_paid_when_the_receipts_reach_the_amount(order: Order) -> None:
    await pay(order, 2000)
    partial = await astatus(order)
    assert (partial["status"], partial["received"], partial["paid_at"]) == ("pending", "2000", None)
    body = json.loads((await sync_to_async(spsp)(order)).content)
    assert body["balance"] == {"maximum": "5000", "current": "2000"}
    await pay(order, 3000, draft=2)
    paid = await astatus(order)
    assert (paid["status"], paid["received"]) == ("paid", "5000")
    assert paid["paid_at"] is not None
    # Paid once: later reads keep the first paid_at; the endpoint takes no more payments.
    assert (await astatus(order))["paid_at"] == paid["paid_at"]
    closed = await sync_to_async(spsp)(order)
    assert closed.status_code == 410
    assert "destination_account" not in json.loads(closed.content)


async def test_an_overpayment_is_recorded(order: Order) -> None:
    await pay(order, 7000)
    body = await astatus(order)
    assert (body["status"], body["received"]) == ("paid", "7000")


async def test_only_the_orders_own_addresses_count(order: Order, shop: Receiver) -> None:
    other = await sync_to_async(order_create)(receiver=shop, amount=AMOUNT, description="other")
    await pay(other, AMOUNT)
    pointer = json.loads(
        (
            await sync_to_async(Client().get)(f"/{shop.name}", HTTP_ACCEPT="application/spsp+json")
        ).content
    )
    await pay_draft1(
        pointer["destination_account"], base64.b64decode(pointer["shared_secret"]), AMOUNT
    )
    body = await astatus(order)
    assert (body["status"], body["received"]) == ("pending", "0")
    assert (await astatus(other))["status"] == "paid"


async def test_the_payment_handler_callback_is_only_a_hint(order: Order) -> None:
    destination = json.loads((await sync_to_async(spsp)(order)).content)["destination_account"]
    client = Client()
    complete = sync_to_async(client.post)
    hint = {"payeeAddress": destination, "fulfillment": base64.b64encode(bytes(32)).decode()}
    response = await complete(f"/shop/{order.id}/complete", hint, content_type="application/json")
    body = response.json()
    assert (body["paid"], body["payee_matches"], body["status"]) == (False, True, "pending")
    await pay(order, AMOUNT)
    response = await complete(
        f"/shop/{order.id}/complete",
        {"payeeAddress": "test.node.receivers.boutique.elsewhere"},
        content_type="application/json",
    )
    body = response.json()
    assert (body["paid"], body["payee_matches"]) == (True, False)


async def test_the_sweep_marks_paid_orders_nobody_looked_at(order: Order) -> None:
    await pay(order, AMOUNT)
    stored = await Order.objects.aget(pk=order.pk)
    assert stored.status == "pending"  # nobody read it yet
    assert await sync_to_async(orders_refresh_pending)() == 1
    stored = await Order.objects.aget(pk=order.pk)
    assert (stored.status, int(stored.received)) == ("paid", AMOUNT)


# --- the merchant -------------------------------------------------------------------------------------


def test_merchant_creates_lists_and_cancels_orders(shop: Receiver, alice_user: User) -> None:
    client = Client()
    client.force_login(alice_user)
    response = client.post(
        "/me/shop/", {"receiver": "boutique", "description": "A lamp", "amount": "1200"}
    )
    assert response.status_code == 302
    order = Order.objects.get(description="A lamp")
    assert response["Location"] == f"/shop/{order.id}/"
    listing = client.get("/me/shop/")
    assert listing.status_code == 200 and b"A lamp" in listing.content
    assert client.post(f"/me/shop/{order.id}/cancel").status_code == 302
    order.refresh_from_db()
    assert order.status == "cancelled"
    assert spsp(order).status_code == 410
    stranger = Client()
    stranger.force_login(User.objects.create_user(username="mallory"))
    other = order_create(receiver=shop, amount=10, description="x")
    assert stranger.post(f"/me/shop/{other.id}/cancel").status_code == 404
    assert Client().get("/me/shop/").status_code == 302  # login required


def test_order_api(shop: Receiver, alice_user: User) -> None:
    client = Client()
    assert client.post("/api/v1/shop/orders", {}).status_code in (401, 403)
    client.force_login(alice_user)
    response = client.post(
        "/api/v1/shop/orders",
        {"receiver": "boutique", "amount": 900, "description": "Tea", "reference": "T-1"},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["status"] == "pending" and created["amount"] == "900"
    assert created["pointer"] == f"$pay.example.org/shop/{created['id']}/spsp"
    assert client.get(f"/api/v1/shop/orders/{created['id']}").json()["id"] == created["id"]
    assert [o["id"] for o in client.get("/api/v1/shop/orders").json()] == [created["id"]]
    bad = client.post(
        "/api/v1/shop/orders",
        {"receiver": "someone-elses", "amount": 1, "description": "x"},
        content_type="application/json",
    )
    assert bad.status_code == 400 and "receiver" in bad.json()
    zero = client.post(
        "/api/v1/shop/orders",
        {"receiver": "boutique", "amount": 0, "description": "x"},
        content_type="application/json",
    )
    assert zero.status_code == 400 and "amount" in zero.json()["detail"]
    stranger = Client()
    stranger.force_login(User.objects.create_user(username="mallory"))
    assert stranger.get(f"/api/v1/shop/orders/{created['id']}").status_code == 404


# --- concurrency ------------------------------------------------------------------------------------


@requires_postgres
@pytest.mark.postgres
def test_concurrent_refreshes_mark_paid_once(order: Order) -> None:
    from asgiref.sync import async_to_sync

    async_to_sync(pay)(order, AMOUNT)
    barrier = threading.Barrier(8)
    seen: list[Any] = []

    def refresh() -> None:
        try:
            barrier.wait()
            fresh = Order.objects.select_related("receiver").get(pk=order.pk)
            seen.append(order_refresh(order=fresh).paid_at)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=refresh) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(seen) == 8 and len(set(seen)) == 1 and seen[0] is not None
