"""Starts and stops the outgoing links of a runtime.

:class:`Supervisor` keeps one :class:`~links.btp_client.BtpClient` per enabled
``btp-client`` peer *that this process owns* and registers an HTTP-OER client link for
every enabled HTTP peer with a URL (:func:`links.http_oer.sync_http_links`), re-reading
the peers every :data:`SYNC_INTERVAL_S` seconds (a peer added, removed, disabled or given
a new URL is picked up without a restart). On start it resumes HTTP-OER-ASYNC callbacks
that were owed before a restart.

Ownership (:mod:`links.ownership`): with several processes a ``btp-client`` peer is
dialled only after its lease is acquired; a peer whose lease another process holds is
retried every ``ownership.retry_s`` (a third of the lease), so a stopped or dead owner is
replaced within the lease time plus one retry. A lease lost (another process took it)
stops the client at once. In embedded mode every peer is ours.

It is built and started by ``interledger_site.runtime.NodeRuntime`` (never on import).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from channels.db import database_sync_to_async

from links.btp_client import BtpClient, InvalidBtpUrl
from links.ownership import LinkOwnership
from links.registry import LinkRegistry

log = logging.getLogger(__name__)

SYNC_INTERVAL_S = 10.0


class Supervisor:
    def __init__(self, registry: LinkRegistry | None = None) -> None:
        self.clients: dict[str, BtpClient] = {}
        self._registry = registry
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._waiting: set[str] = set()  # wanted peers whose lease another process holds
        if registry is not None:
            registry.ownership.on_lost.append(self._lease_lost)

    @property
    def registry(self) -> LinkRegistry:
        if self._registry is not None:
            return self._registry
        from links import registry

        return registry.current()

    @property
    def ownership(self) -> LinkOwnership:
        return self.registry.ownership

    def _lease_lost(self, peer_name: str) -> None:
        if peer_name in self.clients:
            self.poke()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start on the running loop (idempotent)."""
        if self.running:
            return
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run(), name="links-supervisor")
        log.info("links supervisor started")

    def poke(self) -> None:
        """Re-read the peers now (e.g. after a change in this process)."""
        self._wake.set()

    async def stop(self) -> None:
        task = self._task
        self._task = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        clients, self.clients = self.clients, {}
        await asyncio.gather(*(c.stop() for c in clients.values()), return_exceptions=True)
        self._waiting.clear()

    async def _run(self) -> None:
        try:
            from links import http_oer

            await http_oer.resume_pending_callbacks()
        except Exception:
            log.exception("could not resume HTTP-OER-ASYNC callbacks")
        while True:
            try:
                await self.sync()
            except Exception:
                log.exception("links supervisor: sync failed")
            self._wake.clear()
            interval = SYNC_INTERVAL_S
            if self._waiting:
                interval = min(interval, self.ownership.retry_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)

    async def sync(self) -> None:
        """Make the running clients match the enabled ``btp-client`` peers."""
        from links.selectors import btp_client_peers

        ownership = self.ownership
        wanted = {p.name: p.url for p in await database_sync_to_async(btp_client_peers)()}
        for name, client in list(self.clients.items()):
            lost = not ownership.holds(name)
            if (
                lost
                or wanted.get(name) != client.url
                or client._task is None
                or client._task.done()
            ):
                del self.clients[name]
                await client.stop()
                if name not in wanted:
                    await ownership.release(name)
        self._waiting = set()
        for name, url in wanted.items():
            if name in self.clients:
                continue
            try:
                client = BtpClient(name, url)
            except InvalidBtpUrl as exc:
                log.error("peer %s: %s", name, exc)
                continue
            if not await ownership.acquire(name):
                self._waiting.add(name)  # another process owns it: it dials, we do not
                continue
            self.clients[name] = client
            client.start()
        from links import http_oer

        await http_oer.sync_http_links()
        await self.refresh_live_links()

    async def refresh_live_links(self) -> None:
        """Give live links their peer's current settings; close those of peers that
        were disabled or removed (possibly by another process, e.g. ``manage.py``)."""
        from links.btp_link import BtpLink
        from links.peers import aload_peer_context, invalidate_peer

        registry = self.registry
        for name in registry.live_peers():
            invalidate_peer(name)
            ctx = await aload_peer_context(name)
            for link in list(registry.links_of(name)):
                if not isinstance(link, BtpLink):
                    continue
                if ctx is None:
                    log.info("peer %s is gone or disabled: closing its link", name)
                    await link.close()
                else:
                    link.peer = ctx


def get_supervisor() -> Supervisor:
    """The current runtime's supervisor (``interledger_site.runtime``)."""
    from payments.node import runtime

    supervisor: Supervisor = runtime().supervisor
    return supervisor
