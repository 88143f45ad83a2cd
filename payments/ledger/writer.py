"""The group-commit writer: per-loop job queues drained by the one ledger-writer thread.

Every event loop that uses the book gets a :class:`_LoopWriter`: the jobs (commits,
loads, totals, refreshes) submitted in one loop iteration go to the writer thread as one
batch, and all the commits of a batch are written in **one database transaction**
(:func:`write_batch`). Synchronous callers submit straight to the same thread. The
in-memory side (balances, holds) belongs to :class:`~payments.ledger.book.BalanceBook`,
which runs the batches (``process_jobs``) and applies their outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.db import connection, transaction
from django.utils import timezone

from payments.errors import BookClosed, CommitFailed, PaymentsError, UnknownAccount
from payments.ledger import sql
from payments.ledger.drafts import PostingDraft, ReceiptDraft
from payments.ledger.sql import _cursor, _sqlite_write_lock
from payments.models import LedgerAccount

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class BookStats:
    """Counters for tests and the benchmark (per book). Two lanes writing at once may
    each miss the other's increment now and then: diagnostics, not accounts."""

    batches: int = 0
    transactions: int = 0
    failed_batches: int = 0
    commits: int = 0
    postings_inserted: int = 0
    postings_skipped: int = 0
    receipts_inserted: int = 0
    receipts_skipped: int = 0
    queries: int = 0
    max_batch_size: int = 0


