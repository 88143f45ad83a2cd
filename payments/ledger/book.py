"""The process-wide balance book and group-commit writer.

One :class:`BalanceBook` per process (:func:`get_book`). It keeps, in memory, the committed
balance and limits of the accounts it has seen plus the **holds** (amounts reserved by
packets in flight). Holds are per process and are never written anywhere: a crash drops
them, which is right, because the Prepares they guard expire with the process.

Writes go through :meth:`BalanceBook.commit`, which enqueues the postings and receipts and
waits. One flusher coroutine per event loop takes everything queued and hands it, in one
thread hop, to the single ledger-writer thread, which writes the whole batch in **one
database transaction**:

1. lock the accounts of the postings (``SELECT ... FOR NO KEY UPDATE ORDER BY id`` on
   Postgres; SQLite's ``BEGIN IMMEDIATE`` already serialises writers);
2. ``INSERT ... ON CONFLICT (key) DO NOTHING RETURNING key`` the postings and receipts
   (SQLite >= 3.35 and Postgres both return only the rows actually inserted, and the
   conflict check waits for concurrent inserters of the same key, so a key is counted once
   even across processes);
3. one ``UPDATE ... SET balance = balance + delta, version = version + 1`` per account,
   with the deltas of the newly inserted postings only;
4. read back ``balance, version`` of the locked accounts (the book's refresh), and queue
   ``payments.apply_receipts`` for the new receipts with ``transaction.on_commit``.

After the commit the writer thread updates the in-memory balances and drops the holds of
the committed keys in one critical section, then the waiters' futures are resolved. A batch
that fails is retried once (every write is idempotent on its key, so a retry of a batch
whose COMMIT was in fact durable applies nothing twice); if it fails again, only its
waiters get :class:`~payments.errors.CommitFailed` and the next batch starts afresh.

Threading: the in-memory state is guarded by one ``threading.Lock``; ``hold``,
``release`` and ``balance`` may be called from any thread and never do I/O when the account
is loaded. Database work happens only in the writer thread (one ``ThreadPoolExecutor`` with
one worker), so eager Celery tasks queued on commit run there too, never on an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
import weakref
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, connections, transaction
from django.db.backends.utils import CursorWrapper
from django.db.models import Q, Sum
from django.utils import timezone

from payments.errors import (
    AccountKindMismatch,
    AccountNotLoaded,
    BalanceLimitExceeded,
    BookClosed,
    CommitFailed,
    DuplicateHold,
    InvalidAmount,
    PaymentsError,
    UnknownAccount,
)
from payments.models import MONEY_DIGITS, LedgerAccount, Posting, Receipt

logger = logging.getLogger(__name__)

UINT64_MAX = 2**64 - 1
INT64_MAX = 2**63 - 1
MAX_KEY_LENGTH = 255
MAX_RECEIPT_KEY_LENGTH = MAX_KEY_LENGTH - len("receipt:")  # its posting is "receipt:<key>"
MAX_MEMO_LENGTH = 255
MAX_CODE_LENGTH = 200
MAX_PAYMENT_ID_BYTES = 32
UINT32_MAX = 2**32 - 1
INSERT_CHUNK = 500  # rows per INSERT statement (keeps SQLite under its variable limit)


# --- drafts ----------------------------------------------------------------------------


def _check_int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidAmount(f"{what} must be an int, got {type(value).__name__}")
    return value


def _check_text(value: object, what: str, max_length: int) -> str:
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise ValueError(f"{what} must be a non-empty str of at most {max_length} characters")
    return value


@dataclass(frozen=True, slots=True)
class PostingDraft:
    """One balance change to write: ``amount`` is signed (positive = we owe the holder more).

    ``key`` makes it idempotent: a key already in the ledger is never applied again (the
    first write wins, so a key must name exactly one change). ``|amount| <= 2**64 - 1``.
    A zero amount is allowed and writes nothing.
    """

    account_code: str
    amount: int
    key: str
    memo: str = ""

    def __post_init__(self) -> None:
        _check_text(self.account_code, "account_code", MAX_CODE_LENGTH)
        _check_text(self.key, "key", MAX_KEY_LENGTH)
        if not isinstance(self.memo, str) or len(self.memo) > MAX_MEMO_LENGTH:
            raise ValueError(f"memo must be a str of at most {MAX_MEMO_LENGTH} characters")
        if abs(_check_int(self.amount, "amount")) > UINT64_MAX:
            raise InvalidAmount("amount out of range", amount=str(self.amount))


@dataclass(frozen=True, slots=True)
class ReceiptDraft:
    """One fulfilled PSK2 chunk for the receiving account ``account_code``.

    ``payment_id`` is the PSK2 payment id (1 to 32 bytes; stored as lowercase hex),
    ``sequence`` a UInt32, ``amount`` the amount that arrived (``0 <= amount < 2**64``).
    Idempotent on ``key`` (at most 247 characters: its posting is ``receipt:<key>``).
    """

    account_code: str
    payment_id: bytes
    sequence: int
    amount: int
    key: str

    def __post_init__(self) -> None:
        _check_text(self.account_code, "account_code", MAX_CODE_LENGTH)
        _check_text(self.key, "key", MAX_RECEIPT_KEY_LENGTH)
        if not isinstance(self.payment_id, bytes) or not (
            1 <= len(self.payment_id) <= MAX_PAYMENT_ID_BYTES
        ):
            raise ValueError("payment_id must be 1 to 32 bytes")
        sequence = _check_int(self.sequence, "sequence")
        if not 0 <= sequence <= UINT32_MAX:
            raise ValueError("sequence must be a UInt32")
        if not 0 <= _check_int(self.amount, "amount") <= UINT64_MAX:
            raise InvalidAmount("receipt amount out of range", amount=str(self.amount))


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    """What the book knows about one account (``pending_*`` are the in-flight holds)."""

    code: str
    kind: str
    asset_code: str
    asset_scale: int
    balance: int
    min_balance: int | None
    max_balance: int | None
    pending_debits: int
    pending_credits: int
    version: int


@dataclass(slots=True)
class BookStats:
    """Counters for tests and the benchmark (per book)."""

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


# --- internal state --------------------------------------------------------------------


@dataclass(slots=True)
class _Account:
    id: int
    code: str
    kind: str
    asset_code: str
    asset_scale: int
    balance: int
    version: int
    min_balance: int | None
    max_balance: int | None
    debits: int = 0  # sum of debit holds (positive)
    credits: int = 0  # sum of credit holds (positive)


@dataclass(frozen=True, slots=True)
class _Hold:
    account_code: str
    amount: int  # > 0
    credit: bool
    at: float  # time.monotonic()


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


_ACCOUNT_FIELDS = (
    "id",
    "code",
    "kind",
    "asset_code",
    "asset_scale",
    "balance",
    "version",
    "min_balance",
    "max_balance",
)


def _opt_int(value: Decimal | int | None) -> int | None:
    return None if value is None else int(value)


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# --- the flusher, one per event loop -----------------------------------------------------


class _LoopWriter:
    """The queue of one event loop's jobs, drained by the ledger-writer thread.

    Pipelined: the writer thread takes the next batch as soon as it has sent back the
    previous one (everything queued while that one committed), without waiting for the
    event loop to come round. When the writer is idle, the first job of a loop iteration
    schedules the hand-over with ``call_soon``, so every job submitted in the same
    iteration (a burst of packets) goes into one batch. Results go back with one
    ``call_soon_threadsafe`` per batch, and the loop applies the batch's in-memory effect
    (balances, released holds) before it resolves the futures. The queue is a ``deque``
    and the hand-over a flag, both touched by single GIL-atomic operations: the loop never
    waits for a lock the writer holds. Nothing runs on the loop between batches, so
    nothing can be cancelled mid-batch: a batch that was taken is always finished, and
    its results are delivered if the loop is still alive. The periodic refresh is a
    ``call_later`` timer.
    """

    def __init__(self, book: BalanceBook, loop: asyncio.AbstractEventLoop) -> None:
        self.book = book
        # Weak: the book's map of writers is keyed by the loop, and must not keep it alive.
        self._loop_ref = weakref.ref(loop)
        self.queue: deque[_Job] = deque()
        # True while a drain is scheduled or running (it re-checks the queue before it
        # stops). Set by the loop, cleared by the writer; a spurious extra drain is harmless.
        self._scheduled = False
        self.closed = False
        self.timer: asyncio.TimerHandle | None = loop.call_later(book.refresh_interval, self._tick)

    def submit(self, job: _Job) -> None:
        """Queue a job (on the loop's thread)."""
        if self.closed:
            raise BookClosed("the balance book is closed")
        self.queue.append(job)
        if not self._scheduled:
            self._scheduled = True
            loop = self._loop_ref()
            if loop is not None:
                loop.call_soon(self._kick)

    def _kick(self) -> None:
        """Hand the queue to the writer thread (on the loop, after this iteration's jobs)."""
        try:
            self.book.executor_submit(self._drain)
        except RuntimeError:  # the writer thread was shut down (book closed)
            self._scheduled = False
            self._fail_queue(BookClosed("the balance book is closed"))

    def _drain(self) -> None:
        """One batch, in the writer thread; queues itself again while there is more."""
        queue = self.queue
        jobs: list[_Job] = []
        with contextlib.suppress(IndexError):  # emptied by close()
            for _ in range(min(len(queue), self.book.max_batch)):
                jobs.append(queue.popleft())
        if jobs and self.book.closed:
            self._send_results(jobs, BookClosed("the balance book is closed"), None)
        elif jobs:
            outer: BaseException | None = None
            outcome: _Outcome | None = None
            try:
                outcome = self.book.process_jobs(jobs, defer_apply=True)
            except BaseException as exc:  # delivered to the waiters below
                outer = exc if isinstance(exc, PaymentsError) else CommitFailed(str(exc))
            self._send_results(jobs, outer, outcome)
        self._scheduled = False
        if queue and not self._scheduled:
            # More came in meanwhile. Through the executor's queue, not a loop here:
            # writers of other event loops (and synchronous callers) get their turn.
            self._scheduled = True
            try:
                self.book.executor_submit(self._drain)
            except RuntimeError:
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

    def _deliver(
        self, jobs: list[_Job], outer: BaseException | None, outcome: _Outcome | None
    ) -> None:
        if outcome is not None:
            self.book.apply_outcome(outcome)
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


# --- the book ----------------------------------------------------------------------------


class BalanceBook:
    """In-memory balances and holds over the ledger tables, with a group-commit writer.

    Sign convention: positive balance = we owe the account holder.
    """

    def __init__(
        self,
        *,
        max_batch: int = 5000,
        refresh_interval: float = 5.0,
        hold_ttl: float | None = None,
        totals_cache_size: int = 100_000,
    ) -> None:
        self.max_batch = max_batch
        self.refresh_interval = refresh_interval
        max_hold_ms = int(getattr(settings, "ILP_MAX_HOLD_TIME_MS", 30_000))
        self.hold_ttl = hold_ttl if hold_ttl is not None else max(60.0, 4 * max_hold_ms / 1000)
        self.totals_cache_size = totals_cache_size
        self.stats = BookStats()
        self._lock = threading.Lock()
        self._accounts: dict[str, _Account] = {}
        self._by_id: dict[int, _Account] = {}
        self._ids: dict[str, int] = {}
        self._holds: dict[str, _Hold] = {}
        self._totals: OrderedDict[tuple[str, bytes], int] = OrderedDict()
        self._writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWriter] = (
            weakref.WeakKeyDictionary()
        )
        self._writers_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="payments-ledger")
        self._writer_thread_ident: int | None = None
        self._deferred: _Outcome | None = None  # set by _do_commits(defer_apply=True)
        self._closed = False
        self._last_refresh = time.monotonic()
        self._query_counter = _QueryCounter(self.stats)

    # -- holds (sync, in memory) ------------------------------------------------------------

    def hold(self, account_code: str, amount: int, key: str) -> None:
        """Reserve a **debit** of ``amount`` (>= 0) on the account, keyed by ``key``.

        Raises :class:`BalanceLimitExceeded` (T04) when ``balance - debit holds - amount``
        would be below ``min_balance``. No I/O once the account is loaded; from an event
        loop an unloaded account raises :class:`AccountNotLoaded` (``await
        load_account`` first), from a plain thread it is loaded on the spot. Holding the
        same key again with the same account and amount is a no-op. Holds are released by
        :meth:`release` or by a successful :meth:`commit` of a posting with the same key.
        """
        self._hold(account_code, amount, key, credit=False)

    def hold_credit(self, account_code: str, amount: int, key: str) -> None:
        """Reserve a **credit** of ``amount`` (>= 0): we will owe the holder more.

        Raises :class:`BalanceLimitExceeded` when ``balance + credit holds + amount`` would
        exceed ``max_balance``. Otherwise the same as :meth:`hold`.
        """
        self._hold(account_code, amount, key, credit=True)

    def _hold(self, account_code: str, amount: int, key: str, *, credit: bool) -> None:
        if _check_int(amount, "amount") < 0 or amount > UINT64_MAX:
            raise InvalidAmount("hold amount must be 0 to 2**64-1", amount=str(amount))
        if amount == 0:
            return
        if account_code not in self._accounts:  # lock-free fast check (GIL-atomic)
            self._require_loaded(account_code)
        with self._lock:
            acct = self._accounts.get(account_code)
            if acct is None:  # forgotten between the check and the lock
                raise AccountNotLoaded(f"account {account_code!r} is not loaded")
            existing = self._holds.get(key)
            if existing is not None:
                if (existing.account_code, existing.amount, existing.credit) == (
                    account_code,
                    amount,
                    credit,
                ):
                    return
                raise DuplicateHold(f"hold key {key!r} is already used", key=key)
            if credit:
                if acct.max_balance is not None and (
                    acct.balance + acct.credits + amount > acct.max_balance
                ):
                    raise BalanceLimitExceeded(
                        "exceeded maximum balance",
                        account=account_code,
                        balance=str(acct.balance),
                        limit=str(acct.max_balance),
                    )
                acct.credits += amount
            else:
                if acct.min_balance is not None and (
                    acct.balance - acct.debits - amount < acct.min_balance
                ):
                    raise BalanceLimitExceeded(
                        "insufficient liquidity",
                        account=account_code,
                        balance=str(acct.balance),
                        limit=str(acct.min_balance),
                    )
                acct.debits += amount
            self._holds[key] = _Hold(account_code, amount, credit, time.monotonic())

    def release(self, key: str) -> None:
        """Drop the hold ``key`` (Reject or expiry). Unknown keys are ignored."""
        with self._lock:
            self._release_locked(key)

    def _release_locked(self, key: str) -> None:
        held = self._holds.pop(key, None)
        if held is None:
            return
        acct = self._accounts.get(held.account_code)
        if acct is None:
            return
        if held.credit:
            acct.credits -= held.amount
        else:
            acct.debits -= held.amount

    def balance(self, account_code: str) -> int:
        """The committed balance (positive = we owe them); holds are not included."""
        self._require_loaded(account_code)
        with self._lock:
            acct = self._accounts.get(account_code)
            if acct is None:
                raise AccountNotLoaded(f"account {account_code!r} is not loaded")
            return acct.balance

    def snapshot(self, account_code: str) -> AccountSnapshot:
        """Balance, limits and in-flight holds of one account (same loading rule as ``hold``)."""
        self._require_loaded(account_code)
        with self._lock:
            a = self._accounts.get(account_code)
            if a is None:
                raise AccountNotLoaded(f"account {account_code!r} is not loaded")
            return AccountSnapshot(
                code=a.code,
                kind=a.kind,
                asset_code=a.asset_code,
                asset_scale=a.asset_scale,
                balance=a.balance,
                min_balance=a.min_balance,
                max_balance=a.max_balance,
                pending_debits=a.debits,
                pending_credits=a.credits,
                version=a.version,
            )

    def is_loaded(self, account_code: str) -> bool:
        with self._lock:
            return account_code in self._accounts

    def _require_loaded(self, account_code: str) -> None:
        with self._lock:
            if account_code in self._accounts:
                return
        if _in_running_loop():
            raise AccountNotLoaded(
                f"account {account_code!r} is not loaded; await book.load_account() first",
                account=account_code,
            )
        self.load_account_sync(account_code)

    # -- async API ----------------------------------------------------------------------------

    async def commit(
        self, postings: Sequence[PostingDraft], receipts: Sequence[ReceiptDraft] = ()
    ) -> None:
        """Write ``postings`` and ``receipts`` durably, in the next batch transaction.

        Returns only after the transaction that carries them has committed. Idempotent on
        the keys (an existing key is skipped, its amount not applied again). On success the
        holds whose keys equal the posting keys are released. Raises
        :class:`CommitFailed` when the batch failed (nothing of it was applied) and
        :class:`UnknownAccount` when a code does not exist (nothing of this call was
        applied; the rest of the batch was). If the awaiting task is cancelled the commit
        still goes through.
        """
        postings = tuple(postings)
        receipts = tuple(receipts)
        for d in postings:
            if not isinstance(d, PostingDraft):
                raise TypeError("postings must be PostingDraft")
        for r in receipts:
            if not isinstance(r, ReceiptDraft):
                raise TypeError("receipts must be ReceiptDraft")
        if not postings and not receipts:
            return
        await self._submit(_Job("commit", None, postings=postings, receipts=receipts))

    async def payment_total(self, account_code: str, payment_id: bytes) -> int:
        """Total of the receipts of ``payment_id`` on ``account_code`` (memory, then the DB).

        Exact for the receipts committed through this process; receipts written by other
        processes are seen on a cache miss only.
        """
        key = (account_code, bytes(payment_id))
        with self._lock:
            cached = self._totals.get(key)
            if cached is not None:
                self._totals.move_to_end(key)
                return cached
        result: int = await self._submit(_Job("total", None, total_key=key))
        return result

    async def load_account(self, account_code: str) -> None:
        """Load (or refresh) one account into memory. Raises :class:`UnknownAccount`."""
        await self._submit(_Job("load", None, codes=(account_code,)))

    async def refresh(self) -> None:
        """Reload balances and limits of every loaded account from the database."""
        await self._submit(_Job("refresh", None))

    async def ahold(self, account_code: str, amount: int, key: str) -> None:
        """:meth:`hold`, loading the account first if needed."""
        if not self.is_loaded(account_code):
            await self.load_account(account_code)
        self.hold(account_code, amount, key)

    async def _submit(self, job: _Job) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        job.future = fut
        self._writer_for(loop).submit(job)
        # A cancelled caller cancels only this future: the job stays queued and is written
        # (the flusher skips futures that are already done when it delivers).
        return await fut

    def _writer_for(self, loop: asyncio.AbstractEventLoop) -> _LoopWriter:
        if self._closed:
            raise BookClosed("the balance book is closed")
        writer = self._writers.get(loop)
        if writer is None or writer.closed:
            with self._writers_lock:
                writer = self._writers.get(loop)
                if writer is None or writer.closed:
                    writer = _LoopWriter(self, loop)
                    self._writers[loop] = writer
        return writer

    # -- sync API (threads without an event loop) -------------------------------------------

    def commit_sync(
        self, postings: Sequence[PostingDraft], receipts: Sequence[ReceiptDraft] = ()
    ) -> None:
        """:meth:`commit` for synchronous callers (commands, Celery, threads). Not from a loop."""
        job = _Job("commit", None, postings=tuple(postings), receipts=tuple(receipts))
        self._run_sync(job)
        if job.receipts:
            # As the eager task did before it moved off the writer: a synchronous caller
            # (a command, a test) finds its receipts applied when this returns.
            wait_receipts_applied()

    def load_account_sync(self, account_code: str) -> None:
        """:meth:`load_account` for synchronous callers."""
        self._run_sync(_Job("load", None, codes=(account_code,)))

    def payment_total_sync(self, account_code: str, payment_id: bytes) -> int:
        """:meth:`payment_total` for synchronous callers."""
        key = (account_code, bytes(payment_id))
        with self._lock:
            cached = self._totals.get(key)
            if cached is not None:
                return cached
        result: int = self._run_sync(_Job("total", None, total_key=key))
        return result

    def _run_sync(self, job: _Job) -> Any:
        if _in_running_loop():
            raise RuntimeError("use the async API from an event loop")
        if self._closed:
            raise BookClosed("the balance book is closed")
        if threading.get_ident() == self._writer_thread_ident:
            self.process_jobs([job])  # e.g. an eager Celery task run by the writer itself
        else:
            self.executor_submit(self.process_jobs, [job]).result()
        if job.error is not None:
            raise job.error
        return job.result

    # -- observation from services ------------------------------------------------------------

    def observe(self, rows: Iterable[dict[str, Any]]) -> None:
        """Take fresh account rows (``_ACCOUNT_FIELDS``) read inside a committed transaction.

        Rows older than what the book has (lower ``version``) are ignored, so callers in any
        thread may report what they read; only accounts already loaded are updated.
        """
        with self._lock:
            for row in rows:
                self._observe_locked(row, add=False)

    def observe_balances(self, balances: dict[int, tuple[int, int]]) -> None:
        """Take ``{account id: (balance, version)}`` read inside a committed transaction
        (what :func:`post_in_transaction` returns). Same rules as :meth:`observe`."""
        with self._lock:
            for pk, (balance, version) in balances.items():
                acct = self._by_id.get(pk)
                if acct is not None and version >= acct.version:
                    acct.balance, acct.version = balance, version

    def forget(self, account_code: str) -> None:
        """Drop an account from memory (its holds stay accounted until released)."""
        with self._lock:
            acct = self._accounts.pop(account_code, None)
            if acct is not None:
                self._by_id.pop(acct.id, None)

    def _observe_locked(self, row: dict[str, Any], *, add: bool) -> None:
        code = row["code"]
        self._ids[code] = int(row["id"])
        acct = self._accounts.get(code)
        if acct is None:
            if not add:
                return
            acct = _Account(
                id=int(row["id"]),
                code=code,
                kind=row["kind"],
                asset_code=row["asset_code"],
                asset_scale=int(row["asset_scale"]),
                balance=int(row["balance"]),
                version=int(row["version"]),
                min_balance=_opt_int(row["min_balance"]),
                max_balance=_opt_int(row["max_balance"]),
            )
            # Holds taken before a forget()/reload still count.
            for h in self._holds.values():
                if h.account_code == code:
                    if h.credit:
                        acct.credits += h.amount
                    else:
                        acct.debits += h.amount
            self._accounts[code] = acct
            self._by_id[acct.id] = acct
            return
        acct.min_balance = _opt_int(row["min_balance"])
        acct.max_balance = _opt_int(row["max_balance"])
        version = int(row["version"])
        if version >= acct.version:
            acct.balance = int(row["balance"])
            acct.version = version

    # -- the writer thread ----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def executor_submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._executor.submit(fn, *args)

    def due_for_refresh(self) -> bool:
        # Lock-free reads (each is atomic under the GIL; a stale answer only shifts the
        # refresh by one batch): the writer asks after every batch.
        has_state = bool(self._accounts) or bool(self._holds)
        return has_state and time.monotonic() - self._last_refresh >= self.refresh_interval

    def process_jobs(self, jobs: list[_Job], *, defer_apply: bool = False) -> _Outcome | None:
        """Run one batch in the calling (writer) thread; results go into the jobs.

        With ``defer_apply`` the in-memory effect of the commits (fresh balances, released
        holds) is returned instead of applied: the event loop that waits for them applies
        it with :meth:`apply_outcome` before it resolves their futures, so the loop's
        hot path (``hold``) never waits for a lock the writer thread holds.
        """
        self._writer_thread_ident = threading.get_ident()
        self._deferred = None
        self.stats.batches += 1
        self.stats.max_batch_size = max(self.stats.max_batch_size, len(jobs))
        _heal_connection()
        with connection.execute_wrapper(self._query_counter):
            loads = [j for j in jobs if j.kind == "load"]
            commits = [j for j in jobs if j.kind == "commit"]
            totals = [j for j in jobs if j.kind == "total"]
            refresh = any(j.kind == "refresh" for j in jobs)
            if loads:
                self._guard(loads, lambda: self._do_loads(loads))
            if commits:
                self._guard(commits, lambda: self._do_commits(commits, defer_apply))
            if totals:
                self._guard(totals, lambda: self._do_totals(totals))
            if refresh or self.due_for_refresh():
                try:
                    self._do_refresh()
                except Exception:
                    logger.exception("ledger: refresh failed")
        deferred, self._deferred = self._deferred, None
        return deferred

    def _guard(self, jobs: list[_Job], fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            logger.exception("ledger: batch of %d %s jobs failed", len(jobs), jobs[0].kind)
            self.stats.failed_batches += 1
            error = exc if isinstance(exc, PaymentsError) else CommitFailed(str(exc))
            if error is not exc:
                error.__cause__ = exc
            for job in jobs:
                if job.error is None:
                    job.error = error
            try:  # make sure the next batch gets a sane connection
                _heal_connection()
            except Exception:
                logger.exception("ledger: closing the connection failed")

    def _do_loads(self, jobs: list[_Job]) -> None:
        codes = {c for j in jobs for c in j.codes}
        rows = list(LedgerAccount.objects.filter(code__in=codes).values(*_ACCOUNT_FIELDS))
        with self._lock:
            for row in rows:
                self._observe_locked(row, add=True)
            found = {r["code"] for r in rows}
        for job in jobs:
            missing = [c for c in job.codes if c not in found]
            if missing:
                job.error = UnknownAccount(f"no ledger account {missing[0]!r}", account=missing[0])

    def _do_refresh(self) -> None:
        self._last_refresh = time.monotonic()
        with self._lock:
            codes = list(self._accounts)
            now = time.monotonic()
            stale = [k for k, h in self._holds.items() if now - h.at > self.hold_ttl]
            for key in stale:
                logger.warning("ledger: dropping hold %r older than %ss", key, self.hold_ttl)
                self._release_locked(key)
        if not codes:
            return
        rows = list(LedgerAccount.objects.filter(code__in=codes).values(*_ACCOUNT_FIELDS))
        with self._lock:
            for row in rows:
                self._observe_locked(row, add=False)

    def _do_totals(self, jobs: list[_Job]) -> None:
        wanted: dict[tuple[str, bytes], int] = {}
        with self._lock:
            for job in jobs:
                assert job.total_key is not None
                cached = self._totals.get(job.total_key)
                if cached is not None:
                    job.result = cached
                else:
                    wanted[job.total_key] = 0
        if wanted:
            q = Q()
            for code, pid in wanted:
                q |= Q(account__code=code, payment_id=pid.hex())
            rows = (
                Receipt.objects.filter(q)
                .values("account__code", "payment_id")
                .annotate(total=Sum("amount"))
                .order_by()
            )
            for row in rows:
                wanted[(row["account__code"], bytes.fromhex(row["payment_id"]))] = int(
                    row["total"] or 0
                )
            with self._lock:
                for key, total in wanted.items():
                    self._remember_total_locked(key, total)
        for job in jobs:
            if job.result is None and job.total_key is not None:
                job.result = wanted[job.total_key]

    def _remember_total_locked(self, key: tuple[str, bytes], total: int) -> None:
        self._totals[key] = total
        self._totals.move_to_end(key)
        while len(self._totals) > self.totals_cache_size:
            self._totals.popitem(last=False)

    def _do_commits(self, jobs: list[_Job], defer_apply: bool = False) -> None:
        on_sqlite = connection.vendor == "sqlite"
        live: list[_Job] = []
        for job in jobs:
            if on_sqlite and any(abs(p.amount) > INT64_MAX for p in job.postings):
                # SQLite stores integers beyond int64 as REAL: refuse rather than round.
                job.error = InvalidAmount("amount exceeds the SQLite int64 range")
            else:
                live.append(job)
        attempts = 0
        while True:
            attempts += 1
            try:
                outcome = self._write_batch(live)
                break
            except DatabaseError as exc:
                if attempts >= 2:
                    raise
                logger.warning("ledger: batch failed (%s); retrying once", exc)
                with self._lock:
                    self._ids.clear()  # in case an account id we cached is gone
                _heal_connection()
        if defer_apply:
            self._deferred = outcome
        else:
            self._apply(outcome)

    def _write_batch(self, jobs: list[_Job]) -> _Outcome:
        """One transaction for the whole batch. Idempotent on the keys: safe to run twice."""
        outcome = _Outcome()
        for job in jobs:
            job.error = None
        posting_codes = {p.account_code for j in jobs for p in j.postings}
        all_codes = posting_codes | {r.account_code for j in jobs for r in j.receipts}
        now = timezone.now()
        self.stats.transactions += 1
        with _sqlite_write_lock(), transaction.atomic():
            cursor = _cursor()
            # 1. Lock the posting accounts in primary-key order (Postgres). SQLite has no
            #    row locks; its BEGIN IMMEDIATE already holds the database's write lock.
            ids = self._account_ids(cursor, all_codes, lock=posting_codes)
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
            posted = post_in_transaction(
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
            self.stats.postings_inserted += len(posted.new_keys)
            self.stats.postings_skipped += posted.submitted - len(posted.new_keys)
            new_receipts = posted.new_receipts
            self.stats.receipts_inserted += len(new_receipts)
            self.stats.receipts_skipped += len(receipt_rows) - len(new_receipts)
            if new_receipts:
                receipt_ids = sorted(int(row[0]) for row in new_receipts)
                transaction.on_commit(lambda: _queue_apply_receipts(receipt_ids), robust=True)
            outcome.balances = posted.balances
            outcome.jobs = ok_jobs
            outcome.new_receipts = [receipt_rows[str(row[1])] for row in new_receipts]
        return outcome

    def _account_ids(self, cursor: Any, codes: set[str], *, lock: set[str]) -> dict[str, int]:
        """Ids of ``codes``; the ``lock`` ones locked in primary-key order where supported."""
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
            ids.update((str(code), int(pk)) for pk, code in cursor.fetchall())
        # The id cache is read and extended without the book's lock (single dict
        # operations, atomic under the GIL): the writer must not contend with ``hold``.
        known = self._ids
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

    def apply_outcome(self, outcome: _Outcome) -> None:
        """Apply what :meth:`process_jobs` returned with ``defer_apply`` (any thread)."""
        self._apply(outcome)

    def _apply(self, outcome: _Outcome) -> None:
        """After COMMIT: fresh balances and hold releases in one critical section."""
        with self._lock:
            for pk, (balance, version) in outcome.balances.items():
                acct = self._by_id.get(pk)
                if acct is not None and version >= acct.version:
                    acct.balance, acct.version = balance, version
            for job in outcome.jobs:
                for p in job.postings:
                    self._release_locked(p.key)
                for r in job.receipts:
                    self._release_locked(r.key)
            for r in outcome.new_receipts:
                key = (r.account_code, r.payment_id)
                if key in self._totals:
                    self._totals[key] += r.amount
            self.stats.commits += len(outcome.jobs)

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the flushers, fail queued commits with :class:`BookClosed`, stop the thread."""
        self._closed = True
        with self._writers_lock:
            writers = list(self._writers.values())
            self._writers.clear()
        for writer in writers:
            writer.close()
        # Last in the writer's queue: a batch already taken finishes first, anything
        # queued later sees the book closed and does not touch the database, so the
        # writer's connection stays closed (a test database can then be dropped).
        try:
            done = self._executor.submit(connections.close_all)
        except RuntimeError:  # closed twice
            return
        self._executor.shutdown(wait=True)
        with contextlib.suppress(Exception):
            done.result(timeout=0)


@dataclass(slots=True)
class _Outcome:
    balances: dict[int, tuple[int, int]] = field(default_factory=dict)
    jobs: list[_Job] = field(default_factory=list)
    new_receipts: list[ReceiptDraft] = field(default_factory=list)


def _heal_connection() -> None:
    """Drop the writer's connection if an error left it unusable (it is long-lived: no
    per-batch ``close_if_unusable_or_obsolete``, which with ``CONN_MAX_AGE = 0`` would
    reconnect for every batch)."""
    if connection.errors_occurred:
        if connection.connection is not None and not connection.is_usable():
            connection.close()
        connection.errors_occurred = False


def _cursor() -> CursorWrapper:
    """A cursor without the ``DEBUG`` query log (the writer runs thousands of statements a
    second; the log would also quote every parameter with an extra query on SQLite).
    Errors are still wrapped into ``django.db`` exceptions."""
    connection.ensure_connection()
    return CursorWrapper(connection.create_cursor(), connection)


def _adapt_now(now: datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(now)


class _QueryCounter:
    def __init__(self, stats: BookStats) -> None:
        self.stats = stats

    def __call__(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        self.stats.queries += 1
        return execute(sql, params, many, context)


def _insert_returning(
    cursor: Any,
    table: str,
    columns: Sequence[tuple[str, str]],
    rows: Sequence[tuple[Any, ...]],
    *,
    returning: str,
) -> list[tuple[Any, ...]]:
    """``INSERT ... ON CONFLICT (key) DO NOTHING RETURNING ...``: only the new rows come back.

    ``columns`` are ``(name, postgres type)``. Works on Postgres (one statement whatever the
    row count: ``SELECT * FROM unnest(<one array per column>)``, cheap to parse and plan)
    and on SQLite >= 3.35 (multi-row ``VALUES``). On Postgres the conflict check waits for a
    concurrent transaction inserting the same key and skips the row if that one commits.
    Values must already be adapted (ints for amounts, ``_adapt_now`` for times).
    """
    if not rows:
        return []
    qn = connection.ops.quote_name
    cols = ", ".join(qn(name) for name, _type in columns)
    tail = f"ON CONFLICT ({qn('key')}) DO NOTHING RETURNING {returning}"
    if connection.vendor == "postgresql":
        arrays = ", ".join(f"%s::{type_}[]" for _name, type_ in columns)
        cursor.execute(
            f"INSERT INTO {qn(table)} ({cols}) SELECT * FROM unnest({arrays}) {tail}",
            [list(column) for column in zip(*rows, strict=True)],
        )
        return [tuple(r) for r in cursor.fetchall()]
    one = "(" + ", ".join(["%s"] * len(columns)) + ")"
    out: list[tuple[Any, ...]] = []
    for start in range(0, len(rows), INSERT_CHUNK):
        chunk = rows[start : start + INSERT_CHUNK]
        cursor.execute(
            f"INSERT INTO {qn(table)} ({cols}) VALUES {', '.join([one] * len(chunk))} {tail}",
            [value for row in chunk for value in row],
        )
        out.extend(tuple(r) for r in cursor.fetchall())
    return out


POSTING_COLUMNS = (
    ("account_id", "bigint"),
    ("amount", "numeric"),
    ("key", "varchar"),
    ("memo", "varchar"),
    ("created_at", "timestamptz"),
)
RECEIPT_COLUMNS = (
    ("account_id", "bigint"),
    ("payment_id", "varchar"),
    ("sequence", "bigint"),
    ("amount", "numeric"),
    ("key", "varchar"),
    ("created_at", "timestamptz"),
)


@dataclass(slots=True)
class PostResult:
    """What :func:`post_in_transaction` did: the keys it inserted and the new balances."""

    new_keys: set[str]
    balances: dict[int, tuple[int, int]]  # account id -> (balance, version) after the update
    submitted: int  # distinct non-zero keys offered
    new_receipts: list[tuple[int, str]] = field(default_factory=list)  # (id, key) inserted


def post_in_transaction(
    entries: Sequence[tuple[int, int, str, str]],
    *,
    now: datetime,
    cursor: Any = None,
    receipts: Sequence[tuple[int, str, int, int, str]] = (),
) -> PostResult:
    """Insert the postings ``(account_id, amount, key, memo)`` whose key is new; move balances.

    Must run inside ``transaction.atomic()`` with the accounts already locked in
    primary-key order. Zero amounts and repeated keys (the first wins) are dropped; rows
    are inserted in key order, so two writers inserting overlapping keys wait for each
    other instead of deadlocking. Then, per account, ``balance = balance + delta, version
    = version + 1`` with the deltas of the **inserted** rows only.

    ``receipts`` (``(account_id, payment_id hex, sequence, amount, key)``, keys distinct,
    in key order) are inserted in the same way (``ON CONFLICT (key) DO NOTHING``); their
    new ``(id, key)`` rows are in :attr:`PostResult.new_receipts`.

    On Postgres all of it is **one statement** (data-modifying CTEs: the inserts, then
    the ``UPDATE ... FROM`` the sums of what was inserted), so a batch costs one round
    trip to the server besides the lock and the COMMIT. On SQLite (an in-process library,
    no round trips) one multi-row ``INSERT ... RETURNING`` per table and one ``UPDATE``
    per account in primary-key order.
    """
    cursor = cursor or _cursor()
    rows: dict[str, tuple[int, int, str, str]] = {}
    for entry in entries:
        if entry[1] != 0 and entry[2] not in rows:
            rows[entry[2]] = entry
    stamp = _adapt_now(now)
    posting_rows = [
        (aid, amount, key, memo, stamp)
        for aid, amount, key, memo in (rows[k] for k in sorted(rows))
    ]
    receipt_rows = [(*r, stamp) for r in receipts]
    if connection.vendor == "postgresql":
        return _post_postgres(cursor, posting_rows, receipt_rows, len(rows))
    inserted = _insert_returning(
        cursor, Posting._meta.db_table, POSTING_COLUMNS, posting_rows, returning="key"
    )
    new_keys = {str(row[0]) for row in inserted}
    deltas: dict[int, int] = defaultdict(int)
    for key in new_keys:
        deltas[rows[key][0]] += rows[key][1]
    balances: dict[int, tuple[int, int]] = {}
    table = connection.ops.quote_name(LedgerAccount._meta.db_table)
    for pk in sorted(deltas):
        if not deltas[pk]:
            continue
        cursor.execute(
            f"UPDATE {table} SET balance = balance + %s, version = version + 1 "
            f"WHERE id = %s RETURNING balance, version",
            [deltas[pk], pk],
        )
        balance, version = cursor.fetchone()
        balances[pk] = _checked_balance(pk, balance, version)
    new_receipts = _insert_returning(
        cursor, Receipt._meta.db_table, RECEIPT_COLUMNS, receipt_rows, returning="id, key"
    )
    return PostResult(new_keys, balances, len(rows), [(int(i), str(k)) for i, k in new_receipts])


def _checked_balance(pk: int, balance: Any, version: Any) -> tuple[int, int]:
    if isinstance(balance, float) or abs(int(balance)) > _max_balance():
        raise InvalidAmount(f"balance of account {pk} would leave the database's range")
    return int(balance), int(version)


def _unnest(
    columns: Sequence[tuple[str, str]], rows: Sequence[tuple[Any, ...]]
) -> tuple[str, list[Any]]:
    """``SELECT * FROM unnest(<one typed array per column>)`` and its parameters."""
    arrays = ", ".join(f"%s::{type_}[]" for _name, type_ in columns)
    params = [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in columns]
    return f"SELECT * FROM unnest({arrays})", params


def _post_postgres(
    cursor: Any,
    posting_rows: list[tuple[Any, ...]],
    receipt_rows: list[tuple[Any, ...]],
    submitted: int,
) -> PostResult:
    qn = connection.ops.quote_name
    accounts = qn(LedgerAccount._meta.db_table)

    def insert(
        name: str, table: str, columns: Sequence[tuple[str, str]], rows: Any, returning: str
    ) -> tuple[str, list[Any]]:
        select, params = _unnest(columns, rows)
        cols = ", ".join(qn(c) for c, _type in columns)
        return (
            f"{name} AS (INSERT INTO {qn(table)} ({cols}) {select} "
            f"ON CONFLICT ({qn('key')}) DO NOTHING RETURNING {returning})",
            params,
        )

    ctes: list[str] = []
    params: list[Any] = []
    sql, p = insert(
        "p",
        Posting._meta.db_table,
        POSTING_COLUMNS,
        posting_rows,
        f"account_id, amount, {qn('key')}",
    )
    ctes.append(sql)
    params += p
    selects = [f"SELECT 1, {qn('key')}, NULL::bigint, NULL::numeric, NULL::bigint FROM p"]
    if receipt_rows:
        sql, p = insert(
            "r", Receipt._meta.db_table, RECEIPT_COLUMNS, receipt_rows, f"id, {qn('key')}"
        )
        ctes.append(sql)
        params += p
        selects.append(f"SELECT 2, {qn('key')}, id, NULL, NULL FROM r")
    ctes.append(
        f"u AS (UPDATE {accounts} a SET balance = a.balance + d.delta, version = a.version + 1 "
        f"FROM (SELECT account_id, SUM(amount) AS delta FROM p GROUP BY account_id) d "
        f"WHERE a.id = d.account_id AND d.delta <> 0 RETURNING a.id, a.balance, a.version)"
    )
    selects.append("SELECT 3, NULL, id, balance, version FROM u")
    cursor.execute(f"WITH {', '.join(ctes)} {' UNION ALL '.join(selects)}", params)
    new_keys: set[str] = set()
    new_receipts: list[tuple[int, str]] = []
    balances: dict[int, tuple[int, int]] = {}
    for kind, key, pk, balance, version in cursor.fetchall():
        if kind == 1:
            new_keys.add(str(key))
        elif kind == 2:
            new_receipts.append((int(pk), str(key)))
        else:
            balances[int(pk)] = _checked_balance(int(pk), balance, version)
    return PostResult(new_keys, balances, submitted, new_receipts)


def _max_balance() -> int:
    # SQLite keeps integers beyond int64 as REAL (rounded): refuse such a balance.
    return INT64_MAX if connection.vendor == "sqlite" else 10**MONEY_DIGITS - 1


def _queue_apply_receipts(receipt_ids: list[int]) -> None:
    """Hand newly committed receipts to the :class:`ReceiptApplier` (called after COMMIT).

    Never blocks the ledger writer: the applier thread applies them in bulk (eager
    Celery, the embedded default) or publishes one ``payments.apply_receipts`` task per
    batch (a real worker). Receipts left unapplied (a crash, a lost message) are applied
    by the recovery sweep (:mod:`payments.recovery`), at start-up and periodically.
    """
    get_applier().submit(receipt_ids)


# Publishing one ``payments.apply_receipts``: a few quick retries of the broker, then the
# applier applies the receipts itself (a broker outage never leaves them waiting).
APPLY_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.4}


class ReceiptApplier:
    """Applies committed receipts off the ledger writer's critical path, in bulk.

    One daemon thread per process, started on first use. Receipt ids handed in by
    :meth:`submit` are collected for up to ``delay`` seconds (or until ``max_batch`` are
    waiting), then, with eager Celery, applied by ``services.apply_receipts`` in this
    thread (one transaction for the lot; on SQLite under :data:`SQLITE_WRITE_LOCK`, so it
    never makes the ledger writer wait on SQLite's busy handler), else sent to the worker
    as one ``payments.apply_receipts`` task; a publish that still fails after
    :data:`APPLY_PUBLISH_RETRY` is applied here instead. :meth:`flush` waits until
    everything submitted so far is applied or sent. :meth:`sweep` (the recovery's, any
    thread) applies, here, every receipt left unapplied for a while.
    """

    def __init__(self, *, delay: float = 0.05, max_batch: int = 2000) -> None:
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
        finally:
            with contextlib.suppress(Exception):
                connections.close_all()  # this thread's connections

    def _apply(self, ids: list[int]) -> None:
        from payments.tasks import apply_receipts

        self.batches += 1
        if not apply_receipts.app.conf.task_always_eager:
            try:
                apply_receipts.apply_async(
                    kwargs={"receipt_ids": ids}, retry=True, retry_policy=APPLY_PUBLISH_RETRY
                )
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

    def _apply_here(self, ids: list[int]) -> int:
        """``services.apply_receipts`` in this thread (SQLite: under the write lock), with
        two retries on database errors."""
        from payments import services

        for attempt in range(3):
            try:
                with _sqlite_write_lock():
                    return services.apply_receipts(receipt_ids=ids)
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

        Idempotent like ``services.apply_receipts`` (applied receipts are skipped under
        row locks), so it may overlap the applier thread, a worker or another process.
        """
        cutoff = timezone.now() - older_than
        with _sqlite_write_lock():
            ids = list(
                Receipt.objects.filter(applied_at__isnull=True, created_at__lte=cutoff)
                .order_by("id")
                .values_list("id", flat=True)[:limit]
            )
        applied = 0
        # One transaction (and, on SQLite, one hold of the write lock) per chunk: the
        # ledger writer gets its turn between them.
        for start in range(0, len(ids), SWEEP_CHUNK):
            applied += self._apply_here(ids[start : start + SWEEP_CHUNK])
        if applied:
            self.applied += applied
            logger.warning("ledger: the recovery sweep applied %d receipts", applied)
        return applied


SWEEP_CHUNK = 500


SQLITE_WRITE_LOCK = threading.Lock()


@contextlib.contextmanager
def _sqlite_write_lock() -> Iterator[None]:
    """On SQLite, one in-process writer at a time (the ledger writer and the applier hand
    the database over without SQLite's sleeping busy handler); elsewhere a no-op."""
    if connection.vendor != "sqlite":
        yield
        return
    with SQLITE_WRITE_LOCK:
        yield


_applier: ReceiptApplier | None = None


def get_applier() -> ReceiptApplier:
    """The process-wide :class:`ReceiptApplier` (created on first use)."""
    global _applier
    applier = _applier
    if applier is None:
        with _book_lock:
            if _applier is None:
                _applier = ReceiptApplier()
            applier = _applier
    return applier


def wait_receipts_applied(timeout: float = 30.0) -> bool:
    """Wait until every receipt committed so far in this process is applied (eager Celery)
    or sent to the worker. For tests, commands and shutdown; ``True`` when done."""
    applier = _applier
    return True if applier is None else applier.flush(timeout)


# --- process-wide instance -----------------------------------------------------------------

_book: BalanceBook | None = None
_book_lock = threading.Lock()


def get_book() -> BalanceBook:
    """The process-wide book (created on first use; accounts load lazily)."""
    global _book
    book = _book
    if book is None:
        with _book_lock:
            if _book is None:
                _book = BalanceBook()
            book = _book
    return book


def peek_book() -> BalanceBook | None:
    """The process-wide book if one exists (services notify it; they never create one)."""
    return _book


def reset_book() -> None:
    """Close the process-wide book and forget it (tests; the next ``get_book`` makes a new one)."""
    global _book
    with _book_lock:
        book, _book = _book, None
    if book is not None:
        book.close()
    global _applier
    with _book_lock:
        applier, _applier = _applier, None
    if applier is not None:
        applier.close()


# --- accounts -----------------------------------------------------------------------------


def ensure_account(
    code: str,
    *,
    kind: str,
    min_balance: int | None = None,
    max_balance: int | None = None,
    asset_code: str | None = None,
    asset_scale: int | None = None,
) -> LedgerAccount:
    """Get or create the account ``code`` (sync service, own transaction).

    Created with the given kind, limits and asset (default: ``ILP_ASSET_CODE`` /
    ``ILP_ASSET_SCALE``). An existing account keeps its limits (change them with
    ``services.account_set_limits``); a different ``kind``, or an explicitly given
    different asset, raises :class:`AccountKindMismatch`. Idempotent on ``code`` (the
    unique constraint settles concurrent creators).
    """
    _check_text(code, "code", MAX_CODE_LENGTH)
    if kind not in LedgerAccount.Kind.values:
        raise ValueError(f"unknown account kind {kind!r}")
    for name, value in (("min_balance", min_balance), ("max_balance", max_balance)):
        if value is not None and abs(_check_int(value, name)) > UINT64_MAX:
            raise InvalidAmount(f"{name} out of range")
    if min_balance is not None and max_balance is not None and min_balance > max_balance:
        raise InvalidAmount("min_balance must not exceed max_balance")
    with transaction.atomic():
        account, created = LedgerAccount.objects.get_or_create(
            code=code,
            defaults={
                "kind": kind,
                "asset_code": asset_code if asset_code is not None else settings.ILP_ASSET_CODE,
                "asset_scale": asset_scale if asset_scale is not None else settings.ILP_ASSET_SCALE,
                "min_balance": min_balance,
                "max_balance": max_balance,
            },
        )
    if not created:
        if account.kind != kind:
            raise AccountKindMismatch(f"account {code!r} is a {account.kind} account", account=code)
        if (asset_code is not None and asset_code != account.asset_code) or (
            asset_scale is not None and asset_scale != account.asset_scale
        ):
            raise AccountKindMismatch(f"account {code!r} has another asset", account=code)
    return account
