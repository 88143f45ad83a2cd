"""Shop orders over STREAM: the order's SPSP endpoint answers SPSP4 with order-tagged STREAM
credentials and the order's balance; STREAM packets count toward the order like PSK2 ones."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.test import Client

from ilp.packet import Fulfill
from ilp.psk2 import b64url_encode
from ilp.stream import StreamMoneyFrame
from payments.models import Receipt
from receivers.models import Order, Receiver
from receivers.services import receiver_create
from receivers.shop import order_cancel, order_create, order_refresh
from receivers.stream_receiver import connections
from receivers.testing import ensure_payer, pay_draft1
from tests.receivers.test_stream_receiver import Sender

pytestmark = pytest.mark.django_db(transaction=True)

AMOUNT = 5000
SPSP4 = "application/spsp4+json"


@pytest.fixture(autouse=True)
def _fresh_connections() -> None:
    connections.clear()


@pytest.fixture
def shop(alice_user: User) -> Receiver:
    ensure_payer()
    return receiver_create(user=alice_user, name="boutique", description="Alice's shop")


@pytest.fixture
def order(shop: Receiver) -> Order:
    return order_create(receiver=shop, amount=AMOUNT, description="Two books", reference="A-17")


def spsp4(order: Order, **headers: str) -> Any:
    return Client().get(f"/shop/{order.id}/spsp", headers={"Accept": SPSP4, **headers})


def credentials(order: Order) -> dict[str, Any]:
    response = spsp4(order)
    assert response.status_code == 200, response.content
    body: dict[str, Any] = json.loads(response.content)
    return body


def order_status(order: Order) -> dict[str, Any]:
    response = Client().get(f"/shop/{order.id}/status")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


astatus = sync_to_async(order_status)


def test_the_order_answers_spsp4(order: Order) -> None:
    response = spsp4(order)
    assert response.status_code == 200 and response["Content-Type"] == SPSP4
    body = json.loads(response.content)
    tag = b64url_encode(order.id.bytes)
    assert body["destination_account"].startswith(f"test.node.receivers.boutique.{tag}.~")
    assert len(base64.b64decode(body["shared_secret"])) == 32
    # An invoice: the balance as in the PSK2 answer, and never cached.
    assert body["balance"] == {"maximum": "5000", "current": "0"}
    assert response["Cache-Control"] == "no-cache, private"
    assert body["receiver_info"]["name"] == "Alice's shop"
    assert body != credentials(order)  # fresh credentials per query
    # @interledger/pay's Accept gets SPSP4 as well.
    pay_accept = Client().get(
        f"/shop/{order.id}/spsp", HTTP_ACCEPT="application/json, application/spsp4+json"
    )
    assert pay_accept["Content-Type"] == SPSP4


def test_receipt_headers(order: Order) -> None:
    asked = spsp4(
        order,
        **{
            "Receipt-Nonce": base64.b64encode(os.urandom(16)).decode(),
            "Receipt-Secret": base64.b64encode(os.urandom(32)).decode(),
        },
    )
    assert asked.status_code == 200 and json.loads(asked.content)["receipts_enabled"] is True
    bad = spsp4(order, **{"Receipt-Nonce": "AAAA"})
    assert bad.status_code == 400 and "Receipt" in json.loads(bad.content)["error"]


def test_a_closed_order_is_410_and_an_unknown_one_404(order: Order) -> None:
    order_cancel(order=order)
    response = spsp4(order)
    assert response.status_code == 410 and "cancelled" in json.loads(response.content)["error"]
    unknown = Client().get(
        "/shop/00000000-0000-0000-0000-000000000000/spsp", headers={"Accept": SPSP4}
    )
    assert unknown.status_code == 404


async def test_stream_packets_pay_the_order_once_each(order: Order) -> None:
    sender = Sender(await sync_to_async(credentials)(order))
    first = sender.prepare(3000, (StreamMoneyFrame(1, 1),), minimum=3000)
    assert isinstance(await sender.send(first, "packet-1"), Fulfill)
    connections.clear()  # the same Prepare seen again, as by another process
    assert isinstance(await sender.send(first, "packet-1"), Fulfill)
    body = await astatus(order)
    assert (body["status"], body["received"]) == ("pending", "3000")
    # The balance the next SPSP4 answer carries has moved.
    assert (await sync_to_async(credentials)(order))["balance"]["current"] == "3000"
    second = sender.prepare(2000, (StreamMoneyFrame(1, 1),), minimum=2000)
    assert isinstance(await sender.send(second, "packet-2"), Fulfill)
    body = await astatus(order)
    assert (body["status"], body["received"]) == ("paid", "5000")
    rows = await sync_to_async(lambda: sorted(int(r.amount) for r in Receipt.objects.all()))()
    assert rows == [2000, 3000]
    # Paid: no more credentials.
    assert (await sync_to_async(spsp4)(order)).status_code == 410


async def test_psk2_and_stream_add_up(order: Order) -> None:
    psk2 = await sync_to_async(
        lambda: json.loads(
            Client().get(f"/shop/{order.id}/spsp", HTTP_ACCEPT="application/spsp+json").content
        )
    )()
    reply = await pay_draft1(
        psk2["destination_account"], base64.b64decode(psk2["shared_secret"]), 1500
    )
    assert isinstance(reply, Fulfill)
    sender = Sender(await sync_to_async(credentials)(order))
    packet = sender.prepare(3500, (StreamMoneyFrame(1, 1),))
    assert isinstance(await sender.send(packet), Fulfill)
    refreshed = await sync_to_async(order_refresh)(order=order)
    assert refreshed.status == Order.Status.PAID and int(refreshed.received) == AMOUNT


async def test_stream_money_to_the_merchants_pointer_is_not_the_orders(
    order: Order, shop: Receiver
) -> None:
    sender = Sender(
        await sync_to_async(
            lambda: json.loads(Client().get("/boutique", HTTP_ACCEPT=SPSP4).content)
        )()
    )
    assert isinstance(await sender.send(sender.prepare(AMOUNT, (StreamMoneyFrame(1, 1),))), Fulfill)
    body = await astatus(order)
    assert (body["status"], body["received"]) == ("pending", "0")
