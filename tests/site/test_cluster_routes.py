"""Shared CCP routes on the real cluster: ``scripts/cluster.sh`` with 2 Daphnes (+ nginx,
a Celery worker and beat) on PostgreSQL + Redis.

A peer ``farpeer`` connects to the first Daphne directly and advertises ``test.far`` by CCP;
a child connected to the second Daphne pays ``test.far.alice``: the second Daphne routes by
the route the first one learned (through the peer's link owner) and the peer fulfils. When
the peer goes away, the route goes away on the second Daphne too (F02 again).

Runs in the Postgres+Redis pass of ``.ci/run`` when Debian's nginx is installed (like
``test_cluster.py``); by hand: ``flock /tmp/interop.lock .venv/bin/python -m pytest
tests/site/test_cluster_routes.py`` with ``DATABASE_URL`` and ``REDIS_URL`` set. The cluster
uses its own database (the test database's name + ``_cluster_routes``), the test run's Redis
database, free ports and a run directory under ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import websockets

from ilp.btp import (
    BtpResponse,
    BtpType,
    auth_message,
    decode_btp,
    encode_btp,
    encode_ilp_frame,
    peek_ilp_frame,
)
from ilp.ccp import CCP_UPDATE_DESTINATION, Route, RouteUpdateRequest, encode_route_update_request
from ilp.conditions import PEER_CONDITION, PEER_FULFILLMENT
from ilp.packet import Fulfill, Prepare, Reject, Reply, decode_prepare, decode_reply, encode_packet
from tests.conftest import on_postgres, on_redis
from tests.site.test_cluster import ROOT, Cluster, _free_run, _nginx

FULFILLMENT = b"\x17" * 32
CONDITION = hashlib.sha256(FULFILLMENT).digest()
PEER, PEER_TOKEN = "farpeer", "farpeer-token"
CHILD, CHILD_TOKEN = "routekid", "routekid-token"

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.skipif(_nginx() is None, reason="needs Debian's nginx (apt-get install nginx)"),
    pytest.mark.skipif(
        not (on_postgres() and on_redis()),
        reason="needs PostgreSQL and Redis (runs in the Postgres+Redis pass of .ci/run)",
    ),
]


def _manage(env: dict[str, str], *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture
def cluster2(tmp_path: Path) -> Iterator[Cluster]:
    nginx_port = _free_run(1)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ILP_", "DJANGO_", "PROMETHEUS_", "CLUSTER_", "PYTEST_"))
    }
    env.update(
        {
            "DATABASE_URL": os.environ["DATABASE_URL"].rstrip("/") + "_cluster_routes",
            "REDIS_URL": os.environ["REDIS_URL"],
            "ILP_VAR_DIR": str(tmp_path / "var"),
            "ILP_ADDRESS": "test.croutes",  # its own namespace in the shared Redis db
            "CLUSTER_DAPHNES": "2",
            "CLUSTER_PORT": str(nginx_port),
            "CLUSTER_DAPHNE_PORT": str(_free_run(2)),
            "CLUSTER_DIR": str(tmp_path / "run"),
            "LOG_LEVEL": "WARNING",
        }
    )
    node = Cluster(f"http://127.0.0.1:{nginx_port}", env, tmp_path / "run")
    try:
        started = node.script("start")
        assert started.returncode == 0, started.stderr[-3000:]
        yield node
    finally:
        stopped = node.script("stop")
        assert stopped.returncode == 0, stopped.stderr


class BtpPeer:
    """A BTP account on one Daphne: answers the node's Prepares, sends its own."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.pending: dict[int, asyncio.Future[Reply]] = {}
        self.received: list[Prepare] = []
        self.reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, port: int, name: str, token: str) -> AsyncIterator[BtpPeer]:
        async with websockets.connect(f"ws://127.0.0.1:{port}/btp") as ws:
            rid = random.getrandbits(32)
            await ws.send(encode_btp(auth_message(rid, name, token)))
            reply = decode_btp(await asyncio.wait_for(ws.recv(), 30))
            assert isinstance(reply, BtpResponse) and reply.request_id == rid
            peer = cls(ws)
            try:
                yield peer
            finally:
                peer.reader.cancel()

    async def _read(self) -> None:
        async for raw in self.ws:
            frame = peek_ilp_frame(raw) if isinstance(raw, bytes) else None
            if frame is None:
                continue
            kind, rid, ilp = frame
            if kind == BtpType.MESSAGE:
                prepare = decode_prepare(ilp)
                self.received.append(prepare)
                fulfillment = (
                    PEER_FULFILLMENT if prepare.destination.startswith("peer.") else FULFILLMENT
                )
                answer = encode_packet(Fulfill(fulfillment, b""))
                await self.ws.send(encode_ilp_frame(BtpType.RESPONSE, rid, answer))
            elif rid in self.pending:
                self.pending.pop(rid).set_result(decode_reply(ilp))

    async def send(self, prepare: Prepare) -> Reply:
        rid = random.getrandbits(32)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.pending[rid] = future
        await self.ws.send(encode_ilp_frame(BtpType.MESSAGE, rid, encode_packet(prepare)))
        return await asyncio.wait_for(future, 30)


