"""Fixtures for sending: node identity, clean process state, two link ends over a real
WebSocket, funded accounts, and seams to inject faults into a real sender."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db import connections
from django.utils import timezone
from pytest_django.fixtures import Settings as SettingsWrapper

from ilp.packet import Prepare, Reject, Reply
from links import edge
from links.btp_client import BtpClient
from links.sender_link import open_sender
from links.switch import reset_switch
from payments.ledger import ensure_account, reset_book
from payments.models import LedgerAccount
from payments.sending import Route, Sender, set_sender_opener
from payments.services import account_adjust
from receivers.directory import get_directory
from tests.links.conftest import _reset_state as reset_links_state
from tests.links.ws_server import serve_btp

RECEIVER_SECRET_HEX = "292ba2e94ae81fdcb9181fdc24ae1cfb7edb15462676a8813d1f916c8f085f0b"
NODE = "test.node"


@pytest.fixture(autouse=True)
def _node_identity(settings: SettingsWrapper) -> None:
    settings.ILP_ADDRESS = NODE
    settings.ILP_RECEIVER_SECRET = RECEIVER_SECRET_HEX
    settings.ILP_ASSET_CODE = "XRP"
    settings.ILP_ASSET_SCALE = 9
    settings.ILP_FEE_PPM = 0
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _reset() -> None:
    set_sender_opener(None)
    edge.override_switch(None)
    reset_switch()
    reset_book()
    get_directory().invalidate()
    if "links.registry" in sys.modules:
        reset_links_state()


@pytest.fixture(autouse=True)
def _eager_celery() -> Iterator[None]:
    """Tasks run in-process (already so in the embedded default; forced for the Redis pass)."""
    from interledger_site.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before


@pytest.fixture(autouse=True)
def _fresh_process_state() -> Iterator[None]:
    _reset()
    yield
    _reset()


@pytest.fixture(autouse=True)
async def _close_thread_connections() -> AsyncIterator[None]:
    """Close the connection asgiref's thread-sensitive worker (``database_sync_to_async``
    in the runner) keeps open, before the test database is dropped."""
    yield
    await sync_to_async(connections.close_all)()


def _closing(fn: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            connections.close_all()

    return run


def in_thread(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A sync ORM call from an async test (closing its connection afterwards)."""
    return sync_to_async(_closing(fn))


def as_worker(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A sync entry point that blocks until a payment run ends (a Celery task, a command)
    called from an async test, in a thread of its own as a worker would be. Not
    :func:`in_thread`: that is asgiref's one thread-sensitive thread, which every
    ``database_sync_to_async`` of this loop's other tasks also needs — the far end's
    switch and receiver serving the run's packets here (on Postgres + Redis a draft-1
    receiver reads its total from the database) would wait for the run that waits for
    them. The run itself still goes to this loop (``async_to_sync``), where the links are."""
    return sync_to_async(_closing(fn), thread_sensitive=False)


def fund(code: str, amount: int, *, kind: str = "receiver") -> LedgerAccount:
    """Create ``code`` and give it ``amount`` (an operator adjustment)."""
    ensure_account(code, kind=kind)
    account_adjust(account_code=code, amount=amount, key=f"fund:{code}:{amount}")
    return LedgerAccount.objects.get(code=code)


def balance(code: str) -> int:
    account = LedgerAccount.objects.filter(code=code).first()
    return int(account.balance) if account is not None else 0


def make_receiver(name: str) -> Any:
    from receivers.services import receiver_create

    user, _ = User.objects.get_or_create(username=f"user-{name}")
    return receiver_create(user=user, name=name)


# --- two link ends of ours over a real WebSocket ---------------------------------------------


@dataclass
class Link:
    """Peer ``hub`` (btp-client, what we send through) dials our own /btp as ``leaf``."""

    client: BtpClient
    port: int


@contextlib.asynccontextmanager
async def btp_pair(
    *, leaf_max_packet: int | None = None, out: str = "hub", back: str = "leaf"
) -> AsyncIterator[Link]:
    from links import services

    async with serve_btp() as port:

        def make() -> None:
            kwargs: dict[str, Any] = {}
            if leaf_max_packet is not None:
                kwargs["max_packet_amount"] = leaf_max_packet
            services.peer_create(
                name=back, relation="child", link="btp-server", token="tok", **kwargs
            )
            services.peer_create(
                name=out,
                relation="parent",
                link="btp-client",
                url=f"btp+ws://{back}:tok@127.0.0.1:{port}/btp",
            )

        await in_thread(make)()
        client = BtpClient(out, f"btp+ws://{back}:tok@127.0.0.1:{port}/btp")
        client.start()
        try:
            await asyncio.wait_for(client.connected.wait(), 10)
            from links import registry

            for _ in range(200):  # the server end registers when it reads the auth
                if registry.local(back) is not None:
                    break
                await asyncio.sleep(0.02)
            yield Link(client, port)
        finally:
            await client.stop()


# --- fault injection around the real sender ---------------------------------------------------


class Crash(BaseException):
    """Stands for the process dying (not an ``Exception``: nothing catches it)."""


@dataclass
class Faults:
    """Per send number (1-based, quotes and probes included): ``"crash-before"`` (the
    Prepare never leaves), ``"crash-after"`` (it is sent and answered, then the process
    "dies"), or a Reject to answer instead of sending."""

    plan: dict[int, str | Reject] = field(default_factory=dict)
    sent: list[Prepare] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    count: int = 0


class FaultySender:
    def __init__(self, inner: Sender, faults: Faults) -> None:
        self.inner = inner
        self.faults = faults

    @property
    def peer_account(self) -> str | None:
        return self.inner.peer_account

    @property
    def max_packet_amount(self) -> int:
        return self.inner.max_packet_amount

    @property
    def asset(self) -> tuple[str, int]:
        return self.inner.asset

    def source_keys(self, prepare: Prepare) -> tuple[str, ...]:
        return self.inner.source_keys(prepare)

    async def send(self, prepare: Prepare) -> Reply:
        f = self.faults
        f.count += 1
        action = f.plan.get(f.count)
        if action == "crash-before":
            raise Crash(f"before send {f.count}")
        if isinstance(action, Reject):
            f.replies.append(action)
            return action
        f.sent.append(prepare)
        reply = await self.inner.send(prepare)
        f.replies.append(reply)
        if action == "crash-after":
            raise Crash(f"after send {f.count}")
        return reply


def install_faults(faults: Faults) -> None:
    @contextlib.asynccontextmanager
    async def opener(route: Route) -> AsyncIterator[Sender]:
        async with open_sender(route) as sender:
            yield FaultySender(sender, faults)

    set_sender_opener(opener)


def t_reject(code: str = "T04") -> Reject:
    return Reject(code, "test.somewhere", "injected")


def expired_now() -> datetime:
    return timezone.now()


async def eventually(check: Callable[[], bool], *, timeout: float = 10.0) -> None:
    """Poll a sync DB check (receipts are applied to receivers off the hot path)."""
    run = in_thread(check)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await run():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)
