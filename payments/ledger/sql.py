"""The ledger's SQL: the batch insert of postings and receipts, and what it shares.

:func:`post_in_transaction` is the one write path of postings (the group-commit writer's
batches and ``payments.services``' own transactions). The helpers keep the writer's
long-lived connection usable and its statements cheap; :data:`SQLITE_WRITE_LOCK` lets
the writer and the receipt applier take turns on SQLite without its busy handler.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import DataError, OperationalError, connection
from django.db.backends.utils import CursorWrapper

from ilp.oer import INT64_MAX
from payments.errors import InvalidAmount
from payments.models import MONEY_DIGITS, LedgerAccount, PendingReceipt, Posting, Receipt

logger = logging.getLogger(__name__)

INSERT_CHUNK = 500  # rows per INSERT statement (keeps SQLite under its variable limit)

# The columns of an account row the book keeps in memory (``BalanceBook.observe``).
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


def _heal_connection() -> None:
    """Drop the writer's connection if an error left it unusable (it is long-lived: no
    per-batch ``close_if_unusable_or_obsolete``, which with ``CONN_MAX_AGE = 0`` would
    reconnect for every batch)."""
    if connection.errors_occurred:
        if connection.connection is not None and not connection.is_usable():
            connection.close()
        connection.errors_occurred = False


# SQLite: pages in the WAL before the ledger's connections checkpoint on commit (SQLite's
# default is 1,000). Every payment inserts into two indexes of random keys (the payment
# ids of receipts and incoming payments; posting and receipt keys start with the Prepare's
# expiry, ``links.switch.packet_key``, so they land at their indexes' right edge), so once
# the tables are large each commit dirties a page per payment and a checkpoint copies
# nearly every page of its interval into the database file. Over a longer interval the
# same hot pages are copied once: a cost per payment that stays flat as the tables grow.
# The receipt applier checkpoints on its own, off the writer's path, and starts the WAL
# over (:data:`SQLITE_CHECKPOINT_INTERVAL`, :func:`sqlite_restart_wal`); this is the
# writer's backstop, above what the WAL takes between two of the applier's checkpoints
# under load (~30,000 pages at 4,000 payments/s), so that the writer's commits do not
# checkpoint while the applier does. It bounds the WAL file (256 MiB).
SQLITE_LEDGER_AUTOCHECKPOINT = 64_000  # pages (256 MiB at SQLite's 4 KiB)
SQLITE_CHECKPOINT_INTERVAL = 2.0  # seconds between the applier's checkpoints


def _cursor() -> CursorWrapper:
    """A cursor without the ``DEBUG`` query log (the writer runs thousands of statements a
    second; the log would also quote every parameter with an extra query on SQLite).
    Errors are still wrapped into ``django.db`` exceptions. A SQLite connection gets the
    ledger's checkpoint interval (:data:`SQLITE_LEDGER_AUTOCHECKPOINT`) on first use."""
    connection.ensure_connection()
    if connection.vendor == "sqlite":
        raw = connection.connection
        if getattr(connection, "_ledger_tuned", None) is not raw:
            raw.execute(f"PRAGMA wal_autocheckpoint = {SQLITE_LEDGER_AUTOCHECKPOINT}")
            connection._ledger_tuned = raw  # type: ignore[attr-defined]
    return CursorWrapper(connection.create_cursor(), connection)


def sqlite_checkpoint() -> None:
    """A passive WAL checkpoint on this thread's SQLite connection: copies what it can
    without waiting for, or blocking, the writer or any reader. A no-op elsewhere."""
    if connection.vendor == "sqlite":
        _cursor().execute("PRAGMA wal_checkpoint(PASSIVE)")


def sqlite_restart_wal() -> None:
    """Under :data:`SQLITE_WRITE_LOCK`, after :func:`sqlite_checkpoint`: checkpoint what was
    written meanwhile, then start the WAL over from its first frame. A no-op elsewhere.

    SQLite starts its WAL over only at a write that begins with every frame already in
    the database. The ledger writer, committing back to back while a passive checkpoint
    runs beside it, seldom begins at such a moment: the WAL grew to the writer's
    threshold and a commit of the writer checkpointed it, 40-98 ms about once a second
    over 100,000 payments (docs/PERFORMANCE.md, session 7). Under the lock no writer
    runs, so this checkpoint completes the WAL (unless a reader still needs a frame:
    then the next call does), and the database header's ``user_version``, which nothing
    else uses, is written back unchanged: a one-page write, which starts the WAL over."""
    if connection.vendor != "sqlite":
        return
    cursor = _cursor()
    cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
    cursor.execute("PRAGMA user_version")
    (version,) = cursor.fetchone()
    cursor.execute(f"PRAGMA user_version = {int(version)}")


