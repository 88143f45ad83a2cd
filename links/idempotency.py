"""BTP/2.0-I responder state (btp.md §7.3/7.4): memories and their durable copy.

The dedupe rules themselves live in the sans-IO session (``ilp.btp_session``'s
``ResponderMemory``: admit → NEW / IN_PROGRESS / REPLAY / CONFLICT / FULL). This module
owns the process-wide memories and makes them durable:

* Server links share one memory keyed by ``(auth username = peer name, request id)``;
  each BTP-client peer gets its own memory (the key there is *our* username at that
  peer, which two peers may share). Both outlive sockets, so a repeat arriving on a
  new connection is recognised.
* **Durability (the choice we made):** a reply on an idempotent link is written to the
  database (``BtpStoredResponse``) **before** it is sent. Writes go through one
  group-commit writer per process (:class:`_GroupWriter`): replies that finish while a
  batch is being written join the next batch — one thread hop and one transaction per
  batch, not per packet, and only on idempotent links. So a repeat that arrives after
  a restart (we died before the peer got the reply) finds it: a peer's unexpired rows
  are restored into the memory once per process, when the peer first authenticates
  (:func:`restore`), so the hot path never queries. A restore happens before any
  session of that peer exists in the process, so it cannot clash with live entries.
  In-progress markers are memory only: they survive reconnects, not a restart; a
  request still in progress when the process died is processed again on its repeat,
  and the ledger's idempotency keys keep its money effects single.
* **Retention (bounded):** an entry is kept at least 120 s after it was received and
  60 s after its deadline (a Prepare's ``expiresAt``; a Transfer: 24 h; other
  Messages: 30 s). A Prepare's expiry counts for at most :data:`PREPARE_HORIZON` after
  the reply (the node answers every Prepare within ``ILP_MAX_HOLD_TIME_MS``; a
  far-future expiry must not keep an entry, or its row, for ever), and no entry is
  kept more than 24 h + 60 s. Rows past ``expires_at`` are deleted by the writer at
  most every :data:`PRUNE_INTERVAL_S` and by the Celery task ``links.prune_btp_responses``.
* **Quota per peer:** each peer (account) has its own share of a memory, the peer's
  ``limits.replay_quota`` (``links.limits``; set when it authenticates, 0 = no
  BTP/2.0-I for that peer). A peer at its quota with every entry still inside its
  window gets Error T00 for its *new* requests (never a forgotten replay); other
  peers are not affected.
* **Several processes (``REDIS_URL``): the memory follows the peer.** A peer that
  reconnects to another process of the node must find its requests there: the
  in-process memory above stays the first gate (repeats on one connection never leave
  the process), and a request it admits as new is then *claimed* in Redis
  (:class:`SharedReplay`, one Lua script): new → processed here (marked in progress in
  Redis until its Prepare's expiry plus :data:`IN_PROGRESS_MARGIN`, so a killed
  process's marks run out); done elsewhere → the stored reply is replayed byte for byte;
  in progress elsewhere → no answer, forgotten here (the peer retries; once the other
  process has answered, the retry is replayed); another frame under that id → F05; the
  peer's share full *for the node* (entries in Redis inside their window) → T00. A
  reply is written to Redis (with its retention as TTL) together with its database row,
  both before it is sent. Claims and replies are batched per event-loop iteration (one
  round trip for all the requests of one iteration). Redis unreachable → the request is
  processed on this process's memory alone (what one process did before), logged.

All of it belongs to the node runtime (``interledger_site.runtime`` builds a
:class:`ReplayMemories` per runtime); the functions here reach the current one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from channels.db import database_sync_to_async
from django.db import transaction

from ilp.btp_session import MemoryRecord, ResponderMemory, Verdict
from links.limits import DEFAULT_REPLAY_QUOTA
from links.models import BtpStoredResponse

log = logging.getLogger(__name__)

TRANSFER_DEADLINE = timedelta(hours=24)
MESSAGE_DEADLINE = timedelta(seconds=30)
PREPARE_HORIZON = timedelta(hours=1)
PRUNE_INTERVAL_S = 60.0

IN_PROGRESS_MARGIN = timedelta(seconds=10)
SIDE_IN_PROGRESS = timedelta(seconds=60)  # a Message or Transfer handler's longest run


class ReplayMemories:
    """One runtime's BTP/2.0-I responder state (module docstring)."""

    def __init__(self, shared: SharedReplay | None = None) -> None:
        self.shared = shared
        self.server: ResponderMemory | None = None
        self.clients: dict[str, ResponderMemory] = {}
        self.restored: set[str] = set()
        self.writer = _GroupWriter()

    def server_memory(self) -> ResponderMemory:
        if self.server is None:
            self.server = _new_memory()
        return self.server

    def client_memory(self, peer_name: str) -> ResponderMemory:
        memory = self.clients.get(peer_name)
        if memory is None:
            memory = self.clients[peer_name] = _new_memory()
        return memory

    def forget_restored(self, peer_name: str) -> None:
        self.restored.discard(peer_name)

    def close(self) -> None:
        if self.shared is not None:
            self.shared.close()


