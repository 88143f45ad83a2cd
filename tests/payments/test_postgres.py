"""Concurrency on a real PostgreSQL: several writers committing the same keys count them once."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection

from payments import services
from payments.ledger import BalanceBook, PostingDraft, ReceiptDraft, new_book
from payments.models import IncomingPayment, LedgerAccount, Posting, Receipt
from tests.conftest import requires_postgres
from tests.payments.conftest import PEER, RECEIVER, make_accounts

pytestmark = [requires_postgres, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
N = 300
PID = b"\x05" * 16


def drafts(i: int) -> tuple[list[PostingDraft], list[ReceiptDraft]]:
    key = f"pkt{i}"
    return [PostingDraft(PEER, -(i % 7 + 1), key)], [ReceiptDraft(RECEIVER, PID, i, i % 7 + 1, key)]


EXPECTED = sum(i % 7 + 1 for i in range(N))


def assert_counted_once() -> None:
    assert Posting.objects.filter(account__code=PEER).count() == N
    assert Receipt.objects.count() == N
    assert int(LedgerAccount.objects.get(code=PEER).balance) == -EXPECTED


def test_two_books_in_threads_commit_the_same_keys_once(captured_apply: list[list[int]]) -> None:
    """Two books = two writer threads and connections, as two processes would have."""
    make_accounts(peer_min=None)
    books = [new_book(), new_book()]
    start = threading.Barrier(len(books))
    errors: list[BaseException] = []

    def run(book: BalanceBook, order: list[int]) -> None:
        async def go() -> None:
            start.wait()
            # Many small batches, in opposite key orders, to interleave the writers.
            for chunk in range(0, N, 25):
                await asyncio.gather(*(book.commit(*drafts(i)) for i in order[chunk : chunk + 25]))

        try:
            asyncio.run(go())
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(books[0], list(range(N)))),
        threading.Thread(target=run, args=(books[1], list(reversed(range(N))))),
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        for book in books:
            book.close()
    assert not errors, errors
    assert_counted_once()
    inserted = sum(b.stats.postings_inserted for b in books)
    skipped = sum(b.stats.postings_skipped for b in books)
    assert (inserted, skipped) == (N, N)
    # Each book's memory agrees with the database at its last commit.
    assert sum(len(ids) for ids in captured_apply) == N


def test_apply_receipts_concurrently_credits_once(captured_apply: list[list[int]]) -> None:
    make_accounts(peer_min=None)
    book = new_book()
    try:
        for i in range(N):
            book.commit_sync(*drafts(i))
    finally:
        book.close()
    ids = [i for batch in captured_apply for i in batch]
    start = threading.Barrier(4)
    results: list[int] = []

    def apply(order: list[int]) -> None:
        start.wait()
        try:
            for chunk in range(0, len(order), 40):
                results.append(services.apply_receipts(receipt_ids=order[chunk : chunk + 40]))
        finally:
            connection.close()

    orders = [ids, list(reversed(ids)), ids[::2] + ids[1::2], ids[1::2] + ids[::2]]
    threads = [threading.Thread(target=apply, args=(o,)) for o in orders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sum(results) == N
    assert int(LedgerAccount.objects.get(code=RECEIVER).balance) == EXPECTED
    payment = IncomingPayment.objects.get()
    assert (int(payment.total), payment.chunks) == (EXPECTED, N)
    call_command("check_ledger", stdout=io.StringIO())  # raises on any difference


CHILD = textwrap.dedent(
    """
    import asyncio, os, sys, time
    import django
    django.setup()
    from payments.ledger import (
        PostingDraft, ReceiptDraft, get_book, reset_book, wait_receipts_applied,
    )

    N, PID = int(os.environ["N"]), bytes.fromhex(os.environ["PID"])
    order = list(range(N)) if os.environ["ORDER"] == "up" else list(reversed(range(N)))

    async def main():
        book = get_book()
        await book.load_account("peer:alice")
        time.sleep(max(0.0, float(os.environ["START_AT"]) - time.time()))
        for chunk in range(0, N, 20):
            await asyncio.gather(*(
                book.commit(
                    [PostingDraft("peer:alice", -(i % 7 + 1), f"pkt{i}")],
                    [ReceiptDraft("receiver:carol", PID, i, i % 7 + 1, f"pkt{i}")],
                )
                for i in order[chunk:chunk + 20]
            ))
        # commit() returns once the rows are durable; the receipts it recorded are
        # applied later by this process's applier thread (a daemon, killed at exit).
        # Exit only once they are applied, then close the book and the applier.
        if not wait_receipts_applied(60):
            sys.exit("receipts still unapplied after 60 s")
        print(book.stats.postings_inserted, book.stats.postings_skipped)

    asyncio.run(main())
    reset_book()
    """
)


def test_two_processes_commit_the_same_keys_once() -> None:
    """Two real processes (each with its book and, eager, its own apply_receipts)."""
    make_accounts(peer_min=None)
    s = connection.settings_dict
    url = f"postgres://{s['USER']}@{s['HOST']}:{s['PORT']}/{s['NAME']}"
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "N": str(N),
        "PID": PID.hex(),
        "START_AT": str(time.time() + 4),
        "DJANGO_SETTINGS_MODULE": "interledger_site.settings",
    }
    env.pop("REDIS_URL", None)  # eager Celery in the children: both apply receipts too
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD],
            cwd=ROOT,
            env={**env, "ORDER": order},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for order in ("up", "down")
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    counts = [tuple(int(x) for x in out.split()) for out, _ in outputs]
    assert sum(c[0] for c in counts) == N and sum(c[1] for c in counts) == N
    assert_counted_once()
    assert int(LedgerAccount.objects.get(code=RECEIVER).balance) == EXPECTED
    assert not Receipt.objects.filter(applied_at__isnull=True).exists()
    payment = IncomingPayment.objects.get()
    assert (int(payment.total), payment.chunks) == (EXPECTED, N)
    call_command("check_ledger", stdout=io.StringIO())


def test_tagged_receipt_prefix_lookup_uses_the_partial_pattern_index() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        plain = Receipt.objects.filter(key__startswith="tag:ab12:").explain()
        both = (
            Receipt.objects.filter(key__startswith="tag:")
            .filter(key__startswith="tag:ab12:")
            .explain()
        )
    assert "payments_receipt_tag_key" not in plain  # a partial index needs its condition
    assert "payments_receipt_tag_key" in both