def _expiry(seconds: float = 20) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


async def _pay_until(kid: BtpPeer, done: Any) -> Reply:
    """Pay ``test.far.alice`` until ``done(reply)`` (30 s guard against a hang)."""
    async with asyncio.timeout(30):
        while True:
            reply = await kid.send(Prepare(10, _expiry(), CONDITION, "test.far.alice", b""))
            if done(reply):
                return reply
            await asyncio.sleep(0.1)


async def test_a_route_learned_by_one_daphne_is_used_by_another(cluster2: Cluster) -> None:
    await asyncio.to_thread(
        _manage, cluster2.env, "add_peer", PEER, "--relation", "peer",
        "--link", "btp-server", "--token", PEER_TOKEN,
    )  # fmt: skip
    await asyncio.to_thread(
        _manage, cluster2.env, "add_peer", CHILD, "--relation", "child",
        "--link", "btp-server", "--token", CHILD_TOKEN, "--min-balance", "-1000000",
    )  # fmt: skip
    first = int(cluster2.env["CLUSTER_DAPHNE_PORT"])
    async with BtpPeer.connect(first + 1, CHILD, CHILD_TOKEN) as kid:
        # Before any route: F02 on the second Daphne.
        reply = await kid.send(Prepare(10, _expiry(), CONDITION, "test.far.alice", b""))
        assert isinstance(reply, Reject) and reply.code == "F02", reply
        async with BtpPeer.connect(first, PEER, PEER_TOKEN) as far:
            update = RouteUpdateRequest(
                routing_table_id=os.urandom(16),
                current_epoch_index=1,
                from_epoch_index=0,
                to_epoch_index=1,
                hold_down_time=45_000,
                speaker="test.far",
                new_routes=(Route("test.far", ("test.far",), bytes(32)),),
                withdrawn_routes=(),
            )
            data = encode_route_update_request(update)
            answer = await far.send(
                Prepare(0, _expiry(60), PEER_CONDITION, CCP_UPDATE_DESTINATION, data)
            )
            assert isinstance(answer, Fulfill), answer  # applied by the first Daphne
            reply = await _pay_until(kid, lambda r: isinstance(r, Fulfill))
            assert reply == Fulfill(FULFILLMENT, b"")
            forwarded = [p for p in far.received if p.destination == "test.far.alice"]
            assert len(forwarded) == 1 and forwarded[0].amount == 10
        # The peer went away: its routes go from the second Daphne too.
        reply = await _pay_until(kid, lambda r: isinstance(r, Reject) and r.code == "F02")
        assert isinstance(reply, Reject) and "no route found" in reply.message
