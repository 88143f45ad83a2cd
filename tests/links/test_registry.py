"""links.registry: local links, and reaching a link held by another process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from ilp.packet import Fulfill, Prepare, Reject, Reply
from links import registry
from tests.conftest import on_redis
from tests.links.conftest import FULFILLMENT, prepare_to


class EchoLink:
    def __init__(self) -> None:
        self.sent: list[Prepare] = []

    async def send_prepare(self, prepare: Prepare) -> Reply:
        self.sent.append(prepare)
        return Fulfill(FULFILLMENT, prepare.data)


def test_register_stack_and_last_link() -> None:
    a, b = EchoLink(), EchoLink()
    registry.register("p", a)
    registry.register("p", b)
    assert registry.local("p") is b
    assert registry.links_of("p") == (a, b)
    assert not registry.unregister("p", b)  # a is still there
    assert registry.get("p") is a
    assert not registry.unregister("p", b)  # unknown link: no change
    assert registry.unregister("p", a)
    assert registry.local("p") is None
    assert registry.live_peers() == []
    assert registry.group_name("a~b") == "link.a.b"


@pytest.fixture
def bridged() -> Iterator[None]:
    registry._force_bridge = True
    yield
    registry._force_bridge = False


@pytest.mark.django_db(transaction=True)
async def test_remote_link_through_the_channel_layer(bridged: None) -> None:
    """A RemoteLink reaches a link registered "elsewhere" (here: this process's bridge)."""
    link = EchoLink()
    registry.register("far", link)
    try:
        await asyncio.sleep(0.1)  # the bridge joins its group
        remote = registry.RemoteLink("far")
        reply = await asyncio.wait_for(remote.send_prepare(prepare_to(data=b"hi")), 5)
        assert reply == Fulfill(FULFILLMENT, b"hi")
        assert len(link.sent) == 1
        # a peer connected nowhere answers T01 at once, not after the expiry
        reject = await asyncio.wait_for(
            registry.RemoteLink("nowhere").send_prepare(prepare_to()), 2
        )
        assert isinstance(reject, Reject) and reject.code == "T01"
        assert isinstance(registry.get("nowhere"), registry.RemoteLink)
    finally:
        registry.unregister("far", link)
        await asyncio.sleep(0.05)


@pytest.mark.skipif(not on_redis(), reason="needs Redis (the Postgres+Redis pass)")
def test_redis_layer_is_multiprocess() -> None:
    assert registry._is_multiprocess()
