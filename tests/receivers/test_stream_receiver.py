"""STREAM receiving end to end: the SPSP4 answer → Prepares built with the real
``ilp.stream`` codec (the sender side) → the hot path (``receive_prepare``) → ledger rows."""

from __future__ import annotations

import base64
import json
import os
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from ilp.packet import Fulfill, Prepare, Reject
from ilp.stream import (
    ConnectionAssetDetailsFrame,
    ConnectionCloseFrame,
    ConnectionNewAddressFrame,
    Frame,
    StreamCloseFrame,
    StreamMaxMoneyFrame,
    StreamMoneyFrame,
    StreamPacket,
    StreamPacketType,
    StreamReceiptFrame,
    condition_for_data,
    connection_id,
    decrypt_packet,
    encrypt_packet,
    verify_receipt,
)
from payments.ledger import get_book, reset_book, wait_receipts_applied
from payments.models import IncomingPayment, Posting, Receipt
from receivers.models import MonetizedPage, Receiver
from receivers.pages import page_create, page_status
from receivers.psk2_receiver import receive_prepare
from receivers.services import receiver_create
from receivers.stream_receiver import connections, stats
from receivers.testing import ensure_payer

pytestmark = pytest.mark.django_db(transaction=True)

PEER = "peer:test-payer"
SPSP4 = "application/spsp4+json"


@pytest.fixture(autouse=True)
def _fresh_connections() -> None:
    connections.clear()


def spsp4(path: str = "/bob", **headers: str) -> dict[str, Any]:
    response = Client().get(path, headers={"Accept": SPSP4, **headers})
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == SPSP4
    body: dict[str, Any] = json.loads(response.content)
    return body


