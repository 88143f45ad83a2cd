"""``manage.py pay`` hands its payment to the serving node (``payments.sending.handoff``).

* Live: two of our nodes as real ``daphne`` processes, each with its own SQLite database:
  a parent ("far", pointer carol, a ``btp-server`` child ``near``) and the node under
  test, its child over a ``btp-client`` link ``upstream`` that it dials itself, through a
  TCP proxy that counts the connections. ``manage.py pay`` run as a subprocess against
  the child's database, with and without ``--via``, pays carol through the child's own
  link: the parent sees one connection, ever.
* In this process: a stale socket file (its node killed) does not hang the command, which
  says no node is serving and pays from its own process; a socket that accepts but never
  answers is an error before anything is created; a node that goes away mid-payment is
  reported and the payment stays in the database for the node's recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.core.management import CommandError, call_command

from payments.models_outgoing import OutgoingPayment
from payments.sending import handoff
from tests.conftest import on_postgres, on_redis
from tests.sending.conftest import RECEIVER_SECRET_HEX, balance, fund, make_receiver

ROOT = Path(__file__).resolve().parents[2]


# --- two live nodes ---------------------------------------------------------------------------


@dataclass
class Node:
    port: int
    env: dict[str, str]
    var: Path
    process: subprocess.Popen[bytes] | None = None

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if check:
            assert done.returncode == 0, done.stdout + done.stderr
        return done

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        url = self.env["DATABASE_URL"]
        if url.startswith("postgres"):
            import psycopg

            with psycopg.connect(url, autocommit=True) as pg:
                return pg.execute(sql.replace("?", "%s"), params).fetchall()
        with contextlib.closing(sqlite3.connect(self.var / "db.sqlite3", timeout=20)) as db:
            return db.execute(sql, params).fetchall()

    def balance(self, code: str) -> int:
        rows = self.query("SELECT balance FROM payments_ledgeraccount WHERE code = ?", code)
        return int(rows[0][0]) if rows else 0

    def log(self) -> str:
        return (self.var / "daphne.log").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _node(var: Path, address: str, **extra: str) -> Node:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL"))}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "interledger_site.settings",
            "DATABASE_URL": extra.pop("DATABASE_URL", f"sqlite:///{var / 'db.sqlite3'}"),
            "ILP_VAR_DIR": str(var),
            "ILP_ADDRESS": address,
            "ILP_ASSET_CODE": "XRP",
            "ILP_ASSET_SCALE": "9",
            "ILP_RECEIVER_SECRET": RECEIVER_SECRET_HEX,
            "ILP_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "ILP_ALLOW_PRIVATE_URLS": "1",
            "PYTHONPATH": str(ROOT),
            "LOG_LEVEL": "WARNING",
            **extra,
        }
    )
    node = Node(port, env, var)
    node.manage("migrate", "--noinput", "-v0")
    return node


def _serve(node: Node) -> None:
    log = open(node.var / "daphne.log", "w")  # noqa: SIM115 (the child process keeps it)
    node.process = subprocess.Popen(
        [
            *(sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(node.port)),
            "interledger_site.asgi:application",
        ],
        cwd=ROOT,
        env=node.env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    _wait(
        lambda: _http_up(node.port),
        node,
        "the node did not start serving",
    )


def _http_up(port: int) -> bool:
    try:
        return bool(httpx.get(f"http://127.0.0.1:{port}/", timeout=1, trust_env=False))
    except httpx.HTTPError:
        return False


def _wait(ready: Any, node: Node, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if node.process is not None and node.process.poll() is not None:
            raise AssertionError(f"{what}: the node exited\n{node.log()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}\n{node.log()}")
        time.sleep(0.2)


def _stop(node: Node) -> None:
    if node.process is None:
        return
    node.process.terminate()
    try:
        node.process.wait(15)
    except subprocess.TimeoutExpired:
        node.process.kill()
        node.process.wait(5)


class CountingProxy:
    """A TCP forwarder to ``port`` that counts the connections it accepted."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.connections = 0
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.server.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()