def _new_memory() -> ResponderMemory:
    return ResponderMemory(default_quota=DEFAULT_REPLAY_QUOTA, transfer_retention=TRANSFER_DEADLINE)


def build_replay() -> ReplayMemories:
    """A runtime's memories: shared through Redis with ``REDIS_URL`` (``links.limits``'
    switch, ``ILP_SHARED_LIMITS=0``, turns both off)."""
    from django.conf import settings

    from links.limits import shared_limits_wanted
    from links.ownership import node_namespace

    if not shared_limits_wanted():
        return ReplayMemories()
    prefix = f"ilp:{settings.ILP_ADDRESS}:replay:{node_namespace()}:"
    return ReplayMemories(SharedReplay(str(settings.REDIS_URL), prefix))


def memories() -> ReplayMemories:
    """The current runtime's."""
    from payments.node import runtime

    replay: ReplayMemories = runtime().replay
    return replay


def server_memory() -> ResponderMemory:
    """The memory shared by every server-side (``/btp``) session of this runtime."""
    return memories().server_memory()


def client_memory(peer_name: str) -> ResponderMemory:
    """The memory of our client link to ``peer_name``."""
    return memories().client_memory(peer_name)


def find_record(memory: ResponderMemory, account: str, request_id: int) -> MemoryRecord | None:
    """The memory's entry for a key."""
    return memory.get(account, request_id)


async def restore(peer_name: str, memory: ResponderMemory, account: str) -> None:
    """Load the peer's unexpired stored replies into ``memory`` (once per runtime)."""
    restored = memories().restored
    if peer_name in restored:
        return
    restored.add(peer_name)
    try:
        rows = await database_sync_to_async(_load_rows)(peer_name, datetime.now(UTC))
    except Exception:
        restored.discard(peer_name)
        raise
    for request_id, digest, reply, received_at, expires_at in rows:
        memory.restore(MemoryRecord(account, request_id, digest, received_at, expires_at, reply))


def forget_restored(peer_name: str) -> None:
    """Restore the peer's rows again at its next authentication here: another process
    owned its link meanwhile (``links.ownership``) and stored replies this memory lacks."""
    memories().restored.discard(peer_name)


async def persist(peer_name: str, record: MemoryRecord) -> None:
    """Make a completed entry durable (returns once committed, batched with others): its
    database row, and with Redis its shared copy, both written at once."""
    if record.reply is None:
        return
    replay = memories()
    row = BtpStoredResponse(
        peer_name=peer_name,
        request_id=record.request_id,
        digest=record.digest,
        response=record.reply,
        received_at=record.received_at,
        expires_at=record.keep_until,
    )
    if replay.shared is None:
        await replay.writer.store(row)
        return
    keep_ms = int((record.keep_until - datetime.now(UTC)).total_seconds() * 1000)
    shared = replay.shared.complete(
        peer_name, record.request_id, record.digest, record.reply, keep_ms
    )
    stored, mirrored = await asyncio.gather(
        replay.writer.store(row), shared, return_exceptions=True
    )
    if isinstance(mirrored, BaseException):
        log.warning(
            "BTP/2.0-I: reply %d of %s not shared: %r", record.request_id, peer_name, mirrored
        )
    if isinstance(stored, BaseException):
        raise stored


