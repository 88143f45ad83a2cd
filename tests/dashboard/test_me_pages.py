"""The user's own pages: webhooks, API token, paid-API tokens. Nobody touches another's."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.authtoken.models import Token

from payments.models import Webhook
from receivers.paid import PayToken, new_pay_token, paid_token_charge
from tests.dashboard.conftest import logged_in
from tests.dashboard.factories import make_receiver, pay

pytestmark = pytest.mark.django_db(transaction=True)

ME_PAGES = ("/me/webhooks/", "/me/api-token/", "/me/paid-tokens/")


def test_login_required() -> None:
    for url in ME_PAGES:
        response = Client().get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_sub_navigation_links_the_users_pages(alice: User) -> None:
    page = logged_in(alice).get("/me/webhooks/").content.decode()
    for href in (
        'href="/me/"',
        'href="/me/webhooks/"',
        'href="/me/api-token/"',
        'href="/me/paid-tokens/"',
    ):
        assert href in page
    assert 'href="/me/webhooks/" aria-current="page"' in page


def test_add_toggle_delete_a_webhook(alice: User) -> None:
    make_receiver(alice, "tips")
    me = logged_in(alice)
    empty = me.get("/me/webhooks/").content.decode()
    assert "No webhooks yet." in empty and '<option value="tips">' in empty
    added = me.post("/me/webhooks/", {"receiver": "tips", "url": "https://example.org/hook"})
    assert added.status_code == 302
    hook = Webhook.objects.get()
    assert hook.account.code == "receiver:tips" and hook.enabled
    page = me.get("/me/webhooks/").content.decode()
    assert "https://example.org/hook" in page and hook.secret in page
    me.post(f"/me/webhooks/{hook.pk}/toggle/", {"enabled": "0"})
    hook.refresh_from_db()
    assert not hook.enabled
    me.post(f"/me/webhooks/{hook.pk}/toggle/", {"enabled": "1"})
    hook.refresh_from_db()
    assert hook.enabled
    assert me.post(f"/me/webhooks/{hook.pk}/delete/").status_code == 302
    assert not Webhook.objects.exists()


def test_webhook_form_errors(alice: User, bob: User) -> None:
    make_receiver(alice, "tips")
    make_receiver(bob, "bobs")
    me = logged_in(alice)
    bad = me.post("/me/webhooks/", {"receiver": "tips", "url": "not a url"})
    assert bad.status_code == 400 and "Enter a valid URL" in bad.content.decode()
    # Bob's pointer is not a choice for Alice
    other = me.post("/me/webhooks/", {"receiver": "bobs", "url": "https://example.org/h"})
    assert other.status_code == 400 and "Select a valid choice" in other.content.decode()
    assert not Webhook.objects.exists()


def test_without_pointers_the_form_points_to_creating_one(alice: User) -> None:
    page = logged_in(alice).get("/me/webhooks/").content.decode()
    assert "Create a" in page and "payment pointer</a> first" in page


def test_nobody_changes_anothers_webhook(alice: User, bob: User) -> None:
    make_receiver(alice, "tips")
    logged_in(alice).post("/me/webhooks/", {"receiver": "tips", "url": "https://example.org/h"})
    hook = Webhook.objects.get()
    as_bob = logged_in(bob)
    assert "example.org/h" not in as_bob.get("/me/webhooks/").content.decode()
    assert as_bob.post(f"/me/webhooks/{hook.pk}/toggle/", {"enabled": "0"}).status_code == 404
    assert as_bob.post(f"/me/webhooks/{hook.pk}/delete/").status_code == 404
    hook.refresh_from_db()
    assert hook.enabled
    assert logged_in(alice).get(f"/me/webhooks/{hook.pk}/delete/").status_code == 405


def test_api_token_create_show_regenerate(alice: User, bob: User) -> None:
    me = logged_in(alice)
    assert "You have no API token yet." in me.get("/me/api-token/").content.decode()
    me.post("/me/api-token/")
    first = Token.objects.get(user=alice).key
    assert first in me.get("/me/api-token/").content.decode()
    me.post("/me/api-token/")
    second = Token.objects.get(user=alice).key
    assert second != first and not Token.objects.filter(key=first).exists()
    # Bob's page shows Bob's token only
    logged_in(bob).post("/me/api-token/")
    assert second not in logged_in(bob).get("/me/api-token/").content.decode()


def test_paid_tokens_page(alice: User, bob: User) -> None:
    api = make_receiver(alice, "myapi")
    text = new_pay_token()
    token = PayToken.parse(text)
    assert token.payment_id is not None
    pay(api, 2_000_000_000, payment_id=token.payment_id)
    assert paid_token_charge(receiver=api, token=token, price=500_000_000).ok
    page = logged_in(alice).get("/me/paid-tokens/").content.decode()
    assert text[:8] in page and text not in page
    assert "0.5 XRP" in page and "1.5 XRP" in page  # charged, balance
    assert "No paid-API calls" in logged_in(bob).get("/me/paid-tokens/").content.decode()
