"""In-memory map from receiver name to ledger account code, for the packet hot path.

A hit costs no I/O. A miss reads the database once, in a worker thread, and concurrent
misses for the same name share that one read. Answers are kept for ``positive_ttl``
seconds (found) or ``negative_ttl`` seconds (not found), and this process forgets a name
at once when its :class:`~receivers.models.Receiver` is saved or deleted (signals in
:mod:`receivers.signals`). Another process learns of a change within the TTL: a receiver's
name and account never change, so a stale positive answer only keeps accepting money for
a deleted pointer onto its (still existing, ``PROTECT``-ed) account for a few minutes.

The map is bounded: past ``max_entries`` it starts afresh, so a flood of packets to
random names cannot grow it without limit.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from channels.db import database_sync_to_async

from receivers.names import is_valid_name
from receivers.selectors import receiver_account_code_get

POSITIVE_TTL_S = 300.0
NEGATIVE_TTL_S = 5.0
MAX_ENTRIES = 10_000


class ReceiverDirectory:
    """Name → account code, cached. Safe to invalidate from any thread."""

    def __init__(
        self,
        *,
        positive_ttl: float = POSITIVE_TTL_S,
        negative_ttl: float = NEGATIVE_TTL_S,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._positive_ttl = positive_ttl
        self._negative_ttl = negative_ttl
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[str | None, float]] = {}
        self._pending: dict[str, asyncio.Future[str | None]] = {}
        # Bumped by every invalidation, so a read that started before it is not cached.
        self._generation = 0
        self._lock = threading.Lock()
        self.loads = 0  # database reads made (for tests and metrics)

    def peek(self, name: str) -> tuple[bool, str | None]:
        """``(known, account_code)`` from memory only; ``known`` is False on a miss."""
        entry = self._entries.get(name)
        if entry is None or entry[1] < self._clock():
            return False, None
        return True, entry[0]

    async def account_code(self, name: str) -> str | None:
        """The account code of the receiver ``name``, or ``None`` if there is none."""
        known, code = self.peek(name)
        if known:
            return code
        if not is_valid_name(name):
            return None
        pending = self._pending.get(name)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # we were cancelled ourselves
                # The task doing the read was cancelled: read ourselves.
        return await self._load(name)

    async def _load(self, name: str) -> str | None:
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._pending[name] = future
        generation = self._generation
        self.loads += 1
        try:
            code: str | None = await database_sync_to_async(receiver_account_code_get)(name=name)
            self._store(name, code, generation)
            future.set_result(code)
            return code
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # mark it retrieved: the waiters re-raise it themselves
            raise
        finally:
            if self._pending.get(name) is future:
                del self._pending[name]
            if not future.done():
                future.cancel()

    def remember(self, name: str, code: str | None) -> None:
        """Put a known answer in the map (e.g. right after creating the receiver)."""
        self._store(name, code, self._generation)

    def invalidate(self, name: str | None = None) -> None:
        """Forget ``name`` (or everything)."""
        with self._lock:
            self._generation += 1
            if name is None:
                self._entries.clear()
            else:
                self._entries.pop(name, None)

    def _store(self, name: str, code: str | None, generation: int) -> None:
        ttl = self._positive_ttl if code is not None else self._negative_ttl
        with self._lock:
            if generation != self._generation:
                return
            if len(self._entries) >= self._max_entries:
                self._entries.clear()
            self._entries[name] = (code, self._clock() + ttl)


_directory = ReceiverDirectory()


def get_directory() -> ReceiverDirectory:
    """The process-wide directory."""
    return _directory
