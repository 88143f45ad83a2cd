"""``ws/ops/``: only staff browsers from our hosts get the live feed; it follows payments."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.db import connections

from dashboard.consumers import OpsConsumer
from dashboard.routing import websocket_urlpatterns
from tests.dashboard.conftest import logged_in
from tests.dashboard.factories import make_receiver, pay

pytestmark = pytest.mark.django_db(transaction=True)

application = URLRouter(websocket_urlpatterns)


def session_cookie(user: User) -> str:
    return logged_in(user).cookies["sessionid"].value


def communicator(
    cookie: str | None = None, *, origin: str = "http://testserver", path: str = "/ws/ops/"
) -> WebsocketCommunicator:
    headers = [(b"host", b"testserver"), (b"origin", origin.encode())]
    if cookie is not None:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    return WebsocketCommunicator(application, path, headers=headers)


async def receive_snapshot(comm: WebsocketCommunicator, timeout: float = 5) -> dict[str, Any]:
    message: dict[str, Any] = await comm.receive_json_from(timeout=timeout)
    assert message["type"] == "snapshot", message
    return message


@pytest.fixture(autouse=True)
async def _close_thread_connections() -> AsyncIterator[None]:
    """The consumer queries from the thread-sensitive worker thread: close its
    connection so that the test database can be dropped (Postgres pass)."""
    yield
    await database_sync_to_async(connections.close_all)()


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(OpsConsumer, "interval_s", 0.1)


async def test_anonymous_is_refused() -> None:
    comm = communicator()
    connected, code = await comm.connect()
    assert not connected and code == 4403


async def test_non_staff_is_refused(alice: User) -> None:
    cookie = await database_sync_to_async(session_cookie)(alice)
    comm = communicator(cookie)
    connected, code = await comm.connect()
    assert not connected and code == 4403


async def test_foreign_origin_is_refused(operator: User) -> None:
    cookie = await database_sync_to_async(session_cookie)(operator)
    connected, _ = await communicator(cookie, origin="https://evil.example").connect()
    assert not connected


async def test_staff_gets_snapshots_that_follow_payments(
    operator: User, alice: User, fast: None
) -> None:
    cookie = await database_sync_to_async(session_cookie)(operator)
    tips = await database_sync_to_async(make_receiver)(alice, "tips")
    comm = communicator(cookie)
    connected, _ = await comm.connect()
    assert connected
    try:
        first = await receive_snapshot(comm)
        assert first["recent"] == [] and "svg" in first["chart"]
        assert {c["name"] for c in first["health"]} >= {"Database", "Channel layer", "Celery"}
        assert all(c["level"] in ("ok", "info", "warn") for c in first["health"]), first["health"]
        await database_sync_to_async(pay)(tips, 2_500_000_000)
        for _ in range(50):
            snap = await receive_snapshot(comm)
            if snap["recent"]:
                break
        else:
            raise AssertionError("the payment never showed up")
        row = snap["recent"][0]
        assert (row["receiver"], row["owner"], row["amount"], row["asset_code"]) == (
            "tips",
            "alice",
            "2.5",
            "XRP",
        )
        assert "svg" in snap["chart"]  # the series changed: the chart is sent again
        assert "health" not in snap  # checks are refreshed every few seconds, not each time
        quiet = await receive_snapshot(comm)
        assert "svg" not in quiet["chart"] and quiet["chart"]["key"] == snap["chart"]["key"]
    finally:
        await comm.disconnect()


async def test_range_switch_and_refresh(operator: User) -> None:
    cookie = await database_sync_to_async(session_cookie)(operator)
    comm = communicator(cookie, path="/ws/ops/?range=30d")
    connected, _ = await comm.connect()
    assert connected
    try:
        assert (await receive_snapshot(comm))["range"] == "30d"
        await comm.send_json_to({"type": "range", "range": "24h"})
        snap = await receive_snapshot(comm, timeout=2)  # at once, not after the interval
        assert snap["range"] == "24h" and "svg" in snap["chart"]
        await comm.send_json_to({"type": "range", "range": "nonsense"})
        assert (await receive_snapshot(comm, timeout=2))["range"] == "24h"
    finally:
        await comm.disconnect()


async def test_demoted_staff_is_disconnected(
    operator: User, monkeypatch: pytest.MonkeyPatch, fast: None
) -> None:
    monkeypatch.setattr(OpsConsumer, "health_every_s", 0.0)
    cookie = await database_sync_to_async(session_cookie)(operator)
    comm = communicator(cookie)
    connected, _ = await comm.connect()
    assert connected
    await receive_snapshot(comm)
    operator.is_staff = False
    await database_sync_to_async(operator.save)()
    for _ in range(50):
        output = await comm.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            assert output["code"] == 4403
            break
    else:
        raise AssertionError("still connected")
    await comm.disconnect()
    await asyncio.sleep(0)
