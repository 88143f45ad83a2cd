"""Two of our nodes over a real BTP WebSocket, one of them a real ``daphne`` process.

Node A runs as ``daphne interledger_site.asgi:application`` (own SQLite file) with a
``btp-client`` parent peer pointing at node B: its supervisor must dial out on its own,
with no request ever reaching A. Node B is this test process (our /btp consumer behind
a real WebSocket server) with A as its child.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async

from ilp.conditions import PEER_CONDITION
from ilp.packet import Fulfill, Prepare, Reject
from links import registry
from tests.links.conftest import FakeSwitch, prepare_to
from tests.links.ws_server import serve_btp

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def node_a_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL"))}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "interledger_site.settings",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'node-a.sqlite3'}",
            "ILP_VAR_DIR": str(tmp_path),
            "ILP_ADDRESS": "test.nodea",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.pop("ILP_LINKS_AUTOSTART", None)
    yield env
    shutil.rmtree(tmp_path, ignore_errors=True)


def manage(env: dict[str, str], *args: str) -> str:
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


async def wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_daphne_node_dials_out_on_its_own(
    node_a_env: dict[str, str], make_peer: Callable[..., Any], switch: FakeSwitch
) -> None:
    if not (BIN / "daphne").exists():
        pytest.skip("daphne executable not found")
    await asyncio.to_thread(manage, node_a_env, "migrate", "-v", "0")
    async with serve_btp() as port:
        await database_sync_to_async(make_peer)("nodea", token="s3cret")
        url = f"btp+ws://nodea:s3cret@127.0.0.1:{port}/btp"
        out = await asyncio.to_thread(
            manage,
            node_a_env,
            "add_peer",
            "nodeb",
            "--relation",
            "parent",
            "--link",
            "btp-client",
            "--url",
            url,
        )
        assert "nodea:***@127.0.0.1" in out
        daphne = subprocess.Popen(
            [
                str(BIN / "daphne"),
                "-b",
                "127.0.0.1",
                "-p",
                str(free_port()),
                "interledger_site.asgi:application",
            ],
            env=node_a_env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            await wait_for(lambda: "nodea" in switch.ups or daphne.poll() is not None, 30)
            assert daphne.poll() is None, daphne.stderr.read().decode() if daphne.stderr else ""
            link = registry.get("nodea")
            assert link is not None
            # B asks A something over the link A opened: A's real switch answers.
            from datetime import UTC, datetime, timedelta

            ildcp = Prepare(
                0, datetime.now(UTC) + timedelta(seconds=10), PEER_CONDITION, "peer.config"
            )
            reply = await link.send_prepare(ildcp)
            assert isinstance(reply, Fulfill | Reject)
            if isinstance(reply, Reject):
                assert reply.code != "R00"  # answered, not timed out
            # and A's own Prepares reach B's switch through the same socket
            assert isinstance(await link.send_prepare(prepare_to("test.nodea")), Fulfill | Reject)
        finally:
            daphne.terminate()
            try:
                daphne.wait(10)
            except subprocess.TimeoutExpired:
                daphne.kill()
        await wait_for(lambda: "nodea" in switch.downs, 10)