def _adapt_now(now: datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(now)


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
    commit_locking: Sequence[int] | None = None,
) -> PostResult:
    """Insert the postings ``(account_id, amount, key, memo)`` whose key is new; move balances.

    Must run inside ``transaction.atomic()`` with the accounts already locked in
    primary-key order. Zero amounts and repeated keys (the first wins) are dropped; rows
    are inserted in key order, so two writers inserting overlapping keys wait for each
    other instead of deadlocking. Then, per account, ``balance = balance + delta, version
    = version + 1`` with the deltas of the **inserted** rows only.

    ``receipts`` (``(account_id, payment_id hex, sequence, amount, key)``, keys distinct,
    in key order) are inserted in the same way (``ON CONFLICT (key) DO NOTHING``), each
    new one with its :class:`~payments.models.PendingReceipt`; their new ``(id, key)``
    rows are in :attr:`PostResult.new_receipts`.

    On Postgres all of it is **one statement** (data-modifying CTEs: the inserts, then
    the ``UPDATE ... FROM`` the sums of what was inserted; prepared once per connection,
    its rows inline constants), after one check of the accounts named, so a batch costs
    one round trip to the server besides the lock and the COMMIT. On SQLite (an in-process library,
    no round trips) one multi-row ``INSERT ... RETURNING`` per table and one ``UPDATE``
    per account in primary-key order.

    ``commit_locking`` (Postgres only; the connection in autocommit, no transaction open):
    the whole transaction in **one round trip** instead of four (``BEGIN``, the lock, the
    statement, ``COMMIT``): one simple-protocol query string, ``SELECT
    payments_require_accounts(...); EXECUTE ...``, which the server runs as one implicit
    transaction and commits after the last statement, before it answers: the batch is
    durable when this returns. The statement locks these account ids (``FOR NO KEY
    UPDATE``, primary-key order) after its inserts and before it moves a balance
    (:func:`_batch_statement`). On an error the server rolls all of it back and skips the
    rest. An account id that no longer exists fails the batch (``foreign_key_violation``
    from ``payments_require_accounts``, which stands for the foreign keys: migration
    0008), as an unknown code does.
    """
    if commit_locking is not None and connection.vendor != "postgresql":
        raise ValueError("commit_locking is for Postgres")
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
        return _post_postgres(
            cursor, posting_rows, receipt_rows, len(rows), commit_locking, now=stamp
        )
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
    pending = connection.ops.quote_name(PendingReceipt._meta.db_table)
    for start in range(0, len(new_receipts), INSERT_CHUNK):
        chunk = new_receipts[start : start + INSERT_CHUNK]
        cursor.execute(
            f"INSERT INTO {pending} (receipt_id) VALUES {', '.join(['(%s)'] * len(chunk))}",
            [row[0] for row in chunk],
        )
    return PostResult(new_keys, balances, len(rows), [(int(i), str(k)) for i, k in new_receipts])


def _checked_balance(pk: int, balance: Any, version: Any) -> tuple[int, int]:
    if isinstance(balance, float) or abs(int(balance)) > _max_balance():
        raise InvalidAmount(f"balance of account {pk} would leave the database's range")
    return int(balance), int(version)


def _array_literal(values: Sequence[Any], *, text: bool, scs: bool) -> str:
    """A Postgres array constant of ``values`` as one SQL string literal (``'{...}'``).

    The writer's statement carries its rows inline, built here in a few string operations
    per column instead of psycopg's client-side adaptation of every element (its
    ``ListDumper`` and quoting were a fifth of the writer thread's CPU, which shares
    Daphne's GIL). ``text``: every element double-quoted, ``\\`` and ``"`` escaped with a
    backslash (so ``NULL``, braces, commas, blanks and anything else stay the string they
    are); otherwise ``str()`` of each (integers). Then the SQL quoting: ``'`` doubled, and
    with ``standard_conforming_strings`` off (``scs``) backslashes doubled in an ``E''``.
    """
    if not values:
        body = "{}"
    elif text:
        joined = "\x00".join(values)
        if joined.count("\x00") != len(values) - 1:
            # What psycopg says for the same value: Postgres text cannot hold NUL.
            raise DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
        if "\\" in joined:
            joined = joined.replace("\\", "\\\\")
        if '"' in joined:
            joined = joined.replace('"', '\\"')
        body = '{"' + joined.replace("\x00", '","') + '"}'
    else:
        body = "{" + ",".join(map(str, values)) + "}"
    if "'" in body:
        body = body.replace("'", "''")
    if scs:
        return "'" + body + "'"
    return "E'" + body.replace("\\", "\\\\") + "'"


