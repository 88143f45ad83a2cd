"""What the node's processes must agree on, kept in Redis when ``REDIS_URL`` is set.

Embedded mode (no ``REDIS_URL``: one process) needs none of it: every function here is a
no-op there and the in-process state is the whole truth, as before.

**Peer and token caches** (:mod:`links.peers`, the token caches of :mod:`links.services`).
A change to a peer (token, enabled, limits, removal) increments the Redis counter
``ilp:<node>:peers:version`` after its transaction commits (:func:`announce_peer_change`).
Every serving process runs a watcher (:class:`PeerCacheWatch`) that reads the counter every
:data:`POLL_S` seconds and drops its caches when the value differs. Cached answers are used
only while the watcher's last successful read started less than :data:`FRESH_S` ago
(:func:`peer_cache_fresh`); otherwise (watcher not running, Redis unreachable) every lookup
goes to the database. Hence the bound: a peer change committed at ``t`` is honoured by every
process from ``t + FRESH_S`` (0.8 s) on, whatever happens to Redis.

**CCP routes** (:class:`SharedRoutes`, one per :class:`~links.ccp.CcpService`). The process
holding the CCP session with a peer (the one its link and its route updates reach) writes the
routes it learned from that peer as one Redis hash, ``ilp:<node>:ccp:routes:<peer>``: field
``writer`` (that process's id), ``relation``, and ``r:<prefix>`` → JSON ``[path, auth hex,
epoch]``. The hash expires after the peer's hold-down time (plus :data:`TTL_SLACK_MS`); the
writer renews it on every heartbeat, rewrites it on every change, and deletes it (only if
it is still the writer) when the session ends or the routes lapse. Each write or delete
increments ``ilp:<node>:ccp:version``. Every process polls that counter every
:data:`POLL_S` seconds and, when it moved (or a cached hash's expiry passed, or every
:data:`RESYNC_S` seconds in any case), reloads the hashes other processes wrote into its own
:class:`~links.routing.RoutingTable` (:meth:`~links.routing.RoutingTable.replace_learned`):
the in-memory table stays the hot path's only source, a cache of the shared one rebuilt on
start and on change. A writer that dies (kill -9) leaves its hash to expire with the
hold-down time, as its peer's silence would. Writes are coalesced per peer (the hash is
rewritten from the current table, so ordering cannot go wrong).

For HTTP-OER peers, whose route updates may reach any process behind the load balancer,
the last writer wins; every process converges on its snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

from django.conf import settings

from links.routing import RouteEntry, RouteOrigin

if TYPE_CHECKING:
    import redis as redis_sync
    import redis.asyncio as aioredis

    from links.ccp import CcpService

log = logging.getLogger(__name__)

POLL_S = 0.2
FRESH_S = 0.8
RESYNC_S = 10.0
TTL_SLACK_MS = 5_000
MIN_TTL_MS = 5_000
MAX_TTL_MS = 3_600_000
_FIELD_PREFIX = "r:"

# Deletes the routes hash only if this process still is its writer.
_DELETE_IF_WRITER = """
if redis.call('HGET', KEYS[1], 'writer') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('INCR', KEYS[2])
  return 1
end
return 0
"""


def enabled() -> bool:
    """Whether processes share state (Redis configured)."""
    return bool(getattr(settings, "REDIS_URL", ""))


def _ns() -> str:
    return f"ilp:{settings.ILP_ADDRESS}"


def peers_version_key() -> str:
    return f"{_ns()}:peers:version"


def routes_version_key() -> str:
    return f"{_ns()}:ccp:version"


def routes_key_prefix() -> str:
    return f"{_ns()}:ccp:routes:"


def process_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


def _async_client() -> aioredis.Redis:
    import redis.asyncio as aioredis

    client: aioredis.Redis = aioredis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2
    )
    return client


def _reraise_cancel() -> None:
    """Raise ``CancelledError`` if the current task is being cancelled: redis-py may
    swallow a cancellation that arrives in the middle of a command (or turn it into a
    connection error), and a loop that goes on would then outlive its cancellation."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


# --- peer and token caches ---------------------------------------------------------------------

