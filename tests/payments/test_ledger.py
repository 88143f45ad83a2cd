"""The balance book: holds, group commit, idempotency, failure isolation, durability."""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal

import pytest
from django.db import DatabaseError, connection

from payments import ledger
from payments.errors import (
    AccountNotLoaded,
    BalanceLimitExceeded,
    CommitFailed,
    DuplicateHold,
    InvalidAmount,
    UnknownAccount,
)
from payments.ledger import BalanceBook, PostingDraft, ReceiptDraft
from payments.models import LedgerAccount, Posting, Receipt
from tests.payments.conftest import NODE, PEER, PEER_B, RECEIVER, amake_accounts, db, until

pytestmark = pytest.mark.django_db(transaction=True)

PID = bytes(range(16))


def pay(
    i: int, amount: int = 1, *, pid: bytes = PID
) -> tuple[list[PostingDraft], list[ReceiptDraft]]:
    """What the receiver commits for one chunk: the peer's -amount and the receipt."""
    key = f"pkt{i}"
    return [PostingDraft(PEER, -amount, key)], [ReceiptDraft(RECEIVER, pid, i, amount, key)]


async def balance_in_db(code: str) -> int:
    return int(await db(lambda: LedgerAccount.objects.get(code=code).balance))


# --- holds ------------------------------------------------------------------------------


async def test_hold_checks_min_balance_against_committed_balance_and_holds(
    book: BalanceBook,
) -> None:
    await amake_accounts(peer_min=-100)
    await book.load_account(PEER)
    book.hold(PEER, 60, "a")
    book.hold(PEER, 40, "b")  # exactly at the limit: allowed
    with pytest.raises(BalanceLimitExceeded) as err:
        book.hold(PEER, 1, "c")
    assert err.value.ilp_code == "T04"
    assert book.snapshot(PEER).pending_debits == 100
    book.release("a")
    book.hold(PEER, 60, "c")  # freed by the release
    assert book.balance(PEER) == 0  # holds never change the committed balance


async def test_hold_credit_checks_max_balance(book: BalanceBook) -> None:
    await amake_accounts(peer_max=50)
    await book.load_account(PEER)
    book.hold_credit(PEER, 50, "in")
    with pytest.raises(BalanceLimitExceeded):
        book.hold_credit(PEER, 1, "in2")
    book.hold(PEER, 500, "out")  # debits are checked against min_balance only
    book.release("in")
    book.hold_credit(PEER, 1, "in2")


async def test_hold_key_rules(book: BalanceBook) -> None:
    await amake_accounts()
    await book.load_account(PEER)
    book.hold(PEER, 10, "k")
    book.hold(PEER, 10, "k")  # the same hold again: no-op
    assert book.snapshot(PEER).pending_debits == 10
    with pytest.raises(DuplicateHold):
        book.hold(PEER, 11, "k")
    with pytest.raises(InvalidAmount):
        book.hold(PEER, -1, "neg")
    book.hold(PEER, 0, "zero")  # zero amounts are ignored
    book.release("zero")
    book.release("never-held")
    assert book.snapshot(PEER).pending_debits == 10


async def test_unbounded_account_accepts_any_hold(book: BalanceBook) -> None:
    await amake_accounts(peer_min=None, peer_max=None)
    await book.load_account(PEER)
    book.hold(PEER, 2**64 - 1, "big")
    book.hold_credit(PEER, 2**64 - 1, "big-in")


async def test_hold_on_unloaded_account_from_a_loop_raises_then_ahold_loads(
    book: BalanceBook,
) -> None:
    await amake_accounts()
    with pytest.raises(AccountNotLoaded):
        book.hold(PEER, 1, "x")
    await book.ahold(PEER, 1, "x")
    assert book.is_loaded(PEER)
    with pytest.raises(UnknownAccount):
        await book.load_account("peer:nobody")


async def test_commit_releases_hold_and_moves_balance(book: BalanceBook) -> None:
    await amake_accounts(peer_min=-100)
    await book.load_account(PEER)
    book.hold(PEER, 70, "pkt1")
    await book.commit(*pay(1, 70))
    snap = book.snapshot(PEER)
    assert (snap.balance, snap.pending_debits) == (-70, 0)
    assert await balance_in_db(PEER) == -70
    # The limit now applies to the new committed balance.
    with pytest.raises(BalanceLimitExceeded):
        book.hold(PEER, 31, "pkt2")
    book.hold(PEER, 30, "pkt2")


async def test_failed_commit_keeps_the_hold(book: BalanceBook) -> None:
    await amake_accounts(peer_min=-100)
    await book.load_account(PEER)
    book.hold(PEER, 70, "pkt1")
    with pytest.raises(UnknownAccount):
        await book.commit([PostingDraft(PEER, -70, "pkt1"), PostingDraft("peer:ghost", 70, "g")])
    assert book.snapshot(PEER).pending_debits == 70
    assert await db(lambda: Posting.objects.count()) == 0


# --- idempotency ----------------------------------------------------------------------------


