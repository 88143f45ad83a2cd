"""A live node for end-to-end tests: daphne in a subprocess (HTTP, WebSockets, BTP) on a
free port, with its own SQLite database and ILP identity. pytest-django's ``live_server``
speaks neither WebSockets nor BTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
RECEIVER_SECRET = "292ba2e94ae81fdcb9181fdc24ae1cfb7edb15462676a8813d1f916c8f085f0b"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveNode:
    base_url: str
    port: int
    env: dict[str, str]

    def manage(self, *args: str) -> str:
        """Run ``manage.py`` against the node's database; its stdout."""
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise AssertionError(f"manage.py {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout

    def shell(self, code: str) -> str:
        return self.manage("shell", "--no-imports", "-c", code)

    def btp_url(self, name: str, token: str) -> str:
        return f"btp+ws://{name}:{token}@127.0.0.1:{self.port}/btp"


@pytest.fixture(scope="module")
def live_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveNode]:
    var = tmp_path_factory.mktemp("live-node")
    port = _free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "interledger_site.settings",
        "DATABASE_URL": f"sqlite:///{var / 'db.sqlite3'}",
        "ILP_VAR_DIR": str(var),
        "ILP_ADDRESS": "test.live",
        "ILP_ASSET_CODE": "XRP",
        "ILP_ASSET_SCALE": "9",
        "ILP_RECEIVER_SECRET": RECEIVER_SECRET,
        "ILP_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "DJANGO_DEBUG": "0",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("REDIS_URL", None)
    node = LiveNode(f"http://127.0.0.1:{port}", port, env)
    node.manage("migrate", "--noinput", "-v0")
    log = open(var / "daphne.log", "w")  # noqa: SIM115 (closed below)
    daphne = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "interledger_site.asgi:application",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(node.base_url + "/", timeout=1, trust_env=False).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if daphne.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"daphne did not start: {(var / 'daphne.log').read_text()}")
            time.sleep(0.2)
        yield node
    finally:
        daphne.terminate()
        try:
            daphne.wait(10)
        except subprocess.TimeoutExpired:
            daphne.kill()
        log.close()
