"""The node's identity and health, as the operator dashboard shows them.

Each check returns a :class:`Check` and never raises. The database check is sync (run it
off the event loop); the channel-layer check is async (a round trip through the layer);
the rest read process state (supervisor, switch, book) and settings only.
"""

from __future__ import annotations

import asyncio
import platform
import time
from dataclasses import asdict, dataclass
from functools import cache
from importlib import metadata
from typing import Any, Literal
from urllib.parse import urlsplit

import django
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection

Level = Literal["ok", "warn", "error", "info"]
LAYER_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    level: Level
    summary: str
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Identity:
    address: str
    asset_code: str
    asset_scale: int
    version: str
    python: str
    django: str
    public_url: str


@cache
def _version() -> str:
    try:
        return metadata.version("interledger-site")
    except metadata.PackageNotFoundError:
        return "dev"


def node_identity() -> Identity:
    return Identity(
        address=settings.ILP_ADDRESS,
        asset_code=settings.ILP_ASSET_CODE,
        asset_scale=settings.ILP_ASSET_SCALE,
        version=_version(),
        python=platform.python_version(),
        django=django.get_version(),
        public_url=getattr(settings, "ILP_PUBLIC_URL", "") or "",
    )


def check_database() -> Check:
    """``SELECT 1`` on the default database, timed (sync)."""
    vendor = connection.vendor
    started = time.perf_counter()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return Check("Database", "error", f"{vendor}: unreachable", str(exc)[:200])
    ms = (time.perf_counter() - started) * 1000
    return Check("Database", "ok", f"{vendor} reachable", f"SELECT 1 in {ms:.1f} ms")


def _layer_backend() -> str:
    layers = getattr(settings, "CHANNEL_LAYERS", {}) or {}
    return str(layers.get("default", {}).get("BACKEND", ""))


async def check_channel_layer() -> Check:
    """A message sent to a fresh channel of the layer and read back (async)."""
    backend = _layer_backend().rsplit(".", 1)[-1] or "none"
    layer = get_channel_layer()
    if layer is None:
        return Check("Channel layer", "error", "not configured")
    note = " (single process)" if "InMemory" in backend else ""
    started = time.perf_counter()
    try:
        # The default prefix: with channels_redis, a process-specific channel of another
        # prefix would wait behind the receive lock of the consumers' own channels.
        channel = await layer.new_channel()
        await asyncio.wait_for(layer.send(channel, {"type": "health.ping"}), LAYER_TIMEOUT_S)
        message = await asyncio.wait_for(layer.receive(channel), LAYER_TIMEOUT_S)
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        return Check("Channel layer", "error", f"{backend}: no round trip", reason[:200])
    if message.get("type") != "health.ping":
        return Check("Channel layer", "error", f"{backend}: wrong message back")
    ms = (time.perf_counter() - started) * 1000
    return Check("Channel layer", "ok", f"{backend}{note}", f"round trip in {ms:.1f} ms")


def check_celery() -> Check:
    """How background tasks run: eagerly in this process, or by workers via a broker."""
    if getattr(settings, "CELERY_TASK_ALWAYS_EAGER", False):
        return Check("Celery", "info", "eager (tasks run in the web process)")
    broker = urlsplit(str(getattr(settings, "CELERY_BROKER_URL", "")))
    where = f"{broker.scheme}://{broker.hostname or ''}" + (
        f":{broker.port}" if broker.port else ""
    )
    return Check("Celery", "ok", "workers via broker", where)  # credentials never shown


def check_supervisor() -> Check:
    """The links supervisor of this process (BTP client links, HTTP-OER links)."""
    from links import registry
    from links import supervisor as links_supervisor

    live = registry.live_peers()
    sup = links_supervisor.get_supervisor()  # the runtime's (started or not)
    if not sup.running:
        detail = f"{len(live)} live link(s) in this process"
        return Check("Link supervisor", "warn", "not running in this process", detail)
    return Check(
        "Link supervisor",
        "ok",
        "running",
        f"{len(sup.clients)} BTP client(s); {len(live)} live link(s) in this process",
    )


def check_switch() -> Check:
    from links.switch import peek_switch
    from payments.ledger import peek_book

    switch = peek_switch()
    book = peek_book()
    if switch is None:
        return Check("Packet switch", "info", "idle in this process", "built by the first packet")
    routes = len(switch.routing)
    detail = f"{routes} route(s)"
    if book is not None:
        detail += (
            f"; ledger writer: {book.stats.batches} batch(es), {book.stats.failed_batches} failed"
        )
        if book.stats.failed_batches:
            return Check("Packet switch", "warn", "running", detail)
    return Check("Packet switch", "ok", "running", detail)


def sync_checks() -> list[Check]:
    """Every check but the channel layer's (sync: run it off the event loop)."""
    return [check_database(), check_celery(), check_supervisor(), check_switch()]


async def all_checks() -> list[Check]:
    from channels.db import database_sync_to_async

    database = await database_sync_to_async(check_database)()
    return [
        database,
        await check_channel_layer(),
        check_celery(),
        check_supervisor(),
        check_switch(),
    ]


def checks_as_dicts(checks: list[Check]) -> list[dict[str, Any]]:
    return [c.as_dict() for c in checks]