def _standard_strings() -> bool:
    """Whether the connection's ``standard_conforming_strings`` is on (the server reports
    every change of it; on by default since Postgres 9.1)."""
    raw = connection.connection
    return raw is None or raw.info.parameter_status("standard_conforming_strings") == "on"


def _batch_statement(has_receipts: bool) -> tuple[str, str]:
    """The writer's statement as ``(name, PREPARE text)``: parameters ``$1``-``$4`` the
    posting columns, ``$5`` the batch's ``created_at``, ``$6``-``$10`` the receipt columns,
    then the ids of the accounts to lock (``$6`` without receipts, ``$11`` with).

    Data-modifying CTEs: the inserts (``unnest`` of one array per column, ``ON CONFLICT
    (key) DO NOTHING``; the new receipts' pending rows), then the accounts' locks, then the
    ``UPDATE ... FROM`` the sums of what was inserted. The rows it returns: ``(1, key)``
    per new posting, ``(2, key, id)`` per new receipt, ``(3, NULL, account id, balance,
    version)`` per account moved.

    **The locks come after the inserts.** The main query reads ``p`` and ``r`` first (the
    branches of a ``UNION ALL`` run in order, and a data-modifying CTE runs as it is
    read), so the rows are in before the update starts; the update's one-time filter, a
    count over ``lk``, takes every account's lock (``FOR NO KEY UPDATE``, primary-key
    order) before it changes a row. A batch's inserts therefore run while the batch
    before it on the same account (the other lane) is still committing; only the update
    and the commit wait for that account. No deadlock: the inserts go in key order (a
    batch waits at a key another batch inserted, never holding an account), and a batch
    takes accounts only after all its inserts, in one order.
    """
    qn = connection.ops.quote_name
    key = qn("key")
    types = [f"{type_}[]" for _name, type_ in POSTING_COLUMNS[:-1]] + ["timestamptz"]

    def insert(name: str, table: str, columns: Sequence[tuple[str, str]], first: int) -> str:
        cols = ", ".join(qn(c) for c, _type in columns)
        arrays = ", ".join(f"${first + n}" for n in range(len(columns) - 1))
        returning = f"id, {key}" if name == "r" else f"account_id, amount, {key}"
        return (
            f"{name} AS (INSERT INTO {qn(table)} ({cols}) SELECT *, $5 FROM unnest({arrays}) "
            f"ON CONFLICT ({key}) DO NOTHING RETURNING {returning})"
        )

    ctes = [insert("p", Posting._meta.db_table, POSTING_COLUMNS, 1)]
    selects = [f"SELECT 1, {key}, NULL::bigint, NULL::numeric, NULL::bigint FROM p"]
    if has_receipts:
        types += [f"{type_}[]" for _name, type_ in RECEIPT_COLUMNS[:-1]]
        ctes.append(insert("r", Receipt._meta.db_table, RECEIPT_COLUMNS, 6))
        ctes.append(
            f"q AS (INSERT INTO {qn(PendingReceipt._meta.db_table)} (receipt_id) SELECT id FROM r)"
        )
        selects.append(f"SELECT 2, {key}, id, NULL, NULL FROM r")
    accounts = qn(LedgerAccount._meta.db_table)
    types.append("bigint[]")
    ctes.append(
        f"lk AS (SELECT id FROM {accounts} WHERE id = ANY(${len(types)}) ORDER BY id "
        f"{connection.ops.for_update_sql(no_key=True)})"
    )
    ctes.append(
        f"u AS (UPDATE {accounts} a SET balance = a.balance + d.delta, version = a.version + 1 "
        f"FROM (SELECT account_id, SUM(amount) AS delta FROM p GROUP BY account_id) d "
        f"WHERE a.id = d.account_id AND d.delta <> 0 AND (SELECT COUNT(*) FROM lk) >= 0 "
        f"RETURNING a.id, a.balance, a.version)"
    )
    selects.append("SELECT 3, NULL, id, balance, version FROM u")
    name = "payments_ledger_batch_pr" if has_receipts else "payments_ledger_batch_p"
    body = f"WITH {', '.join(ctes)} {' UNION ALL '.join(selects)}"
    return name, f"PREPARE {name} ({', '.join(types)}) AS {body}"


