from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from interledger_site.celery import app as celery_app
from payments import ledger
from payments.ledger import BalanceBook, ensure_account, get_book, reset_book
from payments.models import LedgerAccount

PEER = "peer:alice"
PEER_B = "peer:bob"
RECEIVER = "receiver:carol"
NODE = "node:equity:USD:9"


@pytest.fixture(scope="session", autouse=True)
def _close_thread_connections(django_db_setup: None) -> Iterator[None]:
    """Before the session's test database is dropped, close the connections that threads
    other than the test's still hold: the ledger's writer and receipt applier
    (``reset_book``) and the one thread ``database_sync_to_async`` runs on (with
    ``CONN_MAX_AGE`` on Postgres it keeps its connection between calls; left open, the
    database cannot be dropped: "is being accessed by other users")."""
    yield
    from asgiref.sync import SyncToAsync

    reset_book()
    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=30)


@pytest.fixture
def book() -> Iterator[BalanceBook]:
    """A fresh process-wide book, closed at teardown (its writer thread and connection too)."""
    reset_book()
    yield get_book()
    reset_book()


@pytest.fixture
def eager_celery() -> Iterator[None]:
    """Run tasks in-process (already so in the embedded default; forced for the Redis pass)."""
    before = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = before


@pytest.fixture
def captured_apply(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Record the receipt ids the book queues for ``apply_receipts`` instead of running it."""
    calls: list[list[int]] = []
    monkeypatch.setattr(ledger, "_queue_apply_receipts", lambda ids: calls.append(list(ids)))
    return calls


def make_accounts(
    *, peer_min: int | None = -1000, peer_max: int | None = 1000
) -> dict[str, LedgerAccount]:
    return {
        PEER: ensure_account(PEER, kind="peer", min_balance=peer_min, max_balance=peer_max),
        PEER_B: ensure_account(PEER_B, kind="peer", min_balance=-1000, max_balance=1000),
        RECEIVER: ensure_account(RECEIVER, kind="receiver"),
        NODE: ensure_account(NODE, kind="node"),
    }


def _closing(fn: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            # asgiref's worker thread would otherwise keep a session open past the test
            # database's teardown.
            connections.close_all()

    return run


amake_accounts: Callable[..., Any] = sync_to_async(_closing(make_accounts))


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait on the running loop until ``check()`` holds (fails after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.001)


@sync_to_async
@_closing
def db(fn: Callable[[], Any]) -> Any:
    """Run a synchronous ORM call from an async test (on a connection other than the writer's)."""
    return fn()


@dataclass
class Hook:
    """A loopback HTTP server answering with ``statuses`` in turn (then 200).

    ``answered`` is released once per request, after the answer was sent: wait on it
    instead of the database (the sender writes the outcome right after)."""

    url: str
    statuses: list[int] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    answered: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))


@pytest.fixture
def hook() -> Iterator[Hook]:
    state = Hook(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with state.lock:
                state.requests.append((dict(self.headers.items()), body))
                status = state.statuses.pop(0) if state.statuses else 200
            if state.delay:
                time.sleep(state.delay)
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            self.wfile.flush()
            state.answered.release()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
