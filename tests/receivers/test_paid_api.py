"""HTTP-ILP on ``/api/v1/demo/paid``: 402/204/200/402 with real PSK2 chunks fed through the
hot-path receiver, every crediting convention, and the headers of the vectors."""

from __future__ import annotations

import base64
import json
import os
import re
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from ilp.address import is_valid_address
from ilp.packet import Fulfill, Reject
from ilp.psk2 import b64url_encode
from payments.models import Receipt
from receivers.models import PaidToken, Receiver
from receivers.paid import (
    MSG_INSUFFICIENT,
    MSG_NO_FUNDS,
    MSG_NO_TOKEN,
    PayToken,
    pay_token_tag,
)
from receivers.testing import ensure_payer, parse_pay, pay_draft1, pay_draft2
from tests.conftest import load_vectors

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/v1/demo/paid"
PRICE = 100
PAY_RE = re.compile(r"^interledger-psk2 (\S+) ([A-Za-z0-9+/]{43}=) (\d+)$")


@pytest.fixture(autouse=True)
def _price(settings: Any) -> None:
    settings.ILP_PAID_API_PRICE = PRICE


@pytest.fixture
def payer() -> str:
    return ensure_payer()


def new_token() -> tuple[str, bytes]:
    raw = os.urandom(16)
    return b64url_encode(raw), raw


def call(method: str = "get", token: str | None = None, **extra: Any) -> Any:
    headers = {} if token is None else {"HTTP_PAY_TOKEN": token}
    return getattr(Client(), method)(URL, **headers, **extra)


acall = sync_to_async(call)


def assert_pay_headers(response: Any, *, balance: int, token: str | None = None) -> None:
    pay = response["Pay"]
    match = PAY_RE.match(pay)
    assert match, pay
    destination, secret, price = match.groups()
    assert is_valid_address(destination)
    assert destination.startswith("test.node.receivers.paidapi.")
    assert len(base64.b64decode(secret)) == 32
    assert int(price) == PRICE
    assert response["Pay-Balance"] == str(balance)
    # With a token, the token's own payment pointer (receivers.paid.paid_token_spsp_url).
    pointer = (
        "https://pay.example.org/paidapi"
        if token is None
        else "https://pay.example.org/api/v1/paid/paidapi/tokens/"
        + b64url_encode(pay_token_tag(token))
    )
    assert response["Link"] == f'<{pointer}>; rel="monetization"'
    assert "Pay-Balance" in response["Access-Control-Expose-Headers"]


# --- without money ---------------------------------------------------------------------------


def test_no_token_is_402_with_a_pay_header_and_zero_balance() -> None:
    assert not Receiver.objects.filter(name="paidapi").exists()
    response = call()
    assert response.status_code == 402
    assert_pay_headers(response, balance=0)
    assert response.json()["detail"] == MSG_NO_TOKEN
    # The receiver was created on demand; an untagged address: <name>.<token>.
    assert Receiver.objects.filter(name="paidapi").exists()
    destination = parse_pay(response["Pay"]).destination
    assert destination.count(".") == 4


def test_unfunded_token_gets_an_address_issued_for_it() -> None:
    token, _raw = new_token()
    first, second = call(token=token), call(token=token)
    for response in (first, second):
        assert response.status_code == 402
        assert_pay_headers(response, balance=0, token=token)
        assert response.json() == {
            "detail": MSG_NO_FUNDS.format(token=token, price=PRICE),
            "price": str(PRICE),
            "balance": "0",
        }
    tag = b64url_encode(pay_token_tag(token))
    one, two = (parse_pay(r["Pay"]).destination for r in (first, second))
    assert one.startswith(f"test.node.receivers.paidapi.{tag}.")
    assert two.startswith(f"test.node.receivers.paidapi.{tag}.")
    assert one != two  # a fresh address (and secret) per answer, as koa-ilp
    assert not PaidToken.objects.exists()  # a token that cannot pay leaves no row


def test_options_is_204_with_the_same_headers() -> None:
    response = call("options")
    assert response.status_code == 204
    assert response.content == b""
    assert_pay_headers(response, balance=0)
    assert "Pay-Token" in response["Access-Control-Allow-Headers"]
    token, _ = new_token()
    response = call("options", token)
    assert response.status_code == 204
    assert_pay_headers(response, balance=0, token=token)
    assert f".{b64url_encode(pay_token_tag(token))}." in response["Pay"]


@pytest.mark.parametrize("bad", ["a b", "x" * 129, "tok\u00e9n", "<script>"])
def test_malformed_token_is_400_with_a_reason(bad: str) -> None:
    response = Client().get(URL, HTTP_PAY_TOKEN=bad)
    assert response.status_code == 400
    assert "Pay-Token" in response.json()["detail"]


def test_a_method_the_view_lacks_is_405_and_not_charged() -> None:
    token, _ = new_token()
    response = call("post", token)
    assert response.status_code == 405


