"""``ws/ops/``: the operator dashboard's live feed (staff only).

The route sits behind ``AllowedHostsOriginValidator(AuthMiddlewareStack(...))`` (see
:mod:`dashboard.routing`): a browser socket from one of our hosts carrying a staff
session. Anyone else is refused at the handshake (close code 4403, an HTTP 403).

Once open, the consumer pushes a snapshot (:mod:`dashboard.snapshot`) every
``interval_s`` seconds: this process's live links are read on the event loop (copies, no
I/O); the node's counters and connected peers and the database aggregates in a worker
thread. Health
checks (and whether the user is still active staff) are refreshed every
``health_every_s`` seconds. The client may send ``{"type": "range", "range": "24h"|"30d"}``
to switch the chart, and ``{"type": "refresh"}`` for an immediate snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.auth import get_user_model

from dashboard.health import Check, all_checks
from dashboard.selectors import RANGES, Range
from dashboard.snapshot import build_snapshot, process_state

log = logging.getLogger(__name__)

CLOSE_FORBIDDEN = 4403
INTERVAL_S = 1.5
HEALTH_EVERY_S = 10.0


def is_staff(user: Any) -> bool:
    return bool(
        user is not None
        and getattr(user, "is_authenticated", False)
        and getattr(user, "is_active", False)
        and getattr(user, "is_staff", False)
    )


def _still_staff(user_id: Any) -> bool:
    return get_user_model().objects.filter(pk=user_id, is_active=True, is_staff=True).exists()


def _parse_range(value: Any) -> Range:
    return value if value in RANGES else "24h"


class OpsConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    interval_s = INTERVAL_S
    health_every_s = HEALTH_EVERY_S

    async def connect(self) -> None:
        user = self.scope.get("user")
        if not is_staff(user):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.user_id = user.pk
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        self.range: Range = _parse_range((query.get("range") or ["24h"])[0])
        self.chart_key = ""
        self.checks: list[Check] | None = None
        self.checked_at = 0.0
        self.wake = asyncio.Event()
        await self.accept()
        self.task: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(
            self._run(), name="ops-dashboard-feed"
        )

    async def disconnect(self, code: int) -> None:
        task = getattr(self, "task", None)
        self.task = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict):
            return
        kind = content.get("type")
        if kind == "range":
            new = _parse_range(content.get("range"))
            if new != self.range:
                self.range, self.chart_key = new, ""
            self.wake.set()
        elif kind == "refresh":
            self.wake.set()

    async def _run(self) -> None:
        while True:
            try:
                if time.monotonic() - self.checked_at >= self.health_every_s:
                    if not await database_sync_to_async(_still_staff)(self.user_id):
                        await self.close(code=CLOSE_FORBIDDEN)
                        return
                    self.checks = await all_checks()
                    self.checked_at = time.monotonic()
                    checks: list[Check] | None = self.checks
                else:
                    checks = None
                snapshot = await self.snapshot(checks)
                self.chart_key = snapshot["chart"]["key"]
                await self.send_json(snapshot)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("ops dashboard: snapshot failed")
                with contextlib.suppress(Exception):
                    await self.send_json({"type": "error", "detail": "snapshot failed"})
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.interval_s)

    async def snapshot(self, checks: list[Check] | None) -> dict[str, Any]:
        state = process_state()  # on the loop that owns the switch and the registry
        result: dict[str, Any] = await database_sync_to_async(build_snapshot)(
            state=state, range_=self.range, chart_key=self.chart_key, checks=checks
        )
        return result
