"""Celery tasks of links: housekeeping only (the hot path never queues tasks).

Each task calls one service, has a stable ``name=`` and is safe to run at any time and
in parallel (deletes of rows past their window). Beat runs them when a deployment runs
beat (``CELERY_BEAT_SCHEDULE``); without beat the serving process prunes by itself:
``BtpStoredResponse`` as it stores replies (``links.idempotency``), ``HttpAsyncRequest``
as it receives async requests (:data:`HTTP_ASYNC_PRUNE`, at most every 10 minutes).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from celery import shared_task

from links import idempotency, services

PRUNE_INTERVAL_S = 600.0


@shared_task(name="links.prune_btp_responses")  # type: ignore[untyped-decorator]
def prune_btp_responses() -> int:
    """Delete BTP/2.0-I stored replies past their retention window."""
    return idempotency.prune_stored_responses(datetime.now(UTC))


@shared_task(name="links.prune_http_async_requests")  # type: ignore[untyped-decorator]
def prune_http_async_requests() -> int:
    """Delete HTTP-OER-ASYNC request records past their window (``expires_at``: when its
    callback is given up, a minute after the Prepare's expiry and at most an hour and a
    minute after receipt). A repeat of the request id after that is a new request."""
    return services.http_async_prune(now=datetime.now(UTC))


class PruneSchedule:
    """When this process last pruned: at most once per ``interval`` seconds (the first
    call is due, so rows a previous run left are pruned soon after a start)."""

    def __init__(self, interval: float = PRUNE_INTERVAL_S) -> None:
        self.interval = interval
        self._last: float | None = None
        self._lock = threading.Lock()

    def due(self, now: float) -> bool:
        """Whether a prune is due at monotonic time ``now``; if so, it counts as done."""
        with self._lock:
            if self._last is not None and now - self._last < self.interval:
                return False
            self._last = now
            return True


# The serving process's schedule for HttpAsyncRequest rows (links.http_oer calls it).
HTTP_ASYNC_PRUNE = PruneSchedule()
