"""receive_prepare end to end: SPSP answer → real PSK2 chunks (ilp.psk2_sender) → the
receiver → the ledger rows, through the real book and its writer thread."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import datetime, timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.utils import timezone

from ilp.packet import Fulfill, Prepare, Reject
from ilp.psk2 import (
    QUOTE_AMOUNT,
    ChunkRejection,
    ChunkResponse,
    Rejection,
    Response,
)
from ilp.psk2_sender import build_chunk, build_quote, build_request, read_reply
from payments.ledger import ensure_account, reset_book
from payments.models import LedgerAccount, Posting, Receipt
from receivers.directory import get_directory
from receivers.models import Receiver
from receivers.psk2_receiver import (
    LOCAL_PREFIX_SEGMENT,
    receive_prepare,
    stats,
)
from receivers.services import receiver_create

pytestmark = pytest.mark.django_db(transaction=True)

PEER = "peer:alice"
UNBOUNDED = 2**64 - 1


def spsp_query(name: str = "bob") -> tuple[str, bytes]:
    """Ask the SPSP endpoint like a sender does: (destination, shared secret)."""
    response = Client().get(f"/{name}", HTTP_ACCEPT="application/spsp+json")
    assert response.status_code == 200, response.content
    body = json.loads(response.content)
    return body["destination_account"], base64.b64decode(body["shared_secret"])


@pytest.fixture
def setup(django_user_model: type[User]) -> dict[str, Any]:
    """A receiver bob, the peer's account, and one SPSP answer. Sync: runs before the loop."""
    user = django_user_model.objects.create_user(username="alice")
    receiver = receiver_create(user=user, name="bob")
    ensure_account(PEER, kind="peer")
    destination, secret = spsp_query()
    return {"receiver": receiver, "destination": destination, "secret": secret}


def now() -> datetime:
    return timezone.now()


def chunk(
    setup: dict[str, Any],
    *,
    amount: int = 1000,
    payment_id: bytes | None = None,
    sequence: int = 0,
    payment_amount: int = UNBOUNDED,
    chunk_amount: int = 0,
    last: bool = True,
    secret: bytes | None = None,
    destination: str | None = None,
    expires_at: datetime | None = None,
) -> Prepare:
    return build_chunk(
        secret or setup["secret"],
        destination or setup["destination"],
        payment_id=payment_id or os.urandom(16),
        sequence=sequence,
        payment_amount=payment_amount,
        chunk_amount=chunk_amount,
        source_amount=amount,
        expires_at=expires_at or now() + timedelta(seconds=30),
        iv=os.urandom(12),
        last=last,
    )


async def receive(prepare: Prepare, key: str) -> Fulfill | Reject:
    return await receive_prepare(prepare, source_account=PEER, packet_key=key, now=now())


@sync_to_async
def receipts() -> list[Receipt]:
    return list(Receipt.objects.select_related("account").order_by("id"))


@sync_to_async
def peer_postings() -> list[tuple[str, int]]:
    return [
        (p.key, int(p.amount)) for p in Posting.objects.filter(account__code=PEER).order_by("id")
    ]


async def test_single_chunk_is_recorded_before_the_fulfill(setup: dict[str, Any]) -> None:
    prepare = chunk(setup, amount=1234, chunk_amount=1000)
    reply = await receive(prepare, "pkt-1")
    # The receipt and the peer's posting are durable the moment the Fulfill is returned.
    rows = await receipts()
    postings = await peer_postings()
    assert isinstance(reply, Fulfill)
    result = read_reply(setup["secret"], reply, prepare=prepare)
    assert result.fulfilled and result.problem == ""
    assert isinstance(result.response, ChunkResponse)
    assert result.delivered == 1234
    assert result.total == 1234
    assert [(r.account.code, int(r.amount), r.key, r.sequence) for r in rows] == [
        ("receiver:bob", 1234, "psk2:pkt-1", 0)
    ]
    assert postings == [("pkt-1", -1234)]


