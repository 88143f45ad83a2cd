from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.template import Context, Template
from django.test import Client, RequestFactory

from payments.ledger import PostingDraft, ReceiptDraft, ensure_account, get_book
from receivers.models import Receiver
from receivers.services import receiver_create


@pytest.fixture
def logged_in(client: Client, alice_user: User) -> Client:
    client.force_login(alice_user)
    return client


@pytest.mark.django_db
def test_home_lists_the_node_and_its_pointers(client: Client, bob: Receiver) -> None:
    response = client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "test.node" in html
    assert "test.node.receivers." in html
    assert "$pay.example.org/bob" in html
    assert 'href="/bob"' in html
    # The layout's navigation.
    for link in ('href="/me/"', 'href="/admin/"', 'href="/api/docs/"', "/accounts/login/"):
        assert link in html


@pytest.mark.django_db
def test_home_without_pointers_says_how_to_make_one(client: Client) -> None:
    html = client.get("/").content.decode()
    assert "No payment pointers yet" in html
    assert "add_pointer" in html


@pytest.mark.django_db
def test_my_pages_need_a_login(client: Client, bob: Receiver) -> None:
    for path in ("/me/", "/me/pointers/bob/"):
        response = client.get(path)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/?next=")


@pytest.mark.django_db
def test_login_page_and_logout(client: Client, alice_user: User) -> None:
    page = client.get("/accounts/login/")
    assert page.status_code == 200
    assert 'name="username"' in page.content.decode()
    response = client.post(
        "/accounts/login/", {"username": "alice", "password": "alice-password", "next": "/me/"}
    )
    assert response.status_code == 302 and response["Location"] == "/me/"
    html = client.get("/me/").content.decode()
    assert "Log out" in html and "alice" in html
    logged_out = client.post("/accounts/logout/")
    assert logged_out.status_code == 200
    assert "logged out" in logged_out.content.decode()


@pytest.mark.django_db
def test_me_lists_my_pointers_with_balances(logged_in: Client, bob: Receiver) -> None:
    other = User.objects.create_user(username="mallory")
    receiver_create(user=other, name="mallory")
    html = logged_in.get("/me/").content.decode()
    assert "$pay.example.org/bob" in html
    assert "mallory" not in html
    assert "0 XRP" in html


@pytest.mark.django_db
def test_creating_a_pointer(logged_in: Client, alice_user: User) -> None:
    response = logged_in.post("/me/", {"name": "tips", "description": "Tip jar"})
    assert response.status_code == 302
    assert response["Location"] == "/me/pointers/tips/"
    receiver = Receiver.objects.select_related("account").get(name="tips")
    assert receiver.user == alice_user
    assert receiver.account.code == "receiver:tips"
    assert receiver.account.kind == "receiver"
    assert receiver.description == "Tip jar"
    page = logged_in.get("/me/pointers/tips/")
    assert "created" in page.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("name", "reason"),
    [("Tips", "lowercase"), ("admin", "reserved"), ("bob", "taken"), ("", "required")],
)
def test_creating_a_bad_pointer_says_why(
    logged_in: Client, bob: Receiver, name: str, reason: str
) -> None:
    response = logged_in.post("/me/", {"name": name})
    assert response.status_code == 400
    assert reason in response.content.decode()
    assert Receiver.objects.count() == 1


@pytest.mark.django_db
def test_someone_elses_pointer_is_404(client: Client, bob: Receiver) -> None:
    other = User.objects.create_user(username="mallory")
    client.force_login(other)
    response = client.get("/me/pointers/bob/")
    assert response.status_code == 404


@pytest.mark.django_db
def test_editing_the_description(logged_in: Client, bob: Receiver) -> None:
    response = logged_in.post("/me/pointers/bob/", {"description": "New words"})
    assert response.status_code == 302
    bob.refresh_from_db()
    assert bob.description == "New words"


@pytest.mark.django_db(transaction=True)
def test_detail_shows_balance_and_recent_payments(logged_in: Client, bob: Receiver) -> None:
    # A payment as the hot path records it; Celery (eager here) credits the receiver.
    ensure_account("peer:carol", kind="peer")
    payment_id = bytes.fromhex("ab" * 16)
    get_book().commit_sync(
        [PostingDraft("peer:carol", -2_500_000_000, "p1")],
        [ReceiptDraft("receiver:bob", payment_id, 0, 2_500_000_000, "p1")],
    )
    html = logged_in.get("/me/pointers/bob/").content.decode()
    assert "2.5 XRP" in html
    assert "abababab" in html
    assert '<svg viewBox="' in html
    assert (
        "&lt;meta name=&quot;monetization&quot; content=&quot;$pay.example.org/bob&quot;&gt;"
        in html
    )
    listing = logged_in.get("/me/").content.decode()
    assert "2.5 XRP" in listing


@pytest.mark.django_db
def test_monetization_tags(bob: Receiver, rf: RequestFactory, settings: object) -> None:
    template = Template("{% load monetization %}{% monetization_tags receiver %}")
    html = template.render(Context({"receiver": bob}))
    assert html.strip().splitlines() == [
        '<meta name="monetization" content="$pay.example.org/bob">',
        '<link rel="monetization" href="https://pay.example.org/bob">',
    ]
    # By name, with the host from the request when no public URL is set.
    settings.ILP_PUBLIC_URL = ""  # type: ignore[attr-defined]
    settings.ALLOWED_HOSTS = ["node.example"]  # type: ignore[attr-defined]
    request = rf.get("/", HTTP_HOST="node.example:8443")
    html = Template('{% load monetization %}{% monetization_tags "bob" %}').render(
        Context({"request": request})
    )
    assert '<meta name="monetization" content="$node.example:8443/bob">' in html
    assert '<link rel="monetization" href="http://node.example:8443/bob">' in html


def test_asset_amount_filter() -> None:
    from receivers.templatetags.ilp_format import asset_amount

    assert asset_amount(1_234_500_000, 9) == "1.2345"
    assert asset_amount(1000, 0) == "1000"
    assert asset_amount(5, 2) == "0.05"
    assert asset_amount(0, 9) == "0"
    assert asset_amount(2**64 - 1, 9) == "18446744073.709551615"
    assert asset_amount(None, 2) == ""
