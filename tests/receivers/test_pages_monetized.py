"""Web-monetized pages: per-visitor receivers, server-side reveal, live updates."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client

from ilp.packet import Fulfill
from ilp.psk2 import b64url_decode
from receivers.consumers import PageConsumer
from receivers.models import MonetizedPage, Receiver
from receivers.pages import PageError, page_create, page_update
from receivers.routing import websocket_urlpatterns
from receivers.services import receiver_create
from receivers.testing import ensure_payer, pay_draft1

pytestmark = pytest.mark.django_db(transaction=True)

PAID_TEXT = "The secret recipe: more butter."
THRESHOLD = 1000


@pytest.fixture
def page(alice_user: User) -> MonetizedPage:
    ensure_payer()
    receiver = receiver_create(user=alice_user, name="alice")
    return page_create(
        owner=alice_user,
        receiver=receiver,
        slug="recipe",
        title="A recipe",
        public_body="Everyone may read this.",
        paid_body=PAID_TEXT,
        threshold=THRESHOLD,
        published=True,
    )


def visit(client: Client, slug: str = "recipe") -> tuple[Any, str]:
    """Open the page; return the response and this session's visitor id."""
    response = client.get(f"/pages/{slug}/")
    assert response.status_code == 200
    match = re.search(r'"/ws/pages/[^/]+/([A-Za-z0-9_-]{22})"', response.content.decode())
    assert match, "the page names its WebSocket"
    return response, match[1]


def spsp(visitor: str, slug: str = "recipe") -> tuple[str, bytes]:
    response = Client().get(f"/pages/{slug}/spsp/{visitor}", HTTP_ACCEPT="application/spsp+json")
    assert response.status_code == 200, response.content
    body = json.loads(response.content)
    import base64

    return body["destination_account"], base64.b64decode(body["shared_secret"])


async def pay(visitor: str, amount: int) -> None:
    destination, secret = await sync_to_async(spsp)(visitor)
    assert isinstance(await pay_draft1(destination, secret, amount), Fulfill)


# --- rendering --------------------------------------------------------------------------------


def test_the_page_has_all_three_tag_forms_for_this_visitor(page: MonetizedPage) -> None:
    response, visitor = visit(Client())
    html = response.content.decode()
    spsp_url = f"https://pay.example.org/pages/recipe/spsp/{visitor}"
    assert (
        f'<meta name="monetization" content="$pay.example.org/pages/recipe/spsp/{visitor}">' in html
    )
    assert f'<link rel="monetization" href="{spsp_url}">' in html
    assert "window.monetize({ receiver: cfg.spsp_url })" in html
    found = re.search(r'id="wm-config" type="application/json">(.*?)</script>', html)
    assert found is not None
    config = json.loads(found[1])
    assert config["spsp_url"] == spsp_url
    assert "Everyone may read this." in html
    assert PAID_TEXT not in html  # never sent before the threshold
    assert response["Cache-Control"] == "private, no-store"


def test_a_session_keeps_its_visitor_id_and_sessions_differ(page: MonetizedPage) -> None:
    client = Client()
    _, first = visit(client)
    _, again = visit(client)
    _, other = visit(Client())
    assert first == again != other
    assert len(b64url_decode(first)) == 16


def test_drafts_are_for_their_owner_only(page: MonetizedPage, alice_user: User) -> None:
    page_update(page=page, published=False)
    assert Client().get("/pages/recipe/").status_code == 404
    owner = Client()
    owner.force_login(alice_user)
    response = owner.get("/pages/recipe/")
    assert response.status_code == 200 and b"Draft" in response.content


def test_the_visitor_spsp_endpoint(page: MonetizedPage) -> None:
    _, visitor = visit(Client())
    destination, secret = spsp(visitor)
    tag_segment = destination.split(".")[-2]
    assert destination.startswith("test.node.receivers.alice.")
    assert b64url_decode(tag_segment) == b64url_decode(visitor)
    assert len(secret) == 32
    client = Client()
    assert client.get(f"/pages/recipe/spsp/{visitor}").status_code == 302  # HTML: the page
    response = client.get(f"/pages/recipe/spsp/{visitor}", HTTP_ACCEPT="application/spsp4+json")
    assert response.status_code == 200  # STREAM, tagged with the visitor (test_stream_receiver)
    assert response["Content-Type"] == "application/spsp4+json"
    assert client.options(f"/pages/recipe/spsp/{visitor}").status_code == 204
    assert (
        client.get(
            "/pages/recipe/spsp/not-a-visitor", HTTP_ACCEPT="application/spsp+json"
        ).status_code
        == 404
    )
    assert (
        client.get(f"/pages/nope/spsp/{visitor}", HTTP_ACCEPT="application/spsp+json").status_code
        == 404
    )
    assert client.post(f"/pages/recipe/spsp/{visitor}").status_code == 405


# --- the reveal -------------------------------------------------------------------------------


async def test_revealed_once_the_session_has_paid_the_threshold(page: MonetizedPage) -> None:
    client, stranger = Client(), Client()
    _, visitor = await sync_to_async(visit)(client)
    _, other = await sync_to_async(visit)(stranger)
    await pay(visitor, 600)
    response, _ = await sync_to_async(visit)(client)
    assert PAID_TEXT not in response.content.decode()
    status = (await sync_to_async(client.get)("/pages/recipe/status")).json()
    assert status == {"type": "status", "received": "600", "threshold": "1000", "unlocked": False}
    await pay(visitor, 400)
    response, _ = await sync_to_async(visit)(client)
    assert PAID_TEXT in response.content.decode()
    status = (await sync_to_async(client.get)("/pages/recipe/status")).json()
    assert status["unlocked"] is True and PAID_TEXT in status["paid_html"]
    # Another session paid nothing: still locked, whatever this one paid.
    response, _ = await sync_to_async(visit)(stranger)
    assert PAID_TEXT not in response.content.decode()
    status = (await sync_to_async(stranger.get)("/pages/recipe/status")).json()
    assert status["received"] == "0" and "paid_html" not in status
    assert other != visitor


