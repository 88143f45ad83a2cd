"""One owner per link on the real cluster: ``scripts/cluster.sh`` with 3 Daphnes, a Celery
worker and beat behind nginx, and a ``btp-client`` parent.

The parent is a BTP server in this test (what ilp-plugin-btp's server does: any auth is
accepted, every Prepare fulfilled) that counts authenticated connections. For 60 s the
node holds exactly one connection to it, whichever Daphne owns the lease; after a ``kill -9`` of the owner, another
Daphne dials once the lease runs out; and Prepares
that children send through nginx (landing on all three Daphnes) reach the parent exactly
once each, through the owner.

Runs in the Postgres+Redis pass of ``.ci/run`` when Debian's nginx is installed (like
``test_cluster.py``); by hand: ``flock /tmp/interop.lock .venv/bin/python -m pytest
tests/site/test_cluster_ownership.py`` with ``DATABASE_URL`` and ``REDIS_URL`` set. The
cluster uses its own database (the test database's name + ``_cluster_own``) and the test
run's Redis database, free ports and a run directory under ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import websockets

from ilp.btp import (
    BtpMessage,
    BtpResponse,
    BtpType,
    auth_message,
    decode_btp,
    encode_btp,
    encode_ilp_frame,
    find_entry,
    peek_ilp_frame,
)
from ilp.packet import Fulfill, Prepare, decode_prepare, decode_reply, encode_packet
from tests.conftest import on_postgres, on_redis
from tests.site.test_cluster import ROOT, Cluster, _free_run, _nginx, _recv

FULFILLMENT = b"\x2a" * 32
CONDITION = hashlib.sha256(FULFILLMENT).digest()
WATCH_S = 60.0
CHILD, CHILD_TOKEN = "ownchild", "ownchild-token"
PARENT = "ownparent"

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.skipif(_nginx() is None, reason="needs Debian's nginx (apt-get install nginx)"),
    pytest.mark.skipif(
        not (on_postgres() and on_redis()),
        reason="needs PostgreSQL and Redis (runs in the Postgres+Redis pass of .ci/run)",
    ),
]


@dataclass
class Parent:
    authenticated: int = 0
    open_now: int = 0
    most_open: int = 0
    prepares: list[Prepare] = field(default_factory=list)
    second: asyncio.Event = field(default_factory=asyncio.Event)
    first: asyncio.Event = field(default_factory=asyncio.Event)
    client_ports: list[int] = field(default_factory=list)  # the dialling side, per auth

    async def serve(self, ws: Any) -> None:
        authed = False
        try:
            async for raw in ws:
                if not isinstance(raw, bytes):
                    continue
                frame = peek_ilp_frame(raw)
                if frame is not None and authed and frame[0] == BtpType.MESSAGE:
                    _, request_id, ilp = frame
                    prepare = decode_prepare(ilp)
                    if prepare.destination.startswith("g.upstream."):
                        self.prepares.append(prepare)
                    reply = encode_packet(Fulfill(FULFILLMENT, b""))
                    await ws.send(encode_ilp_frame(BtpType.RESPONSE, request_id, reply))
                    continue
                packet = decode_btp(raw)
                if isinstance(packet, BtpMessage) and find_entry(packet, "auth") is not None:
                    authed = True
                    self.authenticated += 1
                    self.open_now += 1
                    self.most_open = max(self.most_open, self.open_now)
                    self.client_ports.append(ws.remote_address[1])
                    self.first.set()
                    if self.authenticated > 1:
                        self.second.set()
                    await ws.send(encode_btp(BtpResponse(packet.request_id)))
        finally:
            if authed:
                self.open_now -= 1


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


def _pid_with_local_port(run: Path, port: int) -> int | None:
    """The Daphne (by its pid file) holding a TCP socket whose local port is ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    for pid_file in sorted(run.glob("daphne-*.pid")):
        pid = int(pid_file.read_text().strip())
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return pid
    return None


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[Cluster]:
    nginx_port = _free_run(1)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ILP_", "DJANGO_", "PROMETHEUS_", "CLUSTER_", "PYTEST_"))
    }
    env.update(
        {
            "DATABASE_URL": os.environ["DATABASE_URL"].rstrip("/") + "_cluster_own",
            "REDIS_URL": os.environ["REDIS_URL"],
            "ILP_VAR_DIR": str(tmp_path / "var"),
            "ILP_ADDRESS": "test.cluster",
            "CLUSTER_DAPHNES": "3",
            "CLUSTER_PORT": str(nginx_port),
            "CLUSTER_DAPHNE_PORT": str(_free_run(3)),
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


async def _send_through_a_child(cluster: Cluster, n: int) -> None:
    """A child connection through nginx (so over the three Daphnes) sends one Prepare."""
    ws_url = cluster.url.replace("http://", "ws://") + "/btp"
    async with websockets.connect(ws_url) as ws:
        rid = random.getrandbits(32)
        await ws.send(encode_btp(auth_message(rid, CHILD, CHILD_TOKEN)))
        reply = decode_btp(await _recv(ws))
        assert isinstance(reply, BtpResponse) and reply.request_id == rid
        rid = random.getrandbits(32)
        prepare = Prepare(
            0, datetime.now(UTC) + timedelta(seconds=20), CONDITION, f"g.upstream.{n}", b""
        )
        await ws.send(encode_ilp_frame(BtpType.MESSAGE, rid, encode_packet(prepare)))
        while True:
            frame = peek_ilp_frame(await _recv(ws))
            if frame is not None and frame[1] == rid:
                break
        assert isinstance(decode_reply(frame[2]), Fulfill)


async def test_one_connection_per_btp_client_peer_for_60_s(cluster3: Cluster) -> None:
    parent = Parent()
    async with websockets.serve(parent.serve, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        await asyncio.to_thread(
            _manage, cluster3.env, "add_peer", PARENT, "--relation", "parent",
            "--link", "btp-client", "--url", f"btp+ws://node:tok@127.0.0.1:{port}/",
        )  # fmt: skip
        await asyncio.to_thread(
            _manage, cluster3.env, "add_peer", CHILD, "--relation", "child",
            "--link", "btp-server", "--token", CHILD_TOKEN, "--min-balance", "0",
        )  # fmt: skip
        # The supervisors re-read the peers every 10 s; the lease decides who dials.
        await asyncio.wait_for(parent.first.wait(), 60)
        # Children land on every Daphne (nginx round robin): each Prepare leaves once.
        for n in range(6):
            await _send_through_a_child(cluster3, n)
        assert sorted(p.destination for p in parent.prepares) == [
            f"g.upstream.{n}" for n in range(6)
        ]
        # The watch: a second connection (any Daphne, any time) ends it early and fails.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(parent.second.wait(), WATCH_S)
        assert parent.authenticated == 1
        assert parent.most_open == 1 and parent.open_now == 1

        # kill -9 the owner: another Daphne dials once its lease runs out (15 s + a retry).
        owner = _pid_with_local_port(cluster3.run, parent.client_ports[0])
        assert owner is not None
        os.kill(owner, signal.SIGKILL)
        await asyncio.wait_for(parent.second.wait(), 60)
        assert parent.authenticated == 2 and parent.open_now == 1
        successor = _pid_with_local_port(cluster3.run, parent.client_ports[1])
        assert successor is not None and successor != owner
        for n in range(6, 9):  # the children of the dead one reconnect elsewhere
            await _send_through_a_child(cluster3, n)
        assert len(parent.prepares) == 9
        assert parent.most_open == 1
