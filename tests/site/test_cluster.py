"""``scripts/cluster.sh`` for real: nginx in front of two Daphnes, a Celery worker and beat.

Runs when Debian's nginx is installed and the test run has PostgreSQL and Redis (the second
pass of ``.ci/run``); skipped otherwise. The cluster gets its own database (the test
database's name + ``_cluster``), Redis database 15, free ports and a run directory under
``tmp_path``; it is stopped whatever happens.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import websockets

from ilp.btp import BtpResponse, BtpType, auth_message, decode_btp, encode_btp, encode_ilp_frame
from ilp.btp import find_entry as btp_entry
from ilp.ildcp import ILDCP_REQUEST_LIFETIME, decode_ildcp_fulfill, ildcp_request
from ilp.packet import encode_packet
from tests.conftest import on_postgres, on_redis

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "cluster.sh"
PEER, TOKEN = "clusterpeer", "clusterpeer-token"


def _nginx() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )


pytestmark = [
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.skipif(_nginx() is None, reason="needs Debian's nginx (apt-get install nginx)"),
    pytest.mark.skipif(
        not (on_postgres() and on_redis()),
        reason="needs PostgreSQL and Redis (runs in the Postgres+Redis pass of .ci/run)",
    ),
]


def _free_run(n: int) -> int:
    """The first of ``n`` consecutive free loopback ports."""
    for _ in range(50):
        base = random.randint(20000, 60000)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free ports")


@dataclass(frozen=True)
class Cluster:
    url: str
    env: dict[str, str]
    run: Path

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=15) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def script(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(SCRIPT), command],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    tmp = tmp_path
    database_url = os.environ["DATABASE_URL"].rstrip("/")
    redis_url = os.environ["REDIS_URL"].rsplit("/", 1)[0] + "/15"
    nginx_port = _free_run(1)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ILP_", "DJANGO_", "PROMETHEUS_", "CLUSTER_", "PYTEST_"))
    }
    env.update(
        {
            "DATABASE_URL": database_url + "_cluster",
            "REDIS_URL": redis_url,
            "ILP_VAR_DIR": str(tmp / "var"),
            "ILP_ADDRESS": "test.cluster",
            "CLUSTER_DAPHNES": "2",
            "CLUSTER_PORT": str(nginx_port),
            "CLUSTER_DAPHNE_PORT": str(_free_run(2)),
            "CLUSTER_DIR": str(tmp / "run"),
            "LOG_LEVEL": "WARNING",
        }
    )
    node = Cluster(f"http://127.0.0.1:{nginx_port}", env, tmp / "run")
    try:
        started = node.script("start")
        assert started.returncode == 0, started.stderr[-3000:]
        added = subprocess.run(
            [sys.executable, "manage.py", "add_peer", PEER, "--relation", "child",
             "--link", "btp-server", "--token", TOKEN, "--min-balance", "0"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        yield node
    finally:
        stopped = node.script("stop")
        assert stopped.returncode == 0, stopped.stderr
        after = node.script("status")
        assert after.returncode == 3 and " running " not in after.stdout, after.stdout


def _links_connected(node: Cluster) -> float:
    status, body = node.get("/metrics")
    assert status == 200
    prefix = f'ilp_links_connected{{peer="{PEER}"}} '
    for line in body.decode().splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def check_ready_and_spread_over_the_daphnes(cluster: Cluster) -> None:
    status, body = cluster.get("/readyz")
    assert status == 200, body
    ready = json.loads(body)
    assert ready["status"] == "ready"
    assert {c["name"] for c in ready["checks"]} == {
        "Database",
        "Redis",
        "Channel layer",
        "Ledger writer",
    }
    for _ in range(4):
        assert cluster.get("/healthz") == (200, b'{"status": "ok"}')
    log = (cluster.run / "logs" / "nginx-access.log").read_text()
    upstreams = {
        line.rsplit("upstream=", 1)[1].strip() for line in log.splitlines() if "/healthz" in line
    }
    daphne = int(cluster.env["CLUSTER_DAPHNE_PORT"])
    assert upstreams == {f"127.0.0.1:{daphne}", f"127.0.0.1:{daphne + 1}"}


async def _recv(ws: websockets.ClientConnection) -> bytes:
    frame = await asyncio.wait_for(ws.recv(), 15)
    assert isinstance(frame, bytes), frame
    return frame


async def check_btp_over_nginx(cluster: Cluster) -> None:
    ws_url = cluster.url.replace("http://", "ws://") + "/btp"
    async with websockets.connect(ws_url) as ws:
        rid = random.getrandbits(32)
        await ws.send(encode_btp(auth_message(rid, PEER, TOKEN)))
        reply = decode_btp(await _recv(ws))
        assert isinstance(reply, BtpResponse) and reply.request_id == rid
        # IL-DCP through nginx: the node answers with the peer's address.
        rid = random.getrandbits(32)
        prepare = ildcp_request(datetime.now(UTC) + ILDCP_REQUEST_LIFETIME)
        await ws.send(encode_ilp_frame(BtpType.MESSAGE, rid, encode_packet(prepare)))
        reply = decode_btp(await _recv(ws))
        assert isinstance(reply, BtpResponse) and reply.request_id == rid
        entry = btp_entry(reply, "ilp")
        assert entry is not None
        assert decode_ildcp_fulfill(entry.data).client_address == f"test.cluster.{PEER}"
        # Whichever Daphne answers /metrics, it reports the link one process holds (its
        # owner sets the gauge once its lease claim is through: wait for it).
        deadline = time.monotonic() + 30
        while _links_connected(cluster) != 1.0:
            assert time.monotonic() < deadline, "the link never showed as connected"
            await asyncio.sleep(0.2)
        assert _links_connected(cluster) == 1.0
    deadline = time.monotonic() + 30
    while _links_connected(cluster) != 0.0:
        assert time.monotonic() < deadline, "the link still shows as connected"
        await asyncio.sleep(0.2)


def check_status_and_a_second_start(cluster: Cluster) -> None:
    status = cluster.script("status")
    assert status.returncode == 0, status.stdout
    running = {line.split()[0] for line in status.stdout.splitlines() if " running (pid " in line}
    assert running == {"daphne-1", "daphne-2", "celery-worker", "celery-beat", "nginx"}
    # A second start refuses while it runs.
    again = cluster.script("start")
    assert again.returncode != 0 and "already running" in again.stderr


async def test_the_cluster_serves_through_nginx(cluster: Cluster) -> None:
    # One test, one cluster: xdist would start one per worker for separate tests.
    check_ready_and_spread_over_the_daphnes(cluster)
    await check_btp_over_nginx(cluster)
    check_status_and_a_second_start(cluster)