async def test_plain_pointer_payments_do_not_unlock_anyone(page: MonetizedPage) -> None:
    client = Client()
    await sync_to_async(visit)(client)
    response = await sync_to_async(Client().get)("/alice", HTTP_ACCEPT="application/spsp+json")
    body = json.loads(response.content)
    import base64

    await pay_draft1(body["destination_account"], base64.b64decode(body["shared_secret"]), 5000)
    status = (await sync_to_async(client.get)("/pages/recipe/status")).json()
    assert status["received"] == "0" and status["unlocked"] is False


def test_status_needs_a_visit_first(page: MonetizedPage) -> None:
    response = Client().get("/pages/recipe/status")
    assert response.status_code == 404
    assert "open the page first" in response.json()["detail"]
    assert Client().get("/pages/none/status").status_code == 404


# --- live updates over the WebSocket ------------------------------------------------------------


def communicator(client: Client, visitor: str) -> WebsocketCommunicator:
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    return WebsocketCommunicator(
        URLRouter(websocket_urlpatterns),
        f"/ws/pages/recipe/{visitor}",
        headers=[(b"cookie", cookie), (b"origin", b"http://testserver")],
    )


async def test_the_socket_pushes_progress_then_the_paid_part(
    page: MonetizedPage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(PageConsumer, "poll_s", 60.0)  # only the receipts' events count here
    client = Client()
    _, visitor = await sync_to_async(visit)(client)
    ws = communicator(client, visitor)
    connected, _ = await ws.connect()
    assert connected
    first = await ws.receive_json_from(timeout=5)
    assert first == {"type": "status", "received": "0", "threshold": "1000", "unlocked": False}
    await pay(visitor, 700)
    progress = await ws.receive_json_from(timeout=5)  # pushed by the receipt's event
    assert progress["received"] == "700" and "paid_html" not in progress
    await pay(visitor, 300)
    unlocked = await ws.receive_json_from(timeout=5)
    assert unlocked["unlocked"] is True and PAID_TEXT in unlocked["paid_html"]
    await ws.disconnect()


async def test_the_socket_polls_when_no_event_comes(
    page: MonetizedPage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A payment received by another process (another in-memory channel layer) sends no
    event here: the socket's slow poll still sees it."""
    monkeypatch.setattr(PageConsumer, "poll_s", 0.2)
    monkeypatch.setattr("receivers.psk2_receiver.notify_tag", lambda tag: None)
    client = Client()
    _, visitor = await sync_to_async(visit)(client)
    ws = communicator(client, visitor)
    assert (await ws.connect())[0]
    assert (await ws.receive_json_from(timeout=5))["received"] == "0"
    await pay(visitor, THRESHOLD)
    while True:
        message = await ws.receive_json_from(timeout=5)
        if message["unlocked"]:
            break
    assert PAID_TEXT in message["paid_html"]
    await ws.disconnect()


async def test_the_socket_belongs_to_the_session_that_holds_the_visitor(
    page: MonetizedPage,
) -> None:
    owner_of_id, thief = Client(), Client()
    _, visitor = await sync_to_async(visit)(owner_of_id)
    await sync_to_async(visit)(thief)
    ws = communicator(thief, visitor)  # someone else's visitor id
    connected, code = await ws.connect()
    assert not connected and code == 4403
    await ws.disconnect()


# --- the owner's pages ----------------------------------------------------------------------------


def test_owner_creates_and_edits_pages(alice_user: User) -> None:
    receiver_create(user=alice_user, name="alice")
    client = Client()
    client.force_login(alice_user)
    assert client.get("/me/pages/").status_code == 200
    form = {
        "slug": "news",
        "receiver": "alice",
        "title": "News",
        "public_body": "Free part",
        "paid_body": "Paid part",
        "threshold": "500",
        "published": "on",
    }
    response = client.post("/me/pages/", form)
    assert response.status_code == 302 and response["Location"] == "/me/pages/news/"
    page = MonetizedPage.objects.get(slug="news")
    assert (page.receiver.name, int(page.threshold), page.published) == ("alice", 500, True)
    response = client.post("/me/pages/", form)
    assert response.status_code == 400 and b"is taken" in response.content
    edit = {**form, "title": "Latest news", "threshold": "900"}
    response = client.post("/me/pages/news/", edit)
    assert response.status_code == 302
    page.refresh_from_db()
    assert (page.title, int(page.threshold)) == ("Latest news", 900)
    assert Client().get("/me/pages/").status_code == 302  # login required


def test_pages_are_paid_to_the_owners_pointers(alice_user: User, django_user_model: Any) -> None:
    bob = django_user_model.objects.create_user(username="bob")
    bobs = receiver_create(user=bob, name="bobs")
    with pytest.raises(PageError, match="one of yours"):
        page_create(
            owner=alice_user, receiver=bobs, slug="x", title="x", paid_body="x", threshold=1
        )
    client = Client()
    client.force_login(alice_user)
    response = client.post(
        "/me/pages/",
        {"slug": "x", "receiver": "bobs", "title": "x", "paid_body": "x", "threshold": "1"},
    )
    assert response.status_code == 400
    assert not MonetizedPage.objects.exists()
    assert Receiver.objects.count() == 1
