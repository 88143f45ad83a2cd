"""State shared between Daphnes on the real cluster: ``scripts/cluster.sh`` with 2 Daphnes
(+ nginx, a Celery worker and beat) on PostgreSQL + Redis.

* CCP routes: a peer ``farpeer`` connects to the first Daphne directly and advertises
  ``test.far``; a child connected to the second Daphne pays ``test.far.alice``: the second
  Daphne routes by the route the first one learned (through the peer's link owner) and the
  peer fulfils. When the peer goes away, the route goes away on the second Daphne too.
* HTTP-OER async replies: the node pays an ``http-async`` child; the child's replies come
  back through nginx, so they land on either Daphne, whichever one waits: every payment
  completes.

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
from typing import Any

import httpx
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
from ilp.packet import (
    Fulfill,
    Prepare,
    Reject,
    Reply,
    decode_prepare,
    decode_reply,
    encode_packet,
)
from tests.conftest import on_postgres, on_redis
from tests.links.http_server import serve_http
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


@pytest.fixture(scope="module")
def cluster2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp_path = tmp_path_factory.mktemp("cluster-routes")
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


async def test_http_oer_async_replies_reach_the_waiting_daphne(cluster2: Cluster) -> None:
    """The child answers each async Prepare by POSTing the Fulfill through nginx: round
    robin sends about half of the replies to the Daphne that is not waiting."""
    replies: set[asyncio.Task[None]] = set()
    statuses: list[int] = []
    # A name of its own: the cluster's database outlives a run (an old URL would linger).
    async_child = f"asynckid{random.getrandbits(32):08x}"
    async_token = f"{async_child}-token"

    async def reply_later(request_id: str) -> None:
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.post(
                f"{cluster2.url}/ilp/{request_id}",
                content=encode_packet(Fulfill(FULFILLMENT, b"")),
                headers={
                    "Authorization": f"Bearer {async_token}",
                    "Content-Type": "application/octet-stream",
                },
            )
            statuses.append(response.status_code)

    async def child_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        request_id = scope["path"].rsplit("/", 1)[-1]
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        task = asyncio.get_running_loop().create_task(reply_later(request_id))
        replies.add(task)
        task.add_done_callback(replies.discard)

    async with serve_http(child_app) as base:
        await asyncio.to_thread(
            _manage, cluster2.env, "add_peer", async_child, "--relation", "child",
            "--link", "http-async", "--url", base, "--token", async_token,
            "--outgoing-token", "to-the-child",
        )  # fmt: skip
        await asyncio.to_thread(
            _manage, cluster2.env, "add_peer", CHILD, "--relation", "child",
            "--link", "btp-server", "--token", CHILD_TOKEN, "--min-balance", "-1000000",
        )  # fmt: skip
        first = int(cluster2.env["CLUSTER_DAPHNE_PORT"])
        destination = f"test.croutes.{async_child}.bob"
        for port in (first, first + 1):
            async with BtpPeer.connect(port, CHILD, CHILD_TOKEN) as kid:
                # The supervisors register the HTTP link (and its route) within their
                # 10 s sync: until then F02 or T01.
                async with asyncio.timeout(60):
                    while True:
                        reply = await kid.send(Prepare(10, _expiry(), CONDITION, destination, b""))
                        if not (isinstance(reply, Reject) and reply.code in ("F02", "T01")):
                            break
                        await asyncio.sleep(0.5)
                assert reply == Fulfill(FULFILLMENT, b""), reply
                for _ in range(4):
                    reply = await kid.send(Prepare(10, _expiry(), CONDITION, destination, b""))
                    assert reply == Fulfill(FULFILLMENT, b""), reply
    assert statuses and set(statuses) == {200}, statuses
    # The replies did land on both Daphnes (so some on the one that was not waiting).
    log = (cluster2.run / "logs" / "nginx-access.log").read_text()
    upstreams = {
        line.rsplit("upstream=", 1)[1].strip() for line in log.splitlines() if "POST /ilp/" in line
    }
    assert upstreams == {f"127.0.0.1:{first}", f"127.0.0.1:{first + 1}"}
