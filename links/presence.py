"""Which peers have a live BTP link anywhere in the node, as every process sees it.

A process knows its own links (:mod:`links.registry`); with several processes the node's
answer is the owners' (:mod:`links.ownership`: one Redis lease per peer, holding the
owner's channel). So each process that holds a live link of a peer writes
``peer -> its owner channel`` into one Redis hash per node,
``ilp:link-up:<database>``, and removes it (only if it is still its own) when the
peer's last link there goes. A peer is **connected** when that entry names the channel
the peer's lease names now: a process killed with a link up leaves its entry behind, but
its lease runs out (``ILP_LINK_LEASE_S``) and the entry no longer matches, and a process
that took the lease over but has not connected yet has written nothing. One ``HGETALL``
and one ``MGET`` answer for every peer (:func:`connected_peers`).

The same change sets the ``ilp_links_connected`` gauge (:mod:`interledger_site.metrics`)
of the process, to 1 only while it both holds a live link and owns the lease, so the sum
over the node's processes is 1 per connected peer; a lease taken by another process
(``LinkOwnership.on_lost``) sets it back to 0.

In embedded mode (no leases, one process) the process's own links are the node's: the
gauge is set at once and :func:`connected_peers` answers ``None`` (ask the registry).
Transports report through :mod:`links.activity` (``note_connected`` /
``note_disconnected``), which calls :func:`changed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from typing import Any, Protocol, cast

from interledger_site import metrics
from links import registry
from links.ownership import KEY_PREFIX, LinkOwnership, RedisLeases

log = logging.getLogger(__name__)

HASH_PREFIX = "ilp:link-up:"

# HDEL only if the entry is still ours (a process the peer moved to may have written it).
_CLEAR = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


class PresenceStore(Protocol):
    """Blocking operations (run off the event loop)."""

    def mark(self, peer: str, owner: str) -> None: ...

    def clear(self, peer: str, owner: str) -> None: ...

    def connected(self) -> set[str]: ...


class RedisPresence:
    """The hash beside the leases, on the leases' Redis client (thread-safe: a pool)."""

    def __init__(self, leases: RedisLeases) -> None:
        self.leases = leases
        self.key = f"{HASH_PREFIX}{leases.namespace}"
        self._clear = leases.client.register_script(_CLEAR)

    def mark(self, peer: str, owner: str) -> None:
        self.leases.client.hset(self.key, peer, owner)

    def clear(self, peer: str, owner: str) -> None:
        self._clear(keys=[self.key], args=[peer, owner])

    def connected(self) -> set[str]:
        client = self.leases.client
        entries = cast(dict[Any, Any], client.hgetall(self.key))
        if not entries:
            return set()
        peers = [_text(p) for p in entries]
        owners = cast(list[Any], client.mget([self.leases.key(p) for p in peers]))
        return {
            peer
            for peer, marked, owner in zip(peers, entries.values(), owners, strict=True)
            if owner is not None and _text(owner) == _text(marked)
        }


class MemoryPresence:
    """The same over any other lease store (``MemoryLeases``: runtimes in one test process
    share it, as processes share Redis)."""

    def __init__(self, leases: Any) -> None:
        self.leases = leases
        self._lock = threading.Lock()
        self._marks: dict[str, str] = {}

    def mark(self, peer: str, owner: str) -> None:
        with self._lock:
            self._marks[peer] = owner

    def clear(self, peer: str, owner: str) -> None:
        with self._lock:
            if self._marks.get(peer) == owner:
                del self._marks[peer]

    def connected(self) -> set[str]:
        with self._lock:
            marks = dict(self._marks)
        return {p for p, owner in marks.items() if self.leases.owner(p) == owner}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# Beside each lease store (one per runtime; runtimes in one test process may share one).
_stores: weakref.WeakKeyDictionary[Any, PresenceStore] = weakref.WeakKeyDictionary()
_stores_lock = threading.Lock()


def store_for(ownership: LinkOwnership) -> PresenceStore | None:
    """The presence store beside ``ownership``'s leases (``None`` in embedded mode)."""
    leases = ownership.leases
    if leases is None:
        return None
    with _stores_lock:
        store = _stores.get(leases)
        if store is None:
            store = _stores[leases] = (
                RedisPresence(leases) if isinstance(leases, RedisLeases) else MemoryPresence(leases)
            )
        return store


# --- the writer side (the process holding the link) -----------------------------------------

_tasks: set[asyncio.Task[None]] = set()
_locks: weakref.WeakKeyDictionary[LinkOwnership, asyncio.Lock] = weakref.WeakKeyDictionary()


def changed(peer: str) -> None:
    """A link of ``peer`` in the current runtime came or went: bring the node's view and
    this process's gauge in line (in the background with leases; at once without)."""
    rt_registry = registry.current()
    ownership = rt_registry.ownership
    if not ownership.shared or ownership.channel is None:
        # Embedded mode, or a runtime that serves no owner channel (it owns nothing the
        # others can see; tests): its own links are all it can report.
        metrics.link_state(peer, rt_registry.local(peer) is not None)
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # a link lives on a loop: nothing to sync from here
    _watch_losses(ownership)
    task = loop.create_task(_sync(peer, rt_registry, ownership))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _sync(peer: str, rt_registry: registry.LinkRegistry, ownership: LinkOwnership) -> None:
    """Write what holds now (each run reads the state when it runs, in order per runtime:
    the last change wins whatever the order of the Redis round trips)."""
    lock = _locks.get(ownership)
    if lock is None:
        lock = _locks[ownership] = asyncio.Lock()
    async with lock:
        # The registry claimed the lease when the link registered (a server link takes it,
        # a client link holds its supervisor's): its outcome is what counts.
        await ownership.claims_settled()
        channel = ownership.channel
        store = store_for(ownership)
        if channel is None or store is None:
            return
        owned = rt_registry.local(peer) is not None and ownership.holds(peer)
        metrics.link_state(peer, owned)
        try:
            if owned:
                await asyncio.to_thread(store.mark, peer, channel)
            else:
                await asyncio.to_thread(store.clear, peer, channel)
        except Exception:
            log.warning("links: cannot record the link state of %s", peer, exc_info=True)


def _watch_losses(ownership: LinkOwnership) -> None:
    if _lease_lost not in ownership.on_lost:
        ownership.on_lost.append(_lease_lost)


def _lease_lost(peer: str) -> None:
    # Another process took the peer's lease: the link it holds is the node's now.
    metrics.link_state(peer, False)


async def drain() -> None:
    """Wait for the pending writes of this loop (tests, shutdown)."""
    loop = asyncio.get_running_loop()
    while mine := [t for t in _tasks if t.get_loop() is loop and not t.done()]:
        with contextlib.suppress(Exception):
            await asyncio.gather(*mine, return_exceptions=True)


# --- the reader side (the dashboard, any process) -------------------------------------------


def connected_peers() -> set[str] | None:
    """The peers with a live BTP link anywhere in the node, or ``None`` in embedded mode
    (the process's own registry is the answer there). Sync (one Redis round trip or two):
    call it off the event loop. Redis unreachable: ``None`` too, and a warning."""
    store = store_for(registry.current().ownership)
    if store is None:
        return None
    try:
        return store.connected()
    except Exception:
        log.warning("links: cannot read the node's connected peers", exc_info=True)
        return None


__all__ = ["HASH_PREFIX", "KEY_PREFIX", "changed", "connected_peers", "drain", "store_for"]
