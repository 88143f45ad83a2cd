"""The outgoing-payment runner over STREAM, on the real runner, database and ledger: the
SPSP4 answer comes from an HTTP mock, and the "network" is a Sender whose far end is the
pure STREAM receiver (``ilp.stream.receiver``) behind a path with an exchange rate and a
packet limit. A via-peer route, so the runner books every chunk itself (source debit, peer
credit). Faults are the ones a real deployment has: the process dying before or after a
packet leaves, a receiver that cannot report its total."""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import httpx
import pytest
from django.db.models import Sum

from ilp.packet import Prepare, Reject, Reply, amount_too_large_data
from ilp.stream import ConnectionCloseFrame, StreamMoneyFrame, decrypt_packet
from ilp.stream.receiver import (
    Accept,
    ConnectionState,
    ReceiverLimits,
    Refusal,
    handle_request,
    new_connection,
    open_prepare,
    settle,
)
from payments.ledger import ensure_account
from payments.models import Posting
from payments.models_outgoing import OutgoingChunk, OutgoingPayment
from payments.sending import (
    SUSPENSE_ACCOUNT,
    Route,
    RunOptions,
    Sender,
    outgoing_payment_create,
    outgoing_payment_run,
    set_sender_opener,
)
from payments.sending import services as sending_services
from payments.sending.spsp import query_spsp
from tests.sending.conftest import Crash, balance, fund, in_thread

pytestmark = pytest.mark.django_db(transaction=True)

SHORT = RunOptions(chunk_expiry=timedelta(seconds=2), max_wait_ms=200)
SECRET = os.urandom(32)
DESTINATION = "test.far.receivers.carol.~abc"
PEER = "peer:far"


@dataclass
class FarEnd:
    """A path to a STREAM receiver: ``rate`` (floored), ``max_packet`` (F08 with its
    data); ``receive_max`` set makes the receiver report its running total. ``crash`` on a
    send number: ``before`` (never leaves) or ``after`` (answered, then the process dies)."""

    rate: Fraction = Fraction(1)
    max_packet: int | None = None
    receive_max: int | None = 2**64 - 1
    crash: dict[int, str] = field(default_factory=dict)
    state: ConnectionState | None = None
    received: int = 0
    sent: list[Prepare] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)

    @property
    def limits(self) -> ReceiverLimits:
        return ReceiverLimits("XRP", 9, receive_max=self.receive_max)

    def answer(self, prepare: Prepare) -> Reply:
        if self.max_packet is not None and prepare.amount > self.max_packet:
            return Reject(
                "F08", "test.hop", "", amount_too_large_data(prepare.amount, self.max_packet)
            )
        arrived = int(prepare.amount * self.rate)
        prepare = Prepare(arrived, prepare.expires_at, prepare.execution_condition, prepare.destination, prepare.data)  # fmt: skip
        opened = open_prepare(prepare, SECRET, now=datetime.now(UTC))
        if isinstance(opened, Refusal):
            return opened.to_reject("test.far")
        decision = handle_request(
            self.state or new_connection(self.limits),
            opened.request,
            amount=arrived,
            fulfillable=opened.condition_matches,
            limits=self.limits,
        )
        if isinstance(decision, Accept):
            self.state = settle(decision.state, decision)
            self.received += decision.amount
            return opened.fulfill(decision.frames, iv=os.urandom(12))
        self.state = decision.state
        return opened.reject(decision.frames, iv=os.urandom(12), triggered_by="test.far")

    def sequences(self) -> list[int]:
        return [decrypt_packet(SECRET, p.data).sequence for p in self.sent]

    def money(self) -> list[Prepare]:
        return [
            p for p in self.sent if StreamMoneyFrame(1, 1) in decrypt_packet(SECRET, p.data).frames
        ]


class FarSender:
    """``payments.sending.Sender`` through peer ``far`` to the :class:`FarEnd`."""

    def __init__(self, far: FarEnd) -> None:
        self.far = far

    @property
    def peer_account(self) -> str:
        return PEER

    @property
    def max_packet_amount(self) -> int:
        return 2**64 - 1

    @property
    def asset(self) -> tuple[str, int]:
        return "XRP", 9

    def source_keys(self, prepare: Prepare) -> tuple[str, ...]:
        return ()

    async def send(self, prepare: Prepare) -> Reply:
        far = self.far
        number = len(far.sent) + 1
        if far.crash.get(number) == "before":
            raise Crash(f"before send {number}")
        far.sent.append(prepare)
        reply = far.answer(prepare)
        far.replies.append(reply)
        if far.crash.get(number) == "after":
            raise Crash(f"after send {number}")
        return reply


