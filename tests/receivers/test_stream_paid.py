"""Paid APIs over STREAM: a pay token's payment pointer (named by ``Link`` on every answer
to a request with ``Pay-Token``) answers SPSP4 with token-tagged STREAM credentials; the
packets paid to them credit that token, once each, next to PSK2 top-ups."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any
from urllib.parse import urlsplit

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from django.urls import reverse

from ilp.packet import Fulfill, Reject
from ilp.psk2 import b64url_decode, b64url_encode
from ilp.stream import StreamMoneyFrame, StreamReceiptFrame, connection_id, verify_receipt
from payments.ledger import wait_receipts_applied
from payments.models import IncomingPayment, Receipt
from receivers.models import PaidToken
from receivers.paid import MSG_NO_FUNDS, pay_token_tag
from receivers.stream_receiver import connections
from receivers.testing import ensure_payer, parse_pay, pay_draft2
from tests.receivers.test_stream_receiver import Sender

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/v1/demo/paid"
PRICE = 100
SPSP4 = "application/spsp4+json"


@pytest.fixture(autouse=True)
def _setup(settings: Any) -> None:
    settings.ILP_PAID_API_PRICE = PRICE
    connections.clear()
    ensure_payer()


def new_token() -> str:
    return b64url_encode(os.urandom(16))


def call(token: str | None = None, method: str = "get") -> Any:
    headers = {} if token is None else {"HTTP_PAY_TOKEN": token}
    return getattr(Client(), method)(URL, **headers)


acall = sync_to_async(call)


def token_pointer(token: str) -> str:
    """The SPSP URL in ``Link`` of an unpaid call with ``token`` (path only)."""
    response = call(token)
    assert response.status_code == 402
    link = response["Link"]
    assert link.startswith("<") and link.endswith('>; rel="monetization"')
    path: str = urlsplit(link[1 : link.index(">")]).path
    return path


def spsp(path: str, accept: str = SPSP4, **headers: str) -> Any:
    return Client().get(path, headers={"Accept": accept, **headers})


def credentials(path: str, **headers: str) -> dict[str, Any]:
    response = spsp(path, **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == SPSP4
    body: dict[str, Any] = json.loads(response.content)
    return body


async def pay_stream(body: dict[str, Any], *amounts: int) -> list[str]:
    """Pay ``amounts`` as StreamMoney packets of one connection; their packet keys."""
    sender = Sender(body)
    keys = []
    for amount in amounts:
        key = os.urandom(16).hex()
        packet = sender.prepare(amount, (StreamMoneyFrame(1, 1),), minimum=amount)
        reply = await sender.send(packet, key)
        assert isinstance(reply, Fulfill), reply
        assert sender.reply(packet, reply).prepare_amount == amount
        keys.append(key)
    return keys


# --- the token's payment pointer ----------------------------------------------------------------


def test_link_names_the_tokens_pointer_which_answers_spsp4_tagged() -> None:
    token = new_token()
    tag = b64url_encode(pay_token_tag(token))
    path = token_pointer(token)
    assert path == f"/api/v1/paid/paidapi/tokens/{tag}"
    assert path == reverse("receivers_api:paid-token-spsp", args=["paidapi", tag])
    assert token not in path  # the tag only: knowing the pointer lets one pay, not spend
    body = credentials(path)
    assert body["destination_account"].startswith(f"test.node.receivers.paidapi.{tag}.~")
    assert len(base64.b64decode(body["shared_secret"])) == 32
    assert "receipts_enabled" not in body
    assert body != credentials(path)  # fresh credentials per query
    # Without a token, Link is the receiver's own pointer (untagged money).
    assert call()["Link"] == '<https://pay.example.org/paidapi>; rel="monetization"'


def test_the_tokens_pointer_answers_psk2_and_refuses_the_rest() -> None:
    token = new_token()
    tag = b64url_encode(pay_token_tag(token))
    path = token_pointer(token)
    psk2 = spsp(path, "application/spsp+json")
    assert psk2.status_code == 200 and psk2["Content-Type"] == "application/spsp+json"
    destination = json.loads(psk2.content)["destination_account"]
    assert destination.startswith(f"test.node.receivers.paidapi.{tag}.") and ".~" not in destination
    refused = spsp(path, "text/html")
    assert refused.status_code == 406 and "spsp4+json" in json.loads(refused.content)["error"]
    assert spsp(f"/api/v1/paid/paidapi/tokens/{token}x").status_code == 404  # not a tag
    assert spsp(f"/api/v1/paid/nobody/tokens/{tag}").status_code == 404
    assert Client().options(path).status_code == 204
    assert Client().post(path).status_code == 405


def test_bad_receipt_headers_are_400() -> None:
    path = token_pointer(new_token())
    response = spsp(path, **{"Receipt-Nonce": "AAAA", "Receipt-Secret": "AAAA"})
    assert response.status_code == 400


# --- money ---------------------------------------------------------------------------------------


async def test_stream_money_credits_the_token_once_per_packet() -> None:
    token = new_token()
    path = await sync_to_async(token_pointer)(token)
    body = await sync_to_async(credentials)(path)
    sender = Sender(body)
    # A rate probe (unfulfillable) credits nothing.
    probe = sender.prepare(10**6, fulfillable=False)
    reply = await sender.send(probe)
    assert isinstance(reply, Reject) and reply.code == "F99"
    # Two packets, the first one delivered twice (a retry, or another process).
    first = sender.prepare(80, (StreamMoneyFrame(1, 1),))
    assert isinstance(await sender.send(first, "key-1"), Fulfill)
    connections.clear()
    assert isinstance(await sender.send(first, "key-1"), Fulfill)
    assert isinstance(
        await sender.send(sender.prepare(70, (StreamMoneyFrame(1, 1),)), "k2"), Fulfill
    )
    rows = await sync_to_async(lambda: [int(r.amount) for r in Receipt.objects.order_by("id")])()
    assert rows == [80, 70]
    paid = await acall(token)
    assert paid.status_code == 200 and paid["Pay-Balance"] == "50"
    short = await acall(token)
    assert short.status_code == 402 and short["Pay-Balance"] == "50"
    # The same ledger path as every payment: one connection, one incoming payment.
    assert await sync_to_async(wait_receipts_applied)(30)
    totals = await sync_to_async(
        lambda: [(int(p.total), p.chunks) for p in IncomingPayment.objects.all()]
    )()
    assert totals == [(150, 2)]


async def test_only_the_tokens_own_addresses_count() -> None:
    token, other = new_token(), new_token()
    await acall(token)  # creates the paid API's receiver
    # Money to the receiver's plain pointer, and to another token's pointer.
    await pay_stream(await sync_to_async(credentials)("/paidapi"), 500)
    other_path = await sync_to_async(token_pointer)(other)
    await pay_stream(await sync_to_async(credentials)(other_path), 300)
    unpaid = await acall(token)
    assert unpaid.status_code == 402 and unpaid["Pay-Balance"] == "0"
    paid = await acall(other)
    assert paid.status_code == 200 and paid["Pay-Balance"] == "200"


async def test_someone_elses_stream_payment_cannot_be_claimed_by_its_connection_id() -> None:
    """A STREAM payment to the receiver's plain pointer is keyed by its connection id,
    SHA-256(destination)[:16]: any connector on the path can compute it. Presented as a
    Pay-Token (its canonical base64url, the shape of a PSK2 payment-id token), it must not
    spend that money: 402 with the no-funds reason, and nothing charged."""
    await acall()  # creates the paid API's receiver
    victim = await sync_to_async(credentials)("/paidapi")
    await pay_stream(victim, 300)
    receipt = await sync_to_async(lambda: Receipt.objects.get())()
    stolen = b64url_encode(connection_id(victim["destination_account"]))
    assert receipt.payment_id == b64url_decode(stolen).hex()  # the id the attacker holds
    claim = await acall(stolen)
    assert claim.status_code == 402 and claim["Pay-Balance"] == "0"
    assert claim.json()["detail"] == MSG_NO_FUNDS.format(token=stolen, price=PRICE)
    assert not await sync_to_async(PaidToken.objects.exists)()


async def test_a_draft2_payment_without_data_cannot_be_claimed_by_its_address() -> None:
    """Draft 2 without 16 bytes of data groups a payment by SHA-256(destination)[:16]:
    as public as a STREAM connection id, so no pay token redeems it either."""
    pay = parse_pay((await acall())["Pay"])
    assert isinstance(await pay_draft2(pay.destination, pay.shared_secret, 300), Fulfill)
    stolen = b64url_encode(hashlib.sha256(pay.destination.encode()).digest()[:16])
    claim = await acall(stolen)
    assert claim.status_code == 402 and claim["Pay-Balance"] == "0"
    assert claim.json()["detail"] == MSG_NO_FUNDS.format(token=stolen, price=PRICE)


async def test_psk2_and_stream_top_ups_add_up() -> None:
    token = new_token()
    unpaid = await acall(token)
    pay = parse_pay(unpaid["Pay"])
    reply = await pay_draft2(pay.destination, pay.shared_secret, 60)
    assert isinstance(reply, Fulfill)
    path = await sync_to_async(token_pointer)(token)
    await pay_stream(await sync_to_async(credentials)(path), 40, 25)
    paid = await acall(token)
    assert paid.status_code == 200 and paid["Pay-Balance"] == "25"


async def test_receipts_on_the_tokens_pointer_verify() -> None:
    token = new_token()
    path = await sync_to_async(token_pointer)(token)
    nonce, secret = os.urandom(16), os.urandom(32)
    body = await sync_to_async(credentials)(
        path,
        **{
            "Receipt-Nonce": base64.b64encode(nonce).decode(),
            "Receipt-Secret": base64.b64encode(secret).decode(),
        },
    )
    assert body["receipts_enabled"] is True
    sender = Sender(body)
    totals = []
    for amount in (120, 30):
        packet = sender.prepare(amount, (StreamMoneyFrame(1, 1),))
        reply = await sender.send(packet)
        assert isinstance(reply, Fulfill)
        frame = next(
            f for f in sender.reply(packet, reply).frames if isinstance(f, StreamReceiptFrame)
        )
        totals.append(verify_receipt(frame.receipt, secret).total_received)
    assert totals == [120, 150]
    paid = await acall(token)
    assert paid.status_code == 200 and paid["Pay-Balance"] == "50"