_sync_client: redis_sync.Redis | None = None


def announce_peer_change() -> None:
    """Tell every process to drop its peer and token caches (call after commit; sync).

    A failure is logged: the other processes stop trusting their caches by themselves when
    they cannot read the counter either, and otherwise the change is lost only for their
    caches' TTL (``links.peers.CONTEXT_TTL_S``)."""
    global _sync_client
    if not enabled():
        return
    try:
        if _sync_client is None:
            import redis as redis_sync

            _sync_client = redis_sync.Redis.from_url(
                settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2
            )
        _sync_client.incr(peers_version_key())
    except Exception:
        log.warning("shared: cannot announce a peer change", exc_info=True)


class PeerCacheWatch:
    """Polls the peers version counter; see the module doc for the bound it gives."""

    def __init__(self) -> None:
        self.fresh_until = 0.0
        self.version: bytes | None = None
        self.started = False
        self.task: asyncio.Task[None] | None = None
        self.changes = 0
        self._changed = asyncio.Event()

    def fresh(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) < self.fresh_until

    async def poll_once(self, client: aioredis.Redis) -> None:
        from links.peers import invalidate_local

        t0 = time.monotonic()
        version = await client.get(peers_version_key())
        if not self.started or version != self.version:
            # First read: whatever was cached before the watcher ran is not vouched for.
            invalidate_local(None)
            if self.started:
                self.changes += 1
                self._changed.set()
            self.version = version
            self.started = True
        self.fresh_until = t0 + FRESH_S

    async def wait_change(self) -> None:
        """Until the watcher next sees a change (tests)."""
        self._changed.clear()
        await self._changed.wait()

    async def run(self) -> None:
        client = _async_client()
        try:
            while True:
                try:
                    await self.poll_once(client)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    _reraise_cancel()
                    log.warning("shared: cannot read the peers version", exc_info=True)
                _reraise_cancel()  # a cancel some library call swallowed
                await asyncio.sleep(POLL_S)
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()


_peer_watch: PeerCacheWatch | None = None


def peer_cache_fresh() -> bool:
    """Whether cached peer contexts and token checks may be used now (no I/O)."""
    if not enabled():
        return True
    watch = _peer_watch
    return watch is not None and watch.fresh()


def peer_watch() -> PeerCacheWatch | None:
    return _peer_watch


# --- CCP routes --------------------------------------------------------------------------------


def _encode(relation: str, writer: str, routes: dict[str, RouteEntry]) -> dict[str, str]:
    fields = {"writer": writer, "relation": relation}
    for prefix, route in routes.items():
        fields[_FIELD_PREFIX + prefix] = json.dumps(
            [list(route.path), route.auth.hex(), route.epoch]
        )
    return fields


def _decode(peer: str, raw: dict[bytes, bytes]) -> tuple[str, list[RouteEntry]]:
    writer = raw.get(b"writer", b"").decode()
    relation = raw.get(b"relation", b"peer").decode()
    routes: list[RouteEntry] = []
    for name, value in raw.items():
        field = name.decode()
        if not field.startswith(_FIELD_PREFIX):
            continue
        try:
            path, auth, epoch = json.loads(value)
            routes.append(
                RouteEntry(
                    field[len(_FIELD_PREFIX) :],
                    peer,
                    RouteOrigin.CCP,
                    relation,
                    path=tuple(str(p) for p in path),
                    auth=bytes.fromhex(auth),
                    epoch=int(epoch),
                )
            )
        except (ValueError, TypeError):
            log.warning("shared: unreadable route %r from %s", field, peer)
    return writer, routes


def _ttl_ms(hold_down_ms: int) -> int:
    return min(max(hold_down_ms, MIN_TTL_MS), MAX_TTL_MS) + TTL_SLACK_MS


