from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from ilp.address import is_valid_address
from ilp.psk2_receiver import secret_for
from receivers.models import Receiver
from receivers.services import receiver_create
from tests.conftest import load_vectors
from tests.receivers.conftest import RECEIVER_SECRET_HEX

pytestmark = pytest.mark.django_db

SPSP_VECTORS = load_vectors("receiver/spsp.json")
SPSP = "application/spsp+json"


def vector(name: str) -> dict[str, Any]:
    return next(v for v in SPSP_VECTORS["vectors"] if v["name"] == name)


def spsp_get(client: Client, path: str, accept: str = SPSP) -> Any:
    return client.get(path, HTTP_ACCEPT=accept)


def test_spsp_answer_headers_and_body(client: Client, bob: Receiver) -> None:
    response = spsp_get(client, "/bob")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/spsp+json"
    assert "max-age=60" in response["Cache-Control"]
    assert "private" in response["Cache-Control"]
    assert response["Access-Control-Allow-Origin"] == "*"
    assert "Accept" in response["Vary"]
    body = json.loads(response.content)
    assert set(body) == {
        "destination_account",
        "shared_secret",
        "asset_info",
        "ledger_info",
        "receiver_info",
    }
    # Plain pointers have no invoice: a "balance" would make senders pay its maximum.
    assert "balance" not in body
    assert body["asset_info"] == {"code": "XRP", "scale": 9}
    assert body["ledger_info"] == {"currency_code": "XRP", "currency_scale": 9}
    assert body["receiver_info"] == {"name": "bob"}
    destination = body["destination_account"]
    assert destination.startswith("test.node.receivers.bob.")
    assert is_valid_address(destination)
    # Standard base64 with padding, exactly 32 bytes.
    secret_text = body["shared_secret"]
    assert len(secret_text) == 44 and secret_text.endswith("=")
    secret = base64.b64decode(secret_text, validate=True)
    assert len(secret) == 32
    # The node can re-derive it from the destination alone.
    assert (
        secret_for(bytes.fromhex(RECEIVER_SECRET_HEX), destination, "test.node.receivers.bob")
        == secret
    )


def test_every_query_gets_a_fresh_address_and_secret(client: Client, bob: Receiver) -> None:
    bodies = [json.loads(spsp_get(client, "/bob").content) for _ in range(5)]
    assert len({b["destination_account"] for b in bodies}) == 5
    assert len({b["shared_secret"] for b in bodies}) == 5


def test_head_answers_like_get_without_a_body(client: Client, bob: Receiver) -> None:
    response = client.head("/bob", HTTP_ACCEPT=SPSP)
    assert response.status_code == 200
    assert response["Content-Type"] == SPSP
    assert response.content == b""


def test_stream_aware_client_gets_psk2(client: Client, bob: Receiver) -> None:
    accept = vector("spsp_server_v1_0_response_mixed_accept")["inputs"]["requestHeaders"]["Accept"]
    response = spsp_get(client, "/bob", accept)
    assert response.status_code == 200
    assert response["Content-Type"] == SPSP


def test_what_ilp_protocol_spsp_2_0_reads_is_there(client: Client, bob: Receiver) -> None:
    # 2.0.0 copies destination_account, shared_secret, balance, ledger_info, receiver_info.
    expected = vector("spsp_client_v2_0_parsed_result")["expected"]["result"]
    body = json.loads(spsp_get(client, "/bob").content)
    assert set(expected["ledgerInfo"]) == set(body["ledger_info"])
    assert set(body["receiver_info"]) <= set(expected["receiverInfo"])


def test_unknown_pointer_is_a_json_404(client: Client, bob: Receiver) -> None:
    expected = vector("spsp_rfc_draft4_receiver_not_found")["expected"]
    response = spsp_get(client, "/nobody")
    assert response.status_code == expected["status"] == 404
    assert response["Content-Type"] == "application/json"
    assert response["Access-Control-Allow-Origin"] == "*"
    body = json.loads(response.content)
    for key, value in expected["body"].items():
        assert body[key] == value
    assert "nobody" in body["error"]
    assert "destination_account" not in body and "shared_secret" not in body


@pytest.mark.parametrize(
    ("path", "reason"), [("/Bob", "lowercase"), ("/dashboard", "reserved"), ("/a.b", "only")]
)
def test_impossible_names_are_404_with_the_reason(
    client: Client, bob: Receiver, path: str, reason: str
) -> None:
    response = spsp_get(client, path)
    assert response.status_code == 404
    assert reason in json.loads(response.content)["error"]