async def test_chunked_payment_reports_the_running_total(setup: dict[str, Any]) -> None:
    payment_id = os.urandom(16)
    totals = []
    for sequence, amount in enumerate([300, 500, 200]):
        prepare = chunk(
            setup,
            amount=amount,
            payment_id=payment_id,
            sequence=sequence,
            payment_amount=1000,
            last=sequence == 2,
        )
        reply = await receive(prepare, f"chunk-{sequence}")
        result = read_reply(setup["secret"], reply, prepare=prepare)
        assert result.fulfilled, (result.code, result.message)
        totals.append(result.total)
    assert totals == [300, 800, 1000]
    rows = await receipts()
    assert {r.payment_id for r in rows} == {payment_id.hex()}
    assert sum(int(r.amount) for r in rows) == 1000
    # The payment reached its Payment Amount: a further chunk is refused with the total.
    extra = chunk(setup, amount=10, payment_id=payment_id, sequence=3, payment_amount=1000)
    reply = await receive(extra, "chunk-3")
    result = read_reply(setup["secret"], reply, prepare=extra)
    assert isinstance(reply, Reject) and reply.code == "F99"
    assert isinstance(result.response, ChunkRejection)
    assert result.total == 1000


async def test_chunk_totals_come_from_the_database_after_a_restart(
    setup: dict[str, Any],
) -> None:
    payment_id = os.urandom(16)
    first = chunk(setup, amount=400, payment_id=payment_id, sequence=0, last=False)
    assert isinstance(await receive(first, "r-0"), Fulfill)
    await sync_to_async(reset_book)()
    get_directory().invalidate()
    second = chunk(setup, amount=100, payment_id=payment_id, sequence=1, last=True)
    result = read_reply(setup["secret"], await receive(second, "r-1"), prepare=second)
    assert result.fulfilled and result.total == 500


async def test_a_secret_issued_before_a_restart_is_accepted(setup: dict[str, Any]) -> None:
    # Everything in memory goes: book, receiver cache. Only the database and the
    # settings remain, like a new process.
    await sync_to_async(reset_book)()
    get_directory().invalidate()
    prepare = chunk(setup, amount=77)
    reply = await receive(prepare, "after-restart")
    assert read_reply(setup["secret"], reply, prepare=prepare).fulfilled


async def test_wrong_secret_is_f06_with_no_data(setup: dict[str, Any]) -> None:
    prepare = chunk(setup, secret=os.urandom(32))
    reply = await receive(prepare, "k")
    assert isinstance(reply, Reject)
    assert (reply.code, reply.message, reply.data) == ("F06", "Unable to parse data", b"")
    assert reply.triggered_by == "test.node"
    assert await receipts() == []


async def test_address_issued_for_another_receiver_does_not_decrypt(
    setup: dict[str, Any],
) -> None:
    await sync_to_async(receiver_create)(user=setup["receiver"].user, name="carol")
    # Re-target bob's address to carol: the secret is bound to the whole address.
    token = setup["destination"].rsplit(".", 1)[1]
    prepare = chunk(setup, destination=f"test.node.receivers.carol.{token}")
    reply = await receive(prepare, "k")
    assert isinstance(reply, Reject) and reply.code == "F06"


@pytest.mark.parametrize(
    "suffix", ["", ".short", ".{token}.extra", ".{token}x", ".{token}.{token}"]
)
async def test_malformed_token_is_f06_not_for_this_receiver(
    setup: dict[str, Any], suffix: str
) -> None:
    token = setup["destination"].rsplit(".", 1)[1]
    good = chunk(setup)
    destination = "test.node.receivers.bob" + suffix.format(token=token)
    prepare = Prepare(
        good.amount, good.expires_at, good.execution_condition, destination, good.data
    )
    reply = await receive(prepare, "k")
    assert isinstance(reply, Reject)
    assert (reply.code, reply.message, reply.data) == (
        "F06",
        "Payment is not for this receiver",
        b"",
    )


async def test_wrong_condition_is_f05(setup: dict[str, Any]) -> None:
    good = chunk(setup)
    prepare = Prepare(good.amount, good.expires_at, os.urandom(32), good.destination, good.data)
    reply = await receive(prepare, "k")
    assert isinstance(reply, Reject)
    assert (reply.code, reply.message, reply.data) == (
        "F05",
        "condition generated does not match prepare",
        b"",
    )
    assert await receipts() == []


async def test_expired_prepare_is_an_r_code(setup: dict[str, Any]) -> None:
    prepare = chunk(setup, expires_at=now() - timedelta(milliseconds=1))
    reply = await receive(prepare, "k")
    assert isinstance(reply, Reject) and reply.code == "R00"
    assert await receipts() == []