async def claim(
    peer_name: str, record: MemoryRecord, quota: int, deadline: datetime | None
) -> tuple[Verdict, bytes | None]:
    """The node's verdict on a request this runtime's memory admitted as new (module
    docstring); NEW without Redis, or when Redis cannot answer."""
    shared = memories().shared
    if shared is None:
        return Verdict.NEW, None
    now = datetime.now(UTC)
    # min() first: a peer's far-future expiry (year 9999) must not overflow.
    end = now + SIDE_IN_PROGRESS if deadline is None else min(deadline, now + PREPARE_HORIZON)
    ttl_ms = int((end - now + IN_PROGRESS_MARGIN).total_seconds() * 1000)
    try:
        return await shared.claim(
            peer_name, record.request_id, record.digest, quota, max(ttl_ms, 1_000)
        )
    except Exception as exc:
        log.warning("BTP/2.0-I: shared replay memory unavailable (this process's only): %r", exc)
        return Verdict.NEW, None


def release_claim(peer_name: str, record: MemoryRecord) -> None:
    """A request claimed here will not be answered after all: drop its mark at once."""
    shared = memories().shared
    if shared is not None:
        shared.abandon(peer_name, record.request_id, record.digest)


def _load_rows(peer: str, now: datetime) -> list[tuple[int, bytes, bytes, datetime, datetime]]:
    return [
        (rid, bytes(digest), bytes(reply), received_at, expires_at)
        for rid, digest, reply, received_at, expires_at in BtpStoredResponse.objects.filter(
            peer_name=peer, expires_at__gt=now
        ).values_list("request_id", "digest", "response", "received_at", "expires_at")
    ]


def _write_batch(rows: list[BtpStoredResponse], prune_before: datetime | None) -> None:
    with transaction.atomic():
        BtpStoredResponse.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["peer_name", "request_id"],
            update_fields=["digest", "response", "received_at", "expires_at"],
        )
        if prune_before is not None:
            BtpStoredResponse.objects.filter(expires_at__lt=prune_before).delete()


def prune_stored_responses(now: datetime | None = None) -> int:
    """Delete rows past their window (the Celery task and tests call this)."""
    deleted, _ = BtpStoredResponse.objects.filter(expires_at__lt=now or datetime.now(UTC)).delete()
    return deleted


