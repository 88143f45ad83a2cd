"""Live updates of monetized pages: ``ws/pages/<slug>/<visitor id>``.

The socket belongs to the session that holds the visitor id (checked against the Django
session, so the route is wrapped in ``SessionMiddlewareStack``; browsers only, so also
``AllowedHostsOriginValidator``: see :mod:`receivers.routing`). It joins the channel-layer
group of the visitor's tag (:func:`receivers.live.tag_group`); on each ``tag.received``
event, and every ``POLL_S`` seconds as a safety net (an event can be lost, or the payment
arrive in a process with another in-memory layer), it re-reads the visitor's total from the
receipts and sends::

    {"type": "status", "received": "<int>", "threshold": "<int>", "unlocked": bool,
     "paid_html": "<the paid part>"}   # paid_html only once unlocked

Close codes: 4403 the session does not hold this visitor id; 4404 no such page.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from receivers.live import tag_group
from receivers.models import MonetizedPage
from receivers.pages import page_get, page_status, paid_html, parse_visitor, session_visitor

POLL_S = 5.0


def _session_visitor(session: Any, slug: str) -> bytes | None:
    return None if session is None else session_visitor(session, slug)


def _published_page(slug: str) -> MonetizedPage | None:
    page = page_get(slug=slug)
    return page if page is not None and page.published else None


def _status_message(page: MonetizedPage, visitor: bytes) -> dict[str, Any]:
    status = page_status(page=page, visitor=visitor)
    message: dict[str, Any] = {"type": "status", **status.as_dict()}
    if status.unlocked:
        message["paid_html"] = paid_html(page)
    return message


class PageConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """One visitor's view of one page (see the module docstring)."""

    poll_s = POLL_S

    async def connect(self) -> None:
        kwargs = self.scope["url_route"]["kwargs"]
        self.slug: str = kwargs["slug"]
        visitor = parse_visitor(kwargs["visitor"])
        held = await database_sync_to_async(_session_visitor)(self.scope.get("session"), self.slug)
        if visitor is None or held != visitor:
            await self.close(code=4403)
            return
        page = await database_sync_to_async(_published_page)(self.slug)
        if page is None:
            await self.close(code=4404)
            return
        self.page = page
        self.visitor = visitor
        self.group = tag_group(visitor)
        self.unlocked = False
        self._poller: asyncio.Task[None] | None = None
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self._push()
        if not self.unlocked:
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def disconnect(self, code: int) -> None:
        poller = getattr(self, "_poller", None)
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        group = getattr(self, "group", None)
        if group is not None:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """The page may ask again (``{"type": "refresh"}``); anything else is ignored."""
        if isinstance(content, dict) and content.get("type") == "refresh":
            await self._push()

    async def tag_received(self, event: dict[str, Any]) -> None:
        """Channel-layer event ``tag.received``: something arrived for the visitor."""
        if not self.unlocked:
            await self._push()

    async def _push(self) -> None:
        message: dict[str, Any] = await database_sync_to_async(_status_message)(
            self.page, self.visitor
        )
        self.unlocked = bool(message["unlocked"])
        await self.send_json(message)
        if self.unlocked and self._poller is not None:
            self._poller.cancel()

    async def _poll(self) -> None:
        while not self.unlocked:
            await asyncio.sleep(self.poll_s)
            await self._push()
