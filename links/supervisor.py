"""Starts and stops the outgoing links of this process.

:class:`Supervisor` keeps one :class:`~links.btp_client.BtpClient` per enabled
``btp-client`` peer and registers an HTTP-OER client link for every enabled HTTP peer
with a URL (:func:`links.http_oer.sync_http_links`), re-reading the peers every
:data:`SYNC_INTERVAL_S` seconds (a peer added, removed, disabled or given a new URL is
picked up without a restart). On start it resumes HTTP-OER-ASYNC callbacks that were
owed before a restart.

Starting under Daphne, which has no ASGI lifespan: :func:`autostart` is called when the
ASGI application is imported (``interledger_site/routing.py``). Daphne creates its
asyncio loop (``daphne.server.twisted_loop``) before it imports the application and
runs it only when the server starts, so ``autostart`` schedules :meth:`Supervisor.start`
on that loop with ``call_soon_threadsafe``: it runs as soon as the server runs, with no
request needed, and never in a process that imports the application without serving
it. It is also gated: by default it starts only under the ``daphne`` command or
``manage.py runserver``; ``ILP_LINKS_AUTOSTART=1`` forces it (e.g. a live-server
test), ``ILP_LINKS_AUTOSTART=0`` disables it. Other processes (``manage.py`` commands,
tests, Celery) never start it unless they call :func:`get_supervisor` ``.start()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys

from channels.db import database_sync_to_async

from links.btp_client import BtpClient, InvalidBtpUrl

log = logging.getLogger(__name__)

SYNC_INTERVAL_S = 10.0
ENV_FLAG = "ILP_LINKS_AUTOSTART"


class Supervisor:
    def __init__(self) -> None:
        self.clients: dict[str, BtpClient] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), SYNC_INTERVAL_S)

    async def sync(self) -> None:
        """Make the running clients match the enabled ``btp-client`` peers."""
        from links.selectors import btp_client_peers

        wanted = {p.name: p.url for p in await database_sync_to_async(btp_client_peers)()}
        for name, client in list(self.clients.items()):
            if wanted.get(name) != client.url or client._task is None or client._task.done():
                del self.clients[name]
                await client.stop()
        for name, url in wanted.items():
            if name in self.clients:
                continue
            try:
                client = BtpClient(name, url)
            except InvalidBtpUrl as exc:
                log.error("peer %s: %s", name, exc)
                continue
            self.clients[name] = client
            client.start()
        from links import http_oer

        await http_oer.sync_http_links()
        await self.refresh_live_links()

    async def refresh_live_links(self) -> None:
        """Give live links their peer's current settings; close those of peers that
        were disabled or removed (possibly by another process, e.g. ``manage.py``)."""
        from links import registry
        from links.btp_link import BtpLink
        from links.peers import aload_peer_context, invalidate_peer

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


_supervisor: Supervisor | None = None


def get_supervisor() -> Supervisor:
    global _supervisor
    if _supervisor is None:
        _supervisor = Supervisor()
    return _supervisor


def _serving_process() -> bool:
    flag = os.environ.get(ENV_FLAG, "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    if flag in ("1", "true", "yes", "on"):
        return True
    argv = sys.argv
    program = os.path.basename(argv[0]) if argv else ""
    if program == "daphne" or (program == "__main__.py" and "daphne.cli" in sys.modules):
        return True
    return program == "manage.py" and len(argv) > 1 and argv[1] == "runserver"


_scheduled = False


def autostart() -> bool:
    """Schedule the supervisor on Daphne's loop if this process is a serving one."""
    global _scheduled
    if _scheduled or not _serving_process():
        return False
    daphne_server = sys.modules.get("daphne.server")
    loop: asyncio.AbstractEventLoop | None = getattr(daphne_server, "twisted_loop", None)
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
    _scheduled = True
    loop.call_soon_threadsafe(lambda: get_supervisor().start())
    return True
