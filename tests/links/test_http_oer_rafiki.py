"""An http-sync link towards a Rafiki connector: Rafiki's ILP-over-HTTP endpoint takes
``Content-Type: application/octet-stream`` only (400 otherwise) and ``Authorization:
Bearer <token>``, and answers the OER reply. The stub below enforces exactly that. A peer
added with ``--http-profile rafiki`` gets RFC 35's headers alone (no ``ILP-Peer-Name``)."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.core.management import call_command
from django.core.management.base import CommandError

from ilp.packet import Fulfill, decode_prepare, encode_packet
from links import http_oer, registry, sender_link
from links.models import HttpProfile, Peer
from tests.links.conftest import FULFILLMENT, FakeSwitch, prepare_to
from tests.links.http_server import serve_http

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "rafiki-incoming-token"


def rafiki_like(seen: list[dict[str, str]]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        seen.append(headers)
        status, reply = 200, b""
        if headers.get("authorization") != f"Bearer {TOKEN}":
            status, reply = 401, b"Unauthorized"
        elif headers.get("content-type") != "application/octet-stream":
            status, reply = 400, b"Expected Content-Type of application/octet-stream"
        else:
            prepare = decode_prepare(body)
            reply = encode_packet(Fulfill(FULFILLMENT, prepare.data))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": reply})

    return app


async def test_sync_link_speaks_rfc35_to_a_rafiki_peer() -> None:
    seen: list[dict[str, str]] = []
    async with serve_http(rafiki_like(seen)) as base:
        link = http_oer.HttpSyncLink("rafiki", f"{base}/ilp", TOKEN)
        reply = await link.send_prepare(prepare_to(amount=7, data=b"stream"))
    assert reply == Fulfill(FULFILLMENT, b"stream")
    (headers,) = seen
    assert headers["content-type"] == "application/octet-stream"
    assert headers["authorization"] == f"Bearer {TOKEN}"
    # The default (interledger) profile names us, as ilp-plugin-http does.
    assert headers["ilp-peer-name"] == http_oer.our_peer_name()
    assert headers["ilp-destination"] == "test.local.bob"


def _add_peer(*args: str) -> str:
    out = StringIO()
    call_command("add_peer", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


async def test_rafiki_profile_sends_rfc35_headers_only(switch: FakeSwitch) -> None:
    seen: list[dict[str, str]] = []
    async with serve_http(rafiki_like(seen)) as base:
        printed = await database_sync_to_async(_add_peer)(
            "rafiki",
            "--relation=peer",
            "--link=http-sync",
            f"--url={base}/ilp",
            f"--outgoing-token={TOKEN}",
            "--address=test.rafiki",
            "--min-balance=-1000",
            "--http-profile=rafiki",
        )
        assert "(rafiki headers)" in printed
        await http_oer.sync_http_links()
        link = registry.get("rafiki")
        assert isinstance(link, http_oer.HttpSyncLink)
        reply = await link.send_prepare(prepare_to("test.rafiki.alice", amount=7, data=b"s"))
    assert reply == Fulfill(FULFILLMENT, b"s")
    (headers,) = seen
    assert headers["content-type"] == "application/octet-stream"
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert "ilp-peer-name" not in headers
    assert "ilp-destination" not in headers


async def test_profile_change_takes_effect(switch: FakeSwitch) -> None:
    seen: list[dict[str, str]] = []
    async with serve_http(rafiki_like(seen)) as base:
        common = ("r2", "--relation=peer", "--link=http-sync", f"--url={base}/ilp")
        await database_sync_to_async(_add_peer)(*common, f"--outgoing-token={TOKEN}")
        await http_oer.sync_http_links()
        first = registry.get("r2")
        assert isinstance(first, http_oer.HttpSyncLink)
        await first.send_prepare(prepare_to())
        await database_sync_to_async(_add_peer)(*common, "--http-profile=rafiki")
        stored = await database_sync_to_async(Peer.objects.get)(name="r2")
        assert stored.http_profile == HttpProfile.RAFIKI
        await http_oer.sync_http_links()
        second = registry.get("r2")
        assert isinstance(second, http_oer.HttpSyncLink) and second is not first
        await second.send_prepare(prepare_to())
    assert "ilp-peer-name" in seen[0]
    assert "ilp-peer-name" not in seen[1]


@pytest.mark.parametrize("profile", ["ilp", "RAFIKI", ""])
def test_unknown_profile_refused(profile: str) -> None:
    with pytest.raises(CommandError):
        _add_peer("r3", "--relation=peer", "--link=http-sync", f"--http-profile={profile}")
    assert not Peer.objects.filter(name="r3").exists()


async def test_a_temporary_link_uses_the_profile_too(switch: FakeSwitch) -> None:
    """A process that has not registered the peer's link (a Celery worker sending an
    outgoing payment) opens one for the send: in the peer's profile as well."""
    seen: list[dict[str, str]] = []
    async with serve_http(rafiki_like(seen)) as base:
        await database_sync_to_async(_add_peer)(
            "r4",
            "--relation=peer",
            "--link=http-sync",
            f"--url={base}/ilp",
            f"--outgoing-token={TOKEN}",
            "--http-profile=rafiki",
        )
        assert registry.local("r4") is None
        route = sender_link.Route(
            source_account="operator", asset_code="XRP", asset_scale=9, via_peer="r4"
        )
        async with sender_link.open_sender(route) as sender:
            assert isinstance(sender, sender_link.PeerSender)
            assert isinstance(sender.link, http_oer.HttpSyncLink)
            reply = await sender.link.send_prepare(prepare_to(amount=3, data=b"t"))
    assert reply == Fulfill(FULFILLMENT, b"t")
    (headers,) = seen
    assert "ilp-peer-name" not in headers
    assert headers["authorization"] == f"Bearer {TOKEN}"