async def test_quote_is_f99_with_an_encrypted_type_3_error(setup: dict[str, Any]) -> None:
    prepare = build_quote(
        setup["secret"],
        setup["destination"],
        payment_id=os.urandom(16),
        source_amount=1000,
        expires_at=now() + timedelta(seconds=30),
        iv=os.urandom(12),
        condition=os.urandom(32),
    )
    reply = await receive(prepare, "quote")
    result = read_reply(setup["secret"], reply, prepare=prepare)
    assert isinstance(reply, Reject) and reply.code == "F99" and reply.data
    assert result.is_quote_answer
    assert result.delivered == 1000
    assert result.total == 0
    assert await receipts() == []


async def test_amount_below_the_minimum_is_f99_with_what_arrived(setup: dict[str, Any]) -> None:
    prepare = chunk(setup, amount=500, chunk_amount=501)
    reply = await receive(prepare, "low")
    result = read_reply(setup["secret"], reply, prepare=prepare)
    assert isinstance(reply, Reject) and reply.code == "F99"
    assert isinstance(result.response, ChunkRejection)
    assert result.delivered == 500
    assert QUOTE_AMOUNT != 500  # the error is about this chunk, not a quote


async def test_amount_exactly_at_the_minimum_is_fulfilled_and_recorded(
    setup: dict[str, Any],
) -> None:
    """Both drafts: a minimum equal to what arrived is enough; one more is F99, unrecorded."""
    exact_d1 = chunk(setup, amount=500, chunk_amount=500)
    assert isinstance(await receive(exact_d1, "d1-exact"), Fulfill)
    token = os.urandom(16)

    def request(request_id: int, minimum: int) -> Prepare:
        return build_request(
            setup["secret"],
            setup["destination"],
            request_id=request_id,
            min_destination_amount=minimum,
            source_amount=250,
            expires_at=now() + timedelta(seconds=30),
            iv=os.urandom(12),
            data=token,
        )

    exact_d2 = request(1, 250)
    reply = await receive(exact_d2, "d2-exact")
    result = read_reply(setup["secret"], reply, prepare=exact_d2)
    assert isinstance(reply, Fulfill) and result.fulfilled and result.delivered == 250
    over_d2 = request(2, 251)
    reply = await receive(over_d2, "d2-over")
    result = read_reply(setup["secret"], reply, prepare=over_d2)
    assert isinstance(reply, Reject) and reply.code == "F99"
    assert isinstance(result.response, Rejection) and result.delivered == 250
    rows = await receipts()
    assert [(r.sequence, int(r.amount)) for r in rows] == [(0, 500), (1, 250)]
    assert rows[1].payment_id == token.hex()
    assert await peer_postings() == [("d1-exact", -500), ("d2-exact", -250)]


async def test_unknown_receiver_is_f02(setup: dict[str, Any]) -> None:
    token = setup["destination"].rsplit(".", 1)[1]
    for destination in (f"test.node.receivers.nobody.{token}", "test.node.receivers.Bob"):
        prepare = chunk(setup, destination=destination)
        reply = await receive(prepare, "k")
        assert isinstance(reply, Reject)
        assert reply.code == "F02", destination
    assert LOCAL_PREFIX_SEGMENT == "receivers"


async def test_repeated_packet_is_counted_once(setup: dict[str, Any]) -> None:
    payment_id = os.urandom(16)
    prepare = chunk(setup, amount=600, payment_id=payment_id)
    first = await receive(prepare, "same-key")
    second = await receive(prepare, "same-key")
    assert isinstance(first, Fulfill) and isinstance(second, Fulfill)
    assert first.fulfillment == second.fulfillment
    rows = await receipts()
    assert [int(r.amount) for r in rows] == [600]
    assert await peer_postings() == [("same-key", -600)]
    # Even a new process (nothing remembered) does not count it again.
    await sync_to_async(reset_book)()
    third = await receive(prepare, "same-key")
    assert isinstance(third, Fulfill)
    assert [int(r.amount) for r in await receipts()] == [600]
    assert await peer_postings() == [("same-key", -600)]


