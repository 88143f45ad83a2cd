"""The balance book: balances and in-flight holds in memory, over the ledger tables.

One :class:`BalanceBook` per process (``payments.ledger.get_book``). It keeps, in memory,
the committed balance and limits of the accounts it has seen plus the **holds** (amounts
reserved by packets in flight). Holds are per process and are never written anywhere: a
crash drops them, which is right, because the Prepares they guard expire with the process.

Writes go through :meth:`BalanceBook.commit`, which enqueues the postings and receipts and
waits. Each event loop's queue (:class:`~payments.ledger.writer._LoopWriter`) hands
everything submitted in one loop iteration, in one thread hop, to the single ledger-writer
thread, which writes the whole batch in **one database transaction**
(:func:`~payments.ledger.writer.write_batch`):

1. lock the accounts of the postings (``SELECT ... FOR NO KEY UPDATE ORDER BY id`` on
   Postgres; SQLite's ``BEGIN IMMEDIATE`` already serialises writers);
2. ``INSERT ... ON CONFLICT (key) DO NOTHING RETURNING key`` the postings and receipts
   (SQLite >= 3.35 and Postgres both return only the rows actually inserted, and the
   conflict check waits for concurrent inserters of the same key, so a key is counted once
   even across processes);
3. one ``UPDATE ... SET balance = balance + delta, version = version + 1`` per account,
   with the deltas of the newly inserted postings only;
4. read back ``balance, version`` of the locked accounts (the book's refresh), and hand
   the new receipts' ids to the book's :class:`ReceiptSink` with ``transaction.on_commit``
   (in the process's book: the receipt applier, :mod:`payments.ledger.applier`).

After the commit the loop that waits applies the batch's outcome (in-memory balances, the
holds of the committed keys dropped) in one critical section, then resolves the waiters'
futures. A batch that fails is retried once (every write is idempotent on its key, so a
retry of a batch whose COMMIT was in fact durable applies nothing twice); if it fails
again, only its waiters get :class:`~payments.errors.CommitFailed` and the next batch
starts afresh.

Threading: the in-memory state is guarded by one ``threading.Lock``; ``hold``,
``release`` and ``balance`` may be called from any thread and never do I/O when the account
is loaded. Database work happens only in the writer's lanes (one thread each, see
:func:`writer_lanes`); applying receipts happens in the applier's thread, never here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol, TypeVar

from django.conf import settings
from django.db import DatabaseError, connection, connections
from django.db.models import Q, Sum

from ilp.oer import INT64_MAX, UINT64_MAX
from interledger_site import metrics
from payments.errors import (
    AccountNotLoaded,
    BalanceLimitExceeded,
    BookClosed,
    CommitFailed,
    DuplicateHold,
    InvalidAmount,
    PaymentsError,
    UnknownAccount,
)
from payments.ledger.drafts import PostingDraft, ReceiptDraft, _check_int
from payments.ledger.shared import HoldDraft, MirrorRow, SharedCredit, SharedHold
from payments.ledger.sql import _ACCOUNT_FIELDS, _heal_connection
from payments.ledger.writer import (
    BookStats,
    _Job,
    _LoopWriter,
    _Outcome,
    _QueryCounter,
    write_batch,
)
from payments.models import LedgerAccount, Receipt

# After a commit, for the shared credit: (account id, balance, version), the shared holds
# (account id, key) it ended, and what it took out of this process's leases (account id,
# lease key, amount).
_MirrorArgs = tuple[list[tuple[int, int, int]], list[tuple[int, str]], list[tuple[int, str, int]]]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


def writer_lanes() -> int:
    """How many batches the writer keeps in flight (``ILP_LEDGER_WRITER_LANES``).

    On PostgreSQL the default is 2: the next batch is sent while the one before commits,
    and waits in the server on the accounts' row locks (taken in id order), so the
    batches touching an account still commit one after the other, with no client round
    trip between them. SQLite has one write lock: always 1.
    """
    if connections["default"].vendor != "postgresql":
        return 1
    return max(1, int(getattr(settings, "ILP_LEDGER_WRITER_LANES", 2)))


class ReceiptSink(Protocol):
    """Where a book hands the receipts it committed (the process's receipt applier)."""

    def submit(self, receipt_ids: list[int]) -> None:
        """Take the ids of receipts just committed (called after COMMIT, in the writer
        thread: must not block)."""

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything submitted so far is applied (or sent); ``False`` on timeout."""


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


# Not frozen (never changed after it is made either): a frozen dataclass's __init__ sets
# each field through object.__setattr__, about twice the cost, and one is made per packet.
@dataclass(slots=True)
class _Hold:
    account_code: str
    amount: int  # > 0
    credit: bool
    at: float  # time.monotonic()
    account_id: int = 0
    shared: bool = False  # also held in Redis (payments.ledger.shared)
    expires_ms: int = 0  # when Redis drops it (Unix ms), shared holds only
    lease: Any = None  # taken from this lease (payments.ledger.shared._Lease), not Redis


def _ledger_scope() -> str:
    """Which ledger this is, for the shared credit's Redis keys: account ids restart with a
    re-created database (a restore, the test suite), and must not meet an older mirror."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT oid FROM pg_database WHERE datname = current_database()")
            (oid,) = cursor.fetchone()
        return f"{connection.settings_dict['NAME']}.{oid}"
    return str(connection.settings_dict["NAME"])