class Sender:
    """The sender side of one connection, built on ``ilp.stream`` alone."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.destination: str = body["destination_account"]
        self.secret = base64.b64decode(body["shared_secret"])
        self.sequence = 0

    def prepare(
        self,
        amount: int,
        frames: tuple[Frame, ...] = (),
        *,
        minimum: int = 0,
        fulfillable: bool = True,
        destination: str | None = None,
    ) -> Prepare:
        self.sequence += 1
        packet = StreamPacket(self.sequence, StreamPacketType.PREPARE, minimum, frames)
        data = encrypt_packet(self.secret, packet, os.urandom(12))
        condition = condition_for_data(self.secret, data) if fulfillable else os.urandom(32)
        expires = timezone.now() + timedelta(seconds=30)
        return Prepare(amount, expires, condition, destination or self.destination, data)

    async def send(self, prepare: Prepare, key: str | None = None) -> Fulfill | Reject:
        return await receive_prepare(
            prepare,
            source_account=PEER,
            packet_key=key or os.urandom(16).hex(),
            now=timezone.now(),
        )

    def reply(self, prepare: Prepare, reply: Fulfill | Reject) -> StreamPacket:
        """The authentic STREAM reply, checked as a sender checks it."""
        packet = decrypt_packet(self.secret, reply.data)
        request = decrypt_packet(self.secret, prepare.data)
        assert packet.sequence == request.sequence
        expected = (
            StreamPacketType.FULFILL if isinstance(reply, Fulfill) else StreamPacketType.REJECT
        )
        assert packet.packet_type is expected
        assert packet.prepare_amount == prepare.amount
        return packet


@sync_to_async
def receipts() -> list[Receipt]:
    return list(Receipt.objects.select_related("account").order_by("id"))


@sync_to_async
def peer_postings() -> list[tuple[str, int]]:
    return [
        (p.key, int(p.amount)) for p in Posting.objects.filter(account__code=PEER).order_by("id")
    ]


@pytest.fixture
def payer(bob: Receiver) -> str:
    return ensure_payer()


# --- SPSP4 negotiation ---------------------------------------------------------------------------


def test_spsp4_answers_stream_credentials(bob: Receiver) -> None:
    body = spsp4()
    assert body["destination_account"].startswith("test.node.receivers.bob.~")
    assert len(base64.b64decode(body["shared_secret"])) == 32
    assert body["shared_secret"].endswith("=")  # standard base64 with padding (RFC 0009)
    assert "receipts_enabled" not in body
    assert body["asset_info"] == {"code": "XRP", "scale": 9}
    assert body != spsp4()  # fresh credentials per query


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        (SPSP4, SPSP4),
        ("application/json, application/spsp4+json", SPSP4),  # @interledger/pay
        ("application/spsp+json;q=0.5, application/spsp4+json", SPSP4),
        ("application/spsp4+json, application/spsp+json", "application/spsp+json"),
        ("application/spsp+json", "application/spsp+json"),
    ],
)
def test_negotiation(bob: Receiver, accept: str, content_type: str) -> None:
    response = Client().get("/bob", HTTP_ACCEPT=accept)
    assert response.status_code == 200 and response["Content-Type"] == content_type
    destination = json.loads(response.content)["destination_account"]
    assert (".~" in destination) is (content_type == SPSP4)


def test_well_known_pay_answers_spsp4(bob: Receiver) -> None:
    assert spsp4("/.well-known/pay")["destination_account"].startswith("test.node.receivers.bob.~")


def test_receipt_headers_enable_receipts(bob: Receiver) -> None:
    body = spsp4(
        **{
            "Receipt-Nonce": base64.b64encode(b"n" * 16).decode(),
            "Receipt-Secret": base64.b64encode(b"s" * 32).decode(),
        }
    )
    assert body["receipts_enabled"] is True


@pytest.mark.parametrize(
    "headers",
    [
        {"Receipt-Nonce": base64.b64encode(b"n" * 16).decode()},
        {"Receipt-Nonce": "AAAA", "Receipt-Secret": base64.b64encode(b"s" * 32).decode()},
        {"Receipt-Nonce": base64.b64encode(b"n" * 16).decode(), "Receipt-Secret": "*"},
    ],
)
def test_bad_receipt_headers_are_400(bob: Receiver, headers: dict[str, str]) -> None:
    response = Client().get("/bob", headers={"Accept": SPSP4, **headers})
    assert response.status_code == 400
    assert "Receipt" in json.loads(response.content)["error"]


def test_preflight_allows_the_receipt_headers(bob: Receiver) -> None:
    allowed = Client().options("/bob")["Access-Control-Allow-Headers"]
    assert "Receipt-Nonce" in allowed and "Receipt-Secret" in allowed


# --- a payment, as @interledger/pay makes it -------------------------------------------------------


async def test_a_whole_stream_payment(payer: str) -> None:
    sender = Sender(await sync_to_async(spsp4)())
    # 1. Asset probe: an unfulfillable 0-amount packet with an empty ConnectionNewAddress.
    probe = sender.prepare(0, (ConnectionNewAddressFrame(""),), fulfillable=False)
    reply = await sender.send(probe)
    assert isinstance(reply, Reject) and (reply.code, reply.message) == ("F99", "")
    assert reply.triggered_by == "test.node"
    assert ConnectionAssetDetailsFrame("XRP", 9) in sender.reply(probe, reply).frames
    # pay's second asset probe goes to <prefix>._.<token>: not an address of ours.
    head, _, tail = sender.destination.rpartition(".")
    odd = sender.prepare(
        0,
        (ConnectionNewAddressFrame("private.SEND_ONLY_CLIENT"),),
        destination=f"{head}._.{tail}",
        fulfillable=False,
    )
    reply = await sender.send(odd)
    assert isinstance(reply, Reject) and reply.code == "F06" and reply.data == b""
    # 2. Rate probe: unfulfillable packets; the reply says what arrived; nothing credited.
    for amount in (10**12, 10**6, 1000):
        probe = sender.prepare(amount, fulfillable=False)
        reply = await sender.send(probe)
        assert isinstance(reply, Reject) and reply.code == "F99"
        assert sender.reply(probe, reply).prepare_amount == amount
    assert await receipts() == [] and await peer_postings() == []
    # 3. The money: StreamMoney(1, 1) with a minimum destination amount.
    keys = []
    for amount in (2000, 2000, 1000):
        packet = sender.prepare(amount, (StreamMoneyFrame(1, 1),), minimum=amount - 10)
        key = os.urandom(16).hex()
        reply = await sender.send(packet, key)
        # Durable the moment the Fulfill is returned.
        assert key in {k for k, _ in await peer_postings()}
        assert isinstance(reply, Fulfill), reply
        assert sender.reply(packet, reply).prepare_amount == amount
        keys.append(key)
    # 4. Close: an unfulfillable ConnectionClose is echoed.
    close = sender.prepare(0, (ConnectionCloseFrame(1, ""),), fulfillable=False)
    reply = await sender.send(close)
    assert isinstance(reply, Reject) and reply.code == "F99"
    assert ConnectionCloseFrame(1, "") in sender.reply(close, reply).frames

    rows = await receipts()
    conn = connection_id(sender.destination)
    assert [(r.account.code, int(r.amount), r.key, r.sequence, r.payment_id) for r in rows] == [
        ("receiver:bob", amount, f"stream:{key}", seq, conn.hex())
        for amount, key, seq in zip((2000, 2000, 1000), keys, (6, 7, 8), strict=True)
    ]
    assert await peer_postings() == [(k, -a) for k, a in zip(keys, (2000, 2000, 1000), strict=True)]
    # One connection is one incoming payment.
    assert await sync_to_async(wait_receipts_applied)(30)
    payments = await sync_to_async(
        lambda: [(p.payment_id, int(p.total), p.chunks) for p in IncomingPayment.objects.all()]
    )()
    assert payments == [(conn.hex(), 5000, 3)]


async def test_a_repeated_prepare_is_recorded_once(payer: str) -> None:
    sender = Sender(await sync_to_async(spsp4)())
    packet = sender.prepare(700, (StreamMoneyFrame(1, 1),))
    first = await sender.send(packet, "same-key")
    connections.clear()  # as if another process, or a restart, saw the copy
    again = await sender.send(packet, "same-key")
    assert isinstance(first, Fulfill) and isinstance(again, Fulfill)
    assert first.fulfillment == again.fulfillment
    assert [int(r.amount) for r in await receipts()] == [700]
    assert await peer_postings() == [("same-key", -700)]


async def test_below_the_minimum_is_f99_and_credits_nothing(payer: str) -> None:
    sender = Sender(await sync_to_async(spsp4)())
    packet = sender.prepare(99, (StreamMoneyFrame(1, 1),), minimum=100)
    reply = await sender.send(packet)
    assert isinstance(reply, Reject) and reply.code == "F99"
    assert sender.reply(packet, reply).prepare_amount == 99
    assert await receipts() == []


async def test_foreign_and_tampered_addresses_are_f06(payer: str) -> None:
    sender = Sender(await sync_to_async(spsp4)())
    other = Sender(await sync_to_async(spsp4)())
    # bob's token with another connection's secret: does not decrypt.
    packet = other.prepare(10, (StreamMoneyFrame(1, 1),), destination=sender.destination)
    reply = await other.send(packet)
    assert isinstance(reply, Reject) and (reply.code, reply.data) == ("F06", b"")
    flipped = sender.destination[:-2] + ("AA" if not sender.destination.endswith("AA") else "BB")
    reply = await sender.send(sender.prepare(10, (StreamMoneyFrame(1, 1),), destination=flipped))
    assert isinstance(reply, Reject) and reply.code == "F06"
    assert await receipts() == []


async def test_a_failed_commit_is_t00_and_records_nothing(
    payer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sender = Sender(await sync_to_async(spsp4)())
    book = get_book()

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("database down")

    monkeypatch.setattr(book, "commit", broken)
    reply = await sender.send(sender.prepare(50, (StreamMoneyFrame(1, 1),)))
    assert isinstance(reply, Reject) and reply.code == "T00"
    monkeypatch.undo()
    reply = await sender.send(sender.prepare(60, (StreamMoneyFrame(1, 1),)))
    assert isinstance(reply, Fulfill)
    assert [int(r.amount) for r in await receipts()] == [60]


async def test_receipts_verify_and_carry_the_durable_total(payer: str) -> None:
    nonce, secret = os.urandom(16), os.urandom(32)
    body = await sync_to_async(spsp4)(
        **{
            "Receipt-Nonce": base64.b64encode(nonce).decode(),
            "Receipt-Secret": base64.b64encode(secret).decode(),
        }
    )
    sender = Sender(body)
    totals = []
    for amount in (100, 250, 50):
        packet = sender.prepare(amount, (StreamMoneyFrame(1, 1),))
        reply = await sender.send(packet)
        assert isinstance(reply, Fulfill)
        frames = [
            f for f in sender.reply(packet, reply).frames if isinstance(f, StreamReceiptFrame)
        ]
        assert len(frames) == 1 and frames[0].stream_id == 1
        receipt = verify_receipt(frames[0].receipt, secret)
        assert receipt.nonce == nonce
        totals.append(receipt.total_received)
    assert totals == [100, 350, 400]
    # After a restart the total comes from the database.
    connections.clear()
    await sync_to_async(reset_book)()
    packet = sender.prepare(1, (StreamMoneyFrame(1, 1),))
    reply = await sender.send(packet)
    frame = next(f for f in sender.reply(packet, reply).frames if isinstance(f, StreamReceiptFrame))
    assert verify_receipt(frame.receipt, secret).total_received == 401


async def test_a_zero_amount_packet_is_fulfilled_and_reports_the_total(payer: str) -> None:
    sender = Sender(await sync_to_async(spsp4)())
    assert isinstance(await sender.send(sender.prepare(300, (StreamMoneyFrame(1, 1),))), Fulfill)
    connections.clear()
    packet = sender.prepare(0, (StreamMoneyFrame(1, 1),))
    reply = await sender.send(packet)
    assert isinstance(reply, Fulfill)
    assert StreamMaxMoneyFrame(1, 2**64 - 1, 300) in sender.reply(packet, reply).frames
    # ilp-protocol-stream's end(): a 0-amount fulfillable StreamClose. It asks for no total,
    # so the ledger is not read for it.
    lookups = stats.total_lookups
    closing = sender.prepare(0, (StreamCloseFrame(1, 1, ""),))
    reply = await sender.send(closing)
    assert isinstance(reply, Fulfill)
    assert not any(isinstance(f, StreamMaxMoneyFrame) for f in sender.reply(closing, reply).frames)
    assert stats.total_lookups == lookups
    assert [int(r.amount) for r in await receipts()] == [300]


# --- monetized pages ----------------------------------------------------------------------------


@pytest.fixture
def page(alice_user: User) -> MonetizedPage:
    ensure_payer()
    receiver = receiver_create(user=alice_user, name="alice")
    return page_create(
        owner=alice_user,
        receiver=receiver,
        slug="recipe",
        title="A recipe",
        public_body="free",
        paid_body="paid",
        threshold=1000,
        published=True,
    )


async def test_a_page_visitor_pays_over_stream(page: MonetizedPage) -> None:
    visitor = os.urandom(16)
    visitor_text = base64.urlsafe_b64encode(visitor).rstrip(b"=").decode()
    body = await sync_to_async(spsp4)(f"/pages/recipe/spsp/{visitor_text}")
    sender = Sender(body)
    assert sender.destination.startswith(f"test.node.receivers.alice.{visitor_text}.~")
    for _ in range(2):
        reply = await sender.send(sender.prepare(600, (StreamMoneyFrame(1, 1),)))
        assert isinstance(reply, Fulfill)
    status = await sync_to_async(page_status)(page=page, visitor=visitor)
    assert status.received == 1200
    keys = [r.key for r in await receipts()]
    assert all(k.startswith(f"tag:{visitor.hex()}:") for k in keys) and len(keys) == 2
