"""The receipt applier: committed receipts become incoming payments off the writer's path.

The book hands it the ids of the receipts each batch committed (its ``ReceiptSink``, wired
in :mod:`payments.ledger.runtime`); it applies them in bulk in its own thread or
publishes them to the Celery worker.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import timedelta

from django.db import DatabaseError, connection, connections

from payments.ledger.sql import (
    SQLITE_CHECKPOINT_INTERVAL,
    _heal_connection,
    _sqlite_write_lock,
    sqlite_checkpoint,
    sqlite_restart_wal,
)
from payments.selectors import pending_receipt_ids

logger = logging.getLogger(__name__)

SWEEP_CHUNK = 500
# Receipts per apply transaction on SQLite: a batch of the ledger writer waits for one
# such transaction at most (``sql.SqliteWriteTurns``); 250 took 11 ms (p90 16) beside the
# busy event loop, a gathered batch can be a couple of thousand receipts.
SQLITE_APPLY_CHUNK = 100

# Publishing one ``payments.apply_receipts``: a few quick retries of the broker, then the
# applier applies the receipts itself (a broker outage never leaves them waiting).
APPLY_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.4}


class ReceiptApplier:
    """Applies committed receipts off the ledger writer's critical path, in bulk.

    One daemon thread, started on first use. Receipt ids handed in by :meth:`submit` are
    collected for up to ``delay`` seconds (or until ``max_batch`` are waiting), then offered
    to ``publish`` (the process's: one ``payments.apply_receipts`` task to the worker, with
    :data:`APPLY_PUBLISH_RETRY`). When ``publish`` returns ``False`` (eager Celery: no
    worker) or raises (the broker still refuses), they are applied by ``apply`` (the
    process's: ``services.apply_receipts``) in this thread: one transaction for the lot,
    on SQLite under :data:`~payments.ledger.sql.SQLITE_WRITE_LOCK`, so it never makes the
    ledger writer wait on SQLite's busy handler. :meth:`flush` waits until everything
    submitted so far is applied or sent. :meth:`sweep` (the recovery's, any thread)
    applies, with ``apply``, every receipt left unapplied for a while.

    ``apply`` and ``publish`` are passed in (``payments.ledger.new_applier`` wires the
    payments services and tasks), so the ledger imports neither.

    The delay is the price of a batch made per receipt: one task, its publish and the
    worker's turn, and the statements' round trips and locks cost the same for 20 receipts
    as for 2,000. Under load (10,000 payments at ~3,000/s on two cores, three alternated
    pairs each) 0.5 s against 0.05 s took the worker from 0.04 to 0.01 ms per payment,
    Postgres from 0.10-0.11 to 0.09, and the node's rate up 6% on Postgres and 11%
    embedded (docs/PERFORMANCE.md, session 6). What reads money received reads receipts,
    and pending totals count the unapplied ones (``payments.selectors``), so only the
    incoming-payment rows, the receivers' postings and webhooks wait.
    """

    def __init__(
        self,
        *,
        apply: Callable[[list[int]], int],
        publish: Callable[[list[int]], bool],
        delay: float = 0.05,
        max_batch: int = 2000,
    ) -> None:
        self._apply_receipts = apply
        self._publish = publish
        self.delay = delay
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._pending: list[int] = []
        self._first_at = 0.0
        self._submitted = 0
        self._done = 0
        self._urgent = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self.batches = 0  # for tests and the benchmark
        self.applied = 0
        self.publish_failures = 0
        self._checkpoint_at = time.monotonic()

    def submit(self, receipt_ids: Iterable[int]) -> None:
        ids = list(receipt_ids)
        if not ids:
            return
        with self._cond:
            if self._closed:
                logger.warning("ledger: applier closed; receipts %s left to the sweep", ids)
                return
            was_empty = not self._pending
            if was_empty:
                self._first_at = time.monotonic()
            self._pending.extend(ids)
            self._submitted += len(ids)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="payments-receipts", daemon=True
                )
                self._thread.start()
            # Waking the applier costs the writer a thread switch: only when it sleeps
            # without a deadline (nothing was pending) or has enough to start now.
            if was_empty or len(self._pending) >= self.max_batch:
                self._cond.notify_all()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until the receipts submitted so far are applied (or sent); ``False`` on timeout."""
        if threading.current_thread() is self._thread:
            return False
        with self._cond:
            target = self._submitted
            self._urgent = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._done >= target or self._closed, timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Apply what is pending, stop the thread and close its database connection."""
        with self._cond:
            self._closed = True
            self._urgent = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _take(self) -> list[int] | None:
        """The next ids to apply (``None``: closed and drained)."""
        with self._cond:
            while True:
                if self._pending:
                    wait = self._first_at + self.delay - time.monotonic()
                    if self._urgent or wait <= 0 or len(self._pending) >= self.max_batch:
                        ids = self._pending[: self.max_batch]
                        del self._pending[: self.max_batch]
                        self._first_at = time.monotonic()
                        if not self._pending:
                            self._urgent = False
                        return ids
                    self._cond.wait(wait)
                    continue
                if self._closed:
                    return None
                self._cond.wait()

    def _run(self) -> None:
        try:
            while (ids := self._take()) is not None:
                try:
                    self._apply(ids)
                except Exception:
                    logger.exception("ledger: applying %d receipts failed", len(ids))
                finally:
                    with self._cond:
                        self._done += len(ids)
                        self._cond.notify_all()
                self._checkpoint()
        finally:
            with contextlib.suppress(Exception):
                connections.close_all()  # this thread's connections

    def _apply(self, ids: list[int]) -> None:
        self.batches += 1
        try:
            if self._publish(ids):
                return
        except Exception:
            # The task's idempotency makes a late duplicate (a publish that did get
            # through after all) harmless.
            self.publish_failures += 1
            logger.warning(
                "ledger: could not publish payments.apply_receipts; applying %d receipts here",
                len(ids),
                exc_info=True,
            )
        self.applied += self._apply_here(ids)

    def _checkpoint(self) -> None:
        """On SQLite, every :data:`SQLITE_CHECKPOINT_INTERVAL` seconds: a passive WAL
        checkpoint in this thread, without the write lock (the bulk of the WAL, while the
        ledger writer goes on), then, holding it, the frames written meanwhile and the
        WAL's restart (:func:`~payments.ledger.sql.sqlite_restart_wal`), so that the
        writer's commits do not checkpoint (their own threshold is a backstop)."""
        now = time.monotonic()
        if now - self._checkpoint_at < SQLITE_CHECKPOINT_INTERVAL:
            return
        self._checkpoint_at = now
        try:
            sqlite_checkpoint()
            with _sqlite_write_lock():
                sqlite_restart_wal()
        except Exception:  # never the applier thread's end
            logger.warning("ledger: WAL checkpoint failed", exc_info=True)
            _heal_connection()

    def _apply_here(self, ids: list[int]) -> int:
        """``apply`` in this thread, with two retries on database errors. On SQLite in
        chunks of :data:`SQLITE_APPLY_CHUNK`, each its own transaction under the write
        lock: the ledger writer, which waits for that lock, waits for one chunk at most."""
        step = SQLITE_APPLY_CHUNK if connection.vendor == "sqlite" else len(ids) or 1
        return sum(
            self._apply_chunk(ids[start : start + step]) for start in range(0, len(ids), step)
        )

    def _apply_chunk(self, ids: list[int]) -> int:
        for attempt in range(3):
            try:
                with _sqlite_write_lock():
                    return self._apply_receipts(ids)
            except DatabaseError:
                if attempt == 2:
                    raise
                logger.warning("ledger: applying receipts failed; retrying", exc_info=True)
                _heal_connection()
                time.sleep(0.05 * (attempt + 1))
        return 0  # not reached

    def sweep(self, *, older_than: timedelta, limit: int = 50_000) -> int:
        """Apply, in the calling thread, receipts unapplied for at least ``older_than``
        (a crash between COMMIT and the apply, a task lost with its worker); returns how
        many were applied. In both modes: the sweep never depends on the broker.

        Idempotent like ``apply`` (``services.apply_receipts`` claims each receipt's
        pending row under a row lock), so it may overlap the applier thread, a worker or another process.
        """
        with _sqlite_write_lock():
            ids = pending_receipt_ids(older_than=older_than, limit=limit)
        applied = 0
        # One transaction (and, on SQLite, one hold of the write lock) per chunk: the
        # ledger writer gets its turn between them.
        for start in range(0, len(ids), SWEEP_CHUNK):
            applied += self._apply_here(ids[start : start + SWEEP_CHUNK])
        if applied:
            self.applied += applied
            logger.warning("ledger: the recovery sweep applied %d receipts", applied)
        return applied
