"""One owner per link: which process holds a peer's BTP link, and how others reach it.

With several processes (Daphnes and Celery workers on the Redis channel layer) a peer's
BTP link must live in exactly one of them, or the node dials a ``btp-client`` parent once
per process (ilp-plugin-btp keeps one socket per account: the others are orphaned) and a
Prepare sent "to the link" goes out once per process holding one.

**The lease (a Redis key per peer, renewed).** ``ilp:link-owner:<database>:<peer>`` (the
node's database name keeps two nodes on one Redis apart) holds the owner's
*channel name* (:attr:`LinkOwnership.channel`, a process-specific channel of the channel
layer) with a time to live of ``ILP_LINK_LEASE_S`` (15 s), renewed every third of it by a
compare-and-extend script. Why Redis and not a Postgres advisory lock: the owner's address
must be readable by every process, and in the lease's own value it is atomic with the
ownership (an advisory lock carries no data: the channel would sit in a second place that
can disagree with the lock); a session-level advisory lock also needs a dedicated
connection per process outside Django's connection handling and does not survive a
transaction-pooling proxy (pgbouncer). The price: after a crash (kill -9) the lease is
taken over only when it runs out (≤ ``ILP_LINK_LEASE_S`` plus one supervisor retry); a
clean stop releases at once.

* A ``btp-client`` peer is dialled only by the process whose supervisor acquired its lease
  (``SET NX``, or already ours). Others retry every :attr:`LinkOwnership.retry_s`, so when
  the owner stops (or dies and its lease expires) another process takes over.
* A ``btp-server`` peer that authenticates to a process makes that process the owner
  (the lease is *taken*, whoever held it: the peer chose where it connects). The old owner
  notices on its next renewal, and forgets that it restored the peer's BTP/2.0-I replay
  memory, so if the peer comes back to it the memory is rebuilt from the persisted rows
  (``links.idempotency``). With Redis the replay memory is the node's (a repeat sent to
  the new owner is replayed, never processed twice) and the requests still pending in the
  old owner's outbox are handed over: the new owner sends them with the same ids and
  bytes and returns each reply to the old owner's channel (``links.btp_link``).
* Another process (or a Celery worker) sends through :class:`RemoteLink`: it reads the
  owner's channel from the lease and ``send``\\ s the Prepare to that one channel, never a
  group broadcast, so exactly one process puts it on the wire. The owner answers T01
  itself when it holds no live link at that moment.

In embedded mode (in-memory channel layer, one process) there are no leases: every call
is local and :func:`links.registry.get` returns the process's own link or ``None``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from channels.layers import get_channel_layer
from django.conf import settings

from ilp.errors import DecodeError
from ilp.packet import Prepare, Reject, Reply, decode_prepare, decode_reply, encode_packet

log = logging.getLogger(__name__)

DEFAULT_LEASE_S = 15.0
KEY_PREFIX = "ilp:link-owner:"


def lease_seconds() -> float:
    return float(getattr(settings, "ILP_LINK_LEASE_S", DEFAULT_LEASE_S))


def multiprocess_layer() -> bool:
    """Whether the channel layer spans processes (anything but the in-memory one)."""
    layers = getattr(settings, "CHANNEL_LAYERS", {})
    backend = str(layers.get("default", {}).get("BACKEND", ""))
    return bool(backend) and "InMemory" not in backend


def node_namespace() -> str:
    """What tells this node's leases from another node's on the same Redis: its database
    (one node, one database; test workers each have their own)."""
    from django.db import connection

    return str(connection.settings_dict.get("NAME", ""))


class Leases(Protocol):
    """Blocking lease operations (run off the event loop)."""

    def acquire(self, peer: str, owner: str, ttl_ms: int, take: bool) -> bool: ...

    def renew(self, peer: str, owner: str, ttl_ms: int) -> bool: ...

    def release(self, peer: str, owner: str) -> None: ...

    def owner(self, peer: str) -> str | None: ...


# Atomic on the Redis server: no other client's command runs in between.
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[1] or ARGV[3] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLeases:
    """Leases as Redis keys (see the module docstring). Thread-safe (a connection pool)."""

    def __init__(self, url: str, namespace: str | None = None) -> None:
        import redis

        self.namespace = node_namespace() if namespace is None else namespace
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._acquire = self.client.register_script(_ACQUIRE)
        self._renew = self.client.register_script(_RENEW)
        self._release = self.client.register_script(_RELEASE)

    def key(self, peer: str) -> str:
        return f"{KEY_PREFIX}{self.namespace}:{peer}"

    def acquire(self, peer: str, owner: str, ttl_ms: int, take: bool) -> bool:
        return bool(
            self._acquire(keys=[self.key(peer)], args=[owner, ttl_ms, "1" if take else "0"])
        )

    def renew(self, peer: str, owner: str, ttl_ms: int) -> bool:
        return bool(self._renew(keys=[self.key(peer)], args=[owner, ttl_ms]))

    def release(self, peer: str, owner: str) -> None:
        self._release(keys=[self.key(peer)], args=[owner])

    def owner(self, peer: str) -> str | None:
        value = self.client.get(self.key(peer))
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


class MemoryLeases:
    """The same contract in one process's memory (tests of the ownership logic)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, tuple[str, float]] = {}

    def _current(self, peer: str) -> str | None:
        entry = self._held.get(peer)
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]

    def acquire(self, peer: str, owner: str, ttl_ms: int, take: bool) -> bool:
        with self._lock:
            cur = self._current(peer)
            if cur is None or cur == owner or take:
                self._held[peer] = (owner, time.monotonic() + ttl_ms / 1000)
                return True
            return False

    def renew(self, peer: str, owner: str, ttl_ms: int) -> bool:
        with self._lock:
            if self._current(peer) != owner:
                return False
            self._held[peer] = (owner, time.monotonic() + ttl_ms / 1000)
            return True

    def release(self, peer: str, owner: str) -> None:
        with self._lock:
            if self._current(peer) == owner:
                del self._held[peer]

    def owner(self, peer: str) -> str | None:
        with self._lock:
            return self._current(peer)