class _GroupWriter:
    """Batches rows: everything queued while a batch is written goes in the next one."""

    def __init__(self) -> None:
        self._queue: list[tuple[BtpStoredResponse, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self._last_prune = time.monotonic()

    async def store(self, row: BtpStoredResponse) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.append((row, done))
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._run())
        await done

    async def _run(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            rows = {(r.peer_name, r.request_id): r for r, _ in batch}  # latest wins
            prune_before = None
            if time.monotonic() - self._last_prune > PRUNE_INTERVAL_S:
                self._last_prune = time.monotonic()
                prune_before = datetime.now(UTC)
            try:
                await database_sync_to_async(_write_batch)(list(rows.values()), prune_before)
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)


def reset() -> None:
    """Forget every memory (tests; a "restart" of this runtime's memories: the same
    object emptied, as the runtime's ownership holds its ``forget_restored``)."""
    replay = memories()
    replay.server = None
    replay.clients.clear()
    replay.restored.clear()
    replay.writer = _GroupWriter()


# --- shared across processes (Redis) -------------------------------------------------------

# ARGV: key prefix, then ops (a value is "P" or "D", the request's sha256, then the reply):
#   C peer request_id digest quota ttl_ms   claim   -> N new, I in progress, X conflict,
#                                                      F share full, D<reply> done
#   S peer request_id digest reply keep_ms  a reply (kept keep_ms)
#   U peer request_id digest                drop our in-progress mark
# Returns the results of the C ops in order. ``q:<peer>`` scores each entry by its end:
# the peer's share of the node is the count of the unexpired ones.
REPLAY_LUA = r"""
local P = ARGV[1]
local t = redis.call('TIME')
local nowms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local pruned = {}
local function track(peer, rid, ttl)
  local q = P .. 'q:' .. peer
  redis.call('ZADD', q, nowms + ttl, rid)
  if redis.call('PTTL', q) < ttl then redis.call('PEXPIRE', q, ttl) end
end
local i, n = 2, #ARGV
while i <= n do
  local op, peer, rid, dg = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local k = P .. 'r:' .. peer .. ':' .. rid
  if op == 'C' then
    local quota, ttl = tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
    local v = redis.call('GET', k)
    if v then
      if string.sub(v, 2, 33) ~= dg then out[#out + 1] = 'X'
      elseif string.sub(v, 1, 1) == 'P' then out[#out + 1] = 'I'
      else out[#out + 1] = 'D' .. string.sub(v, 34) end
    else
      local q = P .. 'q:' .. peer
      if not pruned[peer] then
        redis.call('ZREMRANGEBYSCORE', q, '-inf', nowms)
        pruned[peer] = true
      end
      if redis.call('ZCARD', q) >= quota then
        out[#out + 1] = 'F'
      else
        redis.call('SET', k, 'P' .. dg, 'PX', ttl)
        track(peer, rid, ttl)
        out[#out + 1] = 'N'
      end
    end
    i = i + 6
  elseif op == 'S' then
    local keep = tonumber(ARGV[i + 5])
    local v = redis.call('GET', k)
    if keep > 0 and ((not v) or string.sub(v, 2, 33) == dg) then
      redis.call('SET', k, 'D' .. dg .. ARGV[i + 4], 'PX', keep)
      track(peer, rid, keep)
    end
    i = i + 6
  elseif op == 'U' then
    local v = redis.call('GET', k)
    if v and v == 'P' .. dg then
      redis.call('DEL', k)
      redis.call('ZREM', P .. 'q:' .. peer, rid)
    end
    i = i + 4
  else
    return redis.error_reply('replay: unknown op ' .. tostring(op))
  end
end
return out
"""

_VERDICTS = {
    b"N": Verdict.NEW,
    b"I": Verdict.IN_PROGRESS,
    b"X": Verdict.CONFLICT,
    b"F": Verdict.FULL,
}


@dataclass(slots=True)
class _ReplaySide:
    client: Any
    script: Any
    claims: list[tuple[list[Any], asyncio.Future[tuple[Verdict, bytes | None]]]] = field(
        default_factory=list
    )
    writes: list[tuple[list[Any], asyncio.Future[None] | None]] = field(default_factory=list)
    runner: asyncio.Task[None] | None = None


class SharedReplay:
    """The node's BTP/2.0-I memory in Redis (module docstring): claims and replies of one
    loop iteration go in one script call."""

    def __init__(self, url: str, prefix: str, *, socket_timeout: float = 2.0) -> None:
        self.url = url
        self.prefix = prefix
        self.socket_timeout = socket_timeout
        self.calls = 0
        self._sides: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _ReplaySide] = (
            weakref.WeakKeyDictionary()
        )
        self._closed = False

    def _side(self) -> _ReplaySide:
        loop = asyncio.get_running_loop()
        side = self._sides.get(loop)
        if side is None:
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(
                self.url,
                socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.socket_timeout,
            )
            side = _ReplaySide(client=client, script=client.register_script(REPLAY_LUA))
            self._sides[loop] = side
        return side

    async def claim(
        self, peer: str, request_id: int, digest: bytes, quota: int, ttl_ms: int
    ) -> tuple[Verdict, bytes | None]:
        if self._closed:
            return Verdict.NEW, None
        side = self._side()
        fut: asyncio.Future[tuple[Verdict, bytes | None]] = (
            asyncio.get_running_loop().create_future()
        )
        side.claims.append((["C", peer, request_id, digest, quota, ttl_ms], fut))
        self._kick(side)
        return await fut

    async def complete(
        self, peer: str, request_id: int, digest: bytes, reply: bytes, keep_ms: int
    ) -> None:
        if self._closed:
            return
        side = self._side()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        side.writes.append((["S", peer, request_id, digest, reply, keep_ms], fut))
        self._kick(side)
        await fut

    def abandon(self, peer: str, request_id: int, digest: bytes) -> None:
        if self._closed:
            return
        try:
            side = self._side()
        except RuntimeError:  # no loop: the mark runs out by itself
            return
        side.writes.append((["U", peer, request_id, digest], None))
        self._kick(side)

    # --- the outbox hand-over (links.btp_link): rare, one call each -----------------------

    async def hand_over(
        self, peer: str, origin: str, entries: dict[int, tuple[bytes, int]]
    ) -> None:
        """Leave our pending requests to ``peer`` (id → bytes, expiry Unix ms) for the
        process it reconnects to; ``origin`` is our owner channel."""
        side = self._side()
        key = f"{self.prefix}o:{peer}"
        tag = origin.encode()
        mapping = {
            str(rid): struct.pack(">QH", expires_ms, len(tag)) + tag + ilp
            for rid, (ilp, expires_ms) in entries.items()
        }
        ttl = max(expires_ms for _, expires_ms in entries.values()) - int(time.time() * 1000)
        async with side.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=mapping)
            pipe.pexpire(key, max(ttl, 1), gt=True)
            pipe.pexpire(key, max(ttl, 1), nx=True)
            await pipe.execute()

    async def take_over(self, peer: str) -> list[tuple[int, bytes, int, str]]:
        """Take (and remove) every request handed over for ``peer``: ``(id, bytes, expiry
        Unix ms, origin channel)``; each is taken by one caller only."""
        side = self._side()
        key = f"{self.prefix}o:{peer}"
        async with side.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(key)
            pipe.delete(key)
            raw, _ = await pipe.execute()
        taken = []
        for rid, value in raw.items():
            expires_ms, n = struct.unpack_from(">QH", value)
            origin = value[10 : 10 + n].decode()
            taken.append((int(rid), bytes(value[10 + n :]), int(expires_ms), origin))
        return taken

    def _kick(self, side: _ReplaySide) -> None:
        if side.runner is None or side.runner.done():
            side.runner = asyncio.get_running_loop().create_task(self._run(side))

    async def _run(self, side: _ReplaySide) -> None:
        while side.claims or side.writes:
            claims, side.claims = side.claims, []
            writes, side.writes = side.writes, []
            args: list[Any] = [self.prefix]
            for op, _ in writes:  # replies first: a claim in the same call sees them
                args += op
            for op, _ in claims:
                args += op
            try:
                results = await side.script(keys=(), args=args)
                self.calls += 1
            except Exception as exc:
                for _, fut in [*claims, *writes]:
                    if fut is not None and not fut.done():
                        fut.set_exception(exc)
                continue
            for _, wfut in writes:
                if wfut is not None and not wfut.done():
                    wfut.set_result(None)
            for (_, cfut), raw in zip(claims, results, strict=True):
                if cfut.done():
                    continue
                value = bytes(raw)
                if value[:1] == b"D":
                    cfut.set_result((Verdict.REPLAY, value[1:]))
                else:
                    cfut.set_result((_VERDICTS.get(value, Verdict.NEW), None))

    async def aclose(self) -> None:
        side = self._sides.pop(asyncio.get_running_loop(), None)
        if side is None:
            return
        if side.runner is not None and not side.runner.done():
            with contextlib.suppress(BaseException):
                await side.runner
        with contextlib.suppress(Exception):
            await side.client.aclose()

    def close(self) -> None:
        self._closed = True