class _QueryCounter:
    def __init__(self, stats: BookStats) -> None:
        self.stats = stats

    def __call__(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        self.stats.queries += 1
        return execute(sql, params, many, context)


@dataclass(slots=True)
class _Job:
    kind: str  # "commit" | "total" | "load" | "refresh"
    future: asyncio.Future[Any] | None
    postings: Sequence[PostingDraft] = ()
    receipts: Sequence[ReceiptDraft] = ()
    codes: Sequence[str] = ()
    total_key: tuple[str, bytes] | None = None
    result: Any = None
    error: BaseException | None = None


@dataclass(slots=True)
class _Outcome:
    balances: dict[int, tuple[int, int]] = field(default_factory=dict)
    jobs: list[_Job] = field(default_factory=list)
    new_receipts: list[ReceiptDraft] = field(default_factory=list)
    # The (account, payment id) of every receipt the batch was given, counted in flight by
    # the book from before its SQL until this outcome is applied.
    receipt_payments: list[tuple[str, bytes]] = field(default_factory=list)
    # The shared-credit ops of a deferred batch, sent by the loop that gets the results
    # (BalanceBook.mirror_outcome_on_loop; by the writer when that loop is gone).
    mirror: Any = None


class _Batches(Protocol):
    """What a :class:`_LoopWriter` needs of its book."""

    max_batch: int
    refresh_interval: float
    lanes: int

    @property
    def closed(self) -> bool: ...

    def lane_submit(self, lane: int, fn: Callable[..., Any], *args: Any) -> Any: ...

    def process_jobs(self, jobs: list[_Job], *, defer_apply: bool = False) -> _Outcome | None: ...

    def apply_outcome(self, outcome: _Outcome) -> None: ...

    def mirror_outcome(self, args: Any) -> None: ...

    def mirror_outcome_on_loop(self, args: Any) -> None: ...

    def due_for_refresh(self) -> bool: ...


class _LoopWriter:
    """The queue of one event loop's jobs, drained by the ledger-writer thread.

    Pipelined: a lane (a writer thread and its connection) takes the next batch as soon as
    it has sent back the previous one, without waiting for the event loop to come round.
    With two lanes (PostgreSQL) the jobs that arrive while one batch is in flight go out
    at once in the other lane: the server runs them as soon as the first batch commits.
    When a lane is free, the first job of a loop iteration schedules the hand-over with
    ``call_soon``, so every job submitted in the same iteration (a burst of packets) goes
    into one batch. Results go back with one
    ``call_soon_threadsafe`` per batch, and the loop applies the batch's in-memory effect
    (balances, released holds) before it resolves the futures. The queue is a ``deque``
    and the hand-over a flag, both touched by single GIL-atomic operations: the loop never
    waits for a lock the writer holds. Nothing runs on the loop between batches, so
    nothing can be cancelled mid-batch: a batch that was taken is always finished, and
    its results are delivered if the loop is still alive. The periodic refresh is a
    ``call_later`` timer.
    """

    def __init__(self, book: _Batches, loop: asyncio.AbstractEventLoop) -> None:
        self.book = book
        # Weak: the book's map of writers is keyed by the loop, and must not keep it alive.
        self._loop_ref = weakref.ref(loop)
        self.queue: deque[_Job] = deque()
        # True from the hand-over's scheduling until a lane takes the queue: the jobs
        # submitted meanwhile join that batch. Set by the loop, cleared by the lane; a
        # spurious extra drain is harmless (it finds the queue empty).
        self._scheduled = False
        # The lanes with no batch of this loop in flight. A lane is taken by one popleft
        # and given back by one appendleft (each atomic under the GIL), so it is never in
        # two drains at once; the first lane is the one used when the load is light.
        self._free: deque[int] = deque(range(book.lanes))
        self.closed = False
        self.timer: asyncio.TimerHandle | None = loop.call_later(book.refresh_interval, self._tick)

    def submit(self, job: _Job) -> None:
        """Queue a job (on the loop's thread)."""
        if self.closed:
            raise BookClosed("the balance book is closed")
        self.queue.append(job)
        if not self._scheduled and self._free:
            self._scheduled = True
            loop = self._loop_ref()
            if loop is not None:
                loop.call_soon(self._kick)

    def _kick(self) -> None:
        """Hand the queue to a free lane (on the loop, after this iteration's jobs)."""
        try:
            lane = self._free.popleft()
        except IndexError:  # every lane is busy: the first to finish takes the queue
            self._scheduled = False
            return
        try:
            self.book.lane_submit(lane, self._drain, lane)
        except RuntimeError:  # the writer thread was shut down (book closed)
            self._free.appendleft(lane)
            self._scheduled = False
            self._fail_queue(BookClosed("the balance book is closed"))

    def _drain(self, lane: int) -> None:
        """One batch, in a lane's thread; queues itself again while there is more."""
        queue = self.queue
        # Cleared before the queue is taken: a job submitted from here on either is in
        # this batch or schedules another lane's.
        self._scheduled = False
        jobs: list[_Job] = []
        with contextlib.suppress(IndexError):  # emptied by close()
            for _ in range(min(len(queue), self.book.max_batch)):
                jobs.append(queue.popleft())
        outer: BaseException | None = None
        outcome: _Outcome | None = None
        if jobs and self.book.closed:
            outer = BookClosed("the balance book is closed")
        elif jobs:
            try:
                outcome = self.book.process_jobs(jobs, defer_apply=True)
            except BaseException as exc:  # delivered to the waiters below
                outer = exc if isinstance(exc, PaymentsError) else CommitFailed(str(exc))
        # The lane is kept or given back before the results go: the jobs they lead to
        # find it free. (A drain submitted to it meanwhile starts after this one returns.)
        if queue:
            # More came in meanwhile, and no free lane took it. Through the lane's
            # executor, not a loop here: writers of other event loops (and synchronous
            # callers) get their turn.
            self._resubmit(lane)
        else:
            self._free.appendleft(lane)
            # A job submitted between the check above and the append saw no free lane.
            if queue and not self._scheduled:
                with contextlib.suppress(IndexError):  # else another lane took it
                    self._resubmit(self._free.popleft())
        if jobs:
            self._send_results(jobs, outer, outcome)

    def _resubmit(self, lane: int) -> None:
        try:
            self.book.lane_submit(lane, self._drain, lane)
        except RuntimeError:
            self._free.appendleft(lane)
            left = self._take_all()
            self._send_results(left, BookClosed("the balance book is closed"), None)

    def _send_results(
        self, jobs: list[_Job], outer: BaseException | None, outcome: _Outcome | None
    ) -> None:
        loop = self._loop_ref()
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._deliver, jobs, outer, outcome)
                return
            except RuntimeError:  # the loop closed meanwhile
                pass
        if outcome is not None:  # nobody left to wait: still release holds, move balances
            self.book.apply_outcome(outcome)
            if outcome.mirror is not None:
                self.book.mirror_outcome(outcome.mirror)

    def _deliver(
        self, jobs: list[_Job], outer: BaseException | None, outcome: _Outcome | None
    ) -> None:
        if outcome is not None:
            self.book.apply_outcome(outcome)
            if outcome.mirror is not None:
                self.book.mirror_outcome_on_loop(outcome.mirror)
        for job in jobs:
            fut = job.future
            if fut is None or fut.done():
                continue
            error = outer or job.error
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(job.result)

    def _tick(self) -> None:
        if self.closed:
            return
        if self.book.due_for_refresh() and not self.queue:
            with contextlib.suppress(BookClosed):
                self.submit(_Job("refresh", None))
        loop = self._loop_ref()
        if loop is not None:
            self.timer = loop.call_later(self.book.refresh_interval, self._tick)

    def _fail_queue(self, error: BaseException) -> None:
        for job in self._take_all():
            if job.future is not None and not job.future.done():
                job.future.set_exception(error)

    def _take_all(self) -> list[_Job]:
        """Empty the queue one ``popleft`` at a time: each job goes either to the writer
        thread or to the caller, never to both."""
        jobs: list[_Job] = []
        with contextlib.suppress(IndexError):
            while True:
                jobs.append(self.queue.popleft())
        return jobs

    def close(self) -> None:
        """Stop taking jobs and fail the queued ones; a batch in the writer finishes."""
        self.closed = True
        loop = self._loop_ref()
        if loop is None or loop.is_closed():
            self._take_all()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop or not loop.is_running():
            self._stop()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._stop)

    def _stop(self) -> None:
        self._fail_queue(BookClosed("the balance book is closed"))
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def write_batch(
    jobs: list[_Job],
    *,
    stats: BookStats,
    known_ids: dict[str, int],
    on_new_receipts: Callable[[list[int]], None] | None,
) -> _Outcome:
    """One transaction for the whole batch. Idempotent on the keys: safe to run twice.

    ``known_ids`` is the book's cache of account ids (read and extended here, see
    :func:`account_ids`). ``on_new_receipts`` gets the ids of the receipts this batch
    inserted, after COMMIT (the book's receipt sink: the process's applier).
    """
    outcome = _Outcome()
    for job in jobs:
        job.error = None
    posting_codes = {p.account_code for j in jobs for p in j.postings}
    all_codes = posting_codes | {r.account_code for j in jobs for r in j.receipts}
    now = timezone.now()
    stats.transactions += 1
    if (
        connection.vendor == "postgresql"
        and not connection.in_atomic_block
        and known_ids.keys() >= all_codes
    ):
        return _write_batch_one_trip(
            jobs,
            posting_codes,
            now,
            stats=stats,
            known_ids=known_ids,
            on_new_receipts=on_new_receipts,
        )
    with _sqlite_write_lock(urgent=True), transaction.atomic():
        cursor = _cursor()
        # 1. Lock the posting accounts in primary-key order (Postgres). SQLite has no
        #    row locks; its BEGIN IMMEDIATE already holds the database's write lock.
        ids = account_ids(cursor, all_codes, lock=posting_codes, known=known_ids)
        ok_jobs: list[_Job] = []
        for job in jobs:
            bad = next(
                (
                    c
                    for c in itertools.chain(
                        (p.account_code for p in job.postings),
                        (r.account_code for r in job.receipts),
                    )
                    if c not in ids
                ),
                None,
            )
            if bad is not None:
                job.error = UnknownAccount(f"no ledger account {bad!r}", account=bad)
            else:
                ok_jobs.append(job)
        # 2.-4. Postings (only the new ones move balances) and receipts (first
        #       occurrence of a key wins); one statement on Postgres.
        receipt_rows: dict[str, ReceiptDraft] = {}
        for job in ok_jobs:
            for r in job.receipts:
                receipt_rows.setdefault(r.key, r)
        posted = sql.post_in_transaction(
            [
                (ids[p.account_code], p.amount, p.key, p.memo)
                for job in ok_jobs
                for p in job.postings
            ],
            now=now,
            cursor=cursor,
            receipts=[
                (ids[r.account_code], r.payment_id.hex(), r.sequence, r.amount, r.key)
                for r in sorted(receipt_rows.values(), key=lambda r: r.key)
            ],
        )
        stats.postings_inserted += len(posted.new_keys)
        stats.postings_skipped += posted.submitted - len(posted.new_keys)
        new_receipts = posted.new_receipts
        stats.receipts_inserted += len(new_receipts)
        stats.receipts_skipped += len(receipt_rows) - len(new_receipts)
        if new_receipts and on_new_receipts is not None:
            receipt_ids = sorted(int(row[0]) for row in new_receipts)
            transaction.on_commit(lambda: on_new_receipts(receipt_ids), robust=True)
        outcome.balances = posted.balances
        outcome.jobs = ok_jobs
        outcome.new_receipts = [receipt_rows[str(row[1])] for row in new_receipts]
    return outcome


