"""Peer and token caches across processes (``links.shared``, ``links.peers``).

This test process is a serving process with warm caches and its watcher running; the
change is made by another process (``manage.py`` as a subprocess on the same PostgreSQL
and Redis). Runs in the Postgres+Redis pass.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db import connection

from links import peers, services, shared
from links.models import Peer
from links.tokens import hash_token
from tests.conftest import on_postgres, requires_redis

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    requires_redis,
    pytest.mark.skipif(not on_postgres(), reason="needs PostgreSQL (another process shares it)"),
    pytest.mark.django_db(transaction=True),
]


def manage(*args: str) -> str:
    """Run ``manage.py`` as another process of the node (the test database, same Redis)."""
    base = os.environ["DATABASE_URL"].rsplit("/", 1)[0]
    env = {**os.environ, "DATABASE_URL": f"{base}/{connection.settings_dict['NAME']}"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
async def watcher() -> AsyncIterator[shared.PeerCacheWatch]:
    await shared.start(None)
    watch = shared.peer_watch()
    assert watch is not None
    async with asyncio.timeout(30):
        while not shared.peer_cache_fresh():
            await asyncio.sleep(0.02)
    yield watch
    await shared.stop()


async def seen_change(watch: shared.PeerCacheWatch, before: int) -> None:
    async with asyncio.timeout(30):  # a guard against a hang, not a speed assertion
        while watch.changes <= before:
            await asyncio.sleep(0.02)


authenticate = database_sync_to_async(services.peer_authenticate)
authenticate_http = database_sync_to_async(services.peer_authenticate_http)


async def test_a_peer_removed_by_another_process_is_refused_here(
    watcher: shared.PeerCacheWatch, make_peer: Callable[..., Any]
) -> None:
    await database_sync_to_async(make_peer)("alice", token="s3cret")
    assert await authenticate("alice", "s3cret") is not None
    assert services._verified  # the success is cached ...
    assert (await peers.aload_peer_context("alice")) is not None
    before = watcher.changes
    await asyncio.to_thread(manage, "remove_peer", "alice")
    await seen_change(watcher, before)
    # ... and dropped when the other process's change is seen.
    assert await authenticate("alice", "s3cret") is None
    assert await peers.aload_peer_context("alice") is None


async def test_an_http_token_replaced_by_another_process_is_refused_here(
    watcher: shared.PeerCacheWatch, make_peer: Callable[..., Any]
) -> None:
    await database_sync_to_async(make_peer)(
        "hpeer", relation="peer", link="http-sync", token="old-token", url="http://127.0.0.1:9/x"
    )
    found = await authenticate_http("old-token")
    assert found is not None and found.name == "hpeer"
    assert services.cached_http_peer("old-token") == "hpeer"
    before = watcher.changes
    await asyncio.to_thread(
        manage, "add_peer", "hpeer", "--relation", "peer", "--link", "http-sync",
        "--url", "http://127.0.0.1:9/x", "--token", "new-token",
    )  # fmt: skip
    await seen_change(watcher, before)
    assert services.cached_http_peer("old-token") is None
    assert await authenticate_http("old-token") is None
    assert (await authenticate_http("new-token")) is not None


async def test_caches_are_not_trusted_without_a_recent_confirmation(
    watcher: shared.PeerCacheWatch, make_peer: Callable[..., Any]
) -> None:
    """The bound does not rest on the broadcast: a change nobody announced (a raw UPDATE)
    is honoured as soon as the watcher's last confirmation is older than FRESH_S."""
    await database_sync_to_async(make_peer)("carol", token="s3cret")
    assert await authenticate("carol", "s3cret") is not None

    def revoke_silently() -> None:
        Peer.objects.filter(name="carol").update(token_hash=hash_token("other"))

    await database_sync_to_async(revoke_silently)()
    assert await authenticate("carol", "s3cret") is not None  # cached, confirmed fresh
    await shared.stop()  # the watcher stops confirming (as when Redis is unreachable)
    assert not shared.peer_cache_fresh()
    assert await authenticate("carol", "s3cret") is None