class SharedRoutes:
    """Publishes one :class:`~links.ccp.CcpService`'s learned routes and adopts the others'.

    Runs as one task on the event loop (:meth:`run`); :meth:`changed` and :meth:`touched`
    (the :class:`~links.ccp.RouteSharer` calls) only mark work for it.
    """

    def __init__(self, ccp: CcpService, client: aioredis.Redis, writer: str | None = None) -> None:
        self.ccp = ccp
        self.client = client
        self.writer = writer or process_id()
        self._dirty: dict[str, int] = {}  # peer -> hold-down ms
        self._touch: dict[str, int] = {}
        self._mine: dict[str, int] = {}  # peers whose hash we wrote -> last hold-down ms
        self._remote: dict[str, float] = {}  # peers adopted from others -> monotonic expiry
        self._version: bytes | None = None
        self._resync_at = 0.0
        self._kick = asyncio.Event()
        self._synced = asyncio.Event()
        self._readopt = False
        self.reloads = 0
        self.task: asyncio.Task[None] | None = None

    # --- RouteSharer ---------------------------------------------------------------------

    def changed(self, peer: str, hold_down_ms: int) -> None:
        self._dirty[peer] = hold_down_ms or self._mine.get(peer, 0)
        self._touch.pop(peer, None)
        self._kick.set()

    def touched(self, peer: str, hold_down_ms: int) -> None:
        if peer not in self._dirty:
            self._touch[peer] = hold_down_ms
            self._kick.set()

    # --- the task --------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.step(loop.time())
            except asyncio.CancelledError:
                raise
            except Exception:
                _reraise_cancel()
                log.warning("shared: route sync failed; retrying", exc_info=True)
            _reraise_cancel()  # a cancel some library call swallowed
            self._kick.clear()
            # A timer rather than asyncio.timeout: on 3.11 a cancel arriving as the
            # timeout fires can be swallowed, and this loop would never end.
            timer = loop.call_later(POLL_S, self._kick.set)
            try:
                await self._kick.wait()
            finally:
                timer.cancel()

    async def step(self, now: float) -> None:
        """Write what changed here, then adopt what changed elsewhere."""
        await self.flush()
        version = await self.client.get(routes_version_key())
        mono = time.monotonic()
        lapsed = any(expiry <= mono for expiry in self._remote.values())
        if version != self._version or lapsed or now >= self._resync_at or self._readopt:
            self._readopt = False
            await self.reload()
            self._version = version
            self._resync_at = now + RESYNC_S
        self._synced.set()

    def _session_here(self, peer: str) -> bool:
        """Whether this process holds a CCP session with ``peer`` (it applied an update)."""
        from links.ccp import NO_TABLE

        receiver = self.ccp.receivers.get(peer)
        return receiver is not None and receiver.routing_table_id != NO_TABLE

    async def flush(self) -> None:
        dirty, self._dirty = self._dirty, {}
        touch, self._touch = self._touch, {}
        version_key = routes_version_key()
        for peer, hold_down in dirty.items():
            key = routes_key_prefix() + peer
            if self._session_here(peer):
                self._remote.pop(peer, None)
                await self._write(peer, key, self.ccp.routing.learned_from(peer), hold_down)
                continue
            if peer in self._mine:
                del self._mine[peer]
                await self.client.eval(  # type: ignore[misc]  # redis-py's union return
                    _DELETE_IF_WRITER, 2, key, version_key, self.writer
                )
            # The session ended here: what another process publishes applies here again.
            self._readopt = True
        for peer, hold_down in touch.items():
            if peer not in self._mine:
                continue
            key = routes_key_prefix() + peer
            self._mine[peer] = hold_down
            renewed = await self.client.pexpire(key, _ttl_ms(hold_down))
            if not renewed:  # gone (Redis restarted, or expired): write it again
                await self._write(peer, key, self.ccp.routing.learned_from(peer), hold_down)

    async def _write(self, peer: str, key: str, routes: dict[str, RouteEntry], hold: int) -> None:
        receiver = self.ccp.receivers.get(peer)
        relation = receiver.peer.relation if receiver is not None else "peer"
        hold = hold or self._mine.get(peer, 0)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=_encode(relation, self.writer, routes))
            pipe.pexpire(key, _ttl_ms(hold))
            pipe.incr(routes_version_key())
            await pipe.execute()
        self._mine[peer] = hold

    async def reload(self) -> None:
        """Adopt every hash other processes wrote; forget those that went away."""
        prefix = routes_key_prefix()
        keys = [k async for k in self.client.scan_iter(match=prefix + "*", count=500)]
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
                pipe.pttl(key)
            results: list[Any] = await pipe.execute() if keys else []
        mono = time.monotonic()
        seen: dict[str, tuple[float, list[RouteEntry]]] = {}
        for i, key in enumerate(keys):
            raw, pttl = results[2 * i], results[2 * i + 1]
            if not raw:
                continue
            peer = (key.decode() if isinstance(key, bytes) else key)[len(prefix) :]
            writer, routes = _decode(peer, raw)
            if writer == self.writer or peer in self._dirty or self._session_here(peer):
                continue  # ours: the local table is the truth
            if peer in self._mine:
                # Another process took the peer's CCP session over: its routes now count.
                del self._mine[peer]
            expiry = mono + (pttl / 1000 if pttl and pttl > 0 else RESYNC_S)
            seen[peer] = (expiry, routes)
        for peer in list(self._remote):
            if peer not in seen:
                del self._remote[peer]
                if peer not in self._mine and not self._session_here(peer):
                    self.ccp.routing.drop_learned(peer)
        for peer, (expiry, routes) in seen.items():
            self._remote[peer] = expiry
            self.ccp.routing.replace_learned(peer, routes)
        self.reloads += 1

    async def wait_synced(self) -> None:
        """Until the next completed step (tests)."""
        self._synced.clear()
        self._kick.set()
        await self._synced.wait()


