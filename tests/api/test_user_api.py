"""The users' REST API: tokens, pointers, incoming payments, webhooks, paid-API tokens.
A user only ever sees their own things; someone else's is a 404 (nothing leaks)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from payments.models import Webhook, WebhookDelivery
from receivers.paid import PayToken, new_pay_token, paid_token_charge
from tests.api.conftest import client_for
from tests.dashboard.factories import make_receiver, pay

pytestmark = pytest.mark.django_db(transaction=True)


# --- auth ---------------------------------------------------------------------------------------------


def test_token_from_password_then_token_auth(alice: User) -> None:
    alice.set_password("correct horse")
    alice.save()
    anon = APIClient()
    response = anon.post(
        "/api/v1/auth/token/", {"username": "alice", "password": "correct horse"}, format="json"
    )
    assert response.status_code == 200
    token = response.json()["token"]
    assert Token.objects.get(user=alice).key == token
    # the same token again, not a new one
    again = anon.post("/api/v1/auth/token/", {"username": "alice", "password": "correct horse"})
    assert again.json()["token"] == token
    anon.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert anon.get("/api/v1/receivers/").status_code == 200


def test_token_errors_are_clear(alice: User) -> None:
    anon = APIClient()
    wrong = anon.post("/api/v1/auth/token/", {"username": "alice", "password": "nope"})
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_credentials"
    missing = anon.post("/api/v1/auth/token/", {"username": "alice"}, format="json")
    assert missing.status_code == 400
    body = missing.json()
    assert body["error"] == "invalid" and "password" in body["detail"]


def test_anonymous_and_bad_token_get_401() -> None:
    anon = APIClient()
    response = anon.get("/api/v1/receivers/")
    assert response.status_code == 401
    assert response.json() == {
        "error": "not_authenticated",
        "detail": "Authentication credentials were not provided.",
    }
    assert response["WWW-Authenticate"] == "Token"
    anon.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    bad = anon.get("/api/v1/receivers/")
    assert bad.status_code == 401 and bad.json()["error"] == "authentication_failed"


def test_root_lists_what_the_caller_may_use(alice: User, operator: User) -> None:
    anon = APIClient().get("/api/v1/").json()
    assert set(anon) == {"auth_token", "schema", "docs"}
    mine = client_for(alice).get("/api/v1/").json()
    assert mine["user"]["receivers"].endswith("/api/v1/receivers/") and "staff" not in mine
    staff = client_for(operator).get("/api/v1/").json()
    assert staff["staff"]["peers"].endswith("/api/v1/peers/")


# --- receivers ---------------------------------------------------------------------------------------------


def test_create_list_detail_update_receivers(as_alice: APIClient, bob: User) -> None:
    make_receiver(bob, "bobs")
    created = as_alice.post(
        "/api/v1/receivers/", {"name": "tips", "description": "Tip jar"}, format="json"
    )
    assert created.status_code == 201
    body = created.json()
    assert body["name"] == "tips" and body["description"] == "Tip jar"
    assert body["pointer"] == "$pay.example.org/tips"
    assert body["spsp_url"] == "https://pay.example.org/tips"
    assert (body["balance"], body["pending"], body["asset_code"], body["asset_scale"]) == (
        "0",
        "0",
        "XRP",
        9,
    )
    listing = as_alice.get("/api/v1/receivers/").json()
    assert listing["count"] == 1 and [r["name"] for r in listing["results"]] == ["tips"]
    changed = as_alice.patch("/api/v1/receivers/tips/", {"description": "New"}, format="json")
    assert changed.status_code == 200 and changed.json()["description"] == "New"
    assert as_alice.get("/api/v1/receivers/tips/").json()["description"] == "New"


def test_receiver_balance_is_reported_as_an_exact_integer_string(
    as_alice: APIClient, alice: User
) -> None:
    tips = make_receiver(alice, "tips")
    big = 2**62 + 5  # far beyond what a JSON number keeps exactly
    pay(tips, big)
    pay(tips, 7)
    assert as_alice.get("/api/v1/receivers/tips/").json()["balance"] == str(big + 7)


def test_receiver_errors(as_alice: APIClient, alice: User, bob: User) -> None:
    make_receiver(bob, "bobs")
    taken = as_alice.post("/api/v1/receivers/", {"name": "bobs"}, format="json")
    assert taken.status_code == 409 and taken.json()["error"] == "pointer_name_taken"
    invalid = as_alice.post("/api/v1/receivers/", {"name": "Not Valid!"}, format="json")
    assert invalid.status_code == 400 and invalid.json()["error"] == "invalid_pointer_name"
    reserved = as_alice.post("/api/v1/receivers/", {"name": "api"}, format="json")
    assert reserved.status_code == 400
    empty = as_alice.post("/api/v1/receivers/", {}, format="json")
    assert empty.status_code == 400 and "name" in empty.json()["detail"]
    # someone else's pointer: the same 404 as a missing one
    for name in ("bobs", "nobody"):
        response = as_alice.get(f"/api/v1/receivers/{name}/")
        assert response.status_code == 404
        assert response.json()["error"] == "receiver_not_found"
        assert as_alice.patch(f"/api/v1/receivers/{name}/", {"description": "x"}).status_code == 404


# --- incoming payments ------------------------------------------------------------------------------------


def test_incoming_payments_are_mine_only_and_filterable(
    as_alice: APIClient, as_bob: APIClient, alice: User, bob: User
) -> None:
    tips = make_receiver(alice, "tips")
    store = make_receiver(alice, "store")
    bobs = make_receiver(bob, "bobs")
    old = pay(tips, 100, at=datetime(2024, 1, 10, 12, tzinfo=UTC))
    new = pay(store, 250, payment_id=bytes(range(16)))
    other = pay(bobs, 999)

    listing = as_alice.get("/api/v1/incoming-payments/").json()
    assert [p["id"] for p in listing["results"]] == [new.pk, old.pk]
    first = listing["results"][0]
    assert first == {
        "id": new.pk,
        "receiver": "store",
        "payment_id": bytes(range(16)).hex(),
        "total": "250",
        "asset_code": "XRP",
        "asset_scale": 9,
        "chunks": 1,
        "first_at": first["first_at"],
        "last_at": first["last_at"],
    }
    by_receiver = as_alice.get("/api/v1/incoming-payments/", {"receiver": "tips"}).json()
    assert [p["id"] for p in by_receiver["results"]] == [old.pk]
    # someone else's pointer name filters to nothing, it does not reveal anything
    assert as_alice.get("/api/v1/incoming-payments/", {"receiver": "bobs"}).json()["count"] == 0
    since = as_alice.get("/api/v1/incoming-payments/", {"since": "2024-06-01T00:00:00Z"}).json()
    assert [p["id"] for p in since["results"]] == [new.pk]
    until = as_alice.get("/api/v1/incoming-payments/", {"until": "2024-06-01T00:00:00Z"}).json()
    assert [p["id"] for p in until["results"]] == [old.pk]

    assert as_alice.get(f"/api/v1/incoming-payments/{old.pk}/").json()["total"] == "100"
    hidden = as_alice.get(f"/api/v1/incoming-payments/{other.pk}/")
    assert hidden.status_code == 404 and hidden.json()["error"] == "not_found"
    assert [p["id"] for p in as_bob.get("/api/v1/incoming-payments/").json()["results"]] == [
        other.pk
    ]


def test_incoming_payment_filters_are_validated(as_alice: APIClient) -> None:
    bad = as_alice.get("/api/v1/incoming-payments/", {"since": "yesterday"})
    assert bad.status_code == 400
    assert bad.json()["error"] == "invalid" and "since" in bad.json()["detail"]
    backwards = as_alice.get(
        "/api/v1/incoming-payments/", {"since": "2024-02-01T00:00Z", "until": "2024-01-01T00:00Z"}
    )
    assert backwards.status_code == 400 and "until" in backwards.json()["detail"]


def test_pagination(as_alice: APIClient, alice: User) -> None:
    tips = make_receiver(alice, "tips")
    for _ in range(3):
        pay(tips, 1)
    page = as_alice.get("/api/v1/incoming-payments/", {"page_size": 2}).json()
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]
    assert len(as_alice.get(page["next"]).json()["results"]) == 1


# --- webhooks ---------------------------------------------------------------------------------------------


def test_webhook_crud(as_alice: APIClient, alice: User) -> None:
    make_receiver(alice, "tips")
    created = as_alice.post(
        "/api/v1/webhooks/", {"receiver": "tips", "url": "https://example.org/h"}, format="json"
    )
    assert created.status_code == 201
    hook = created.json()
    assert hook["receiver"] == "tips" and hook["enabled"] is True and len(hook["secret"]) == 64
    assert Webhook.objects.get(pk=hook["id"]).account.code == "receiver:tips"
    assert [h["id"] for h in as_alice.get("/api/v1/webhooks/").json()["results"]] == [hook["id"]]
    off = as_alice.patch(f"/api/v1/webhooks/{hook['id']}/", {"enabled": False}, format="json")
    assert off.status_code == 200 and off.json()["enabled"] is False
    moved = as_alice.patch(
        f"/api/v1/webhooks/{hook['id']}/", {"url": "https://example.org/new"}, format="json"
    )
    assert moved.json()["url"] == "https://example.org/new" and moved.json()["enabled"] is False
    assert as_alice.delete(f"/api/v1/webhooks/{hook['id']}/").status_code == 204
    assert not Webhook.objects.filter(pk=hook["id"]).exists()
    gone = as_alice.get(f"/api/v1/webhooks/{hook['id']}/")
    assert gone.status_code == 404 and gone.json()["error"] == "webhook_not_found"


def test_webhook_delete_takes_its_delivery_log(as_alice: APIClient, alice: User) -> None:
    tips = make_receiver(alice, "tips")
    hook = as_alice.post(
        "/api/v1/webhooks/", {"receiver": "tips", "url": "https://127.0.0.1:9/h"}, format="json"
    ).json()
    Webhook.objects.filter(pk=hook["id"]).update(enabled=False)  # no HTTP in this test
    pay(tips, 5)
    WebhookDelivery.objects.create(
        webhook_id=hook["id"], key="test-delivery", event="incoming_payment", payload={}
    )
    assert as_alice.delete(f"/api/v1/webhooks/{hook['id']}/").status_code == 204
    assert not WebhookDelivery.objects.filter(webhook_id=hook["id"]).exists()


def test_webhooks_of_others_are_invisible_and_untouchable(
    as_alice: APIClient, as_bob: APIClient, alice: User, bob: User
) -> None:
    make_receiver(alice, "tips")
    make_receiver(bob, "bobs")
    hook = as_alice.post(
        "/api/v1/webhooks/", {"receiver": "tips", "url": "https://example.org/h"}, format="json"
    ).json()
    # Bob cannot add one to Alice's pointer, nor see, change or delete hers
    onto = as_bob.post(
        "/api/v1/webhooks/", {"receiver": "tips", "url": "https://evil.example/h"}, format="json"
    )
    assert onto.status_code == 404 and onto.json()["error"] == "receiver_not_found"
    assert as_bob.get("/api/v1/webhooks/").json()["count"] == 0
    assert as_bob.get(f"/api/v1/webhooks/{hook['id']}/").status_code == 404
    assert (
        as_bob.patch(
            f"/api/v1/webhooks/{hook['id']}/", {"enabled": False}, format="json"
        ).status_code
        == 404
    )
    assert as_bob.delete(f"/api/v1/webhooks/{hook['id']}/").status_code == 404
    assert Webhook.objects.get(pk=hook["id"]).enabled is True


def test_webhook_input_errors(as_alice: APIClient, alice: User) -> None:
    make_receiver(alice, "tips")
    bad_url = as_alice.post(
        "/api/v1/webhooks/", {"receiver": "tips", "url": "ftp://example.org"}, format="json"
    )
    assert bad_url.status_code == 400 and "url" in bad_url.json()["detail"]
    no_receiver = as_alice.post("/api/v1/webhooks/", {"url": "https://example.org"}, format="json")
    assert no_receiver.status_code == 400 and "receiver" in no_receiver.json()["detail"]


# --- paid-API tokens ----------------------------------------------------------------------------------------


def test_paid_tokens_show_balances_of_my_paid_apis_only(
    as_alice: APIClient, as_bob: APIClient, alice: User
) -> None:
    api = make_receiver(alice, "myapi")
    text = new_pay_token()
    token = PayToken.parse(text)
    assert token.payment_id is not None
    pay(api, 500, payment_id=token.payment_id)  # the buyer prepaid 500 for this token
    charge = paid_token_charge(receiver=api, token=token, price=120)
    assert charge.ok
    rows = as_alice.get("/api/v1/paid-tokens/").json()["results"]
    assert len(rows) == 1
    row = rows[0]
    assert row["receiver"] == "myapi" and row["token_prefix"] == text[:8]
    assert (row["calls"], row["charged"], row["balance"]) == (1, "120", "380")
    assert text not in str(rows)  # the bearer token itself is never shown
    assert as_alice.get("/api/v1/paid-tokens/", {"receiver": "other"}).json()["count"] == 0
    assert as_bob.get("/api/v1/paid-tokens/").json()["count"] == 0