def _write_batch_one_trip(
    jobs: list[_Job],
    posting_codes: set[str],
    now: Any,
    *,
    stats: BookStats,
    known_ids: dict[str, int],
    on_new_receipts: Callable[[list[int]], None] | None,
) -> _Outcome:
    """:func:`write_batch` on Postgres when every account id is known: ``BEGIN``, the
    ordered lock, the statement and ``COMMIT`` in one round trip
    (``post_in_transaction(commit_locking=...)``). An id gone since it was cached fails
    the batch (a foreign key violation); the book's retry then clears the cache and takes
    the long way, which names the unknown account."""
    receipt_rows: dict[str, ReceiptDraft] = {}
    for job in jobs:
        for r in job.receipts:
            receipt_rows.setdefault(r.key, r)
    posted = sql.post_in_transaction(
        [
            (known_ids[p.account_code], p.amount, p.key, p.memo)
            for job in jobs
            for p in job.postings
        ],
        now=now,
        cursor=_cursor(),
        receipts=[
            (known_ids[r.account_code], r.payment_id.hex(), r.sequence, r.amount, r.key)
            for r in sorted(receipt_rows.values(), key=lambda r: r.key)
        ],
        commit_locking=[known_ids[code] for code in posting_codes],
    )
    stats.postings_inserted += len(posted.new_keys)
    stats.postings_skipped += posted.submitted - len(posted.new_keys)
    new_receipts = posted.new_receipts
    stats.receipts_inserted += len(new_receipts)
    stats.receipts_skipped += len(receipt_rows) - len(new_receipts)
    if new_receipts and on_new_receipts is not None:
        try:  # committed: like a robust on_commit hook, a failure here fails no commit
            on_new_receipts(sorted(int(row[0]) for row in new_receipts))
        except Exception:
            logger.exception("ledger: handing new receipts to the applier failed")
    return _Outcome(
        balances=posted.balances,
        jobs=list(jobs),
        new_receipts=[receipt_rows[str(row[1])] for row in new_receipts],
    )