# --- start and stop ----------------------------------------------------------------------------

_tasks: list[asyncio.Task[None]] = []
_routes: SharedRoutes | None = None
_loop: asyncio.AbstractEventLoop | None = None


def attach_routes(ccp: CcpService, *, writer: str | None = None) -> SharedRoutes:
    """A :class:`SharedRoutes` for ``ccp`` (its sharer from now on); run it yourself."""
    shared = SharedRoutes(ccp, _async_client(), writer)
    ccp.sharer = shared
    return shared


async def start(ccp: CcpService | None) -> None:
    """Start sharing on the running loop (idempotent; nothing without Redis).

    ``ccp`` is the process's CCP service (its switch's); a new switch's service replaces
    the previous one. Called by the process's start-up (``interledger_site.runtime``) and
    by the switch's own lazy start.
    """
    global _peer_watch, _routes, _loop
    if not enabled():
        return
    loop = asyncio.get_running_loop()
    if _loop is not loop:
        # Tasks of another (finished) loop, e.g. a Celery task's: they no longer run.
        _tasks.clear()
        _peer_watch = None
        _routes = None
        _loop = loop
    if _peer_watch is None or _peer_watch.task is None or _peer_watch.task.done():
        _peer_watch = PeerCacheWatch()
        _peer_watch.task = loop.create_task(_peer_watch.run(), name="shared-peer-cache")
        _tasks.append(_peer_watch.task)
    if ccp is None or (
        _routes is not None
        and _routes.ccp is ccp
        and _routes.task is not None
        and not _routes.task.done()
    ):
        return
    if _routes is not None:
        await _stop_routes(_routes)
    _routes = attach_routes(ccp)
    _routes.task = loop.create_task(_routes.run(), name="shared-routes")
    _tasks.append(_routes.task)


async def _stop_routes(routes: SharedRoutes) -> None:
    if routes.task is not None:
        routes.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await routes.task
    if routes.ccp.sharer is routes:
        routes.ccp.sharer = None
    with contextlib.suppress(Exception):
        await routes.client.aclose()


async def stop() -> None:
    """Stop the tasks :func:`start` started (and forget their state)."""
    global _peer_watch, _routes, _loop
    tasks = list(_tasks) if _loop is asyncio.get_running_loop() else []
    _tasks.clear()
    _loop = None
    routes, _routes = _routes, None
    _peer_watch = None
    if routes is not None and routes.task in tasks:
        tasks.remove(routes.task)
        await _stop_routes(routes)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def shared_routes() -> SharedRoutes | None:
    return _routes