def test_paid_token_parsing() -> None:
    token, raw = new_token()
    assert PayToken.parse(token).payment_id == raw
    # Other spellings of the same bytes are other tokens, with no payment id: two
    # strings never share the receipts of one payment id.
    padded = base64.b64encode(raw).decode()
    assert PayToken.parse(padded).payment_id is None
    assert PayToken.parse("x" * 43).payment_id is None  # 32-byte draft-3 style token
    assert PayToken.parse(token).tag != PayToken.parse(padded).tag


# --- the three crediting conventions, with real PSK2 chunks ----------------------------------


async def test_funded_by_the_address_issued_for_the_token(payer: str) -> None:
    token, _raw = new_token()
    unpaid = await acall(token=token)
    assert unpaid.status_code == 402
    pay = parse_pay(unpaid["Pay"])
    # Random Payment ID, no application data: only the destination names the token.
    reply = await pay_draft1(pay.destination, pay.shared_secret, 250)
    assert isinstance(reply, Fulfill)
    paid = await acall(token=token)
    assert paid.status_code == 200, paid.content
    assert paid.json()["message"] == "Hello World!"
    assert paid["Pay-Balance"] == "150"
    again = await acall(token=token)
    assert again.status_code == 200 and again["Pay-Balance"] == "50"
    spent = await acall(token=token)
    assert spent.status_code == 402
    assert spent["Pay-Balance"] == "50"
    assert spent.json()["detail"] == MSG_INSUFFICIENT.format(token=token, balance=50, price=PRICE)


async def test_funded_by_the_payment_id(payer: str) -> None:
    token, raw = new_token()
    unpaid = await acall()  # no token: an untagged address
    pay = parse_pay(unpaid["Pay"])
    reply = await pay_draft1(pay.destination, pay.shared_secret, PRICE, payment_id=raw)
    assert isinstance(reply, Fulfill)
    paid = await acall(token=token)
    assert paid.status_code == 200 and paid["Pay-Balance"] == "0"
    assert (await acall(token=token)).status_code == 402


async def test_funded_by_draft2_application_data(payer: str) -> None:
    token, raw = new_token()
    pay = parse_pay((await acall())["Pay"])
    reply = await pay_draft2(pay.destination, pay.shared_secret, 2 * PRICE, data=raw)
    assert isinstance(reply, Fulfill)
    for left in ("100", "0"):
        paid = await acall(token=token)
        assert paid.status_code == 200 and paid["Pay-Balance"] == left
    assert (await acall(token=token)).status_code == 402


async def test_all_three_conventions_at_once_credit_once(payer: str) -> None:
    """What the interop harness sends: the issued destination, Payment ID = token and
    application data = token. One chunk of 100 is 100, not 200 or 300."""
    token, raw = new_token()
    pay = parse_pay((await acall(token=token))["Pay"])
    reply = await pay_draft1(
        pay.destination, pay.shared_secret, PRICE, payment_id=raw, application_data=raw
    )
    assert isinstance(reply, Fulfill)
    assert (await acall(token=token)).status_code == 200
    spent = await acall(token=token)
    assert spent.status_code == 402 and spent["Pay-Balance"] == "0"


async def test_a_tagged_payment_counts_for_its_tag_only(payer: str) -> None:
    """Paying the address issued for token A with Payment ID = token B credits A alone."""
    token_a, _ = new_token()
    token_b, raw_b = new_token()
    pay = parse_pay((await acall(token=token_a))["Pay"])
    assert isinstance(
        await pay_draft1(pay.destination, pay.shared_secret, PRICE, payment_id=raw_b), Fulfill
    )
    assert (await acall(token=token_b)).status_code == 402
    assert (await acall(token=token_a)).status_code == 200


async def test_insufficient_then_topped_up(payer: str) -> None:
    token, raw = new_token()
    pay = parse_pay((await acall(token=token))["Pay"])
    await pay_draft1(pay.destination, pay.shared_secret, 50)
    short = await acall(token=token)
    assert short.status_code == 402 and short["Pay-Balance"] == "50"
    pay = parse_pay(short["Pay"])
    await pay_draft1(pay.destination, pay.shared_secret, 70, payment_id=raw)
    paid = await acall(token=token)
    assert paid.status_code == 200 and paid["Pay-Balance"] == "20"


async def test_chunked_payments_to_one_tagged_address_keep_their_own_totals(payer: str) -> None:
    """Tagging changes the receipt key, not the Payment ID: a draft-1 sender's running
    total is still per payment (a second payment does not see the first one's money)."""
    token, _ = new_token()
    pay = parse_pay((await acall(token=token))["Pay"])
    first, second = os.urandom(16), os.urandom(16)
    for pid in (first, second):
        for sequence, amount in enumerate((30, 40)):
            reply = await pay_draft1(
                pay.destination,
                pay.shared_secret,
                amount,
                payment_id=pid,
                sequence=sequence,
                last=sequence == 1,
                payment_amount=70,
            )
            assert isinstance(reply, Fulfill), reply
    rows = await sync_to_async(
        lambda: list(Receipt.objects.order_by("id").values_list("payment_id", "key"))
    )()
    assert [pid for pid, _ in rows] == [first.hex()] * 2 + [second.hex()] * 2
    assert all(key.startswith(f"tag:{pay_token_tag(token).hex()}:") for _, key in rows)
    paid = await acall(token=token)
    assert paid.status_code == 200 and paid["Pay-Balance"] == "40"


