"""The staff API: account detail, incoming payments, webhook creation, error bodies."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from payments import services
from payments.ledger import BalanceBook, PostingDraft, ReceiptDraft
from tests.payments.conftest import PEER, RECEIVER, make_accounts

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff() -> APIClient:
    user = get_user_model().objects.create_user("op", password="pw", is_staff=True)
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_account_detail_and_incoming_payments(
    staff: APIClient, book: BalanceBook, eager_celery: None
) -> None:
    make_accounts()
    book.commit_sync(
        [PostingDraft(PEER, -(2**62), "big")],
        [ReceiptDraft(RECEIVER, b"\x09" * 16, 0, 2**62, "big")],
    )
    body = staff.get(f"/api/v1/ledger/accounts/{RECEIVER}/").json()
    assert body["balance"] == str(2**62) and body["unapplied_receipts"] == "0"
    assert body["kind"] == "receiver" and body["max_balance"] is None
    peer = staff.get(f"/api/v1/ledger/accounts/{PEER}/").json()
    assert (peer["balance"], peer["min_balance"]) == (str(-(2**62)), "-1000")
    payments = staff.get(f"/api/v1/ledger/accounts/{RECEIVER}/incoming-payments/").json()
    assert [(p["payment_id"], p["total"], p["chunks"]) for p in payments] == [
        ("09" * 16, str(2**62), 1)
    ]
    assert staff.get("/api/v1/ledger/accounts/peer:nobody/").status_code == 404
    gone = staff.get("/api/v1/ledger/accounts/peer:nobody/incoming-payments/")
    assert gone.status_code == 404 and gone.json()["error"] == "unknown_account"


def test_the_old_api_payments_paths_are_gone(staff: APIClient, book: BalanceBook) -> None:
    make_accounts()
    assert staff.get(f"/api/payments/accounts/{RECEIVER}/").status_code == 404
    assert staff.post("/api/payments/webhooks/", {"account": RECEIVER}).status_code == 404


def test_webhook_create_api(staff: APIClient, book: BalanceBook) -> None:
    make_accounts()
    response = staff.post(
        "/api/v1/ledger/webhooks/", {"account": RECEIVER, "url": "https://example.com/h"}
    )
    assert response.status_code == 201
    assert len(response.json()["secret"]) == 64
    missing = staff.post(
        "/api/v1/ledger/webhooks/", {"account": "receiver:nobody", "url": "https://example.com/h"}
    )
    assert missing.status_code == 404
    assert missing.json()["error"] == "unknown_account"
    assert (
        staff.post("/api/v1/ledger/webhooks/", {"account": RECEIVER, "url": "nope"}).status_code
        == 400
    )


def test_non_staff_is_refused(book: BalanceBook) -> None:
    make_accounts()
    user = get_user_model().objects.create_user("u", password="pw")
    client = APIClient()
    client.force_authenticate(user)
    assert client.get(f"/api/v1/ledger/accounts/{PEER}/").status_code == 403
    assert APIClient().get(f"/api/v1/ledger/accounts/{PEER}/").status_code in (401, 403)
    services.account_set_limits(account_code=PEER, min_balance=None, max_balance=None)