LocalLookup = Callable[[str], Any]  # peer name -> this runtime's live link or None


class LinkOwnership:
    """The leases of one runtime, its owner channel and the server of remote sends.

    ``leases=None`` is embedded mode: every peer is ours, nothing leaves the process.
    ``local`` finds this runtime's live link of a peer (``LinkRegistry.local``).
    """

    def __init__(self, leases: Leases | None, local: LocalLookup, *, lease_s: float) -> None:
        self.leases = leases
        self.local = local
        self.lease_s = lease_s
        self.channel: str | None = None
        self.held: set[str] = set()
        self.on_lost: list[Callable[[str], None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._pending: set[asyncio.Task[Any]] = set()

    @property
    def shared(self) -> bool:
        """Whether leases are in force (several processes)."""
        return self.leases is not None

    @property
    def serving(self) -> bool:
        """Whether this runtime can own links (it listens on its owner channel)."""
        return not self.shared or self.channel is not None

    @property
    def retry_s(self) -> float:
        return self.lease_s / 3

    @property
    def ttl_ms(self) -> int:
        return max(1, int(self.lease_s * 1000))

    async def start(self) -> None:
        """Open the owner channel and start serving and renewing (on the running loop)."""
        if not self.shared or self.channel is not None:
            return
        layer = get_channel_layer()
        if layer is None:
            raise RuntimeError("leases need a channel layer")
        self.channel = await layer.new_channel()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._listen(), name="links-owner-listen"),
            loop.create_task(self._renew_loop(), name="links-owner-renew"),
        ]
        log.info("links: owner channel %s", self.channel)

    async def stop(self, *, release: bool = True) -> None:
        """Stop serving; ``release`` hands every lease back at once (a clean stop) —
        without it they run out after the lease time (what a crash leaves)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in [*tasks, *self._inflight, *self._pending]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await settle_layer()
        held, self.held = set(self.held), set()
        if release and self.leases is not None and self.channel is not None:
            for peer in held:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.leases.release, peer, self.channel)
        self.channel = None

    def holds(self, peer: str) -> bool:
        return not self.shared or peer in self.held

    async def acquire(self, peer: str, *, take: bool = False) -> bool:
        """Become the owner of ``peer`` (``take``: even if another process is)."""
        if self.leases is None:
            return True
        if self.channel is None:
            return False  # not serving: a worker never owns links
        try:
            ok = await asyncio.to_thread(self.leases.acquire, peer, self.channel, self.ttl_ms, take)
        except Exception:
            log.warning("links: cannot acquire the lease of %s", peer, exc_info=True)
            return False
        if ok:
            if peer not in self.held:
                log.info("links: this process now owns %s", peer)
            self.held.add(peer)
        return ok

    async def release(self, peer: str) -> None:
        if self.leases is None or self.channel is None:
            return
        self.held.discard(peer)
        try:
            await asyncio.to_thread(self.leases.release, peer, self.channel)
        except Exception:
            log.warning("links: cannot release the lease of %s", peer, exc_info=True)

    def claim_soon(self, peer: str, *, take: bool) -> None:
        """:meth:`acquire` from sync code (a link registering itself)."""
        self._soon(self.acquire(peer, take=take))

    def release_soon(self, peer: str) -> None:
        self._soon(self.release(peer))

    async def claims_settled(self) -> None:
        """Wait for the claims and releases sync code asked for so far on this loop
        (:meth:`claim_soon`, :meth:`release_soon`): :meth:`holds` is then their outcome."""
        loop = asyncio.get_running_loop()
        pending = [t for t in self._pending if t.get_loop() is loop and not t.done()]
        if pending:
            await asyncio.wait(pending)

    def _soon(self, coro: Any) -> None:
        if not self.shared or self.channel is None:
            coro.close()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()
            return
        task = loop.create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def owner_of(self, peer: str) -> str | None:
        if self.leases is None:
            return None
        return await asyncio.to_thread(self.leases.owner, peer)

    # --- the owner side ---------------------------------------------------------------

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.retry_s)
            await self.renew_once()

    async def renew_once(self) -> None:
        """Extend our leases; report the ones another process took; re-claim peers we
        still hold a live link of but no lease (its other connection went away)."""
        leases, channel = self.leases, self.channel
        if leases is None or channel is None:
            return
        for peer in list(self.held):
            try:
                ok = await asyncio.to_thread(leases.renew, peer, channel, self.ttl_ms)
            except Exception:
                log.warning("links: cannot renew the lease of %s", peer, exc_info=True)
                continue  # Redis away: keep serving what we have; it may come back
            if not ok and peer in self.held:
                self.held.discard(peer)
                log.info("links: another process took %s", peer)
                for callback in list(self.on_lost):
                    try:
                        callback(peer)
                    except Exception:
                        log.exception("links: lost-lease callback failed for %s", peer)

    async def _listen(self) -> None:
        layer = get_channel_layer()
        channel = self.channel
        assert layer is not None and channel is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                event = await layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("links: owner channel receive failed", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            kind = event.get("type")
            if kind in ("link.outbox_reply", "link.outbox_adopt"):
                # A BTP/2.0-I outbox following its peer (links.btp_link).
                from links.btp_link import on_outbox_event

                try:
                    on_outbox_event(event)
                except Exception:
                    log.exception("links: outbox event failed")
                continue
            if kind != "link.prepare":
                continue
            task = loop.create_task(self._serve(event))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _serve(self, event: dict[str, Any]) -> None:
        layer = get_channel_layer()
        peer = str(event.get("peer", ""))
        try:
            prepare = decode_prepare(event["prepare"])
        except (DecodeError, KeyError, TypeError):
            return
        link = self.local(peer)
        reply: Reply = unreachable(peer) if link is None else await link.send_prepare(prepare)
        if layer is not None and event.get("reply_channel"):
            with contextlib.suppress(Exception):
                await layer.send(
                    event["reply_channel"], {"type": "link.reply", "reply": encode_packet(reply)}
                )


async def settle_layer() -> None:
    """Wait for the channel layer's background receive cleaners (channels_redis) of this
    loop: one still running when its loop ends leaves the layer's per-channel lock held
    and bound to that dead loop, and every later ``receive`` on another loop fails."""
    layer = get_channel_layer()
    cleaners = [
        task
        for task in list(getattr(layer, "receive_cleaners", ()))
        if task.get_loop() is asyncio.get_running_loop()
    ]
    if cleaners:
        await asyncio.gather(*cleaners, return_exceptions=True)


def our_address() -> str:
    return str(settings.ILP_ADDRESS)


def unreachable(peer_name: str, message: str = "") -> Reject:
    return Reject("T01", our_address(), message or f"no connection to account. account={peer_name}")


def expired(message: str = "prepare expired before the peer answered") -> Reject:
    return Reject("R00", our_address(), message)


class RemoteLink:
    """Sends through the process that owns the peer's link: to its channel, once."""

    def __init__(self, peer_name: str, ownership: LinkOwnership) -> None:
        self.peer_name = peer_name
        self.ownership = ownership

    async def send_prepare(self, prepare: Prepare) -> Reply:
        layer = get_channel_layer()
        if layer is None:
            return unreachable(self.peer_name)
        try:
            owner = await self.ownership.owner_of(self.peer_name)
        except Exception:
            log.warning("links: cannot read the owner of %s", self.peer_name, exc_info=True)
            return unreachable(self.peer_name, "cannot tell which process holds the link")
        if owner is None:
            return unreachable(self.peer_name)
        if owner == self.ownership.channel:  # ours after all (claimed a moment ago)
            link = self.ownership.local(self.peer_name)
            if link is None:
                return unreachable(self.peer_name)
            reply: Reply = await link.send_prepare(prepare)
            return reply
        timeout = (prepare.expires_at - datetime.now(UTC)).total_seconds()
        if timeout <= 0:
            return expired()
        channel = await layer.new_channel()
        await layer.send(
            owner,
            {
                "type": "link.prepare",
                "peer": self.peer_name,
                "prepare": encode_packet(prepare),
                "reply_channel": channel,
            },
        )
        try:
            event = await asyncio.wait_for(layer.receive(channel), timeout)
            return decode_reply(event["reply"])
        except TimeoutError:
            return expired()
        except (DecodeError, KeyError, TypeError):
            return Reject("T00", our_address(), "invalid reply from the link's process")
