"""Services of the ledger: every write outside the hot path.

Each service owns its transaction (``ATOMIC_REQUESTS`` is off), takes keyword-only typed
arguments and states what it locks and what it is idempotent on. Lock order everywhere:
pending receipts (by receipt id), then accounts (by id, ``FOR NO KEY UPDATE``), then
incoming payments (by id) — so no two services can deadlock, and inserts of rows
referencing an account (which take ``FOR KEY SHARE`` on it) never wait for these locks.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from ilp.oer import UINT64_MAX
from payments import outbound, selectors
from payments.errors import (
    InvalidAmount,
    InvalidWebhook,
    UnknownAccount,
    WebhookError,
    WebhookNotFound,
)
from payments.ledger import (
    MAX_KEY_LENGTH,
    ensure_account,
    node_equity_account,
    peek_book,
    post_in_transaction,
)
from payments.ledger.sql import _ACCOUNT_FIELDS, _checked_balance, _cursor
from payments.models import (
    IncomingPayment,
    LedgerAccount,
    PendingReceipt,
    Posting,
    Receipt,
    Webhook,
    WebhookDelivery,
)

logger = logging.getLogger(__name__)

RECEIPT_POSTING_PREFIX = "receipts:"  # + the id of the first receipt the posting sums
WEBHOOK_EVENT_INCOMING = "incoming_payment.updated"
WEBHOOK_SIGNATURE_HEADER = "X-ILP-Signature"
WEBHOOK_MAX_ATTEMPTS = 10
WEBHOOK_BACKOFF_BASE = 10.0  # seconds; attempt n waits base * 2**n
WEBHOOK_BACKOFF_CAP = 6 * 3600.0
WEBHOOK_LEASE = timedelta(minutes=5)  # a claimed attempt is retried by the sweeper after this
WEBHOOK_QUEUE_LEASE = timedelta(seconds=60)  # a queued attempt that never ran is queued again
WEBHOOK_TIMEOUT = 10.0


def _notify_book(rows: list[dict[str, Any]]) -> None:
    book = peek_book()
    if book is not None and rows:
        book.observe(rows)


def _notify_book_balances(balances: dict[int, tuple[int, int]]) -> None:
    book = peek_book()
    if book is not None and balances:
        book.observe_balances(balances)


# --- receipts -> incoming payments ---------------------------------------------------------


def apply_receipts(*, receipt_ids: Sequence[int]) -> int:
    """Credit the receiving accounts with the given receipts; returns how many were applied.

    For the unapplied ones among ``receipt_ids``, in one transaction per
    :data:`APPLY_CHUNK` receipts and a fixed number of statements whatever their count:
    write one ``+total`` posting per receiving account, the sum of its receipts in the
    chunk (key ``"receipts:<the first one's id>"``, memo ``"receipts <first id>..<last
    id> (<count>)"``), and add it to the account's balance, upsert the
    ``IncomingPayment`` rows (total, chunks, first/last at: one ``INSERT ... ON CONFLICT
    DO UPDATE``), link and mark the receipts applied (one ``UPDATE``). Then create one
    ``WebhookDelivery`` per enabled webhook and touched payment, queued on commit.

    Idempotent on the receipt, three ways: only receipts with a pending row are applied,
    and the apply deletes that row (``PendingReceipt``); pending rows, then accounts, then
    payments are locked in primary-key / unique-key order (row locks),
    and the posting key is unique in the database (``ON CONFLICT DO NOTHING``; only new
    postings move balances and totals).

    The ledger's postings are the accounts' balance changes; what each payment brought is
    in its ``IncomingPayment`` and its receipts (each linked to it). One posting per
    account and chunk rather than per receipt is one row and three index entries fewer
    per payment received. A sum too large for a posting is a balance too large for the
    account (a receiver's balance is not negative): the chunk fails either way.
    """
    ids = sorted({int(i) for i in receipt_ids})
    applied = 0
    for start in range(0, len(ids), APPLY_CHUNK):
        applied += _apply_receipt_chunk(ids[start : start + APPLY_CHUNK])
    return applied


APPLY_CHUNK = 2000  # receipts per transaction (and per IN list)


@dataclass(slots=True)
class _ChunkApplied:
    """What one chunk's apply did (``account_ids``: the receiving accounts it locked)."""

    applied: int
    payment_ids: list[int]
    account_ids: list[int]
    balances: dict[int, tuple[int, int]]
    has_webhooks: bool | None  # None: not asked yet


def _apply_receipt_chunk(ids: list[int]) -> int:
    now = timezone.now()
    with transaction.atomic():
        cursor = _cursor()
        if connection.vendor == "postgresql":
            done = _apply_chunk_postgres(cursor, ids, now=now)
        else:
            done = _apply_chunk_sqlite(cursor, ids, now=now)
        if not done.account_ids:
            return 0
        delivery_ids = _create_deliveries_for(
            done.payment_ids, done.account_ids, cursor, now=now, has_webhooks=done.has_webhooks
        )
        balances = done.balances
        transaction.on_commit(lambda: _notify_book_balances(balances), robust=True)
        if delivery_ids:
            transaction.on_commit(lambda: queue_webhook_deliveries(delivery_ids), robust=True)
    return done.applied


def _apply_chunk_postgres(cursor: Any, ids: list[int], *, now: datetime) -> _ChunkApplied:
    """The chunk in three round trips, whatever its size.

    1. One query string: the receipts' pending rows, locked ``FOR UPDATE`` in receipt id
       order and deleted (the claim: a concurrent apply of the same receipts waits, then
       finds them gone and skips them), then the accounts of the receipts still
       unapplied, ``FOR NO KEY UPDATE`` in primary-key order (the service's lock order).
    2. One statement of data-modifying CTEs: one posting per receiving account, the sum
       of its receipts (key ``receipts:<first receipt id>``, key order, ``ON CONFLICT DO
       NOTHING``), the balances moved by the **inserted** postings only, and the
       ``IncomingPayment`` upsert of the receipts whose account's posting is new (or whose
       account's sum is zero). It returns the new
       balances, the upserted payments, the counted receipts' (account, payment id),
       and whether any of the accounts has an enabled webhook.
    3. The receipts marked applied and linked to their payment's row, one ``UPDATE ...
       FROM unnest(...)`` (the link made here from the upsert's ``RETURNING``, not by a
       sub-select per row; a join of the CTEs above would be planned as nested loops).

    Every lookup of the receipts by id also says their id range: a batch's ids are
    (nearly) consecutive, and without the range the planner, costing one random page per
    listed id, prefers to scan the whole table until it has ~100,000 rows (a cost that
    grows with the table: the sustained runs).
    """
    qn = connection.ops.quote_name
    receipts = qn(Receipt._meta.db_table)
    pending = qn(PendingReceipt._meta.db_table)
    accounts = qn(LedgerAccount._meta.db_table)
    within = "id BETWEEN %s AND %s AND id = ANY(%s::bigint[])"
    cursor.execute(
        f"DELETE FROM {pending} WHERE receipt_id IN (SELECT receipt_id FROM {pending} "
        f"WHERE receipt_id BETWEEN %s AND %s AND receipt_id = ANY(%s::bigint[]) "
        f"ORDER BY receipt_id FOR UPDATE) RETURNING receipt_id; "
        f"SELECT id FROM {accounts} WHERE id IN (SELECT account_id FROM {receipts} "
        f"WHERE {within} AND applied_at IS NULL) ORDER BY id FOR NO KEY UPDATE",
        [ids[0], ids[-1], ids] * 2,
    )
    receipt_ids = sorted(int(row[0]) for row in cursor.fetchall())
    cursor.nextset()
    account_ids = [int(row[0]) for row in cursor.fetchall()]
    if not receipt_ids:
        return _ChunkApplied(0, [], [], {}, False)
    payments = qn(IncomingPayment._meta.db_table)
    key = qn("key")
    bounds = [receipt_ids[0], receipt_ids[-1]]
    cursor.execute(
        # v through unnest, so that the planner counts its rows right (the range and the
        # list as two conditions multiply to an estimate of one row).
        f"WITH v AS (SELECT r.id, r.account_id, r.payment_id, r.amount, r.created_at "
        f"FROM unnest(%s::bigint[]) AS x(id) JOIN {receipts} r ON r.id = x.id "
        f"WHERE r.id BETWEEN %s AND %s), "
        f"g AS (SELECT account_id, SUM(amount) AS total, %s || MIN(id) AS pkey, "
        f"'receipts ' || MIN(id) || '..' || MAX(id) || ' (' || COUNT(*) || ')' AS memo "
        f"FROM v GROUP BY account_id), "
        f"p AS (INSERT INTO {qn(Posting._meta.db_table)} "
        f"(account_id, amount, {key}, memo, created_at) "
        f"SELECT account_id, total, pkey, memo, %s::timestamptz FROM g WHERE total <> 0 "
        f'ORDER BY pkey COLLATE "C" ON CONFLICT ({key}) DO NOTHING '
        f"RETURNING account_id, amount), "
        f"u AS (UPDATE {accounts} a SET balance = a.balance + p.amount, version = a.version + 1 "
        f"FROM p WHERE a.id = p.account_id RETURNING a.id, a.balance, a.version), "
        f"n AS (SELECT v.* FROM v JOIN g ON g.account_id = v.account_id "
        f"WHERE g.total = 0 OR g.account_id IN (SELECT account_id FROM p)), "
        f"i AS (INSERT INTO {payments} "
        f"(account_id, payment_id, total, chunks, first_at, last_at) "
        f"SELECT account_id, payment_id, SUM(amount), COUNT(*), MIN(created_at), "
        f"MAX(created_at) FROM n GROUP BY account_id, payment_id "
        f"ORDER BY account_id, payment_id "
        f"ON CONFLICT (account_id, payment_id) DO UPDATE SET "
        f"total = {payments}.total + excluded.total, "
        f"chunks = {payments}.chunks + excluded.chunks, "
        f"first_at = LEAST({payments}.first_at, excluded.first_at), "
        f"last_at = GREATEST({payments}.last_at, excluded.last_at) "
        f"RETURNING id, account_id, payment_id) "
        f"SELECT 1, id, balance, version, NULL FROM u "
        f"UNION ALL SELECT 2, id, NULL, account_id, payment_id FROM i "
        f"UNION ALL SELECT 3, id, NULL, account_id, payment_id FROM n "
        f"UNION ALL SELECT 4, NULL, NULL, NULL, NULL WHERE EXISTS (SELECT 1 FROM "
        f"{qn(Webhook._meta.db_table)} WHERE account_id IN (SELECT account_id FROM v) "
        f"AND enabled)",
        [
            receipt_ids,
            *bounds,
            RECEIPT_POSTING_PREFIX,
            connection.ops.adapt_datetimefield_value(now),
        ],
    )
    balances: dict[int, tuple[int, int]] = {}
    incoming: dict[tuple[int, str], int] = {}
    counted: list[tuple[int, int, str]] = []
    has_webhooks = False
    # (kind, id, balance, version or account id, payment id)
    for kind, pk, balance, number, text in cursor.fetchall():
        if kind == 1:
            balances[int(pk)] = _checked_balance(int(pk), balance, number)
        elif kind == 2:
            incoming[(int(number), str(text))] = int(pk)
        elif kind == 3:
            counted.append((int(pk), int(number), str(text)))
        else:
            has_webhooks = True
    links = {rid: incoming[(aid, pid)] for rid, aid, pid in counted}
    skipped = [rid for rid in receipt_ids if rid not in links]
    if skipped:
        # An account's receipts whose posting key already existed (cannot happen through
        # this service: the key names the first receipt, claimed once) are marked applied
        # without counting twice.
        logger.error("apply_receipts: receipts %s already had their posting", skipped)
    cursor.execute(
        f"UPDATE {receipts} r SET applied_at = %s::timestamptz, incoming_payment_id = l.ip "
        f"FROM unnest(%s::bigint[], %s::bigint[]) AS l(id, ip) "
        f"WHERE r.id = l.id AND r.id BETWEEN %s AND %s",
        [
            connection.ops.adapt_datetimefield_value(now),
            receipt_ids,
            [links.get(rid) for rid in receipt_ids],
            *bounds,
        ],
    )
    return _ChunkApplied(
        len(links), sorted(set(incoming.values())), account_ids, balances, has_webhooks
    )


def _apply_chunk_sqlite(cursor: Any, ids: list[int], *, now: datetime) -> _ChunkApplied:
    """The chunk on SQLite (in-process: no round trips to save; the database lock is
    held from the first write): the queued receipts (their queue rows deleted), one
    posting per account through :func:`post_in_transaction`, one upsert, and one ``UPDATE ... FROM
    (VALUES ...)`` linking each receipt to the upsert's ``RETURNING`` row."""
    qn = connection.ops.quote_name
    receipt_table = qn(Receipt._meta.db_table)
    payment_table = qn(IncomingPayment._meta.db_table)
    pending = qn(PendingReceipt._meta.db_table)
    cursor.execute(
        f"SELECT r.id, r.account_id, r.payment_id, r.amount "
        f"FROM {pending} q JOIN {receipt_table} r ON r.id = q.receipt_id "
        f"WHERE q.receipt_id IN ({_params(ids)}) ORDER BY r.id",
        ids,
    )
    receipts = [
        (int(rid), int(aid), str(pid), int(amount)) for rid, aid, pid, amount in cursor.fetchall()
    ]
    if not receipts:
        return _ChunkApplied(0, [], [], {}, False)
    claimed = [r[0] for r in receipts]
    cursor.execute(f"DELETE FROM {pending} WHERE receipt_id IN ({_params(claimed)})", claimed)
    account_ids = sorted({r[1] for r in receipts})
    by_account: dict[int, list[tuple[int, int, str, int]]] = defaultdict(list)
    for receipt in receipts:
        by_account[receipt[1]].append(receipt)
    totals = {aid: sum(r[3] for r in rows) for aid, rows in by_account.items()}
    keys = {aid: f"{RECEIPT_POSTING_PREFIX}{rows[0][0]}" for aid, rows in by_account.items()}
    posted = post_in_transaction(
        [
            (aid, totals[aid], keys[aid], f"receipts {rows[0][0]}..{rows[-1][0]} ({len(rows)})")
            for aid, rows in by_account.items()
        ],
        now=now,
        cursor=cursor,
    )
    new_posting_keys = posted.new_keys
    applied: list[tuple[int, int, str]] = []
    skipped: list[int] = []
    for rid, aid, pid, _amount in receipts:
        if totals[aid] == 0 or keys[aid] in new_posting_keys:
            applied.append((rid, aid, pid))
        else:
            skipped.append(rid)
    stamp = connection.ops.adapt_datetimefield_value(now)
    payment_ids: list[int] = []
    if applied:
        # One upsert for every touched payment, in unique-key order (concurrent appliers
        # lock the rows in the same order, so they cannot deadlock).
        applied_ids = [rid for rid, _aid, _pid in applied]
        cursor.execute(
            f"INSERT INTO {payment_table} "
            f"(account_id, payment_id, total, chunks, first_at, last_at) "
            f"SELECT account_id, payment_id, SUM(amount), COUNT(*), MIN(created_at), "
            f"MAX(created_at) FROM {receipt_table} WHERE id IN ({_params(applied_ids)}) "
            f"GROUP BY account_id, payment_id ORDER BY account_id, payment_id "
            f"ON CONFLICT (account_id, payment_id) DO UPDATE SET "
            f"total = {payment_table}.total + excluded.total, "
            f"chunks = {payment_table}.chunks + excluded.chunks, "
            f"first_at = min({payment_table}.first_at, excluded.first_at), "
            f"last_at = max({payment_table}.last_at, excluded.last_at) "
            f"RETURNING id, account_id, payment_id",
            applied_ids,
        )
        incoming = {(int(aid), str(pid)): int(pk) for pk, aid, pid in cursor.fetchall()}
        payment_ids = sorted(incoming.values())
        links = [(rid, incoming[(aid, pid)]) for rid, aid, pid in applied]
        cursor.execute(
            f"UPDATE {receipt_table} SET applied_at = %s, incoming_payment_id = v.column2 "
            f"FROM (VALUES {', '.join(['(%s, %s)'] * len(links))}) AS v "
            f"WHERE {receipt_table}.id = v.column1",
            [stamp, *(value for link in links for value in link)],
        )
    if skipped:
        logger.error("apply_receipts: receipts %s already had their posting", skipped)
        cursor.execute(
            f"UPDATE {receipt_table} SET applied_at = %s WHERE id IN ({_params(skipped)})",
            [stamp, *skipped],
        )
    return _ChunkApplied(len(applied), payment_ids, account_ids, posted.balances, None)


def _params(values: Sequence[Any]) -> str:
    return ", ".join(["%s"] * len(values))


def _create_deliveries_for(
    payment_ids: list[int],
    account_ids: list[int],
    cursor: Any,
    *,
    now: datetime,
    has_webhooks: bool | None = None,
) -> list[int]:
    """Deliveries for the touched payments, if any of their accounts has a webhook
    (``has_webhooks``: already known; ``None``: asked here)."""
    if not payment_ids or has_webhooks is False:
        return []
    if has_webhooks is None:
        cursor.execute(
            f"SELECT 1 FROM {connection.ops.quote_name(Webhook._meta.db_table)} "
            f"WHERE account_id IN ({_params(account_ids)}) AND enabled LIMIT 1",
            account_ids,
        )
        if cursor.fetchone() is None:
            return []
    payments = list(IncomingPayment.objects.select_related("account").filter(id__in=payment_ids))
    return _create_deliveries(payments, now=now)


def apply_pending_receipts(
    *, older_than: timedelta = timedelta(seconds=30), limit: int = 5000
) -> int:
    """Sweep: apply receipts left unapplied (a crash between COMMIT and the task queue).

    Idempotent like :func:`apply_receipts`, which it calls in chunks.
    """
    ids = selectors.pending_receipt_ids(older_than=older_than, limit=limit)
    applied = 0
    for start in range(0, len(ids), 500):
        applied += apply_receipts(receipt_ids=ids[start : start + 500])
    return applied


# --- operator adjustments and limits --------------------------------------------------------


def account_adjust(
    *,
    account_code: str,
    amount: int,
    key: str,
    memo: str = "",
    counter_account_code: str | None = None,
) -> None:
    """Move ``amount`` onto ``account_code`` (signed; positive = we owe the holder more).

    Double entry: the counter account (default: the node's equity account of the same
    asset) gets ``-amount``. Own transaction (a savepoint inside the caller's); locks both
    accounts in primary-key order; idempotent on ``key`` (posting keys ``adjust:<key>`` and
    ``adjust:<key>:counter``, unique in the database). The local book is told on commit.
    """
    if not isinstance(amount, int) or isinstance(amount, bool) or amount == 0:
        raise InvalidAmount("adjustment must be a non-zero int")
    if abs(amount) > UINT64_MAX:
        raise InvalidAmount("adjustment out of range")
    if not key or len(key) > MAX_KEY_LENGTH - len("adjust::counter"):
        raise ValueError("key must be 1 to 240 characters")
    account = LedgerAccount.objects.filter(code=account_code).first()
    if account is None:
        raise UnknownAccount(f"no ledger account {account_code!r}", account=account_code)
    if counter_account_code is None:
        counter = ensure_account(
            node_equity_account(account.asset_code, account.asset_scale),
            kind=LedgerAccount.Kind.NODE,
            asset_code=account.asset_code,
            asset_scale=account.asset_scale,
        )
    else:
        found = LedgerAccount.objects.filter(code=counter_account_code).first()
        if found is None:
            raise UnknownAccount(f"no ledger account {counter_account_code!r}")
        counter = found
    if (counter.asset_code, counter.asset_scale) != (account.asset_code, account.asset_scale):
        raise InvalidAmount("the counter account has another asset")
    if counter.pk == account.pk:
        raise InvalidAmount("the counter account is the account itself")
    now = timezone.now()
    with transaction.atomic():
        pks = sorted([account.pk, counter.pk])
        list(
            LedgerAccount.objects.select_for_update(no_key=True)
            .filter(pk__in=pks)
            .order_by("id")
            .values_list("id", flat=True)
        )
        post_in_transaction(
            [
                (account.pk, amount, f"adjust:{key}", memo[:255]),
                (counter.pk, -amount, f"adjust:{key}:counter", memo[:255]),
            ],
            now=now,
        )
        rows = list(LedgerAccount.objects.filter(pk__in=pks).values(*_ACCOUNT_FIELDS))
        transaction.on_commit(lambda: _notify_book(rows), robust=True)


def account_set_limits(
    *, account_code: str, min_balance: int | None, max_balance: int | None
) -> LedgerAccount:
    """Set both limits (``None`` = unbounded). Locks the account row; the book is told on commit."""
    for value in (min_balance, max_balance):
        if value is not None and (not isinstance(value, int) or abs(value) > UINT64_MAX):
            raise InvalidAmount("limit out of range")
    if min_balance is not None and max_balance is not None and min_balance > max_balance:
        raise InvalidAmount("min_balance must not exceed max_balance")
    with transaction.atomic():
        account = (
            LedgerAccount.objects.select_for_update(no_key=True).filter(code=account_code).first()
        )
        if account is None:
            raise UnknownAccount(f"no ledger account {account_code!r}", account=account_code)
        account.min_balance = None if min_balance is None else Decimal(min_balance)
        account.max_balance = None if max_balance is None else Decimal(max_balance)
        account.save(update_fields=["min_balance", "max_balance"])
        rows = list(LedgerAccount.objects.filter(pk=account.pk).values(*_ACCOUNT_FIELDS))
        transaction.on_commit(lambda: _notify_book(rows), robust=True)
    return account


# --- webhooks ---------------------------------------------------------------------------------


def webhook_create(*, account_code: str, url: str, secret: str | None = None) -> Webhook:
    """Register ``url`` for the incoming payments of ``account_code``; returns it with its secret.

    The secret (generated when not given) signs every body: header
    ``X-ILP-Signature: sha256=<hex HMAC-SHA256(secret, body)>``.
    """
    if not url.startswith(("https://", "http://")):
        raise WebhookError("webhook url must be http(s)")
    problem = outbound.url_problem(url)
    if problem is not None:
        raise WebhookError(f"webhook url refused: {problem}")
    account = LedgerAccount.objects.filter(code=account_code).first()
    if account is None:
        raise UnknownAccount(f"no ledger account {account_code!r}", account=account_code)
    webhook = Webhook(account=account, url=url, secret=secret or secrets.token_hex(32))
    webhook.full_clean()
    webhook.save()
    return webhook


def webhook_url_check(url: str) -> str:
    """``url`` without surrounding blanks, if deliveries may go there (the rule
    :mod:`payments.outbound` applies to every delivery, told now); else
    :class:`InvalidWebhook` with the reason."""
    url = (url or "").strip()
    if not url.startswith(("https://", "http://")):
        raise InvalidWebhook("a webhook url must start with https:// or http://")
    problem = outbound.url_problem(url)
    if problem is not None:
        raise InvalidWebhook(f"webhook url refused: {problem}")
    return url


def _webhook_locked(*, webhook_id: int, account_codes: Iterable[str] | None) -> Webhook:
    """The webhook row, locked (``FOR UPDATE``, this row only); with ``account_codes``, only
    a webhook on one of those accounts."""
    qs = Webhook.objects.select_for_update().filter(pk=webhook_id)
    if account_codes is not None:
        ids = list(
            LedgerAccount.objects.filter(code__in=list(account_codes)).values_list("id", flat=True)
        )
        qs = qs.filter(account_id__in=ids)
    webhook = qs.first()
    if webhook is None:
        whose = "you have" if account_codes is not None else "there is"
        raise WebhookNotFound(f"{whose} no webhook {webhook_id}")
    return webhook


@transaction.atomic
def webhook_update(
    *,
    webhook_id: int,
    url: str | None = None,
    enabled: bool | None = None,
    account_codes: Iterable[str] | None = None,
) -> Webhook:
    """Change the url and/or switch the webhook on or off (``None`` = keep).

    ``account_codes`` limits the change to webhooks on those accounts (a user's own:
    anything else is :class:`WebhookNotFound`, the same answer as a missing one). Locks the
    webhook row. Pending deliveries of a disabled webhook fail on their next attempt
    (:func:`webhook_deliver`). Raises :class:`InvalidWebhook` for a refused url.
    """
    webhook = _webhook_locked(webhook_id=webhook_id, account_codes=account_codes)
    fields = []
    if url is not None:
        webhook.url = webhook_url_check(url)
        fields.append("url")
    if enabled is not None:
        webhook.enabled = enabled
        fields.append("enabled")
    if fields:
        try:
            webhook.full_clean()
        except ValidationError as exc:
            raise InvalidWebhook("; ".join(exc.messages)) from None
        webhook.save(update_fields=fields)
    return webhook


@transaction.atomic
def webhook_delete(*, webhook_id: int, account_codes: Iterable[str] | None = None) -> None:
    """Delete the webhook and its delivery log (``account_codes``: as :func:`webhook_update`).

    Deliveries are notifications, not money; they go with the webhook (its foreign key
    is ``PROTECT`` so that nothing else deletes them by accident). The webhook row is
    locked first; a delivery attempt running at that moment finds its row gone and sends
    nothing more.
    """
    webhook = _webhook_locked(webhook_id=webhook_id, account_codes=account_codes)
    WebhookDelivery.objects.filter(webhook=webhook).delete()
    webhook.delete()


def webhook_body(payload: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed): compact JSON with sorted keys."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def webhook_signature(*, secret: str, body: bytes) -> str:
    """Value of ``X-ILP-Signature``: ``sha256=`` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_webhook_signature(*, secret: str, body: bytes, header: str) -> bool:
    """Constant-time check of a received ``X-ILP-Signature`` (for consumers and tests)."""
    return hmac.compare_digest(webhook_signature(secret=secret, body=body), header)


def incoming_payment_payload(payment: IncomingPayment) -> dict[str, Any]:
    account = payment.account
    return {
        "event": WEBHOOK_EVENT_INCOMING,
        "account": account.code,
        "asset_code": account.asset_code,
        "asset_scale": account.asset_scale,
        "payment_id": payment.payment_id,
        "total": str(int(payment.total)),  # strings: UInt64 exceeds JSON-safe integers
        "chunks": payment.chunks,
        "first_at": payment.first_at.isoformat(),
        "last_at": payment.last_at.isoformat(),
    }


def _create_deliveries(payments: list[IncomingPayment], *, now: datetime) -> list[int]:
    """One delivery per (webhook, payment state), idempotent on its key. Inside a transaction."""
    if not payments:
        return []
    hooks: dict[int, list[Webhook]] = defaultdict(list)
    for hook in Webhook.objects.filter(
        account_id__in={p.account_id for p in payments}, enabled=True
    ):
        hooks[hook.account_id].append(hook)
    deliveries = [
        WebhookDelivery(
            webhook=hook,
            key=f"incoming_payment:{payment.pk}:{payment.chunks}:{hook.pk}",
            event=WEBHOOK_EVENT_INCOMING,
            payload=incoming_payment_payload(payment),
            next_attempt_at=now,
        )
        for payment in payments
        for hook in hooks.get(payment.account_id, [])
    ]
    if not deliveries:
        return []
    WebhookDelivery.objects.bulk_create(deliveries, ignore_conflicts=True)
    return list(
        WebhookDelivery.objects.filter(
            key__in=[d.key for d in deliveries], status=WebhookDelivery.Status.PENDING, attempts=0
        ).values_list("id", flat=True)
    )


def queue_webhook_deliveries(delivery_ids: Sequence[int]) -> int:
    """Queue the first attempt of each new delivery (call after commit); returns how many
    were queued.

    With eager Celery (the embedded default) the deliveries run on a small background
    thread pool, so a slow endpoint never blocks the ledger writer that committed them.
    A publish that fails (Celery's own publish retries exhausted) is only logged: the
    delivery row is pending and due, so the recovery sweep queues it.
    """
    queued, _failed = _queue_attempts([(delivery_id, 0) for delivery_id in delivery_ids])
    return queued


def webhook_deliveries_queue_due(*, now: datetime | None = None, limit: int = 1000) -> int:
    """The sweep: queue the next attempt of every pending delivery that is due (a failed
    attempt's backoff ran out, a publish failed, a claimed attempt's lease expired);
    returns how many were queued.

    Each row is first marked queued by a conditional UPDATE (``next_attempt_at`` moved on
    by :data:`WEBHOOK_QUEUE_LEASE`, only if the row is as it was read), so concurrent sweeps
    (several serving processes, beat) queue it once, and sweeps repeated while the worker
    is down do not pile up messages: an attempt whose message is lost is due again after
    the lease. The task then claims exactly that attempt number. A publish that fails
    makes the row due again at once.
    """
    now = now or timezone.now()
    rows = list(
        WebhookDelivery.objects.filter(
            status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now
        )
        .order_by("next_attempt_at")
        .values_list("id", "attempts", "next_attempt_at")[:limit]
    )
    marked: list[tuple[int, int]] = []
    for pk, attempts, due_at in rows:
        if WebhookDelivery.objects.filter(
            pk=pk,
            status=WebhookDelivery.Status.PENDING,
            attempts=attempts,
            next_attempt_at=due_at,
        ).update(next_attempt_at=now + WEBHOOK_QUEUE_LEASE):
            marked.append((pk, attempts))
    queued, failed = _queue_attempts(marked)
    if failed:
        WebhookDelivery.objects.filter(
            pk__in=failed,
            status=WebhookDelivery.Status.PENDING,
            next_attempt_at=now + WEBHOOK_QUEUE_LEASE,
        ).update(next_attempt_at=now)
    return queued


def _queue_attempts(attempts: Sequence[tuple[int, int]]) -> tuple[int, list[int]]:
    """Queue ``payments.deliver_webhook(delivery_id, attempt)`` for each pair; returns how
    many were queued and the ids whose publish failed."""
    from payments.tasks import deliver_webhook, run_in_background

    queued = 0
    failed: list[int] = []
    for delivery_id, attempt in attempts:
        kwargs = {"delivery_id": delivery_id, "attempt": attempt}
        if deliver_webhook.app.conf.task_always_eager:
            run_in_background(deliver_webhook.apply, kwargs=kwargs)
        else:
            try:
                deliver_webhook.delay(**kwargs)
            except Exception:
                logger.warning(
                    "payments: could not queue webhook delivery %s; the sweep will",
                    delivery_id,
                    exc_info=True,
                )
                failed.append(delivery_id)
                continue
        queued += 1
    return queued, failed


@dataclass(frozen=True, slots=True)
class WebhookAttempt:
    """Result of one delivery attempt. ``retry_in`` (seconds) is set when another is due."""

    status: str  # "delivered" | "failed" | "retry" | "skipped"
    retry_in: float | None = None
    error: str = ""


def webhook_backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (0-based): 10 s, 20 s, 40 s...

    The base is ``settings.PAYMENTS_WEBHOOK_BACKOFF_BASE`` when set (tests shorten it).
    """
    base = float(getattr(settings, "PAYMENTS_WEBHOOK_BACKOFF_BASE", WEBHOOK_BACKOFF_BASE))
    return float(min(base * 2**attempt, WEBHOOK_BACKOFF_CAP))


def webhook_deliver(
    *, delivery_id: int, attempt: int | None = None, timeout: float = WEBHOOK_TIMEOUT
) -> WebhookAttempt:
    """Make one delivery attempt (``attempt`` = the number of attempts made so far).

    Idempotent per delivery and attempt: the attempt is claimed by an atomic
    ``UPDATE ... WHERE status = 'pending' AND attempts = <attempt>`` that also sets a lease
    (``next_attempt_at``), so a replayed, duplicated or stale task finds the counter moved
    on and returns ``skipped`` without sending. ``attempt=None`` claims whatever attempt is
    next, and only once it is due (``next_attempt_at`` passed); the queued tasks name their
    attempt (:func:`webhook_deliveries_queue_due`). No
    transaction or lock is held while the HTTP request runs. Delivered means a 2xx answer;
    anything else sets ``next_attempt_at`` to now + :func:`webhook_backoff` (the durable
    retry: the recovery sweep makes the next attempt once it is due, whatever restarted
    meanwhile) up to ``WEBHOOK_MAX_ATTEMPTS``, then ``failed``.
    """
    now = timezone.now()
    due = Q()
    if attempt is None:
        current = (
            WebhookDelivery.objects.filter(pk=delivery_id)
            .values_list("attempts", flat=True)
            .first()
        )
        if current is None:
            return WebhookAttempt("skipped")
        attempt = current
        due = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    claimed = WebhookDelivery.objects.filter(
        due, pk=delivery_id, status=WebhookDelivery.Status.PENDING, attempts=attempt
    ).update(attempts=attempt + 1, next_attempt_at=now + WEBHOOK_LEASE)
    if not claimed:
        return WebhookAttempt("skipped")
    delivery = WebhookDelivery.objects.select_related("webhook").get(pk=delivery_id)
    mine = WebhookDelivery.objects.filter(pk=delivery_id, attempts=attempt + 1)
    webhook = delivery.webhook
    if not webhook.enabled:
        mine.update(status=WebhookDelivery.Status.FAILED, last_error="webhook disabled")
        return WebhookAttempt("failed", error="webhook disabled")
    body = webhook_body(delivery.payload)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "interledger-site-webhooks/1",
        WEBHOOK_SIGNATURE_HEADER: webhook_signature(secret=webhook.secret, body=body),
        "X-ILP-Event": delivery.event,
        "X-ILP-Delivery": delivery.key,
    }
    status_code: int | None = None
    try:
        # The user's URL: public addresses only, a time limit for the whole request.
        status_code = outbound.post(
            webhook.url, content=body, headers=headers, total_timeout=timeout
        )
        error = "" if 200 <= status_code < 300 else f"HTTP {status_code}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:2000]
    done = timezone.now()
    if not error:
        mine.update(
            status=WebhookDelivery.Status.DELIVERED,
            delivered_at=done,
            response_status=status_code,
            last_error="",
            next_attempt_at=None,
        )
        return WebhookAttempt("delivered")
    if attempt + 1 >= WEBHOOK_MAX_ATTEMPTS:
        mine.update(
            status=WebhookDelivery.Status.FAILED,
            response_status=status_code,
            last_error=error,
            next_attempt_at=None,
        )
        return WebhookAttempt("failed", error=error)
    retry_in = webhook_backoff(attempt)
    mine.update(
        response_status=status_code,
        last_error=error,
        next_attempt_at=done + timedelta(seconds=retry_in),
    )
    return WebhookAttempt("retry", retry_in=retry_in, error=error)


def due_webhook_deliveries(*, now: datetime | None = None, limit: int = 1000) -> list[int]:
    """Ids of pending deliveries whose next attempt (or expired lease) is due."""
    now = now or timezone.now()
    return list(
        WebhookDelivery.objects.filter(
            status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now
        )
        .order_by("next_attempt_at")
        .values_list("id", flat=True)[:limit]
    )
