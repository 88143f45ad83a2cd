"""The dashboard reports the whole node: a peer whose link another process owns shows
connected, and goes down when that process dies (its lease runs out), whatever
``Peer.connected_since`` still says.

Two runtimes in one test process stand for two processes, sharing a lease store as
processes share Redis (as in ``tests/links/test_ownership.py``): in-memory leases in the
default pass, the real Redis leases in the Postgres+Redis pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from channels.db import database_sync_to_async

from interledger_site.runtime import NodeRuntime
from links import activity, presence, services
from links.models import Peer
from links.ownership import settle_layer
from tests.links.test_ownership import LEASE_S, lease_store, serve_parent, server_runtime

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_layer")]

DEADLINE_S = 20.0


@pytest.fixture
def fresh_layer() -> Any:
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture
def fast_supervisor(monkeypatch: pytest.MonkeyPatch) -> None:
    from links import supervisor as supervisor_module

    monkeypatch.setattr(supervisor_module, "SYNC_INTERVAL_S", 0.2)


async def until(predicate: Callable[[], Any], what: str) -> None:
    async def wait() -> None:
        while not await predicate():
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(wait(), DEADLINE_S)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


def _peer_row(name: str) -> dict[str, Any]:
    from dashboard.snapshot import ProcessState, build_snapshot

    snapshot = build_snapshot(state=ProcessState(traffic={"live": True}, live=()))
    (row,) = [p for p in snapshot["peers"] if p["name"] == name]
    return row


async def test_a_peer_connected_in_another_process_shows_connected(
    fast_supervisor: None,
) -> None:
    peer = "dash-parent"
    leases = lease_store()
    owner = server_runtime("owner", leases)
    other = NodeRuntime(name="other", shared=True, leases=leases, lease_s=LEASE_S)
    async with serve_parent() as parent:
        await database_sync_to_async(services.peer_create)(
            name=peer,
            relation="parent",
            link="btp-client",
            url=f"btp+ws://me:tok@127.0.0.1:{parent.port}/",
        )
        try:
            await owner.start()
            await parent.until(lambda: parent.open_now == 1)
            with owner.activated():
                await presence.drain()

            async def row_in_other() -> dict[str, Any]:
                with other.activated():
                    row: dict[str, Any] = await database_sync_to_async(_peer_row)(peer)
                return row

            async def connected_elsewhere() -> bool:
                row = await row_in_other()
                return row["status"] == "connected" and not row["connected_here"]

            await until(connected_elsewhere, "the other process sees the peer connected")
            with other.activated():
                assert await database_sync_to_async(presence.connected_peers)() == {peer}

            # The owner dies (no release): its record of the link stays behind, and so
            # does Peer.connected_since once written; the lease running out decides.
            with owner.activated():
                await activity.flush()
            since = await database_sync_to_async(
                lambda: Peer.objects.get(name=peer).connected_since
            )()
            assert since is not None
            await owner.stop(release=False)

            async def down_elsewhere() -> bool:
                row = await row_in_other()
                return row["status"] == "down" and row["connected_since"] == ""

            await until(down_elsewhere, "the peer shows down once the owner's lease ran out")
        finally:
            await owner.stop()
            other.close()
            await settle_layer()


async def test_embedded_mode_reports_the_process_links(fast_supervisor: None) -> None:
    """No leases (one process): the process's own links are the node's."""
    peer = "dash-solo-parent"
    runtime = NodeRuntime(name="solo", links=True, shared=False)
    async with serve_parent() as parent:
        await database_sync_to_async(services.peer_create)(
            name=peer,
            relation="parent",
            link="btp-client",
            url=f"btp+ws://me:tok@127.0.0.1:{parent.port}/",
        )
        try:
            await runtime.start()
            await parent.until(lambda: parent.open_now == 1)
            with runtime.activated():
                assert await database_sync_to_async(presence.connected_peers)() is None

                async def connected_here() -> bool:
                    from dashboard.snapshot import build_snapshot, process_state

                    state = process_state()
                    snapshot = await database_sync_to_async(build_snapshot)(state=state)
                    (row,) = [p for p in snapshot["peers"] if p["name"] == peer]
                    return bool(row["status"] == "connected" and row["connected_here"])

                await until(connected_here, "the peer shows connected")
        finally:
            await runtime.stop()