def _prepared(cursor: Any, has_receipts: bool) -> str:
    """The name of the writer's statement, prepared on this connection (once per
    connection: a ``PREPARE`` outlives any transaction, and a new connection is a new
    object). Prepared, its parsing and planning are not paid per batch (a plain statement
    was planned anew every time: a fifth of its server time)."""
    raw = connection.connection
    state: tuple[Any, set[str]] | None = getattr(connection, "_ledger_prepared", None)
    if state is None or state[0] is not raw:
        state = (raw, set())
        connection._ledger_prepared = state  # type: ignore[attr-defined]
    name, prepare = _batch_statement(has_receipts)
    if name not in state[1]:
        cursor.execute(prepare)
        state[1].add(name)
    return name


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[tuple[Any, ...]]:
    return list(zip(*rows, strict=True)) if rows else [() for _ in range(width)]


def _timestamp_literal(stamp: datetime) -> str:
    # isoformat(): what psycopg's datetime dumper sends; no quote or backslash in it.
    return f"'{stamp.isoformat()}'"


def _post_postgres(
    cursor: Any,
    posting_rows: list[tuple[Any, ...]],
    receipt_rows: list[tuple[Any, ...]],
    submitted: int,
    commit_locking: Sequence[int] | None,
    *,
    now: datetime,
) -> PostResult:
    """The batch as ``EXECUTE`` of the prepared statement (:func:`_batch_statement`) with
    the rows as inline array constants (no client-side parameters: the string goes as it
    is, psycopg neither parses nor adapts it). Every row of a batch has the same
    ``created_at``: one argument, not a column."""
    scs = _standard_strings()
    name = _prepared(cursor, bool(receipt_rows))
    args = [
        _array_literal(values, text=type_ == "varchar", scs=scs)
        for (_name, type_), values in zip(
            POSTING_COLUMNS[:-1], _columns([r[:-1] for r in posting_rows], 4), strict=True
        )
    ]
    args.append(_timestamp_literal(now))
    if receipt_rows:
        args += [
            _array_literal(values, text=type_ == "varchar", scs=scs)
            for (_name, type_), values in zip(
                RECEIPT_COLUMNS[:-1], _columns([r[:-1] for r in receipt_rows], 5), strict=True
            )
        ]
    # Outside the one-trip path the caller's transaction holds the accounts already.
    lock_ids = sorted({int(i) for i in commit_locking}) if commit_locking is not None else []
    args.append(_array_literal(lock_ids, text=False, scs=scs))
    statement = f"EXECUTE {name}({', '.join(args)})"
    # The foreign keys' guarantee, once per batch (migration 0008): every account named
    # exists, taken FOR KEY SHARE until the commit; else foreign_key_violation.
    named = sorted({row[0] for row in posting_rows} | {row[0] for row in receipt_rows})
    statements = []
    if named:
        ids = _array_literal(named, text=False, scs=scs)
        statements.append(f"SELECT payments_require_accounts({ids}::bigint[])")
    statements.append(statement)
    if commit_locking is None:
        cursor.execute("; ".join(statements))
        for _ in range(len(statements) - 1):
            cursor.nextset()
        rows: list[tuple[Any, ...]] = cursor.fetchall()
    else:
        rows = _execute_one_trip(cursor, statements)
    new_keys: set[str] = set()
    new_receipts: list[tuple[int, str]] = []
    balances: dict[int, tuple[int, int]] = {}
    for kind, key, pk, balance, version in rows:
        if kind == 1:
            new_keys.add(str(key))
        elif kind == 2:
            new_receipts.append((int(pk), str(key)))
        else:
            balances[int(pk)] = _checked_balance(int(pk), balance, version)
    return PostResult(new_keys, balances, submitted, new_receipts)