def test_spsp4_gets_stream_credentials(client: Client, bob: Receiver) -> None:
    # More in tests/receivers/test_stream_receiver.py.
    response = spsp_get(client, "/bob", "application/spsp4+json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/spsp4+json"
    assert ".~" in json.loads(response.content)["destination_account"]


@pytest.mark.parametrize("accept", ["image/png", "application/spsp+json;q=0"])
def test_unservable_accept_is_406(client: Client, bob: Receiver, accept: str) -> None:
    response = spsp_get(client, "/bob", accept)
    assert response.status_code == 406
    assert "application/spsp+json" in json.loads(response.content)["error"]


@pytest.mark.parametrize(
    "accept", [None, "text/html", "text/html,application/xhtml+xml,*/*;q=0.8", "*/*"]
)
def test_browsers_get_the_pointer_page_with_a_qr_code(
    client: Client, bob: Receiver, accept: str | None
) -> None:
    # The reference server sent 404 here (vector spsp_server_v1_0_not_spsp); its
    # description allows a page instead, which is what people opening the link want.
    response = client.get("/bob") if accept is None else client.get("/bob", HTTP_ACCEPT=accept)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert "Accept" in response["Vary"]
    html = response.content.decode()
    assert "$pay.example.org/bob" in html
    assert "https://pay.example.org/bob" in html
    assert '<svg viewBox="' in html and 'class="qr-code"' in html
    assert '<meta name="monetization" content="$pay.example.org/bob">' in html
    assert '<link rel="monetization" href="https://pay.example.org/bob">' in html
    assert "Bob&#x27;s tips" in html


def test_unknown_pointer_page_is_html_404(client: Client, bob: Receiver) -> None:
    response = client.get("/nobody", HTTP_ACCEPT="text/html")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
    assert "no payment pointer named" in response.content.decode()


def test_other_methods_are_405_and_options_is_a_cors_preflight(
    client: Client, bob: Receiver
) -> None:
    response = Client(enforce_csrf_checks=True).post("/bob", HTTP_ACCEPT=SPSP)
    assert response.status_code == 405
    assert "GET" in response["Allow"]
    preflight = client.options("/bob", HTTP_ORIGIN="https://blog.example")
    assert preflight.status_code == 204
    assert preflight["Access-Control-Allow-Origin"] == "*"
    assert "GET" in preflight["Access-Control-Allow-Methods"]


def test_well_known_pay_prefers_demo_else_the_oldest(
    client: Client, bob: Receiver, alice_user: User
) -> None:
    body = json.loads(spsp_get(client, "/.well-known/pay").content)
    assert body["destination_account"].startswith("test.node.receivers.bob.")
    receiver_create(user=alice_user, name="zed")
    body = json.loads(spsp_get(client, "/.well-known/pay").content)
    assert body["destination_account"].startswith("test.node.receivers.bob.")
    receiver_create(user=alice_user, name="demo", site=True)
    response = spsp_get(client, "/.well-known/pay")
    assert response.status_code == 200
    assert response["Content-Type"] == SPSP
    body = json.loads(response.content)
    assert body["destination_account"].startswith("test.node.receivers.demo.")
    page = client.get("/.well-known/pay", HTTP_ACCEPT="text/html").content.decode()
    assert (
        "$pay.example.org<" in page or "$pay.example.org\n" in page or ">$pay.example.org" in page
    )


def test_well_known_pay_without_receivers_is_404(client: Client) -> None:
    response = spsp_get(client, "/.well-known/pay")
    assert response.status_code == 404
    assert json.loads(response.content)["id"] == "InvalidReceiverError"


def test_trailing_slash_redirects_to_the_pointer(client: Client, bob: Receiver) -> None:
    response = spsp_get(client, "/bob/")
    assert response.status_code == 301
    assert response["Location"] == "/bob"
    assert spsp_get(client, "/nobody/").status_code == 404


def test_other_routes_keep_their_slash_redirect(client: Client) -> None:
    # /<name> catches /admin before APPEND_SLASH could; the view redirects like it would.
    response = client.get("/admin", HTTP_ACCEPT="text/html")
    assert response.status_code == 301
    assert response["Location"] == "/admin/"
    response = client.get("/me?x=1")
    assert response.status_code == 301
    assert response["Location"] == "/me/?x=1"
