"""Outgoing BTP links (``btp-client`` peers): we dial the peer's ``btp+ws(s)://`` URL.

One :class:`BtpClient` per peer keeps one connection up: connect (``websockets``), send
the ilp-plugin-btp auth frame with the URL's userinfo (kept percent-encoded, as JS
does, btp.md §2), then serve the peer's requests and send ours through the same
:class:`~links.btp_link.BtpLink` core as the server side. WebSocket pings every 20 s
(a missing pong for 20 s drops the connection). On any close or failure it reconnects
after 0, 0.1, 0.5, 1, 2, then 5 s (staying at 5 s); the back-off restarts once a
connection has lasted 10 s. Started and stopped by :mod:`links.supervisor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import websockets
from websockets.exceptions import WebSocketException

from links.btp_link import BtpLink
from links.peers import aload_peer_context, invalidate_peer

log = logging.getLogger(__name__)

BACKOFF_S = (0.0, 0.1, 0.5, 1.0, 2.0, 5.0)
STABLE_AFTER_S = 10.0
PING_INTERVAL_S = 20.0
PING_TIMEOUT_S = 20.0
OPEN_TIMEOUT_S = 10.0
AUTH_TIMEOUT_S = 10.0
MAX_MESSAGE_SIZE = 4 * 1024 * 1024


class InvalidBtpUrl(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class BtpUrl:
    """A parsed ``btp+ws(s)://user:token@host[:port]/path?query``."""

    ws_url: str
    username: str
    token: str

    @classmethod
    def parse(cls, url: str) -> BtpUrl:
        parts = urlsplit(url)
        if parts.scheme not in ("btp+ws", "btp+wss"):
            raise InvalidBtpUrl(f"not a btp+ws(s):// URL: {url!r}")
        userinfo, _, hostport = parts.netloc.rpartition("@")
        if not hostport:
            raise InvalidBtpUrl(f"no host in {url!r}")
        username, _, token = userinfo.partition(":")
        # Credentials stay percent-encoded (what ilp-plugin-btp sends, btp.md §2).
        ws = urlunsplit((parts.scheme[4:], hostport, parts.path, parts.query, ""))
        return cls(ws, username, token)


class BtpClient:
    """Keeps the link to one ``btp-client`` peer up until :meth:`stop`."""

    def __init__(self, peer_name: str, url: str) -> None:
        self.peer_name = peer_name
        self.url = url
        self.target = BtpUrl.parse(url)
        self.link: BtpLink | None = None
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ws: websockets.ClientConnection | None = None
        self._stopping = False

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(
                self.run(), name=f"btp-client:{self.peer_name}"
            )

    async def stop(self) -> None:
        self._stopping = True
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2)
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def run(self) -> None:
        attempt = 0
        while not self._stopping:
            started = time.monotonic()
            try:
                await self._connect_once()
            except asyncio.CancelledError:
                raise
            except (OSError, WebSocketException, TimeoutError) as exc:
                log.info("BTP client %s: %s", self.peer_name, exc)
            except Exception:
                log.exception("BTP client %s: unexpected failure", self.peer_name)
            if self._stopping:
                break
            if time.monotonic() - started >= STABLE_AFTER_S:
                attempt = 0
            delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
            attempt += 1
            await asyncio.sleep(delay)

    async def _connect_once(self) -> None:
        invalidate_peer(self.peer_name)  # always dial with the current configuration
        peer = await aload_peer_context(self.peer_name)
        if peer is None:
            log.info("BTP client %s: peer gone or disabled; stopping", self.peer_name)
            self._stopping = True
            return
        async with websockets.connect(
            self.target.ws_url,
            open_timeout=OPEN_TIMEOUT_S,
            ping_interval=PING_INTERVAL_S,
            ping_timeout=PING_TIMEOUT_S,
            max_size=MAX_MESSAGE_SIZE,
            compression=None,
            user_agent_header=None,
            proxy=None,
        ) as ws:
            self._ws = ws
            link = BtpLink(
                send=ws.send,
                close=lambda code: ws.close(code),
                role="client",
                peer=peer,
                username=self.target.username,
                token=self.target.token,
                label=f"client {self.peer_name}",
            )
            self.link = link
            reader = asyncio.get_running_loop().create_task(self._read(ws, link))
            try:
                if not await link.authenticate(timeout=AUTH_TIMEOUT_S):
                    log.warning("BTP client %s: authentication failed", self.peer_name)
                    await ws.close()
                else:
                    log.info("BTP client %s: connected to %s", self.peer_name, self.target.ws_url)
                    self.connected.set()
                await reader
            finally:
                reader.cancel()
                link.connection_lost()
                self.connected.clear()
                self.link = None
                self._ws = None

    async def _read(self, ws: websockets.ClientConnection, link: BtpLink) -> None:
        with contextlib.suppress(WebSocketException):
            async for message in ws:
                if isinstance(message, bytes):
                    await link.receive(message)
                else:
                    await link.receive_text(message)