def install(far: FarEnd) -> None:
    @contextlib.asynccontextmanager
    async def opener(route: Route) -> AsyncIterator[Sender]:
        assert route.via_peer == "far"
        yield FarSender(far)

    set_sender_opener(opener)


@pytest.fixture(autouse=True)
def spsp4(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """``GET`` of any SPSP URL answers SPSP4 for :data:`DESTINATION` (and logs ``Accept``)."""
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["accept"])
        body = {"destination_account": DESTINATION, "shared_secret": base64.b64encode(SECRET).decode()}  # fmt: skip
        return httpx.Response(
            200, content=json.dumps(body).encode(), headers={"Content-Type": "application/spsp4+json"}
        )  # fmt: skip

    async def query(url: str, **kwargs: Any) -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
            return await query_spsp(url, client=client, **kwargs)

    monkeypatch.setattr(sending_services, "query_spsp", query)
    yield seen


def _setup(amount: int, **kwargs: Any) -> OutgoingPayment:
    fund("receiver:alice", 1_000_000)
    ensure_account(PEER, kind="peer")
    return outgoing_payment_create(
        source_account_code="receiver:alice",
        receiver="http://127.0.0.1:9/carol",
        amount=amount,
        via_peer="far",
        start=False,
        **kwargs,
    )


def books(payment: OutgoingPayment) -> dict[str, Any]:
    chunks = list(OutgoingChunk.objects.filter(payment=payment).order_by("sequence"))
    return {
        "alice": balance("receiver:alice"),
        "far": balance(PEER),
        "suspense": balance(SUSPENSE_ACCOUNT),
        "states": [c.state for c in chunks],
        "sequences": [c.sequence for c in chunks],
        "postings": Posting.objects.filter(key__startswith=f"outgoing:{payment.pk}:").count(),
        "debited": int(
            OutgoingChunk.objects.filter(payment=payment, state="fulfilled").aggregate(
                s=Sum("amount")
            )["s"]
            or 0
        ),
    }


async def test_pays_a_stream_receiver_with_the_same_reservation_rows_and_books(
    spsp4: list[str],
) -> None:
    far = FarEnd(rate=Fraction(1, 2), max_packet=3_000)
    install(far)
    payment = await in_thread(_setup)(10_000)
    assert int(payment.amount_reserved) == 10_000 and payment.protocol == ""
    seen: list[tuple[str, str, str]] = []
    options = RunOptions(
        chunk_expiry=SHORT.chunk_expiry,
        on_progress=lambda p: seen.append((p.status, str(p.amount_sent), p.protocol)),
    )
    done = await outgoing_payment_run(payment_id=payment.pk, options=options)
    assert done is not None and done.status == "completed", done.last_error
    assert spsp4 == ["application/spsp4+json, application/spsp+json;q=0.9"]
    assert done.protocol == "stream" and done.shared_secret == ""
    assert int(done.amount_sent) == 10_000 and int(done.amount_delivered) == 5_000 == far.received
    assert int(done.quote_destination_amount or 0) == 5_000
    assert int(done.amount_reserved) == int(done.amount_debited) == 10_000
    view = await in_thread(books)(payment)
    assert view["alice"] == 1_000_000 - 10_000 and view["far"] == 10_000
    assert set(view["states"]) == {"fulfilled"} and view["postings"] == 2 * len(view["states"])
    # Probes (F08, then the limit), the money packets (one chunk row each, its sequence the
    # STREAM sequence), then ConnectionClose; no sequence twice.
    assert [p.amount for p in far.sent[:2]] == [10_000, 3_000]
    assert view["sequences"] == far.sequences()[2:-1]
    assert far.sequences() == list(range(1, len(far.sent) + 1))
    assert max(p.amount for p in far.money()) <= 3_000
    close = decrypt_packet(SECRET, far.sent[-1].data)
    assert close.frames == (ConnectionCloseFrame(1, ""),) and far.sent[-1].amount == 0
    assert ("quoting", "0", "") in seen and seen[-1] == ("completed", "10000", "stream")


async def test_destination_amount_reserves_after_the_quote() -> None:
    far = FarEnd(rate=Fraction(1, 4))
    install(far)
    payment = await in_thread(_setup)(2_000, mode="destination")
    assert int(payment.amount_reserved) == 0
    done = await outgoing_payment_run(payment_id=payment.pk, options=SHORT)
    assert done is not None and done.status == "completed", done.last_error
    assert int(done.quote_source_amount or 0) == 8_000
    assert far.received == int(done.amount_delivered) >= 2_000
    assert int(done.amount_reserved) == int(done.amount_debited) == int(done.amount_sent)
    view = await in_thread(books)(payment)
    assert view["alice"] == 1_000_000 - int(done.amount_sent) and view["far"] == int(
        done.amount_sent
    )


