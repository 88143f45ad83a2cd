"""Old HTTP-OER-ASYNC request rows are pruned: by the Celery task (beat), and by the
serving process itself as it receives async requests (no beat needed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.test import AsyncClient

from ilp.packet import encode_packet
from links import http_oer, tasks
from links.models import HttpAsyncRequest, HttpAsyncState, Peer
from tests.links.conftest import FakeSwitch, prepare_to

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def clean_http() -> Iterator[None]:
    http_oer.reset()
    yield
    http_oer.reset()


def make_row(peer: Peer, request_id: str, *, expires_in: timedelta) -> HttpAsyncRequest:
    now = datetime.now(UTC)
    return HttpAsyncRequest.objects.create(
        peer=peer,
        request_id=request_id,
        digest=b"\x00" * 32,
        state=HttpAsyncState.DELIVERED,
        callback_url="http://peer.example/ilp",
        received_at=now - timedelta(hours=2),
        expires_at=now + expires_in,
    )


def test_the_task_deletes_rows_past_their_window_only(make_peer: Callable[..., Any]) -> None:
    make_peer("oer", relation="child", link="http-sync", token="tx")
    peer = Peer.objects.get(name="oer")
    make_row(peer, "old-1", expires_in=-timedelta(minutes=5))
    make_row(peer, "old-2", expires_in=-timedelta(days=3))
    make_row(peer, "owed", expires_in=timedelta(minutes=5))  # its callback may still go
    assert tasks.prune_http_async_requests.apply().get() == 2
    assert list(HttpAsyncRequest.objects.values_list("request_id", flat=True)) == ["owed"]


def test_the_beat_schedule_runs_it() -> None:
    tasks_scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "links.prune_http_async_requests" in tasks_scheduled


def test_the_schedule_is_due_once_per_interval() -> None:
    schedule = tasks.PruneSchedule(interval=600)
    assert schedule.due(1000.0)  # the first call: rows an earlier run left
    assert not schedule.due(1000.5)
    assert not schedule.due(1599.0)
    assert schedule.due(1600.0)
    assert not schedule.due(1601.0)


async def test_the_serving_process_prunes_as_it_receives(
    make_peer: Callable[..., Any], switch: FakeSwitch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "HTTP_ASYNC_PRUNE", tasks.PruneSchedule())  # a fresh process
    await database_sync_to_async(make_peer)("oer", relation="child", link="http-sync", token="tx")
    peer = await Peer.objects.aget(name="oer")
    await database_sync_to_async(make_row)(peer, "left-by-last-week", expires_in=-timedelta(days=7))
    headers = {
        "authorization": "Bearer tx",
        "Prefer": "respond-async",
        "Request-Id": "new-1",
        "Callback-Url": "http://127.0.0.1:9/ilp",
    }
    response = await AsyncClient().post(
        "/ilp",
        data=encode_packet(prepare_to()),
        content_type="application/octet-stream",
        headers=headers,
    )
    assert response.status_code == 202
    async with asyncio.timeout(10):  # the prune runs in the background: wait for its effect
        while await HttpAsyncRequest.objects.filter(request_id="left-by-last-week").aexists():
            await asyncio.sleep(0.02)
    assert await HttpAsyncRequest.objects.filter(request_id="new-1").aexists()
    # Not due again for a while: the next request prunes nothing.
    assert not tasks.HTTP_ASYNC_PRUNE.due(time.monotonic())