def _opt_int(value: Decimal | int | None) -> int | None:
    return None if value is None else int(value)


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


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
        receipts: ReceiptSink | None = None,
        shared: SharedCredit | None = None,
        lanes: int | None = None,
    ) -> None:
        self._receipts = receipts
        self.max_batch = max_batch
        self.refresh_interval = refresh_interval
        max_hold_ms = int(getattr(settings, "ILP_MAX_HOLD_TIME_MS", 30_000))
        self.hold_ttl = hold_ttl if hold_ttl is not None else max(60.0, 4 * max_hold_ms / 1000)
        self.max_hold_ms = max_hold_ms
        self.totals_cache_size = totals_cache_size
        self.stats = BookStats()
        self._lock = threading.Lock()
        self._accounts: dict[str, _Account] = {}
        self._by_id: dict[int, _Account] = {}
        self._ids: dict[str, int] = {}
        self._holds: dict[str, _Hold] = {}
        self._totals: OrderedDict[tuple[str, bytes], int] = OrderedDict()
        # Receipts of a payment in a batch not applied yet (from before its SQL): a total
        # read meanwhile may or may not include them, so it is not remembered.
        self._totals_in_flight: Counter[tuple[str, bytes]] = Counter()
        self._writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWriter] = (
            weakref.WeakKeyDictionary()
        )
        self._writers_lock = threading.Lock()
        # (the last loop, weakly; its writer): a process serves its packets from one loop,
        # and a WeakKeyDictionary lookup makes a weakref per call. One tuple, so a thread
        # never sees one loop with another loop's writer.
        self._last_writer: tuple[weakref.ref[asyncio.AbstractEventLoop], _LoopWriter] | None = None
        self.lanes = lanes if lanes is not None else writer_lanes()
        self._executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"payments-ledger-{n}")
            for n in range(self.lanes)
        ]
        self._writer_threads: set[int] = set()
        self._closed = False
        self._last_refresh = time.monotonic()
        self._query_counter = _QueryCounter(self.stats)
        # Shared credit (Redis): limits checked for every process of the node at once.
        self.shared = shared
        if shared is not None:
            if shared.lease_ttl_ms is None:
                # A lease outlives the holds taken from it (at most max_hold plus the
                # margin, give or take a keeper pass): holds due later go to Redis.
                shared.lease_ttl_ms = max_hold_ms + shared.hold_margin_ms + 5_000
            shared.resync = self.refresh
            shared.live_holds = self._live_shared_holds
            shared.load_missing = self.load_account
            shared.load_missing_sync = self.load_account_sync

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
        if self.shared is not None:
            self._hold_shared_sync(HoldDraft(account_code, amount, key, credit))
            return
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
            held = self._holds.get(key)
            self._release_locked(key)
        if held is not None and held.shared and held.lease is None and self.shared is not None:
            self.shared.release(held.account_id, key)

    def _release_locked(self, key: str, *, committed: bool = False) -> None:
        held = self._holds.pop(key, None)
        if held is None:
            return
        if held.lease is not None and self.shared is not None:
            # Back into the lease (no Redis call), or, committed, out of it for good.
            self.shared.lease_end(held.lease, held.amount, committed)
        acct = self._accounts.get(held.account_code)
        if acct is None:
            return
        if held.credit:
            acct.credits -= held.amount
        else:
            acct.debits -= held.amount

    # -- holds of a packet together; across processes with shared credit ---------------------

    async def hold_many(
        self, holds: Sequence[HoldDraft], *, expires_at: datetime | None = None
    ) -> None:
        """Take ``holds`` together, all of them or none (a forward's debit hold on the source
        and credit hold on the next hop), loading their accounts as needed.

        With shared credit (:mod:`payments.ledger.shared`, ``REDIS_URL``) the holds of
        accounts that have a limit on their side are checked and taken in Redis, in one
        script call for everything the event loop queued meanwhile, so the limit holds for
        every process of the node; ``expires_at`` (the Prepare's) bounds how long Redis
        keeps them if this process dies. With leases (:class:`SharedCredit`) most of them
        are taken from this process's slice of the account's room, with no round trip.
        Raises :class:`BalanceLimitExceeded` (``account=``
        the one without room), :class:`DuplicateHold`, :class:`InvalidAmount`.
        """
        live: list[HoldDraft] = []
        for h in holds:
            if _check_int(h.amount, "amount") < 0 or h.amount > UINT64_MAX:
                raise InvalidAmount("hold amount must be 0 to 2**64-1", amount=str(h.amount))
            if h.amount:
                live.append(h)
        accounts = self._accounts
        for h in live:
            # Lock-free (a dict membership test is atomic under the GIL), as in _hold: an
            # account forgotten meanwhile is caught under the lock by _plan_shared.
            if h.account_code not in accounts:
                await self.load_account(h.account_code)
        if self.shared is None:
            taken: list[str] = []
            try:
                for h in live:
                    self._hold(h.account_code, h.amount, h.key, credit=h.credit)
                    taken.append(h.key)
            except BaseException:
                for key in taken:
                    self.release(key)
                raise
            return
        remote, local = self._plan_shared(live, expires_at)
        leases = self.shared.take_leased(remote) if remote else None
        if remote and leases is None:
            await self.shared.hold(remote)
        self._record_shared(remote, local, leases)

    def _plan_shared(
        self, holds: Sequence[HoldDraft], expires_at: datetime | None
    ) -> tuple[list[SharedHold], list[SharedHold]]:
        """Split into the holds Redis must check (a limit on their side) and the rest."""
        expires_ms = self._expiry_ms(expires_at)
        remote: list[SharedHold] = []
        local: list[SharedHold] = []
        with self._lock:
            for h in holds:
                acct = self._accounts.get(h.account_code)
                if acct is None:
                    raise AccountNotLoaded(f"account {h.account_code!r} is not loaded")
                existing = self._holds.get(h.key)
                if existing is not None:
                    if (existing.account_code, existing.amount, existing.credit) == (
                        h.account_code,
                        h.amount,
                        h.credit,
                    ):
                        continue
                    raise DuplicateHold(f"hold key {h.key!r} is already used", key=h.key)
                limit = acct.max_balance if h.credit else acct.min_balance
                one = SharedHold(acct.id, h.account_code, h.amount, h.key, h.credit, expires_ms)
                (remote if limit is not None else local).append(one)
        return remote, local

    def _record_shared(
        self, remote: list[SharedHold], local: list[SharedHold], leases: list[Any] | None = None
    ) -> None:
        now = time.monotonic()
        with self._lock:
            for shared, group in ((True, remote), (False, local)):
                for i, h in enumerate(group):
                    acct = self._accounts.get(h.account_code)
                    if acct is not None:
                        if h.credit:
                            acct.credits += h.amount
                        else:
                            acct.debits += h.amount
                    self._holds[h.key] = _Hold(
                        h.account_code,
                        h.amount,
                        h.credit,
                        now,
                        h.account_id,
                        shared,
                        h.expires_ms,
                        leases[i] if shared and leases is not None else None,
                    )

    def _hold_shared_sync(self, hold: HoldDraft) -> None:
        # The sync API with shared credit: one blocking round trip (the switch uses
        # hold_many, batched per loop iteration).
        remote, local = self._plan_shared([hold], None)
        if remote:
            assert self.shared is not None
            self.shared.hold_sync(remote)
        self._record_shared(remote, local)

    def _expiry_ms(self, expires_at: datetime | None) -> int:
        now_ms = int(time.time() * 1000)
        ttl_ms = int(self.hold_ttl * 1000)
        # No Prepare given (the sync API): a hold guards one Prepare, at most max_hold long.
        default = now_ms + self.max_hold_ms
        at = default if expires_at is None else int(expires_at.timestamp() * 1000)
        # Within the book's own bounds whatever clock the Prepare's expiry came from.
        at = min(max(at, now_ms + 1000), now_ms + ttl_ms)
        return at + (self.shared.hold_margin_ms if self.shared is not None else 0)

    def _live_shared_holds(self) -> list[SharedHold]:
        with self._lock:
            # Holds taken from leases are re-asserted by the shared credit, as its leases.
            return [
                SharedHold(h.account_id, h.account_code, h.amount, key, h.credit, h.expires_ms)
                for key, h in self._holds.items()
                if h.shared and h.lease is None
            ]

    def _mirror(self, rows: Iterable[dict[str, Any]]) -> None:
        """Bring the shared mirror up to account rows read in a committed transaction."""
        if self.shared is None:
            return
        mirror = [
            MirrorRow(
                int(r["id"]),
                r["code"],
                int(r["balance"]),
                int(r["version"]),
                _opt_int(r["min_balance"]),
                _opt_int(r["max_balance"]),
            )
            for r in rows
            if r["min_balance"] is not None or r["max_balance"] is not None
        ]
        if mirror:
            self.shared.seed_sync(mirror)

    def _mirror_commit(self, outcome: _Outcome) -> None:
        """After COMMIT (writer thread): the new balances and the end of the committed
        keys' shared holds, in one step in Redis (never one without the other)."""
        self.mirror_outcome(self._mirror_args(outcome))

    def _mirror_args(self, outcome: _Outcome) -> _MirrorArgs | None:
        """What :meth:`mirror_outcome` sends for a committed batch. Read before the loop
        applies the batch (its release drops the holds this looks up)."""
        if self.shared is None:
            return None
        released: list[tuple[int, str]] = []
        consumed: dict[tuple[int, str], int] = {}
        seen: set[str] = set()
        with self._lock:
            for job in outcome.jobs:
                for key in itertools.chain(
                    (p.key for p in job.postings), (r.key for r in job.receipts)
                ):
                    h = self._holds.get(key)
                    if h is None or not h.shared or key in seen:
                        continue
                    # A key met twice (a posting and a receipt, or a packet committed
                    # twice) ends its hold once: a lease shrunk twice would show room
                    # that is not there.
                    seen.add(key)
                    if h.lease is None:
                        released.append((h.account_id, key))
                    else:
                        lk = (h.account_id, h.lease.key)
                        consumed[lk] = consumed.get(lk, 0) + h.amount
        balances = [(pk, b, v) for pk, (b, v) in outcome.balances.items()]
        used = [(pk, key, amount) for (pk, key), amount in consumed.items()]
        return (balances, released, used) if balances or released or used else None

    def mirror_outcome(self, args: _MirrorArgs | None) -> None:
        """The Redis call of :meth:`_mirror_commit` (writer thread)."""
        if self.shared is None or args is None:
            return
        try:  # the batch is durable: nothing here may fail its commits
            self.shared.commit_sync(*args)
        except Exception:
            logger.exception("ledger: shared credit not told of a commit (holds expire)")

    def mirror_outcome_on_loop(self, args: _MirrorArgs | None) -> None:
        """:meth:`mirror_outcome` on the event loop that waited for the batch: its ops ride
        that loop's next shared-credit call (no round trip of their own, none in the
        writer thread, whose next batch therefore starts at once)."""
        if self.shared is None or args is None:
            return
        try:
            self.shared.commit(*args)
        except Exception:
            logger.exception("ledger: shared credit not told of a commit (holds expire)")

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
        # _submit's body, inline (a coroutine fewer on every packet's way).
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._writer_for(loop).submit(_Job("commit", fut, postings=postings, receipts=receipts))
        # A cancelled caller cancels only this future: the job stays queued and is written.
        await fut

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
        # (the delivery skips futures that are already done).
        return await fut

    def _writer_for(self, loop: asyncio.AbstractEventLoop) -> _LoopWriter:
        if self._closed:
            raise BookClosed("the balance book is closed")
        last = self._last_writer
        if last is not None and last[0]() is loop and not last[1].closed:
            return last[1]
        writer = self._writers.get(loop)
        if writer is None or writer.closed:
            with self._writers_lock:
                writer = self._writers.get(loop)
                if writer is None or writer.closed:
                    writer = _LoopWriter(self, loop)
                    self._writers[loop] = writer
        self._last_writer = (weakref.ref(loop), writer)
        return writer

    # -- sync API (threads without an event loop) -------------------------------------------

    def commit_sync(
        self, postings: Sequence[PostingDraft], receipts: Sequence[ReceiptDraft] = ()
    ) -> None:
        """:meth:`commit` for synchronous callers (commands, Celery, threads). Not from a loop."""
        job = _Job("commit", None, postings=tuple(postings), receipts=tuple(receipts))
        self._run_sync(job)
        if job.receipts and self._receipts is not None:
            # As the eager task did before it moved off the writer: a synchronous caller
            # (a command, a test) finds its receipts applied when this returns.
            self._receipts.flush()

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
        if threading.get_ident() in self._writer_threads:
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
        rows = list(rows)
        with self._lock:
            for row in rows:
                self._observe_locked(row, add=False)
        self._mirror(rows)  # e.g. new limits: every process checks them from now on

    def observe_balances(self, balances: dict[int, tuple[int, int]]) -> None:
        """Take ``{account id: (balance, version)}`` read inside a committed transaction
        (what :func:`post_in_transaction` returns). Same rules as :meth:`observe`."""
        with self._lock:
            for pk, (balance, version) in balances.items():
                acct = self._by_id.get(pk)
                if acct is not None and version >= acct.version:
                    acct.balance, acct.version = balance, version
        if self.shared is not None and balances:
            self.shared.commit_sync([(pk, b, v) for pk, (b, v) in balances.items()], ())

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
        """Run ``fn`` in the first lane's thread (synchronous callers, checks)."""
        return self._executors[0].submit(fn, *args)

    def lane_submit(self, lane: int, fn: Callable[..., Any], *args: Any) -> Any:
        return self._executors[lane].submit(fn, *args)

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
        self._writer_threads.add(threading.get_ident())
        if self.shared is not None and not self.shared.scope:
            self.shared.scope = _ledger_scope()
        deferred: _Outcome | None = None
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
                deferred = self._guard(commits, lambda: self._do_commits(commits, defer_apply))
            if totals:
                self._guard(totals, lambda: self._do_totals(totals))
            if refresh or self.due_for_refresh():
                try:
                    self._do_refresh()
                except Exception:
                    logger.exception("ledger: refresh failed")
        return deferred

    def _guard(self, jobs: list[_Job], fn: Callable[[], _T]) -> _T | None:
        try:
            return fn()
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
            return None

    def _do_loads(self, jobs: list[_Job]) -> None:
        codes = {c for j in jobs for c in j.codes}
        rows = list(LedgerAccount.objects.filter(code__in=codes).values(*_ACCOUNT_FIELDS))
        with self._lock:
            for row in rows:
                self._observe_locked(row, add=True)
            found = {r["code"] for r in rows}
        self._mirror(rows)
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
            gone = [
                (self._holds[k].account_id, k)
                for k in stale
                if self._holds[k].shared and self._holds[k].lease is None
            ]
            for key in stale:
                logger.warning("ledger: dropping hold %r older than %ss", key, self.hold_ttl)
                self._release_locked(key)
        if gone and self.shared is not None:
            self.shared.release_sync(gone)
        if not codes:
            return
        rows = list(LedgerAccount.objects.filter(code__in=codes).values(*_ACCOUNT_FIELDS))
        with self._lock:
            for row in rows:
                self._observe_locked(row, add=False)
        self._mirror(rows)

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
                    # A receipt of this payment in a batch not yet applied may be in the
                    # total or not: the answer stands, the memory waits for a later read.
                    if not self._totals_in_flight[key]:
                        self._remember_total_locked(key, total)
        for job in jobs:
            if job.result is None and job.total_key is not None:
                job.result = wanted[job.total_key]

    def _remember_total_locked(self, key: tuple[str, bytes], total: int) -> None:
        self._totals[key] = total
        self._totals.move_to_end(key)
        while len(self._totals) > self.totals_cache_size:
            self._totals.popitem(last=False)

    def _do_commits(self, jobs: list[_Job], defer_apply: bool = False) -> _Outcome | None:
        """Write the commits; with ``defer_apply`` their outcome is returned, not applied."""
        on_sqlite = connection.vendor == "sqlite"
        live: list[_Job] = []
        for job in jobs:
            if on_sqlite and any(abs(p.amount) > INT64_MAX for p in job.postings):
                # SQLite stores integers beyond int64 as REAL: refuse rather than round.
                job.error = InvalidAmount("amount exceeds the SQLite int64 range")
            else:
                live.append(job)
        payments = [(r.account_code, r.payment_id) for j in live for r in j.receipts]
        with self._lock:
            self._totals_in_flight.update(payments)
        try:
            outcome = self._write_with_retry(live)
        except BaseException:
            with self._lock:
                self._landed_locked(payments)
            raise
        outcome.receipt_payments = payments
        if defer_apply:
            # The loop that waits for the batch queues the Redis ops into its next
            # shared-credit call once it has the results (writer's _deliver): a Fulfill
            # waits for the durable COMMIT only, the writer for no Redis round trip. Until
            # that call the mirror keeps the old balance and the holds: conservative (less
            # room for a moment), never counted twice.
            outcome.mirror = self._mirror_args(outcome)
            return outcome
        self._mirror_commit(outcome)
        self._apply(outcome)
        return None

    def _write_with_retry(self, live: list[_Job]) -> _Outcome:
        attempts = 0
        while True:
            attempts += 1
            started = time.perf_counter()
            try:
                outcome = write_batch(
                    live,
                    stats=self.stats,
                    known_ids=self._ids,
                    on_new_receipts=self._receipts.submit if self._receipts else None,
                )
                metrics.ledger_batch(len(live), time.perf_counter() - started)
                return outcome
            except DatabaseError as exc:
                metrics.ledger_batch(len(live), time.perf_counter() - started, failed=True)
                if attempts >= 2:
                    raise
                logger.warning("ledger: batch failed (%s); retrying once", exc)
                with self._lock:
                    self._ids.clear()  # in case an account id we cached is gone
                _heal_connection()

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
                    self._release_locked(p.key, committed=True)
                for r in job.receipts:
                    self._release_locked(r.key, committed=True)
            for r in outcome.new_receipts:
                key = (r.account_code, r.payment_id)
                if key in self._totals:
                    self._totals[key] += r.amount
            self._landed_locked(outcome.receipt_payments)
            self.stats.commits += len(outcome.jobs)

    def _landed_locked(self, payments: list[tuple[str, bytes]]) -> None:
        """A batch's receipts are no longer in flight (applied, or the batch failed)."""
        in_flight = self._totals_in_flight
        for key in payments:
            if in_flight[key] <= 1:
                in_flight.pop(key, None)
            else:
                in_flight[key] -= 1

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the per-loop queues, fail queued commits with :class:`BookClosed`, stop the
        writer thread (a batch it already took finishes)."""
        self._closed = True
        if self.shared is not None:
            # Our packets in flight cannot commit any more (BookClosed): their room goes
            # back to the node now, not at their expiry (a kill -9 leaves them to expire).
            gone = self._live_shared_holds()
            if gone:
                self.shared.release_sync([(h.account_id, h.key) for h in gone])
            self.shared.close()
        with self._writers_lock:
            writers = list(self._writers.values())
            self._writers.clear()
            self._last_writer = None
        for writer in writers:
            writer.close()
        # Last in the writer's queue: a batch already taken finishes first, anything
        # queued later sees the book closed and does not touch the database, so the
        # writer's connection stays closed (a test database can then be dropped).
        # Each lane's thread has its own connection.
        try:
            done = [executor.submit(connections.close_all) for executor in self._executors]
        except RuntimeError:  # closed twice
            return
        for executor in self._executors:
            executor.shutdown(wait=True)
        for closed in done:
            with contextlib.suppress(Exception):
                closed.result(timeout=0)