@pytest.mark.parametrize("when", ["after", "before"])
async def test_a_resumed_stream_payment_never_delivers_twice(when: str) -> None:
    """The process dies at the 3rd money packet (sends: probe, money 1, money 2, money 3):
    after the receiver took it but before we booked it, or after its row was written but
    before it left. The next run re-derives the connection from the stored secret and
    address, asks the receiver's total with a fresh sequence, books the packet only if it
    arrived, and goes on with sequences beyond every recorded one."""
    far = FarEnd(max_packet=1_000, crash={5: when})
    install(far)
    payment = await in_thread(_setup)(5_000)
    with pytest.raises(Crash):
        await outgoing_payment_run(payment_id=payment.pk, options=SHORT)
    view = await in_thread(books)(payment)
    assert view["states"] == ["fulfilled", "fulfilled", "sending"]
    arrived = 3_000 if when == "after" else 2_000
    assert far.received == arrived and view["alice"] == 1_000_000 - 2_000
    first_run = len(far.sent)
    far.crash.clear()
    await in_thread(OutgoingPayment.objects.filter(pk=payment.pk).update)(lease_until=None)

    done = await outgoing_payment_run(payment_id=payment.pk, options=SHORT)
    assert done is not None and done.status == "completed", done.last_error
    view = await in_thread(books)(payment)
    assert view["states"][2] == ("fulfilled" if when == "after" else "lost")
    resumed = far.sent[first_run:]
    total_probe = decrypt_packet(SECRET, resumed[0].data)
    assert resumed[0].amount == 0 and total_probe.sequence > view["sequences"][2]
    # Exactly the amount, once; no sequence was used twice on the connection.
    assert far.received == 5_000 == int(done.amount_delivered) == int(done.amount_sent)
    assert view["alice"] == 1_000_000 - 5_000 and view["far"] == 5_000
    assert view["debited"] == 5_000
    sequences = far.sequences()
    assert len(sequences) == len(set(sequences)) and sequences == sorted(sequences)


async def test_a_packet_in_doubt_at_a_receiver_that_keeps_no_total_goes_to_suspense() -> None:
    far = FarEnd(receive_max=None, max_packet=1_000, crash={4: "after"})  # the 2nd packet
    install(far)
    payment = await in_thread(_setup)(3_000)
    with pytest.raises(Crash):
        await outgoing_payment_run(payment_id=payment.pk, options=SHORT)
    await in_thread(OutgoingPayment.objects.filter(pk=payment.pk).update)(lease_until=None)
    done = await outgoing_payment_run(payment_id=payment.pk, options=SHORT)
    assert done is not None and done.status == "failed" and SUSPENSE_ACCOUNT in done.last_error
    view = await in_thread(books)(payment)
    assert view["states"][-1] == "unknown" and view["suspense"] == int(done.amount_in_doubt) > 0


async def test_a_quote_that_finds_nothing_fails_before_any_money() -> None:
    far = FarEnd(rate=Fraction(0))
    install(far)
    payment = await in_thread(_setup)(500)
    done = await outgoing_payment_run(payment_id=payment.pk, options=SHORT)
    assert done is not None and done.status == "failed"
    assert "the quote failed: nothing arrives at the receiver" in done.last_error
    assert int(done.amount_reserved) == 0 and far.received == 0
    assert await in_thread(lambda: OutgoingChunk.objects.filter(payment=payment).count())() == 0


async def test_insisting_on_psk2_refuses_a_stream_receiver() -> None:
    install(FarEnd())
    payment = await in_thread(_setup)(500, protocol="psk2")
    done = await outgoing_payment_run(payment_id=payment.pk, options=SHORT)
    assert done is not None and done.status == "failed"
    assert "asked for PSK2, the receiver answered STREAM" in done.last_error


async def test_an_invoice_that_accepts_less_is_refused_before_any_packet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    far = FarEnd()
    install(far)

    def handle(request: httpx.Request) -> httpx.Response:
        body = {
            "destination_account": DESTINATION,
            "shared_secret": base64.b64encode(SECRET).decode(),
            "balance": {"maximum": "1000", "current": "400"},
        }
        headers = {"Content-Type": "application/spsp4+json"}
        return httpx.Response(200, content=json.dumps(body).encode(), headers=headers)

    async def query(url: str, **kwargs: Any) -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
            return await query_spsp(url, client=client, **kwargs)

    monkeypatch.setattr(sending_services, "query_spsp", query)
    payment = await in_thread(_setup)(700, mode="destination", max_source_amount=1_000)
    done = await outgoing_payment_run(payment_id=payment.pk, options=SHORT)
    assert done is not None and done.status == "failed"
    assert done.last_error == "the receiver accepts 600 more, not 700"
    assert far.sent == [] and int(done.amount_reserved) == 0
