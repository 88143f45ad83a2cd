"""The writer's Postgres statement carries its rows as inline array constants
(``payments.ledger.sql._array_literal``): what is stored must be byte for byte what was
given, whatever the strings hold, with ``standard_conforming_strings`` on or off, in the
one-trip form (``commit_locking``) and in a caller's transaction."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from django.db import DataError, connection, transaction

from payments.ledger import ensure_account, post_in_transaction
from payments.models import Posting, Receipt
from tests.conftest import requires_postgres

pytestmark = [pytest.mark.django_db(transaction=True), requires_postgres]

AWKWARD = [
    "plain",
    "it's",
    "''",
    '"',
    'say "hi"',
    "back\\slash",
    "\\",
    "\\\\",
    '\\"',
    "a,b",
    "{braces}",
    "{",
    "}",
    "NULL",
    "null",
    "",
    " lead and trail ",
    "\t tab\nnewline\r",
    "ünïcødé ✓ 𝄞 中文",
    "E'x'",
    "$$dollar$$",
    "%s %(name)s %%",
    "; COMMIT; DROP TABLE payments_posting; --",
    "x" * 255,
    "\\" * 127 + '"',
    "'" * 255,
]
UINT64_MAX = 2**64 - 1
NOW = datetime(2026, 12, 6, 23, 59, 58, 123456, tzinfo=UTC)


@pytest.fixture(params=["on", "off"])
def conforming(request: pytest.FixtureRequest) -> Iterator[str]:
    """The connection's ``standard_conforming_strings`` (on: Postgres' default)."""
    connection.ensure_connection()
    with connection.cursor() as cur:
        cur.execute(f"SET standard_conforming_strings = {request.param}")
    yield request.param
    with connection.cursor() as cur:
        cur.execute("SET standard_conforming_strings = on")


def rows(prefix: str, aid: int) -> list[tuple[int, int, str, str]]:
    amounts = [UINT64_MAX, -UINT64_MAX, 1, -1, 10**18, -(10**18) - 7]
    return [
        (aid, amounts[i % len(amounts)], (prefix + text)[:255], text)
        for i, text in enumerate(AWKWARD)
    ]


@pytest.mark.parametrize("one_trip", [True, False])
def test_awkward_strings_and_extreme_amounts_are_stored_exactly(
    conforming: str, one_trip: bool
) -> None:
    aid = ensure_account("peer:awkward", kind="peer").id
    rid = ensure_account("receiver:awkward", kind="receiver").id
    entries = rows("k", aid)
    receipts = [
        (rid, text[:64], 2**63 - 1 - i, abs(amount), key)
        for i, (_aid, amount, key, text) in enumerate(sorted(entries, key=lambda e: e[2]))
    ]
    if one_trip:
        posted = post_in_transaction(entries, now=NOW, receipts=receipts, commit_locking=[aid, rid])
    else:
        with transaction.atomic():
            posted = post_in_transaction(entries, now=NOW, receipts=receipts)
    assert posted.new_keys == {key for _a, _m, key, _t in entries}
    assert sorted(k for _i, k in posted.new_receipts) == sorted(r[4] for r in receipts)
    stored = {p.key: p for p in Posting.objects.all()}
    assert len(stored) == len(AWKWARD)
    for account, amount, key, memo in entries:
        row = stored[key]
        assert (row.account_id, int(row.amount), row.key, row.memo, row.created_at) == (
            account,
            amount,
            key,
            memo,
            NOW,
        )
    got = {
        r.key: (r.account_id, r.payment_id, r.sequence, int(r.amount), r.created_at)
        for r in Receipt.objects.all()
    }
    assert got == {key: (a, pid, seq, amount, NOW) for a, pid, seq, amount, key in receipts}
    assert posted.balances[aid][0] == sum(e[1] for e in entries)
    # The same batch again: every key recognised, nothing twice.
    again = post_in_transaction(entries, now=NOW, receipts=receipts, commit_locking=[aid, rid])
    assert again.new_keys == set() and again.new_receipts == []
    assert Posting.objects.count() == len(AWKWARD)


def test_a_nul_in_a_string_is_refused_before_anything_is_sent() -> None:
    aid = ensure_account("peer:awkward", kind="peer").id
    with pytest.raises(DataError, match="NUL"):
        post_in_transaction(
            [(aid, 1, "ok", ""), (aid, 1, "bad\x00key", "")], now=NOW, commit_locking=[aid]
        )
    assert not connection.in_atomic_block
    assert Posting.objects.count() == 0


def prepared_on_server() -> set[str]:
    with connection.cursor() as cur:
        cur.execute("SELECT name FROM pg_prepared_statements")
        return {str(row[0]) for row in cur.fetchall()}


def test_the_statement_is_prepared_once_per_connection() -> None:
    aid = ensure_account("peer:awkward", kind="peer").id
    rid = ensure_account("receiver:awkward", kind="receiver").id
    post_in_transaction([(aid, -1, "p1", "")], now=NOW, commit_locking=[aid])
    assert prepared_on_server() == {"payments_ledger_batch_p"}
    post_in_transaction(
        [(aid, -1, "p2", "")], now=NOW, receipts=[(rid, "ab", 0, 1, "p2")], commit_locking=[aid]
    )
    post_in_transaction(
        [(aid, -1, "p3", "")], now=NOW, receipts=[(rid, "ab", 1, 1, "p3")], commit_locking=[aid]
    )
    assert prepared_on_server() == {"payments_ledger_batch_p", "payments_ledger_batch_pr"}
    connection.close()  # a new connection: prepared again on first use
    with transaction.atomic():
        post_in_transaction([(aid, -1, "p4", "")], now=NOW, receipts=[(rid, "ab", 2, 1, "p4")])
    assert prepared_on_server() == {"payments_ledger_batch_pr"}
    assert sorted(Posting.objects.values_list("key", flat=True)) == ["p1", "p2", "p3", "p4"]
    assert Receipt.objects.count() == 3
