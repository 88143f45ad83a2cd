"""Open Payments on our pointers: wallet address, GNAP grants, RFC 9421 signatures,
incoming payments, and their limits on the STREAM packet path.

Requests are signed with a real Ed25519 key (``http-message-signatures``, as
``@interledger/http-signature-utils`` signs them); the client's JWKS is served by a real
HTTP server on loopback and fetched through ``payments.outbound``."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from django.contrib.auth.models import User
from django.http import HttpResponse
from django.test import Client
from django.utils import timezone
from http_message_signatures import HTTPMessageSigner, MappingKeyResolver, algorithms

from ilp.packet import Fulfill, Reject
from ilp.psk2 import b64url_decode
from ilp.stream import (
    ConnectionCloseFrame,
    StreamMaxMoneyFrame,
    StreamMoneyFrame,
)
from payments.models import Receipt
from receivers.models import MonetizedPage, Receiver
from receivers.open_payments import jwks, limits, signatures
from receivers.open_payments.models import AccessToken, Grant, IncomingPaymentResource
from receivers.pages import page_create
from receivers.services import receiver_create
from receivers.testing import ensure_payer
from tests.receivers.test_stream_receiver import Sender

pytestmark = pytest.mark.django_db(transaction=True)

BASE = "https://pay.example.org"  # ILP_PUBLIC_URL of tests.receivers.conftest
KEY_ID = "test-key-1"


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def public_jwk(key: Ed25519PrivateKey, kid: str = KEY_ID) -> dict[str, str]:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {
        "kid": kid,
        "alg": "EdDSA",
        "use": "sig",
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64url(raw),
    }


class _KeyServer:
    """Serves ``/client/jwks.json`` (and counts the fetches) on loopback."""

    def __init__(self) -> None:
        self.keys: list[dict[str, str]] = []
        self.fetches = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/client/jwks.json":
                    self.send_response(404)
                    self.end_headers()
                    return
                owner.fetches += 1
                body = json.dumps({"keys": owner.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.client_url = f"http://127.0.0.1:{self.server.server_address[1]}/client"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def _fresh_caches() -> Iterator[None]:
    jwks.cache.clear()
    limits.cache.clear()
    signatures._local_seen.clear()
    yield
    jwks.cache.clear()
    limits.cache.clear()


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def key_server(key: Ed25519PrivateKey) -> Iterator[_KeyServer]:
    server = _KeyServer()
    server.keys = [public_jwk(key)]
    yield server
    server.close()


@pytest.fixture
def carol(django_user_model: type[User]) -> Receiver:
    owner = django_user_model.objects.create_user(username="carol-owner")
    return receiver_create(user=owner, name="carol", description="")


class _Message:
    def __init__(self, method: str, url: str, headers: dict[str, str]) -> None:
        self.method = method
        self.url = url
        self.headers = headers


class OpClient:
    """An Open Payments client: signs each request as the JS client does."""

    def __init__(self, key: Ed25519PrivateKey, client: Any, kid: str = KEY_ID) -> None:
        self.key = key
        self.client = client
        self.kid = kid
        self.http = Client()
        self.last: tuple[str, str, dict[str, Any]] = ("GET", "/", {})

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        sign: bool = True,
        tamper: bool = False,
    ) -> HttpResponse:
        url = BASE + path
        headers: dict[str, str] = {"Accept": "application/json"}
        content = b"" if body is None else json.dumps(body).encode()
        components = ["@method", "@target-uri"]
        if token is not None:
            headers["Authorization"] = f"GNAP {token}"
            components.append("authorization")
        if content:
            headers["Content-Type"] = "application/json"
            headers["Content-Length"] = str(len(content))
            components += ["content-digest", "content-length", "content-type"]
        if sign:
            message = _Message(method, url, headers)
            signer = HTTPMessageSigner(
                signature_algorithm=algorithms.ED25519,
                key_resolver=MappingKeyResolver(public_keys={}, private_keys={self.kid: self.key}),
            )
            signer.sign(
                message,
                key_id=self.kid,
                label="sig1",
                include_alg=False,
                covered_component_ids=components,
                body=content if content else None,
            )
            headers = dict(message.headers)
        if tamper:
            content = content.replace(b"5000", b"9000")
        headers.pop("Content-Length", None)
        kwargs: dict[str, Any] = {"headers": headers}
        if content:
            kwargs["data"] = content
            kwargs["content_type"] = headers.pop("Content-Type")
        elif method in ("POST", "DELETE"):
            kwargs["data"] = b""  # an empty body, as real clients send (not empty multipart)
            kwargs["content_type"] = "application/json"
        self.last = (method, path, kwargs)
        response: HttpResponse = getattr(self.http, method.lower())(path, **kwargs)
        return response

    def replay(self) -> HttpResponse:
        """The last request again, byte for byte (its signature included)."""
        method, path, kwargs = self.last
        response: HttpResponse = getattr(self.http, method.lower())(path, **kwargs)
        return response

    def grant(
        self, identifier: str | None = f"{BASE}/carol", actions: list[str] | None = None
    ) -> dict[str, Any]:
        access: dict[str, Any] = {
            "type": "incoming-payment",
            "actions": actions or ["create", "read", "complete"],
        }
        if identifier is not None:
            access["identifier"] = identifier
        response = self.request(
            "POST", "/auth", {"access_token": {"access": [access]}, "client": self.client}
        )
        assert response.status_code == 200, response.content
        body: dict[str, Any] = json.loads(response.content)
        return body

    def create(
        self,
        token: str,
        *,
        wallet: str = "carol",
        amount: str | None = "5000",
        tamper: bool = False,
        **extra: Any,
    ) -> HttpResponse:
        body: dict[str, Any] = {"walletAddress": f"{BASE}/{wallet}", **extra}
        if amount is not None:
            body["incomingAmount"] = {"value": amount, "assetCode": "XRP", "assetScale": 9}
        return self.request("POST", "/payments/incoming-payments", body, token=token, tamper=tamper)


@pytest.fixture
def op(key: Ed25519PrivateKey, key_server: _KeyServer) -> OpClient:
    return OpClient(key, key_server.client_url)


def error_code(response: HttpResponse) -> str:
    code: str = json.loads(response.content)["error"]["code"]
    return code


# --- wallet address -------------------------------------------------------------------------


def test_wallet_address_by_content_negotiation(bob: Receiver) -> None:
    response = Client().get("/bob", headers={"Accept": "application/json"})
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content) == {
        "id": f"{BASE}/bob",
        "publicName": "Bob's tips",
        "assetCode": "XRP",
        "assetScale": 9,
        "authServer": f"{BASE}/auth",
        "resourceServer": f"{BASE}/payments",
    }
    # @interledger/pay's SPSP query lists application/json too: it still gets SPSP4.
    spsp4 = Client().get("/bob", headers={"Accept": "application/json, application/spsp4+json"})
    assert spsp4["Content-Type"] == "application/spsp4+json"
    browser = Client().get("/bob", headers={"Accept": "text/html,application/json;q=0.9"})
    assert browser["Content-Type"].startswith("text/html")


def test_wallet_address_keys(bob: Receiver) -> None:
    response = Client().get("/bob/jwks.json")
    assert response.status_code == 200
    assert json.loads(response.content) == {"keys": []}
    assert Client().get("/nobody/jwks.json").status_code == 404


# --- grants ---------------------------------------------------------------------------------


def test_grant_is_immediate_with_manage_and_expiry(op: OpClient, carol: Receiver) -> None:
    access = {
        "type": "incoming-payment",
        "actions": ["create", "read"],
        "identifier": f"{BASE}/carol",
    }
    response = op.request(
        "POST",
        "/auth",
        {
            "access_token": {"access": [access]},
            "client": op.client,
            "interact": {"start": ["redirect"]},  # Rafiki sends it; ignored for these
        },
    )
    assert response.status_code == 200, response.content
    body = json.loads(response.content)
    token = body["access_token"]
    assert token["access"] == [access]
    assert token["expires_in"] == 600
    assert token["manage"].startswith(f"{BASE}/auth/token/")
    assert body["continue"]["uri"].startswith(f"{BASE}/auth/continue/")
    stored = AccessToken.objects.get()
    assert stored.token_hash != token["value"] and token["value"] not in stored.token_hash
    assert Grant.objects.get().receiver == carol


def test_grant_with_inline_jwk_client(key: Ed25519PrivateKey, carol: Receiver) -> None:
    op = OpClient(key, {"jwk": public_jwk(key)})
    grant = op.grant()
    created = op.create(grant["access_token"]["value"])
    assert created.status_code == 201, created.content


@pytest.mark.parametrize("kind", ["outgoing-payment", "quote"])
def test_other_grant_types_refused(op: OpClient, carol: Receiver, kind: str) -> None:
    access = {"type": kind, "actions": ["create"], "identifier": f"{BASE}/carol"}
    response = op.request(
        "POST", "/auth", {"access_token": {"access": [access]}, "client": op.client}
    )
    assert response.status_code == 400
    assert error_code(response) == "invalid_request"
    assert "incoming-payment access only" in json.loads(response.content)["error"]["description"]
    assert not Grant.objects.exists()


def test_unsigned_grant_request_refused(op: OpClient, carol: Receiver) -> None:
    access = {"type": "incoming-payment", "actions": ["create"]}
    response = op.request(
        "POST", "/auth", {"access_token": {"access": [access]}, "client": op.client}, sign=False
    )
    assert response.status_code == 401
    assert error_code(response) == "invalid_client"
    assert response["WWW-Authenticate"] == f'GNAP as_uri="{BASE}/auth"'
    assert not Grant.objects.exists()


def test_bad_signature_refused(op: OpClient, carol: Receiver) -> None:
    grant = op.grant()
    token = grant["access_token"]["value"]
    # The body changed after signing: the signed Content-Digest no longer matches.
    response = op.create(token, tamper=True)
    assert response.status_code == 401
    assert error_code(response) == "invalid_client"
    assert not IncomingPaymentResource.objects.exists()


def test_wrong_key_refused(op: OpClient, key_server: _KeyServer, carol: Receiver) -> None:
    grant = op.grant()
    # Same key id, another private key: the JWKS's key does not verify it.
    impostor = OpClient(Ed25519PrivateKey.generate(), op.client)
    response = impostor.create(grant["access_token"]["value"])
    assert response.status_code == 401
    assert error_code(response) == "invalid_client"
    # A key id the client does not publish.
    stranger = OpClient(Ed25519PrivateKey.generate(), op.client, kid="unknown-key")
    response = stranger.request(
        "POST",
        "/auth",
        {
            "access_token": {"access": [{"type": "incoming-payment", "actions": ["create"]}]},
            "client": op.client,
        },
    )
    assert response.status_code == 401
    assert "no key 'unknown-key'" in json.loads(response.content)["error"]["description"]
    assert not IncomingPaymentResource.objects.exists()
    assert Grant.objects.count() == 1


def test_jwks_is_cached(op: OpClient, key_server: _KeyServer, carol: Receiver) -> None:
    grant = op.grant()
    assert op.create(grant["access_token"]["value"], metadata={"n": 1}).status_code == 201
    assert op.create(grant["access_token"]["value"], metadata={"n": 2}).status_code == 201
    assert key_server.fetches == 1


def test_jwks_fetch_is_ssrf_guarded(
    op: OpClient, key_server: _KeyServer, carol: Receiver, settings: Any
) -> None:
    """Without ILP_ALLOW_PRIVATE_URLS a client whose JWKS is on loopback is refused before
    anything is fetched."""
    settings.ILP_ALLOW_PRIVATE_URLS = False
    access = {"type": "incoming-payment", "actions": ["create"]}
    response = op.request(
        "POST", "/auth", {"access_token": {"access": [access]}, "client": op.client}
    )
    assert response.status_code == 401
    assert "loopback" in json.loads(response.content)["error"]["description"]
    assert key_server.fetches == 0
    assert not Grant.objects.exists()


def test_jwks_that_never_answers(
    op: OpClient, carol: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key server that accepts and never answers costs the fetch's time limit, then 401."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    monkeypatch.setattr(jwks, "FETCH_TIMEOUT_S", 0.2)
    try:
        op.client = f"http://127.0.0.1:{silent.getsockname()[1]}/client"
        access = {"type": "incoming-payment", "actions": ["create"]}
        response = op.request(
            "POST", "/auth", {"access_token": {"access": [access]}, "client": op.client}
        )
    finally:
        silent.close()
    assert response.status_code == 401
    assert "cannot be fetched" in json.loads(response.content)["error"]["description"]
    assert not Grant.objects.exists()


def test_expired_token_refused(op: OpClient, carol: Receiver) -> None:
    grant = op.grant()
    AccessToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = op.create(grant["access_token"]["value"])
    assert response.status_code == 401
    assert error_code(response) == "invalid_token"
    assert response["WWW-Authenticate"] == f'GNAP as_uri="{BASE}/auth"'
    assert not IncomingPaymentResource.objects.exists()


def test_token_of_one_wallet_address_refused_on_another(
    op: OpClient, bob: Receiver, carol: Receiver
) -> None:
    grant = op.grant(identifier=f"{BASE}/carol")
    response = op.create(grant["access_token"]["value"], wallet="bob")
    assert response.status_code == 403
    assert "another wallet address" in json.loads(response.content)["error"]["description"]
    assert not IncomingPaymentResource.objects.exists()
    # A grant without identifier covers every pointer of the node (as Rafiki's).
    anywhere = op.grant(identifier=None)
    assert op.create(anywhere["access_token"]["value"], wallet="bob").status_code == 201


def test_token_of_another_client_refused(
    op: OpClient, key_server: _KeyServer, carol: Receiver
) -> None:
    grant = op.grant()
    other_key = Ed25519PrivateKey.generate()
    other = OpClient(other_key, {"jwk": public_jwk(other_key)})
    response = other.create(grant["access_token"]["value"])
    assert response.status_code == 401
    assert not IncomingPaymentResource.objects.exists()


def test_cancel_continuation_revokes_the_grant(op: OpClient, carol: Receiver) -> None:
    grant = op.grant()
    path = grant["continue"]["uri"][len(BASE) :]
    wrong = op.request("DELETE", path, token="not-the-continuation-token")
    assert wrong.status_code == 401
    response = op.request("DELETE", path, token=grant["continue"]["access_token"]["value"])
    assert response.status_code == 204
    assert op.create(grant["access_token"]["value"]).status_code == 401
    again = op.request("DELETE", path, token=grant["continue"]["access_token"]["value"])
    assert again.status_code == 401


def test_token_rotation_and_revocation(op: OpClient, carol: Receiver) -> None:
    grant = op.grant()
    old = grant["access_token"]["value"]
    manage = grant["access_token"]["manage"][len(BASE) :]
    rotated = op.request("POST", manage, token=old)
    assert rotated.status_code == 200, rotated.content
    new = json.loads(rotated.content)["access_token"]
    assert op.create(old).status_code == 401
    assert op.create(new["value"]).status_code == 201
    revoked = op.request("DELETE", new["manage"][len(BASE) :], token=new["value"])
    assert revoked.status_code == 204
    assert op.create(new["value"]).status_code == 401


# --- incoming payments ----------------------------------------------------------------------


def test_create_incoming_payment(op: OpClient, carol: Receiver) -> None:
    grant = op.grant()
    expires = (timezone.now() + timedelta(minutes=10)).isoformat()
    response = op.create(grant["access_token"]["value"], expiresAt=expires, metadata={"a": 1})
    assert response.status_code == 201, response.content
    body = json.loads(response.content)
    assert body["walletAddress"] == f"{BASE}/carol"
    assert body["receivedAmount"] == {"value": "0", "assetCode": "XRP", "assetScale": 9}
    assert body["incomingAmount"]["value"] == "5000"
    assert body["completed"] is False
    assert body["metadata"] == {"a": 1}
    (method,) = body["methods"]
    assert method["type"] == "ilp"
    assert method["ilpAddress"].startswith("test.node.receivers.carol.")
    assert "=" not in method["sharedSecret"]
    assert len(base64.urlsafe_b64decode(method["sharedSecret"] + "=")) == 32
    payment = IncomingPaymentResource.objects.get()
    assert body["id"] == f"{BASE}/payments/incoming-payments/{payment.id}"
    # The authenticated GET answers the same credentials; the public one only the basics.
    path = body["id"][len(BASE) :]
    again = json.loads(op.request("GET", path, token=grant["access_token"]["value"]).content)
    assert again["methods"] == body["methods"]
    public = json.loads(Client().get(path).content)
    assert public == {"authServer": f"{BASE}/auth", "receivedAmount": body["receivedAmount"]}


def test_create_refuses_another_asset(op: OpClient, carol: Receiver) -> None:
    grant = op.grant()
    response = op.request(
        "POST",
        "/payments/incoming-payments",
        {
            "walletAddress": f"{BASE}/carol",
            "incomingAmount": {"value": "5", "assetCode": "USD", "assetScale": 2},
        },
        token=grant["access_token"]["value"],
    )
    assert response.status_code == 400
    assert not IncomingPaymentResource.objects.exists()


def test_list_needs_read_all_or_list(op: OpClient, carol: Receiver) -> None:
    creator = op.grant()
    for n in range(3):  # distinct bodies: a byte-identical signed write is a replay
        assert op.create(creator["access_token"]["value"], metadata={"n": n}).status_code == 201
    path = f"/payments/incoming-payments?wallet-address={BASE}/carol&first=2"
    refused = op.request("GET", path, token=creator["access_token"]["value"])
    assert refused.status_code == 403
    reader = op.grant(actions=["read-all"])
    page = json.loads(op.request("GET", path, token=reader["access_token"]["value"]).content)
    assert len(page["result"]) == 2 and page["pagination"]["hasNextPage"] is True
    rest_path = path + f"&cursor={page['pagination']['endCursor']}"
    rest = json.loads(op.request("GET", rest_path, token=reader["access_token"]["value"]).content)
    assert len(rest["result"]) == 1 and rest["pagination"]["hasNextPage"] is False
    ids = {p["id"] for p in page["result"] + rest["result"]}
    assert len(ids) == 3


# --- money over the credentials --------------------------------------------------------------


def _credentials(op: OpClient, **create: Any) -> tuple[dict[str, Any], str]:
    grant = op.grant()
    response = op.create(grant["access_token"]["value"], **create)
    assert response.status_code == 201, response.content
    body: dict[str, Any] = json.loads(response.content)
    return body, grant["access_token"]["value"]


def _sender(body: dict[str, Any]) -> Sender:
    (method,) = body["methods"]
    secret = base64.urlsafe_b64decode(method["sharedSecret"] + "=")
    return Sender(
        {"destination_account": method["ilpAddress"], "shared_secret": base64.b64encode(secret)}
    )


@sync_to_async
def _received(op: OpClient, body: dict[str, Any], token: str) -> dict[str, Any]:
    response = op.request("GET", body["id"][len(BASE) :], token=token)
    assert response.status_code == 200, response.content
    result: dict[str, Any] = json.loads(response.content)
    return result


@sync_to_async
def _receipt_total() -> int:
    return sum(int(r.amount) for r in Receipt.objects.all())


async def test_money_counts_toward_the_incoming_payment_up_to_its_amount(
    op: OpClient, carol: Receiver
) -> None:
    await sync_to_async(ensure_payer)()
    body, token = await sync_to_async(_credentials)(op, amount="5000")
    sender = _sender(body)
    first = sender.prepare(3000, (StreamMoneyFrame(1, 1),))
    assert isinstance(await sender.send(first), Fulfill)
    # 3000 + 2500 > 5000: refused, nothing credited, told the limit and what arrived.
    over = sender.prepare(2500, (StreamMoneyFrame(1, 1),))
    reply = await sender.send(over)
    assert isinstance(reply, Reject) and reply.code == "F99"
    assert StreamMaxMoneyFrame(1, 5000, 3000) in sender.reply(over, reply).frames
    assert await _receipt_total() == 3000
    rest = sender.prepare(2000, (StreamMoneyFrame(1, 1),))
    assert isinstance(await sender.send(rest), Fulfill)
    state = await _received(op, body, token)
    assert state["receivedAmount"]["value"] == "5000"
    assert state["completed"] is True
    assert state["methods"] == []
    # Completed: even one more unit is refused and the connection closed.
    more = sender.prepare(1, (StreamMoneyFrame(1, 1),))
    reply = await sender.send(more)
    assert isinstance(reply, Reject) and reply.code == "F99"
    assert any(isinstance(f, ConnectionCloseFrame) for f in sender.reply(more, reply).frames)
    assert await _receipt_total() == 5000


async def test_concurrent_packets_never_overshoot(op: OpClient, carol: Receiver) -> None:
    """Two packets in flight at once, each fitting alone, not together: one is refused."""
    await sync_to_async(ensure_payer)()
    body, _ = await sync_to_async(_credentials)(op, amount="5000")
    sender = _sender(body)
    packets = [sender.prepare(3000, (StreamMoneyFrame(1, 1),)) for _ in range(2)]
    replies = await asyncio.gather(*(sender.send(p) for p in packets))
    assert sorted(type(r).__name__ for r in replies) == ["Fulfill", "Reject"]
    assert await _receipt_total() == 3000


async def test_expired_incoming_payment_takes_no_money(op: OpClient, carol: Receiver) -> None:
    await sync_to_async(ensure_payer)()
    expires = (timezone.now() + timedelta(minutes=10)).isoformat()
    body, token = await sync_to_async(_credentials)(op, expiresAt=expires)
    await sync_to_async(IncomingPaymentResource.objects.update)(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    limits.cache.clear()
    sender = _sender(body)
    prepare = sender.prepare(100, (StreamMoneyFrame(1, 1),))
    reply = await sender.send(prepare)
    assert isinstance(reply, Reject) and reply.code == "F99"
    close = [f for f in sender.reply(prepare, reply).frames if isinstance(f, ConnectionCloseFrame)]
    assert close and close[0].error_message == limits.MSG_EXPIRED
    assert await _receipt_total() == 0
    state = await _received(op, body, token)
    assert state["receivedAmount"]["value"] == "0" and state["methods"] == []


async def test_completed_incoming_payment_takes_no_more(op: OpClient, carol: Receiver) -> None:
    await sync_to_async(ensure_payer)()
    body, token = await sync_to_async(_credentials)(op, amount=None)
    sender = _sender(body)
    assert isinstance(await sender.send(sender.prepare(700, (StreamMoneyFrame(1, 1),))), Fulfill)
    path = body["id"][len(BASE) :] + "/complete"
    done = await sync_to_async(op.request)("POST", path, token=token)
    assert done.status_code == 200, done.content
    assert json.loads(done.content)["completed"] is True
    reply = await sender.send(sender.prepare(100, (StreamMoneyFrame(1, 1),)))
    assert isinstance(reply, Reject) and reply.code == "F99"
    assert await _receipt_total() == 700


# --- a signature is good once -----------------------------------------------------------------
# A captured grant request, create, complete or cancel played again within the signature's
# 5 minutes is refused (401) and nothing happens twice. Reads may repeat (a client polling
# twice in one second sends the same signature).


def test_replayed_grant_request_refused(op: OpClient, carol: Receiver) -> None:
    op.grant()
    replayed = op.replay()
    assert replayed.status_code == 401
    assert error_code(replayed) == "invalid_client"
    assert "already used" in json.loads(replayed.content)["error"]["description"]
    assert Grant.objects.count() == 1


def test_replayed_create_refused(op: OpClient, carol: Receiver) -> None:
    token = op.grant()["access_token"]["value"]
    assert op.create(token).status_code == 201
    replayed = op.replay()
    assert replayed.status_code == 401
    assert replayed["WWW-Authenticate"] == f'GNAP as_uri="{BASE}/auth"'
    assert IncomingPaymentResource.objects.count() == 1


def test_replayed_cancel_refused(op: OpClient, carol: Receiver) -> None:
    grant = op.grant()
    path = grant["continue"]["uri"][len(BASE) :]
    assert (
        op.request("DELETE", path, token=grant["continue"]["access_token"]["value"]).status_code
        == 204
    )
    replayed = op.replay()
    assert replayed.status_code == 401


def test_a_new_signature_of_the_same_request_passes(op: OpClient, carol: Receiver) -> None:
    """Only the very signature is refused: the client signing again (a new ``created``, or
    other bytes) is served."""
    token = op.grant()["access_token"]["value"]
    assert op.create(token, amount="5000").status_code == 201
    assert op.create(token, amount="6000").status_code == 201
    assert IncomingPaymentResource.objects.count() == 2


def test_replayed_read_is_served(op: OpClient, carol: Receiver) -> None:
    grant = op.grant(actions=["create", "read"])
    token = grant["access_token"]["value"]
    created = json.loads(op.create(token).content)
    first = op.request("GET", created["id"][len(BASE) :], token=token)
    again = op.replay()
    assert first.status_code == again.status_code == 200
    assert json.loads(again.content)["id"] == created["id"]


# --- web-monetized pages: the <link rel="monetization"> is a wallet address ------------------
# Today's Web Monetization extension reads the link, GETs it as a wallet address, asks for
# a grant, creates an incoming payment on it and pays over STREAM. The page's link is the
# visitor's own URL, so those payments count toward that visitor's progress.

RECIPE_TEXT = "The secret recipe: more butter."


@pytest.fixture
def recipe(alice_user: User) -> MonetizedPage:
    ensure_payer()
    receiver = receiver_create(user=alice_user, name="alice", description="Alice")
    return page_create(
        owner=alice_user,
        receiver=receiver,
        slug="recipe",
        title="A recipe",
        public_body="Everyone may read this.",
        paid_body=RECIPE_TEXT,
        threshold=1000,
        published=True,
    )


def _monetization_link(browser: Client) -> str:
    response = browser.get("/pages/recipe/")
    assert response.status_code == 200
    match = re.search(r'<link rel="monetization" href="([^"]+)">', response.content.decode())
    assert match, "the page has a monetization link"
    return match[1]


def _page_status(browser: Client) -> dict[str, Any]:
    status: dict[str, Any] = browser.get("/pages/recipe/status").json()
    return status


def test_the_page_link_is_a_wallet_address(recipe: MonetizedPage) -> None:
    link = _monetization_link(Client())
    assert link.startswith(f"{BASE}/pages/recipe/spsp/")
    # What the extension sends (and what @interledger/open-payments sends).
    response = Client().get(link[len(BASE) :], headers={"Accept": "application/json"})
    assert response.status_code == 200
    assert json.loads(response.content) == {
        "id": link,
        "publicName": "A recipe",
        "assetCode": "XRP",
        "assetScale": 9,
        "authServer": f"{BASE}/auth",
        "resourceServer": f"{BASE}/payments",
    }
    # Older senders on the same URL: SPSP4 and SPSP.
    for media in ("application/spsp4+json", "application/spsp+json"):
        answer = Client().get(link[len(BASE) :], headers={"Accept": media})
        assert answer.status_code == 200 and answer["Content-Type"] == media
    visitor = link.rsplit("/", 1)[1]
    assert (
        Client().get("/pages/recipe/spsp/x", headers={"Accept": "application/json"}).status_code
        == 404
    )
    assert (
        Client()
        .get(f"/pages/nope/spsp/{visitor}", headers={"Accept": "application/json"})
        .status_code
        == 404
    )


async def test_incoming_payment_on_the_page_link_reveals_for_that_visitor_only(
    op: OpClient, recipe: MonetizedPage, monkeypatch: pytest.MonkeyPatch
) -> None:
    notified: list[bytes] = []
    monkeypatch.setattr("receivers.stream_receiver.notify_tag", notified.append)
    payer, stranger = Client(), Client()
    link = await sync_to_async(_monetization_link)(payer)
    other_link = await sync_to_async(_monetization_link)(stranger)
    assert link != other_link
    path = link[len(BASE) :]

    def create() -> tuple[dict[str, Any], str]:
        # As the extension: a grant for the wallet address, then an incoming payment on it.
        grant = op.grant(identifier=link)
        token = grant["access_token"]["value"]
        expires = (timezone.now() + timedelta(minutes=10)).isoformat()
        response = op.request(
            "POST",
            "/payments/incoming-payments",
            {"walletAddress": link, "expiresAt": expires},
            token=token,
        )
        assert response.status_code == 201, response.content
        return json.loads(response.content), token

    body, token = await sync_to_async(create)()
    assert body["walletAddress"] == link
    assert body["methods"][0]["ilpAddress"].startswith("test.node.receivers.alice.")
    sender = _sender(body)
    first = sender.prepare(600, (StreamMoneyFrame(1, 1),))
    assert isinstance(await sender.send(first), Fulfill)
    status = await sync_to_async(_page_status)(payer)
    assert status["received"] == "600" and status["unlocked"] is False
    second = sender.prepare(400, (StreamMoneyFrame(1, 1),))
    assert isinstance(await sender.send(second), Fulfill)
    status = await sync_to_async(_page_status)(payer)
    assert status["received"] == "1000" and status["unlocked"] is True
    assert RECIPE_TEXT in status["paid_html"]
    # The other session paid nothing: still locked.
    other = await sync_to_async(_page_status)(stranger)
    assert other["received"] == "0" and "paid_html" not in other
    # The incoming payment counts the same money, once.
    state = await _received(op, body, token)
    assert state["receivedAmount"]["value"] == "1000"
    assert state["walletAddress"] == link
    assert await _receipt_total() == 1000
    visitor = b64url_decode(path.rsplit("/", 1)[1])
    payment = await sync_to_async(IncomingPaymentResource.objects.get)()
    assert bytes(payment.visitor) == visitor and payment.page_id == recipe.pk
    keys = await sync_to_async(lambda: [r.key for r in Receipt.objects.all()])()
    assert all(k.startswith(f"tag:{visitor.hex()}:tag:{payment.id.hex}:") for k in keys)
    # The page's live view hears of it (the visitor's tag is notified).
    assert visitor in notified


def test_page_wallet_address_grants_and_lists(
    op: OpClient, recipe: MonetizedPage, bob: Receiver
) -> None:
    link = _monetization_link(Client())
    other = _monetization_link(Client())
    # A grant for the page's link covers the page's pointer; one for another pointer does not.
    elsewhere = op.grant(identifier=f"{BASE}/bob")
    refused = op.request(
        "POST",
        "/payments/incoming-payments",
        {"walletAddress": link},
        token=elsewhere["access_token"]["value"],
    )
    assert refused.status_code == 403
    grant = op.grant(identifier=link, actions=["create", "read-all"])
    token = grant["access_token"]["value"]
    for n, wallet in enumerate((link, link, other, f"{BASE}/alice")):
        response = op.request(
            "POST",
            "/payments/incoming-payments",
            {"walletAddress": wallet, "metadata": {"n": n}},
            token=token,
        )
        assert response.status_code == 201, response.content
    listed = op.request("GET", f"/payments/incoming-payments?wallet-address={link}", token=token)
    result = json.loads(listed.content)["result"]
    assert len(result) == 2 and {p["walletAddress"] for p in result} == {link}
    # A draft page has no wallet address.
    recipe.published = False
    recipe.save(update_fields=["published"])
    gone = op.request("POST", "/payments/incoming-payments", {"walletAddress": link}, token=token)
    assert gone.status_code == 404