async def test_same_key_sequentially_is_counted_once(book: BalanceBook, captured_apply) -> None:
    await amake_accounts()
    await book.commit(*pay(1, 5))
    await book.commit(*pay(1, 5))
    await book.commit([PostingDraft(PEER, -5, "pkt1")])
    assert await balance_in_db(PEER) == -5
    assert await db(lambda: (Posting.objects.count(), Receipt.objects.count())) == (1, 1)
    assert book.stats.postings_skipped == 2
    assert len(captured_apply) == 1  # apply_receipts queued for the new receipt only


async def test_same_key_concurrently_is_counted_once(book: BalanceBook, captured_apply) -> None:
    await amake_accounts()
    await book.load_account(PEER)
    await asyncio.gather(*(book.commit(*pay(7, 9)) for _ in range(50)))
    assert await balance_in_db(PEER) == -9
    assert book.balance(PEER) == -9
    assert await db(lambda: (Posting.objects.count(), Receipt.objects.count())) == (1, 1)
    assert await book.payment_total(RECEIVER, PID) == 9


async def test_zero_amount_posting_writes_nothing(book: BalanceBook) -> None:
    await amake_accounts()
    await book.commit([PostingDraft(PEER, 0, "zero")])
    assert await db(lambda: Posting.objects.count()) == 0


# --- group commit --------------------------------------------------------------------------


async def test_many_concurrent_commits_share_one_transaction(
    book: BalanceBook, captured_apply
) -> None:
    await amake_accounts()
    await book.load_account(PEER)  # a separate batch, before we count
    await book.commit(*pay(0))  # warm up: connection opened, account ids known

    async def burst(start: int, n: int) -> tuple[int, int, int]:
        before = (book.stats.transactions, book.stats.queries, book.stats.batches)
        await asyncio.gather(*(book.commit(*pay(i)) for i in range(start, start + n)))
        return (
            book.stats.transactions - before[0],
            book.stats.queries - before[1],
            book.stats.batches - before[2],
        )

    small = await burst(1, 10)
    large = await burst(100, 400)
    assert small[0] == 1 and large[0] == 1  # one transaction for the whole burst
    assert small[2] == 1 and large[2] == 1  # one thread hop
    assert large[1] == small[1]  # the statement count does not grow with the batch
    assert await balance_in_db(PEER) == -411
    assert book.stats.max_batch_size >= 400
    assert sum(len(ids) for ids in captured_apply) == 411


