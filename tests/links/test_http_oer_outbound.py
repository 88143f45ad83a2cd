"""HTTP-OER async callbacks through payments.outbound: a Callback-Url the peer chooses may
reach public addresses only (checked when received and again when connecting); the peer's
configured origin is the operator's, trusted."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import AsyncClient
from pytest_django.fixtures import Settings as SettingsWrapper

from ilp.packet import Fulfill, decode_reply, encode_packet
from links import http_oer
from links.models import HttpAsyncRequest, HttpAsyncState
from payments import outbound
from tests.links.conftest import FakeSwitch, prepare_to
from tests.links.http_server import serve_http

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def clean_http() -> Iterator[None]:
    http_oer.reset()
    yield
    http_oer.reset()


@pytest.fixture
def strict(settings: SettingsWrapper) -> SettingsWrapper:
    settings.ILP_ALLOW_PRIVATE_URLS = False
    return settings


async def post_async(callback_url: str, request_id: str) -> Any:
    headers = {
        "authorization": "Bearer tx",
        "Prefer": "respond-async",
        "Request-Id": request_id,
        "Callback-Url": callback_url,
    }
    return await AsyncClient().post(
        "/ilp",
        data=encode_packet(prepare_to()),
        content_type="application/octet-stream",
        headers=headers,
    )


class Callbacks:
    """A loopback callback server; ``got`` fills as callbacks arrive."""

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.arrived = asyncio.Event()

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        self.got.append((scope["path"], message["body"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        self.arrived.set()


async def wait_state(request_id: str, *states: str) -> HttpAsyncRequest:
    """The row once its callback state is one of ``states`` (the sender writes it last)."""
    async with asyncio.timeout(10):
        while True:
            row = await HttpAsyncRequest.objects.aget(request_id=request_id)
            if row.state in states:
                return row
            await asyncio.sleep(0.02)


async def test_a_peer_chosen_callback_to_a_private_address_is_refused_on_receipt(
    strict: SettingsWrapper, make_peer: Callable[..., Any], switch: FakeSwitch
) -> None:
    await database_sync_to_async(make_peer)(
        "oer", relation="child", link="http-sync", token="tx"
    )  # no url: the peer picks its Callback-Url
    for url, reason in [
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://127.0.0.1:9/ilp", "loopback"),
        ("http://10.0.0.5/ilp", "private"),
    ]:
        response = await post_async(url, "req-1")
        assert response.status_code == 400
        text = response.content.decode()
        assert text.startswith("Callback-Url refused") and reason in text
    assert switch.calls == []
    assert not await HttpAsyncRequest.objects.filter(request_id="req-1").aexists()


async def test_a_callback_that_resolves_private_at_send_time_is_not_sent(
    strict: SettingsWrapper,
    make_peer: Callable[..., Any],
    switch: FakeSwitch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lookups: list[str] = []

    def rebinding_dns(host: str, port: int) -> list[tuple[Any, ...]]:
        # Public when the request arrives, loopback (our callback server) afterwards.
        address = "93.184.215.14" if not lookups else "127.0.0.1"
        lookups.append(address)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(outbound, "_getaddrinfo", rebinding_dns)
    callbacks = Callbacks()
    async with serve_http(callbacks.app) as base:
        port = base.rsplit(":", 1)[1]
        await database_sync_to_async(make_peer)(
            "oer", relation="child", link="http-sync", token="tx"
        )
        response = await post_async(f"http://cb.example:{port}/ilp", "req-2")
        assert response.status_code == 202
        row = await wait_state("req-2", HttpAsyncState.FAILED, HttpAsyncState.DELIVERED)
    # Refused at connect, given up at once (the same address would be refused again).
    assert (row.state, row.attempts) == (HttpAsyncState.FAILED, 1)
    assert callbacks.got == []
    assert lookups == ["93.184.215.14", "127.0.0.1"]


async def test_the_peers_configured_origin_is_trusted(
    strict: SettingsWrapper, make_peer: Callable[..., Any], switch: FakeSwitch
) -> None:
    callbacks = Callbacks()
    async with serve_http(callbacks.app) as base:  # a loopback origin
        await database_sync_to_async(make_peer)(
            "peerx", relation="peer", link="http-async", token="tx", url=base
        )
        response = await post_async(f"{base}/incoming/ilp", "req-3")
        assert response.status_code == 202
        await asyncio.wait_for(callbacks.arrived.wait(), 10)
    path, reply = callbacks.got[0]
    assert path == "/incoming/ilp"
    assert isinstance(decode_reply(reply), Fulfill)
