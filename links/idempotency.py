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
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

from channels.db import database_sync_to_async
from django.db import transaction

from ilp.btp_session import MemoryRecord, ResponderMemory
from links.limits import DEFAULT_REPLAY_QUOTA
from links.models import BtpStoredResponse

log = logging.getLogger(__name__)

TRANSFER_DEADLINE = timedelta(hours=24)
MESSAGE_DEADLINE = timedelta(seconds=30)
PREPARE_HORIZON = timedelta(hours=1)
PRUNE_INTERVAL_S = 60.0

_server_memory: ResponderMemory | None = None
_client_memories: dict[str, ResponderMemory] = {}
_restored: set[str] = set()


def _new_memory() -> ResponderMemory:
    return ResponderMemory(default_quota=DEFAULT_REPLAY_QUOTA, transfer_retention=TRANSFER_DEADLINE)


def server_memory() -> ResponderMemory:
    """The memory shared by every server-side (``/btp``) session of this process."""
    global _server_memory
    if _server_memory is None:
        _server_memory = _new_memory()
    return _server_memory


def client_memory(peer_name: str) -> ResponderMemory:
    """The memory of our client link to ``peer_name``."""
    memory = _client_memories.get(peer_name)
    if memory is None:
        memory = _client_memories[peer_name] = _new_memory()
    return memory


def find_record(memory: ResponderMemory, account: str, request_id: int) -> MemoryRecord | None:
    """The memory's entry for a key."""
    return memory.get(account, request_id)


async def restore(peer_name: str, memory: ResponderMemory, account: str) -> None:
    """Load the peer's unexpired stored replies into ``memory`` (once per process)."""
    if peer_name in _restored:
        return
    _restored.add(peer_name)
    try:
        rows = await database_sync_to_async(_load_rows)(peer_name, datetime.now(UTC))
    except Exception:
        _restored.discard(peer_name)
        raise
    for request_id, digest, reply, received_at, expires_at in rows:
        memory.restore(MemoryRecord(account, request_id, digest, received_at, expires_at, reply))


def forget_restored(peer_name: str) -> None:
    """Restore the peer's rows again at its next authentication here: another process
    owned its link meanwhile (``links.ownership``) and stored replies this memory lacks."""
    _restored.discard(peer_name)


async def persist(peer_name: str, record: MemoryRecord) -> None:
    """Make a completed entry durable (returns once committed, batched with others)."""
    if record.reply is None:
        return
    await _writer.store(
        BtpStoredResponse(
            peer_name=peer_name,
            request_id=record.request_id,
            digest=record.digest,
            response=record.reply,
            received_at=record.received_at,
            expires_at=record.keep_until,
        )
    )


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


_writer = _GroupWriter()


def reset() -> None:
    """Forget every memory (tests; a "restart" of this module)."""
    global _server_memory, _writer
    _server_memory = None
    _client_memories.clear()
    _restored.clear()
    _writer = _GroupWriter()
