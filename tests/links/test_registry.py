"""links.registry: local links, and reaching a link held by another process."""

from __future__ import annotations

import asyncio

import pytest

from ilp.packet import Fulfill, Prepare, Reject, Reply
from interledger_site.runtime import NodeRuntime
from links import registry
from links.ownership import MemoryLeases, multiprocess_layer, settle_layer
from tests.conftest import on_redis
from tests.links.conftest import FULFILLMENT, prepare_to
from tests.links.test_ownership import fresh_layer  # noqa: F401 (fixture)


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


def shared_pair() -> tuple[NodeRuntime, NodeRuntime]:
    """Two runtimes sharing leases (one process, as two processes would share Redis)."""
    leases = MemoryLeases()
    owner = NodeRuntime(name="owner", shared=True, leases=leases)
    other = NodeRuntime(name="other", shared=True, leases=leases)
    return owner, other


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("fresh_layer")
async def test_remote_link_through_the_owner_channel() -> None:
    """A RemoteLink reaches a link held by another runtime through its owner's channel."""
    owner, other = shared_pair()
    link = EchoLink()
    await owner.ownership.start()
    try:
        owner.registry.register("far", link)
        assert await owner.ownership.acquire("far")
        with other.activated():
            remote = registry.get("far")
            assert isinstance(remote, registry.RemoteLink)
            reply = await asyncio.wait_for(remote.send_prepare(prepare_to(data=b"hi")), 5)
            assert reply == Fulfill(FULFILLMENT, b"hi")
            assert len(link.sent) == 1
            # a peer owned nowhere answers T01 at once, not after the expiry
            reject = await asyncio.wait_for(
                registry.RemoteLink("nowhere", other.ownership).send_prepare(prepare_to()), 2
            )
            assert isinstance(reject, Reject) and reject.code == "T01"
        # the owner without a live link answers T01 itself
        owner.registry.unregister("far", link)
        with other.activated():
            reject = await asyncio.wait_for(registry.get("far").send_prepare(prepare_to()), 5)  # type: ignore[union-attr]
        assert isinstance(reject, Reject) and reject.code == "T01"
        assert len(link.sent) == 1
    finally:
        await owner.stop()
        other.close()
        await settle_layer()


def test_embedded_mode_has_no_remote_links() -> None:
    runtime = NodeRuntime(name="embedded", shared=False)
    assert not runtime.ownership.shared
    assert runtime.registry.get("nowhere") is None


@pytest.mark.skipif(not on_redis(), reason="needs Redis (the Postgres+Redis pass)")
def test_redis_layer_is_multiprocess() -> None:
    assert multiprocess_layer()
    assert NodeRuntime(name="r").ownership.shared
