"""Live status of peers (``Peer.connected_since`` / ``last_packet_at``), off the hot path.

Transports call :func:`note_packet` per packet (a dict store, no I/O) and
:func:`note_connected` / :func:`note_disconnected` per connection. The changes are
written by one delayed flush per process at most every :data:`FLUSH_INTERVAL_S`
seconds, through ``database_sync_to_async`` (one thread hop per flush, not per packet).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from channels.db import database_sync_to_async

from links import presence, services

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 5.0

_last_packet: dict[str, datetime] = {}
# peer -> connected since (datetime) or None (disconnected); applied before packets.
_connection: dict[str, datetime | None] = {}
_scheduled: asyncio.TimerHandle | None = None
_scheduled_loop: asyncio.AbstractEventLoop | None = None
_flushing: set[asyncio.Task[None]] = set()


def note_packet(peer_name: str) -> None:
    _last_packet[peer_name] = datetime.now(UTC)
    _schedule()


def note_connected(peer_name: str) -> None:
    _connection[peer_name] = datetime.now(UTC)
    presence.changed(peer_name)
    _schedule()


def note_disconnected(peer_name: str) -> None:
    _connection[peer_name] = None
    presence.changed(peer_name)
    _schedule()


def _schedule() -> None:
    global _scheduled, _scheduled_loop
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    if _scheduled is not None and _scheduled_loop is loop and not loop.is_closed():
        return
    _scheduled_loop = loop
    _scheduled = loop.call_later(FLUSH_INTERVAL_S, _start_flush)


def _start_flush() -> None:
    global _scheduled
    _scheduled = None
    task = asyncio.get_running_loop().create_task(flush())
    _flushing.add(task)
    task.add_done_callback(_flushing.discard)


def _take() -> tuple[dict[str, datetime | None], dict[str, datetime]]:
    connection = dict(_connection)
    packets = dict(_last_packet)
    _connection.clear()
    _last_packet.clear()
    return connection, packets


def _write(connection: dict[str, datetime | None], packets: dict[str, datetime]) -> None:
    for name, since in connection.items():
        if since is None:
            services.peer_mark_disconnected(name=name)
        else:
            services.peer_mark_connected(name=name, when=since)
    if packets:
        services.peer_record_activity(last_packet_at=packets)


async def flush() -> None:
    """Write pending status changes now (also used by tests and at shutdown)."""
    connection, packets = _take()
    if not connection and not packets:
        return
    try:
        await database_sync_to_async(_write)(connection, packets)
    except Exception:
        log.warning("could not record peer activity", exc_info=True)


def cancel() -> None:
    """Drop the scheduled flush (tests; the data stays queued)."""
    global _scheduled
    if _scheduled is not None:
        with contextlib.suppress(Exception):
            _scheduled.cancel()
    _scheduled = None