@dataclass
class Pair:
    parent: Node
    child: Node
    proxy: CountingProxy


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """The child on SQLite, eager Celery (the embedded default)."""
    yield from _pair(tmp_path_factory)


@contextlib.contextmanager
def _database(url: str) -> Iterator[str]:
    """A fresh database beside the test run's (``<name>_handoff``), dropped afterwards."""
    import psycopg

    base, _, name = url.rpartition("/")
    name = f"{name.split('?')[0]}_handoff"
    admin = f"{base}/postgres"
    with psycopg.connect(admin, autocommit=True) as pg:
        pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        pg.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as pg:
            pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def pg_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """The child on Postgres + Redis with a Celery worker (not eager)."""
    if not (on_postgres() and on_redis()):
        pytest.skip("needs PostgreSQL and Redis (the Postgres+Redis pass of .ci/run)")
    with _database(os.environ["DATABASE_URL"]) as url:
        yield from _pair(
            tmp_path_factory, DATABASE_URL=url, REDIS_URL=os.environ["REDIS_URL"], worker="1"
        )


def _pair(tmp_path_factory: pytest.TempPathFactory, **child_env: str) -> Iterator[Pair]:
    parent = _node(tmp_path_factory.mktemp("parent"), "test.far", ILP_LINKS_AUTOSTART="0")
    parent.manage("add_pointer", "carol")
    parent.manage(
        "add_peer", "near", "--relation", "child", "--link", "btp-server", "--token", "neartok"
    )
    worker = child_env.pop("worker", "")
    child = _node(tmp_path_factory.mktemp("child"), "test.far.near", **child_env)
    proxy = CountingProxy(parent.port)
    celery: subprocess.Popen[bytes] | None = None
    child.manage(
        "add_peer",
        "upstream",
        "--relation",
        "parent",
        "--link",
        "btp-client",
        "--url",
        f"btp+ws://near:neartok@127.0.0.1:{proxy.port}/btp",
    )
    try:
        _serve(parent)
        _serve(child)
        if worker:
            with open(child.var / "worker.log", "w") as log:
                celery = subprocess.Popen(
                    [
                        *(sys.executable, "-m", "celery", "-A", "interledger_site", "worker"),
                        *("--pool", "solo", "--loglevel", "warning"),
                    ],
                    cwd=ROOT,
                    env=child.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        _wait(
            lambda: (
                child.query("SELECT connected_since FROM links_peer WHERE name = 'upstream'")[0][0]
                is not None
            ),
            child,
            "the child did not connect to its parent",
        )
        yield Pair(parent, child, proxy)
    finally:
        if celery is not None:
            celery.terminate()
            try:
                celery.wait(15)
            except subprocess.TimeoutExpired:
                celery.kill()
                celery.wait(5)
        _stop(child)
        _stop(parent)
        proxy.close()


@pytest.mark.slow
def test_pay_runs_in_the_serving_node_through_its_own_link(pair: Pair) -> None:
    parent, child = pair.parent, pair.child
    assert pair.proxy.connections == 1
    carol_before, near_before = parent.balance("receiver:carol"), parent.balance("peer:near")
    pointer = f"$127.0.0.1:{parent.port}/carol"

    done = child.manage("pay", pointer, "5000", "--key", "handoff-1")
    assert "running in the serving node server-" in done.stdout, done.stdout + done.stderr
    assert "[completed] sent 5000 delivered 5000" in done.stdout, done.stdout
    assert "no node is serving" not in done.stderr
    # --via the parent: the same link, not a second connection as the same account.
    done = child.manage("pay", pointer, "3000", "--via", "upstream", "--key", "handoff-2")
    assert "running in the serving node" in done.stdout, done.stdout + done.stderr
    assert "[completed] sent 3000 delivered 3000" in done.stdout, done.stdout

    assert pair.proxy.connections == 1, child.log()
    rows = child.query(
        "SELECT idempotency_key, status, via_peer, destination_address, lease_owner "
        "FROM payments_outgoingpayment ORDER BY id"
    )
    assert [(key, status, via) for key, status, via, _, _ in rows] == [
        ("handoff-1", "completed", ""),
        ("handoff-2", "completed", "upstream"),
    ]
    assert all(address.startswith("test.far.receivers.carol.") for *_, address, _ in rows)
    assert all(owner == "" for *_, owner in rows)
    # The child's books: the node paid 8000, which it owes its parent's connector.
    assert child.balance("node:operator") == -8_000
    assert child.balance("peer:upstream") == 8_000
    # The parent's: its child near paid carol 8000 (receipts are applied just after).
    assert parent.balance("peer:near") == near_before - 8_000
    _wait(
        lambda: parent.balance("receiver:carol") == carol_before + 8_000,
        parent,
        "carol was not credited",
        seconds=20,
    )
    # The same key again: the same payment, nothing paid twice.
    done = child.manage("pay", pointer, "5000", "--key", "handoff-1")
    assert "[completed] sent 5000 delivered 5000" in done.stdout
    assert child.balance("node:operator") == -8_000
    assert pair.proxy.connections == 1


@pytest.mark.slow
def test_pay_api_runs_its_payment_in_the_serving_node(pair: Pair) -> None:
    parent, child = pair.parent, pair.child
    before = child.balance("node:operator")
    done = child.manage("pay_api", f"http://127.0.0.1:{parent.port}/api/v1/demo/paid")
    assert json.loads(done.stdout)["message"] == "Hello World!", done.stdout + done.stderr
    assert "HTTP 200" in done.stderr and "no node is serving" not in done.stderr
    ((status, lease_owner, address),) = child.query(
        "SELECT status, lease_owner, destination_address FROM payments_outgoingpayment "
        "WHERE receiver LIKE '%/tokens/%'"
    )
    assert (status, lease_owner) == ("completed", "")
    assert address.startswith("test.far.receivers.")
    assert child.balance("node:operator") < before
    assert pair.proxy.connections == 1, child.log()


@pytest.mark.slow
def test_pay_with_a_worker_sends_through_the_link_owner(pg_pair: Pair) -> None:
    """Postgres + Redis: the command queues the payment, the Celery worker runs it and
    reaches the parent through the Daphne process that owns the link (its channel), with
    and without ``--via``; the worker never dials."""
    parent, child = pg_pair.parent, pg_pair.child
    assert pg_pair.proxy.connections == 1
    carol_before = parent.balance("receiver:carol")
    pointer = f"$127.0.0.1:{parent.port}/carol"
    for key, amount, via in (("pg-1", "5000", ()), ("pg-2", "3000", ("--via", "upstream"))):
        done = child.manage("pay", pointer, amount, "--key", key, *via)
        out = done.stdout + done.stderr
        assert f"[completed] sent {amount} delivered {amount}" in done.stdout, out
        assert "serving node" not in out and "no node is serving" not in out
    assert pg_pair.proxy.connections == 1, (child.var / "worker.log").read_text()
    assert child.balance("node:operator") == -8_000
    assert child.balance("peer:upstream") == 8_000
    _wait(
        lambda: parent.balance("receiver:carol") == carol_before + 8_000,
        parent,
        "carol was not credited",
        seconds=20,
    )


# --- in this process: no node, a stale socket, a wedged one, one that goes away ---------------


@pytest.fixture
def path(settings: Any, tmp_path: Path) -> Iterator[Path]:
    settings.VAR_DIR = tmp_path
    path = handoff.socket_path()
    yield path
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _pay(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("pay", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.mark.django_db(transaction=True)
def test_a_stale_socket_file_means_no_node_and_pays_from_here(path: Path, live_server: Any) -> None:
    # What a node killed with kill -9 leaves: the socket file, nobody listening on it.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(os.fspath(path))
    stale.close()
    assert path.exists()
    make_receiver("bob")
    fund("receiver:alice", 10_000)
    out, err = _pay(f"{live_server.url}/bob", "4000", "--from", "alice")
    assert "no node is serving this database" in err and "no longer running" in err
    assert "[completed] sent 4000 delivered 4000" in out
    assert balance("receiver:alice") == 6_000


@pytest.mark.django_db(transaction=True)
def test_a_socket_that_never_answers_is_an_error_before_anything_is_created(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handoff, "ANSWER_TIMEOUT_S", 0.5)
    wedged = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    wedged.bind(os.fspath(path))
    wedged.listen(8)  # accepts (the kernel's backlog) but never answers: a stopped process
    try:
        with pytest.raises(CommandError, match=r"did not answer within 0\.5 s.*nothing was sent"):
            _pay("http://127.0.0.1:9/bob", "4000")
    finally:
        wedged.close()
    assert not OutgoingPayment.objects.exists()


def _fake_node(path: Path, script: list[dict[str, Any] | None]) -> threading.Thread:
    """A listener that answers each request line with the next ``script`` entry
    (``None``: close the connection)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(os.fspath(path))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn, server:
            reader = conn.makefile("rb")
            for answer in script:
                if answer is None:
                    return
                if "done" not in answer and not reader.readline():
                    return
                conn.sendall(json.dumps(answer).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.django_db(transaction=True)
def test_a_node_that_goes_away_mid_payment_is_reported(path: Path) -> None:
    fund("receiver:alice", 10_000)
    node = _fake_node(
        path, [{"ok": True, "node": "fake", "pid": 1}, {"ok": True, "started": True}, None]
    )
    with pytest.raises(CommandError, match=r"went away during the payment.*stays in the database"):
        _pay("http://127.0.0.1:9/bob", "4000", "--from", "alice", "--key", "gone-1")
    node.join(5)
    # The row is the truth: still pending, its money reserved, for the node's recovery.
    payment = OutgoingPayment.objects.get(idempotency_key="gone-1")
    assert payment.status == "pending" and int(payment.amount_reserved) == 4_000


@pytest.mark.django_db(transaction=True)
def test_the_nodes_error_ends_the_command(path: Path) -> None:
    fund("receiver:alice", 10_000)
    node = _fake_node(
        path,
        [
            {"ok": True, "node": "fake", "pid": 1},
            {"ok": True, "started": True},
            {"done": None, "error": "database is locked"},
        ],
    )
    with pytest.raises(CommandError, match="the node's run stopped: database is locked"):
        _pay("http://127.0.0.1:9/bob", "4000", "--from", "alice", "--key", "err-1")
    node.join(5)
    assert OutgoingPayment.objects.get(idempotency_key="err-1").status == "pending"


@pytest.mark.django_db(transaction=True)
async def test_the_listener_replaces_a_stale_file_defers_to_a_live_one_and_cleans_up(
    path: Path,
) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(os.fspath(path))
    stale.close()
    first = handoff.HandoffListener(name="first")
    await first.start()
    second = handoff.HandoffListener(name="second")
    try:
        assert first.listening and first.path == path
        assert path.stat().st_mode & 0o777 == 0o600
        # A second serving process of the same node leaves the live one alone.
        await second.start()
        assert not second.listening

        def ask() -> tuple[dict[str, Any], dict[str, Any] | None]:
            with handoff.connect() as node:
                node.start_run(999_999)  # no such payment: the run has nothing to do
                done = None
                while done is None:
                    done = node.wait_done(5)
                return node.hello, done

        hello, done = await asyncio.to_thread(ask)
        assert hello["node"] == "first" and hello["pid"] == os.getpid()
        assert done == {"done": None}
    finally:
        await second.stop()
        assert path.exists()  # not the second one's to remove
        await first.stop()
    assert not path.exists()
    with pytest.raises(handoff.NoNodeServing):
        handoff.connect()