def account_ids(
    cursor: Any, codes: set[str], *, lock: set[str], known: dict[str, int]
) -> dict[str, int]:
    """Ids of ``codes``; the ``lock`` ones locked in primary-key order where supported.

    ``known`` is the caller's id cache: used for the codes not locked, extended with what
    is fetched.
    """
    if not codes:
        return {}
    table = connection.ops.quote_name(LedgerAccount._meta.db_table)
    ids: dict[str, int] = {}
    if lock and connection.features.has_select_for_update:
        ordered = sorted(lock)
        cursor.execute(
            f"SELECT id, code FROM {table} WHERE code IN ({', '.join(['%s'] * len(ordered))}) "
            f"ORDER BY id {connection.ops.for_update_sql(no_key=True)}",
            ordered,
        )
        locked = {str(code): int(pk) for pk, code in cursor.fetchall()}
        ids.update(locked)
        known.update(locked)  # the next batch of these accounts can lock them by id
    # The id cache is read and extended without the book's lock (single dict
    # operations, atomic under the GIL): the writer must not contend with ``hold``.
    for code in codes - ids.keys():
        pk = known.get(code)
        if pk is not None:
            ids[code] = pk
    missing = sorted(codes - ids.keys())
    if missing:
        cursor.execute(
            f"SELECT id, code FROM {table} WHERE code IN ({', '.join(['%s'] * len(missing))})",
            missing,
        )
        fetched = {str(code): int(pk) for pk, code in cursor.fetchall()}
        ids.update(fetched)
        known.update(fetched)
    return ids