async def test_failed_batch_fails_its_waiters_only(
    book: BalanceBook, monkeypatch: pytest.MonkeyPatch, captured_apply
) -> None:
    await amake_accounts()
    await book.load_account(PEER)
    real = ledger.post_in_transaction
    failures = {"left": 2}  # the batch is retried once: fail both attempts

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        if failures["left"]:
            failures["left"] -= 1
            raise DatabaseError("injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(ledger, "post_in_transaction", flaky)
    book.hold(PEER, 3, "pkt1")
    results = await asyncio.gather(
        *(book.commit(*pay(i, 3)) for i in (1, 2, 3)), return_exceptions=True
    )
    assert all(isinstance(r, CommitFailed) for r in results)
    assert book.stats.failed_batches == 1
    assert await db(lambda: (Posting.objects.count(), Receipt.objects.count())) == (0, 0)
    assert book.snapshot(PEER).pending_debits == 3  # the caller releases after its Reject
    assert book.balance(PEER) == 0
    # The next batch is unaffected, and retrying the failed commits is safe.
    await asyncio.gather(*(book.commit(*pay(i, 3)) for i in (1, 2, 3, 4)))
    assert await balance_in_db(PEER) == -12
    assert book.snapshot(PEER).pending_debits == 0


async def test_transient_failure_is_retried_within_the_batch(
    book: BalanceBook, monkeypatch: pytest.MonkeyPatch, captured_apply
) -> None:
    await amake_accounts()
    real = ledger.post_in_transaction
    failures = {"left": 1}

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        if failures["left"]:
            failures["left"] -= 1
            raise DatabaseError("injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(ledger, "post_in_transaction", flaky)
    await book.commit(*pay(1, 4))
    assert await balance_in_db(PEER) == -4


async def test_unknown_account_fails_only_its_commit(book: BalanceBook, captured_apply) -> None:
    await amake_accounts()
    results = await asyncio.gather(
        book.commit(*pay(1)),
        book.commit([PostingDraft("peer:ghost", -1, "ghost")]),
        book.commit(*pay(2)),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], UnknownAccount)
    assert await balance_in_db(PEER) == -2


async def test_rows_are_durable_when_commit_returns(book: BalanceBook, captured_apply) -> None:
    """Crash safety: once ``commit`` returns, another connection sees every row."""
    await amake_accounts()
    for i in range(20):
        await book.commit(*pay(i, i + 1))
        # The test's own connection (not the writer's) sees the committed rows.
        assert await db(lambda i=i: Posting.objects.filter(key=f"pkt{i}").exists())
        assert await db(lambda i=i: Receipt.objects.filter(key=f"pkt{i}").exists())
        assert await balance_in_db(PEER) == -sum(range(1, i + 2))


async def test_cancelled_caller_does_not_cancel_the_commit(
    book: BalanceBook, captured_apply
) -> None:
    await amake_accounts()
    await book.load_account(PEER)
    task = asyncio.create_task(book.commit(*pay(1, 8)))
    await asyncio.sleep(0)  # queued
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The batch goes on without its waiter. No barrier job: with two lanes (PostgreSQL) a
    # later job may be written beside it, not after it.
    await until(lambda: book.balance(PEER) == -8)
    assert await balance_in_db(PEER) == -8


# --- payment totals, loops, threads ---------------------------------------------------------------


async def test_payment_total_memory_then_db(book: BalanceBook, captured_apply) -> None:
    await amake_accounts()
    other = b"\xff" * 16
    assert await book.payment_total(RECEIVER, PID) == 0
    await book.commit(*pay(1, 10))
    await book.commit(*pay(2, 15))
    await book.commit(*pay(3, 1, pid=other))
    assert await book.payment_total(RECEIVER, PID) == 25  # from memory, kept up to date
    fresh = BalanceBook()  # another process: nothing in memory
    try:
        assert await fresh.payment_total(RECEIVER, PID) == 25
        assert await fresh.payment_total(RECEIVER, other) == 1
        assert await fresh.payment_total(RECEIVER, b"\x00") == 0
    finally:
        fresh.close()


async def test_balances_are_refreshed_from_the_database(book: BalanceBook) -> None:
    await amake_accounts()
    await book.load_account(PEER)
    await db(lambda: LedgerAccount.objects.filter(code=PEER).update(balance=Decimal(-5), version=9))
    assert book.balance(PEER) == 0  # in memory until a refresh
    await book.refresh()
    assert book.balance(PEER) == -5


def test_book_works_across_event_loops_and_threads(book: BalanceBook, captured_apply) -> None:
    from tests.payments.conftest import make_accounts

    make_accounts()

    def run(i: int) -> None:
        asyncio.run(book.commit(*pay(i, 2)))

    run(1)
    run(2)  # a new loop: the flusher binds to it
    threads = [threading.Thread(target=run, args=(i,)) for i in range(3, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    book.commit_sync(*pay(9, 2))  # and from a plain thread
    assert book.balance(PEER) == -18
    assert int(LedgerAccount.objects.get(code=PEER).balance) == -18


def test_drafts_validate() -> None:
    with pytest.raises(InvalidAmount):
        PostingDraft(PEER, 2**64, "k")
    with pytest.raises(InvalidAmount):
        PostingDraft(PEER, 1.5, "k")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        PostingDraft(PEER, 1, "")
    with pytest.raises(ValueError):
        PostingDraft(PEER, 1, "k" * 256)
    with pytest.raises(InvalidAmount):
        ReceiptDraft(RECEIVER, PID, 0, -1, "k")
    with pytest.raises(ValueError):
        ReceiptDraft(RECEIVER, b"", 0, 1, "k")
    with pytest.raises(ValueError):
        ReceiptDraft(RECEIVER, PID, 2**32, 1, "k")
    PostingDraft(PEER, -(2**64 - 1), "k")  # the full UInt64 range either way


async def test_sqlite_refuses_amounts_beyond_int64(book: BalanceBook) -> None:
    await amake_accounts()
    big = PostingDraft(PEER, 2**63, "big")
    if connection.vendor == "sqlite":
        with pytest.raises(InvalidAmount):
            await book.commit([big])
    else:
        await book.commit([big, PostingDraft(NODE, -(2**63), "big:counter")])
        assert await balance_in_db(PEER) == 2**63


async def test_commit_to_a_second_peer_in_the_same_batch(book: BalanceBook) -> None:
    await amake_accounts()
    await asyncio.gather(
        book.commit([PostingDraft(PEER, -5, "f1:src"), PostingDraft(PEER_B, 5, "f1:dst")]),
        book.commit([PostingDraft(PEER_B, -3, "f2:src"), PostingDraft(PEER, 3, "f2:dst")]),
    )
    assert (await balance_in_db(PEER), await balance_in_db(PEER_B)) == (-2, 2)


async def test_closed_book_fails_commits_instead_of_hanging(book: BalanceBook) -> None:
    await amake_accounts()
    await book.commit(*pay(1))
    book.close()
    with pytest.raises(CommitFailed):  # BookClosed is a CommitFailed: the caller Rejects
        await book.commit(*pay(2))


async def test_a_total_read_beside_a_commit_of_the_same_payment_counts_it_once(
    book: BalanceBook, captured_apply
) -> None:
    """The total's read may see a receipt whose batch the loop has not applied yet: the
    memory must not then add it a second time when it does."""
    await amake_accounts()
    await book.commit(*pay(1, 10))
    # The commit and the total in one loop turn: one batch, commits written before totals.
    _, total = await asyncio.gather(book.commit(*pay(2, 15)), book.payment_total(RECEIVER, PID))
    assert total in (10, 25)
    assert await book.payment_total(RECEIVER, PID) == 25
    await book.commit(*pay(3, 5))
    assert await book.payment_total(RECEIVER, PID) == 30
