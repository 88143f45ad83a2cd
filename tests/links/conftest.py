"""Fixtures for the links tests: a switch double, peers, clean process-wide state."""

from __future__ import annotations

import hashlib
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ilp.packet import Fulfill, Prepare, Reject, Reply
from links import services
from links.peers import PeerContext
from tests.payments.conftest import _close_thread_connections  # noqa: F401 (session fixture)

FULFILLMENT = bytes(range(32))
CONDITION = hashlib.sha256(FULFILLMENT).digest()


def prepare_to(
    destination: str = "test.local.bob",
    *,
    amount: int = 10,
    condition: bytes = CONDITION,
    expires_in: float = 30.0,
    data: bytes = b"",
) -> Prepare:
    return Prepare(
        amount,
        datetime.now(UTC) + timedelta(seconds=expires_in),
        condition,
        destination,
        data,
    )


@dataclass
class FakeSwitch:
    """Fulfills Prepares with condition :data:`CONDITION`, rejects others F99.

    ``handler`` replaces that behaviour; every call is recorded.
    """

    calls: list[tuple[str, Prepare]] = field(default_factory=list)
    ups: list[str] = field(default_factory=list)
    downs: list[str] = field(default_factory=list)
    handler: Callable[[PeerContext, Prepare], Awaitable[Reply]] | None = None

    async def handle_prepare(self, source: PeerContext, prepare: Prepare) -> Reply:
        self.calls.append((source.name, prepare))
        if self.handler is not None:
            return await self.handler(source, prepare)
        if prepare.execution_condition == CONDITION:
            return Fulfill(FULFILLMENT, b"ok")
        return Reject("F99", "test.local", "no", b"")

    def link_up(self, source: PeerContext) -> None:
        self.ups.append(source.name)

    def link_down(self, peer_name: str) -> None:
        self.downs.append(peer_name)


def _reset_state() -> None:
    from links import peers

    peers.invalidate_peer(None)
    services.forget_verified_tokens(None)
    if "links.registry" not in sys.modules:
        return
    from links import activity, idempotency, registry

    registry.current().clear()
    idempotency.reset()
    _isolate_shared_state()
    activity.cancel()
    activity._connection.clear()
    activity._last_packet.clear()


def _isolate_shared_state() -> None:
    """With Redis, this test's node keeps its BTP/2.0-I replays and limits apart from
    other tests' (the same peer names and request ids, one database name)."""
    from payments.node import runtime

    rt = runtime()
    tag = f"~{uuid.uuid4().hex[:12]}:"
    stores: list[Any] = [rt.replay.shared, rt.limiter]
    for store in stores:
        prefix = getattr(store, "prefix", None)
        if isinstance(prefix, str) and "~" not in prefix:
            store.prefix = prefix + tag


@pytest.fixture(autouse=True)
def clean_links_state() -> Iterator[None]:
    _reset_state()
    yield
    if "links.edge" in sys.modules:
        from links import edge

        edge.override_switch(None)
    _reset_state()


@pytest.fixture
def switch() -> Iterator[FakeSwitch]:
    from links import edge

    fake = FakeSwitch()
    edge.override_switch(fake)
    yield fake
    edge.override_switch(None)


@pytest.fixture
def make_peer() -> Callable[..., services.PeerSaved]:
    def make(name: str = "alice", **kwargs: Any) -> services.PeerSaved:
        kwargs.setdefault("relation", "child")
        kwargs.setdefault("link", "btp-server")
        return services.peer_create(name=name, **kwargs)

    return make