def _execute_one_trip(cursor: CursorWrapper, statements: list[str]) -> list[tuple[Any, ...]]:
    """``statements`` as **one transaction in one call** (the batch statement takes the
    accounts' locks itself, after its inserts): the rows of the last statement, typed as
    the batch statement returns them.

    The string goes by libpq's blocking ``PQexec``, which holds no GIL from the send to
    the last result: several statements in one simple query are one transaction (the
    server commits after the last, before it answers). psycopg's own ``execute`` waits in
    steps, taking the GIL back at each; the event loop in the same process keeps it up to
    the switch interval (5 ms) each time, and the writer's round trip took 2.9 ms for
    0.8 ms in the server. Still through the cursor's execute wrappers (counted, errors
    turned into ``django.db`` exceptions)."""
    rows: list[tuple[Any, ...]] = []

    def run(sql: str, params: Any, many: bool, context: Any) -> None:
        from psycopg.errors import error_from_result
        from psycopg.pq import ExecStatus, TransactionStatus

        raw = connection.connection
        if raw.info.transaction_status != TransactionStatus.IDLE:
            # Never this path's own (it runs outside any atomic block), and inside an open
            # transaction the string would not commit: the batch would look durable and
            # not be. Drop the connection (the server rolls that transaction back); the
            # book's retry reconnects.
            logger.error("ledger: the writer's connection was inside a transaction; reconnecting")
            connection.close()
            raise OperationalError("the ledger writer's connection was inside a transaction")
        with connection.wrap_database_errors:
            result = raw.pgconn.exec_(sql.encode())
            if result.status != ExecStatus.TUPLES_OK:
                raise error_from_result(result, encoding=raw.info.encoding)
            rows.extend(_batch_rows(result))

    cursor._execute_with_wrappers("; ".join(statements), None, False, run)
    return rows


def _batch_rows(result: Any) -> Iterator[tuple[Any, ...]]:
    """The batch statement's rows from a text-format result: ``(kind, key, id, balance,
    version)``, ``None`` for NULL."""
    value = result.get_value
    for n in range(result.ntuples):
        kind = int(value(n, 0))
        key = value(n, 1)
        if kind == 1:
            yield kind, key.decode(), None, None, None
        elif kind == 2:
            yield kind, key.decode(), int(value(n, 2)), None, None
        else:
            yield kind, None, int(value(n, 2)), Decimal(value(n, 3).decode()), int(value(n, 4))


def _max_balance() -> int:
    # SQLite keeps integers beyond int64 as REAL (rounded): refuse such a balance.
    return INT64_MAX if connection.vendor == "sqlite" else 10**MONEY_DIGITS - 1


class SqliteWriteTurns:
    """One in-process writer of SQLite at a time, the ledger writer's batches first.

    SQLite has one write lock for the whole database; in the process the ledger writer and
    the background writers (the receipt applier's chunks, the recovery sweep's read, the
    WAL's restart) take turns here instead of in SQLite's sleeping busy handler. A batch
    of the ledger writer (payments wait on it) goes before a waiting background writer, so
    it waits for one background transaction at most; after :data:`URGENT_STREAK` batches
    in a row with a background writer waiting, that one goes next, so the applier keeps
    up under any load. A plain lock was not fair: the applier, releasing it between its
    chunks, took it back before the woken writer ran, and a batch waited for a whole
    apply, up to 65 ms (the embedded p99; docs/PERFORMANCE.md, session 9).
    """

    URGENT_STREAK = 4

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._urgent_waiting = 0
        self._background_waiting = 0
        self._streak = 0  # urgent turns since a background writer last had one

    def locked(self) -> bool:
        return self._held

    @contextlib.contextmanager
    def turn(self, *, urgent: bool) -> Iterator[None]:
        with self._cond:
            if urgent:
                self._urgent_waiting += 1
                try:
                    while self._held or (
                        self._background_waiting and self._streak >= self.URGENT_STREAK
                    ):
                        self._cond.wait()
                finally:
                    self._urgent_waiting -= 1
                self._streak += 1
            else:
                self._background_waiting += 1
                try:
                    while self._held or (
                        self._urgent_waiting and self._streak < self.URGENT_STREAK
                    ):
                        self._cond.wait()
                finally:
                    self._background_waiting -= 1
                self._streak = 0
            self._held = True
        try:
            yield
        finally:
            with self._cond:
                self._held = False
                self._cond.notify_all()


SQLITE_WRITE_LOCK = SqliteWriteTurns()


@contextlib.contextmanager
def _sqlite_write_lock(*, urgent: bool = False) -> Iterator[None]:
    """On SQLite, the turn at the database's write lock (:data:`SQLITE_WRITE_LOCK`;
    ``urgent``: the ledger writer's batches); elsewhere a no-op."""
    if connection.vendor != "sqlite":
        yield
        return
    with SQLITE_WRITE_LOCK.turn(urgent=urgent):
        yield
