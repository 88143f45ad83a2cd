"""Celery tasks of links: housekeeping only (the hot path never queues tasks).

Each task calls one service, has a stable ``name=`` and is safe to run at any time and
in parallel (deletes of rows past their window). Schedule them with Celery beat, e.g.
every 10 minutes; the serving process also prunes ``BtpStoredResponse`` itself.
"""

from __future__ import annotations

from datetime import UTC, datetime

from celery import shared_task

from links import idempotency, services


@shared_task(name="links.prune_btp_responses")  # type: ignore[untyped-decorator]
def prune_btp_responses() -> int:
    """Delete BTP/2.0-I stored replies past their retention window."""
    return idempotency.prune_stored_responses(datetime.now(UTC))


@shared_task(name="links.prune_http_async_requests")  # type: ignore[untyped-decorator]
def prune_http_async_requests() -> int:
    """Delete HTTP-OER-ASYNC request records past their window."""
    return services.http_async_prune(now=datetime.now(UTC))