async def test_commit_failure_is_t00_and_never_a_fulfill(setup: dict[str, Any]) -> None:
    prepare = chunk(setup)
    reply = await receive_prepare(
        prepare, source_account="peer:does-not-exist", packet_key="k", now=now()
    )
    assert isinstance(reply, Reject) and reply.code == "T00"
    assert await receipts() == []


async def test_draft2_requests_are_answered_in_kind(setup: dict[str, Any]) -> None:
    token = os.urandom(16)
    prepare = build_request(
        setup["secret"],
        setup["destination"],
        request_id=42,
        min_destination_amount=100,
        source_amount=250,
        expires_at=now() + timedelta(seconds=30),
        iv=os.urandom(12),
        data=token,
    )
    reply = await receive(prepare, "d2")
    result = read_reply(setup["secret"], reply, prepare=prepare)
    assert result.fulfilled and isinstance(result.response, Response)
    assert result.delivered == 250
    # A probe with a random condition learns the amount from a type-6 error.
    probe = build_request(
        setup["secret"],
        setup["destination"],
        request_id=43,
        min_destination_amount=0,
        source_amount=1000,
        expires_at=now() + timedelta(seconds=30),
        iv=os.urandom(12),
        unfulfillable_condition=os.urandom(32),
    )
    reply = await receive(probe, "d2-probe")
    result = read_reply(setup["secret"], reply, prepare=probe)
    assert isinstance(reply, Reject) and reply.code == "F05"
    assert isinstance(result.response, Rejection) and result.delivered == 1000
    # Without data, the requests made with one SPSP answer group under its address.
    bare = build_request(
        setup["secret"],
        setup["destination"],
        request_id=44,
        min_destination_amount=0,
        source_amount=5,
        expires_at=now() + timedelta(seconds=30),
        iv=os.urandom(12),
    )
    assert isinstance(await receive(bare, "d2-bare"), Fulfill)
    by_address = hashlib.sha256(setup["destination"].encode()).digest()[:16].hex()
    rows = await receipts()
    assert [(r.payment_id, r.sequence, int(r.amount)) for r in rows] == [
        (token.hex(), 42, 250),
        (by_address, 44, 5),
    ]


async def test_hot_path_reads_nothing_in_steady_state(setup: dict[str, Any]) -> None:
    # Warm up: the receiver lookup.
    assert isinstance(await receive(chunk(setup), "warm"), Fulfill)
    directory = get_directory()
    loads, lookups = directory.loads, stats.total_lookups
    # Remove the receiver row behind the cache's back (no signal): packets keep being
    # fulfilled, so nothing per packet reads the receivers table.
    await sync_to_async(_delete_receivers_raw)()
    for i in range(20):
        assert isinstance(await receive(chunk(setup, amount=10), f"steady-{i}"), Fulfill)
    # Single-chunk payments (Sequence 0) never ask for a payment total either.
    assert (directory.loads, stats.total_lookups) == (loads, lookups)
    # A chunked payment asks once per chunk after the first (the book answers those from
    # memory after its first read).
    payment_id = os.urandom(16)
    for sequence in range(3):
        prepare = chunk(setup, amount=5, payment_id=payment_id, sequence=sequence, last=False)
        assert isinstance(await receive(prepare, f"chunked-{sequence}"), Fulfill)
    assert stats.total_lookups == lookups + 2


def _delete_receivers_raw() -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {Receiver._meta.db_table}")


async def test_receiver_cache_follows_deletes(setup: dict[str, Any]) -> None:
    assert isinstance(await receive(chunk(setup), "before"), Fulfill)
    # A pointer whose receiver row is gone is unreachable at once in this process.
    await sync_to_async(Receiver.objects.filter(name="bob").delete)()
    reply = await receive(chunk(setup), "after")
    assert isinstance(reply, Reject) and reply.code == "F02"
    account = await sync_to_async(LedgerAccount.objects.get)(code="receiver:bob")
    assert account.kind == "receiver"


def test_iv_pool_gives_fresh_12_byte_ivs_across_refills() -> None:
    from receivers.psk2_receiver import IV_POOL_BYTES, _IvPool

    pool = _IvPool()
    ivs = [pool.take() for _ in range(3 * IV_POOL_BYTES // 12 + 5)]
    assert {len(iv) for iv in ivs} == {12}
    assert len(set(ivs)) == len(ivs)
