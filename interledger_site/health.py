"""``/healthz`` and ``/readyz`` for load balancers and process managers.

- ``/healthz``: the process is alive and its event loop answers. No I/O, so a slow
  database never gets a process restarted.
- ``/readyz``: the process can do its work now: the database answers, and with
  ``REDIS_URL`` set Redis answers a PING and the channel layer a round trip (other
  processes and workers reach this one through it), and the ledger writer thread of this
  process takes work. Otherwise 503 with a JSON ``reason``, so a load balancer takes the
  process out of rotation until it is ready again.

The checks themselves are the operator dashboard's (:mod:`dashboard.health`); this module
adds the Redis PING and the ledger writer's probe, and bounds each check in time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.http import HttpRequest, JsonResponse

from dashboard.health import Check, check_channel_layer, check_database

CHECK_TIMEOUT_S = 3.0


async def healthz(request: HttpRequest) -> JsonResponse:
    if request.method not in ("GET", "HEAD"):
        return JsonResponse({"status": "error", "reason": "use GET"}, status=405)
    return JsonResponse({"status": "ok"})


async def check_redis() -> Check:
    """A PING to ``REDIS_URL`` (the channel layer's, the cache's and Celery's broker)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(  # type: ignore[no-untyped-call]
        settings.REDIS_URL, socket_connect_timeout=CHECK_TIMEOUT_S
    )
    started = time.perf_counter()
    try:
        await asyncio.wait_for(client.ping(), CHECK_TIMEOUT_S)
    except Exception as exc:
        return Check("Redis", "error", "unreachable", (str(exc) or type(exc).__name__)[:200])
    finally:
        await client.aclose()
    ms = (time.perf_counter() - started) * 1000
    return Check("Redis", "ok", "reachable", f"PING in {ms:.1f} ms")


async def check_ledger_writer() -> Check:
    """A no-op through this process's ledger-writer thread: it is alive and not stuck
    behind a batch that does not finish. The book is the process's own (created here if no
    packet created it yet; creating it does no I/O)."""
    from payments.ledger import get_book

    book = get_book()
    if book.closed:
        return Check("Ledger writer", "error", "closed")
    started = time.perf_counter()
    try:
        done: Future[None] = book.executor_submit(_noop)
        await asyncio.wait_for(asyncio.wrap_future(done), CHECK_TIMEOUT_S)
    except RuntimeError as exc:  # the executor was shut down
        return Check("Ledger writer", "error", "stopped", str(exc)[:200])
    except TimeoutError:
        return Check("Ledger writer", "error", f"busy for more than {CHECK_TIMEOUT_S:g} s")
    ms = (time.perf_counter() - started) * 1000
    return Check("Ledger writer", "ok", "running", f"took a job in {ms:.1f} ms")


def _noop() -> None:
    return None


async def _bounded(name: str, check: Callable[[], Awaitable[Check]]) -> Check:
    try:
        return await asyncio.wait_for(check(), CHECK_TIMEOUT_S + 1)
    except TimeoutError:
        return Check(name, "error", "no answer in time")
    except Exception as exc:  # a check must never turn readiness into a 500
        return Check(name, "error", "check failed", (str(exc) or type(exc).__name__)[:200])


async def readiness_checks() -> list[Check]:
    checks: list[tuple[str, Callable[[], Awaitable[Check]]]] = [
        ("Database", database_sync_to_async(check_database)),
    ]
    if getattr(settings, "REDIS_URL", ""):
        checks += [("Redis", check_redis), ("Channel layer", check_channel_layer)]
    checks.append(("Ledger writer", check_ledger_writer))
    return list(await asyncio.gather(*(_bounded(name, fn) for name, fn in checks)))


async def readyz(request: HttpRequest) -> JsonResponse:
    if request.method not in ("GET", "HEAD"):
        return JsonResponse({"status": "error", "reason": "use GET"}, status=405)
    checks = await readiness_checks()
    failed = [c for c in checks if c.level == "error"]
    body: dict[str, Any] = {
        "status": "not ready" if failed else "ready",
        "checks": [c.as_dict() for c in checks],
    }
    if failed:
        body["reason"] = "; ".join(f"{c.name}: {c.summary}" for c in failed)
    return JsonResponse(body, status=503 if failed else 200)