async def test_credit_is_visible_before_the_receipt_task_runs(payer: str, settings: Any) -> None:
    """The token is credited from the receipt the hot path commits before the Fulfill,
    not from the Celery task's posting: with the task not run, the call is still paid."""
    from payments.ledger import get_book

    get_book()  # the book of this test
    token, _raw = new_token()
    pay = parse_pay((await acall(token=token))["Pay"])
    import payments.ledger as ledger

    original = ledger._queue_apply_receipts
    ledger._queue_apply_receipts = lambda receipt_ids: None  # the "slow" task: never runs
    try:
        assert isinstance(await pay_draft1(pay.destination, pay.shared_secret, PRICE), Fulfill)
        unapplied = await sync_to_async(Receipt.objects.filter(applied_at__isnull=True).count)()
        assert unapplied == 1
        assert (await acall(token=token)).status_code == 200
    finally:
        ledger._queue_apply_receipts = original


async def test_a_rejected_payment_credits_nothing(payer: str) -> None:
    token, _ = new_token()
    pay = parse_pay((await acall(token=token))["Pay"])
    reply = await pay_draft1(pay.destination, os.urandom(32), PRICE)  # wrong secret
    assert isinstance(reply, Reject) and reply.code == "F06"
    assert (await acall(token=token)).status_code == 402


# --- tagged addresses on the hot path ---------------------------------------------------------


async def test_a_retargeted_or_malformed_tag_is_refused(payer: str) -> None:
    token, _ = new_token()
    pay = parse_pay((await acall(token=token))["Pay"])
    prefix, tag, last = pay.destination.rsplit(".", 2)
    other_tag = b64url_encode(pay_token_tag("someone-else"))
    for destination in (
        f"{prefix}.{other_tag}.{last}",  # another token's tag: another secret
        f"{prefix}.{tag}x.{last}",  # not a 16-byte tag
        f"{prefix}.{tag}.{last}.extra",
    ):
        reply = await pay_draft1(destination, pay.shared_secret, PRICE)
        assert isinstance(reply, Reject) and reply.code == "F06", destination
    assert (await acall(token=token)).status_code == 402


def test_balance_lookup_is_one_query_per_call() -> None:
    token, _ = new_token()
    call(token=token)  # creates the receiver
    with CaptureQueriesContext(connection) as queries:
        assert call(token=token).status_code == 402
    receipt_queries = [q for q in queries.captured_queries if "payments_receipt" in q["sql"]]
    assert len(receipt_queries) == 1


# --- the vectors' formats ------------------------------------------------------------------------


def test_headers_and_texts_match_koa_ilp_vectors() -> None:
    vector = next(
        v
        for v in load_vectors("receiver/http-ilp.json")["vectors"]
        if v["name"] == "koa_ilp_1_1_1_exchanges"
    )
    cases = {c["name"]: c for c in vector["expected"]["cases"]}
    token = vector["inputs"]["payTokenHeader"]
    price = vector["inputs"]["price"]
    # Our Pay header has koa-ilp's shape, field by field.
    theirs = cases["paid_unfunded_token"]["response"]["headers"]["Pay"].split(" ")
    ours = call(token=token)["Pay"].split(" ")
    assert len(ours) == len(theirs) == 4
    assert ours[0] == theirs[0] == "interledger-psk2"
    assert len(ours[2]) == len(theirs[2]) == 44 and ours[2].endswith("=")
    assert re.fullmatch(r"\d+", ours[3]) and re.fullmatch(r"\d+", theirs[3])
    # The 402 texts, byte for byte.
    assert cases["paid_without_token"]["response"]["body"] == MSG_NO_TOKEN
    assert (
        MSG_NO_FUNDS.format(token=token, price=price)
        == cases["paid_unfunded_token"]["response"]["body"]
    )
    assert (
        MSG_INSUFFICIENT.format(token=token, balance=500, price=price)
        == cases["paid_insufficient_balance"]["response"]["body"]
    )
    for name in ("paid_unfunded_token", "paid_insufficient_balance", "paid_success"):
        assert re.fullmatch(r"\d+", cases[name]["response"]["headers"]["Pay-Balance"])


def test_draft1_vector_token_is_a_payment_id() -> None:
    vector = next(
        v
        for v in load_vectors("receiver/http-ilp.json")["vectors"]
        if v["name"].startswith("draft1_era")
    )
    token = PayToken.parse(vector["inputs"]["payTokenHeader"])
    assert token.payment_id == bytes.fromhex(vector["inputs"]["payToken"])
    assert json.dumps(vector["expected"]["finalStatus"]) == "200"
