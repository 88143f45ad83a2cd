"""The writer's one-round-trip batch on Postgres (``post_in_transaction(commit_locking=...)``):
the accounts' check and the statement (its inserts, then the ordered lock, then the update) in
one query string, one implicit transaction, once every account id of the batch is known; the
long way otherwise, and after a failure."""

from __future__ import annotations

import asyncio
import time

import pytest
from django.db import connection

from payments.errors import UnknownAccount
from payments.ledger import BalanceBook, PostingDraft, ReceiptDraft, ensure_account
from payments.models import LedgerAccount, Posting, Receipt
from tests.conftest import requires_postgres
from tests.payments.conftest import PEER, RECEIVER, amake_accounts, db

pytestmark = [pytest.mark.django_db(transaction=True), requires_postgres]

PID = bytes(range(16))


def pay(i: int, amount: int = 1) -> tuple[list[PostingDraft], list[ReceiptDraft]]:
    key = f"pkt{i}"
    return [PostingDraft(PEER, -amount, key)], [ReceiptDraft(RECEIVER, PID, i, amount, key)]


async def test_a_batch_of_known_accounts_is_one_statement(
    book: BalanceBook, captured_apply: list[list[int]]
) -> None:
    await amake_accounts()
    await book.load_account(PEER)
    await book.commit(*pay(0))  # the receiver's id is learnt on the long way
    before = (book.stats.queries, book.stats.transactions)
    await asyncio.gather(*(book.commit(*pay(i)) for i in range(1, 41)))
    assert (book.stats.queries - before[0], book.stats.transactions - before[1]) == (1, 1)
    # Durable and complete: every posting, receipt and balance, the receipts handed on.
    assert await db(lambda: (Posting.objects.count(), Receipt.objects.count())) == (41, 41)
    assert await db(lambda: int(LedgerAccount.objects.get(code=PEER).balance)) == -41
    assert book.balance(PEER) == -41
    assert sum(len(ids) for ids in captured_apply) == 41
    # The same keys again: nothing twice.
    await asyncio.gather(*(book.commit(*pay(i)) for i in range(1, 41)))
    assert await db(lambda: (Posting.objects.count(), Receipt.objects.count())) == (41, 41)
    assert book.balance(PEER) == -41


async def test_a_cached_account_that_is_gone_fails_only_its_commit(
    book: BalanceBook, captured_apply: list[list[int]], caplog: pytest.LogCaptureFixture
) -> None:
    await amake_accounts()
    gone = "peer:gone"
    await db(lambda: ensure_account(gone, kind="peer"))
    await book.load_account(PEER)
    await book.load_account(RECEIVER)
    await book.load_account(gone)  # its id is cached: the batch goes the one-trip way
    await db(lambda: LedgerAccount.objects.filter(code=gone).delete())
    results = await asyncio.gather(
        book.commit(*pay(1)),
        book.commit([PostingDraft(gone, -5, "g1")]),
        book.commit(*pay(2)),
        return_exceptions=True,
    )
    # The foreign key failed the one-trip batch (rolled back, the connection still good);
    # the retry took the long way, which names the account.
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], UnknownAccount)
    assert "retrying once" in caplog.text
    assert await db(lambda: Posting.objects.count()) == 2
    assert await db(lambda: int(LedgerAccount.objects.get(code=PEER).balance)) == -2
    assert book.stats.failed_batches == 0
    await book.commit(*pay(3))  # and the next batch goes through
    assert book.balance(PEER) == -3


def test_commit_locking_leaves_no_transaction_open_after_an_error() -> None:
    from django.db import DatabaseError
    from django.utils import timezone

    from payments.ledger import post_in_transaction

    peer = ensure_account(PEER, kind="peer", min_balance=-1000)
    with pytest.raises(DatabaseError):
        post_in_transaction(
            [(peer.id, -1, "a", ""), (10**12, -1, "b", "")],  # no such account: foreign key
            now=timezone.now(),
            commit_locking=[peer.id, 10**12],
        )
    assert not connection.in_atomic_block
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM payments_posting")
        assert cur.fetchone() == (0,)  # the connection is usable, nothing was kept
    posted = post_in_transaction(
        [(peer.id, -7, "c", "")], now=timezone.now(), commit_locking=[peer.id]
    )
    assert posted.new_keys == {"c"} and posted.balances[peer.id][0] == -7


def test_a_transaction_left_open_on_the_connection_is_never_taken_for_a_commit() -> None:
    from django.db import OperationalError
    from django.utils import timezone

    from payments.ledger import post_in_transaction

    peer = ensure_account(PEER, kind="peer", min_balance=-1000)
    connection.ensure_connection()
    connection.connection.execute("BEGIN")  # a stray transaction: the string would not commit
    with pytest.raises(OperationalError):
        post_in_transaction([(peer.id, -1, "a", "")], now=timezone.now(), commit_locking=[peer.id])
    assert connection.connection is None  # dropped, the stray transaction rolled back
    posted = post_in_transaction(
        [(peer.id, -1, "a", "")], now=timezone.now(), commit_locking=[peer.id]
    )
    assert posted.new_keys == {"a"} and posted.balances[peer.id][0] == -1
    connection.close()  # the batch is durable: another connection sees it
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM payments_posting")
        assert cur.fetchone() == (1,)


def test_a_batch_inserts_its_rows_before_it_waits_for_the_account() -> None:
    """The batch's inserts run while another transaction holds the account (the other
    lane's batch committing); only the balance's update waits for it, then lands exactly.

    Seen from outside: while the batch waits, its posting key is taken by its open
    transaction (an insert of the same key waits for it), and the balance is untouched.
    """
    import threading

    from django.db import DatabaseError, connections
    from django.utils import timezone

    from payments.ledger import post_in_transaction

    peer = ensure_account(PEER, kind="peer", min_balance=-1000)
    post_in_transaction([(peer.id, -1, "warm", "")], now=timezone.now(), commit_locking=[peer.id])
    holder = connections.create_connection("default")
    prober = connections.create_connection("default")
    outcome: list[object] = []

    def batch() -> None:
        try:
            outcome.append(
                post_in_transaction(
                    [(peer.id, -5, "k1", ""), (peer.id, -2, "k2", "")],
                    now=timezone.now(),
                    commit_locking=[peer.id],
                )
            )
        except BaseException as exc:  # reported below
            outcome.append(exc)
        finally:
            connection.close()

    try:
        with holder.cursor() as hold, prober.cursor() as probe:
            hold.execute("BEGIN")
            hold.execute(
                "SELECT id FROM payments_ledgeraccount WHERE id = %s FOR NO KEY UPDATE", [peer.id]
            )
            worker = threading.Thread(target=batch)
            worker.start()
            probe.execute("SET lock_timeout = '100ms'")
            insert = (
                "INSERT INTO payments_posting (account_id, amount, key, memo, created_at) "
                "VALUES (%s, 1, 'k2', '', now()) ON CONFLICT (key) DO NOTHING"
            )
            deadline = time.monotonic() + 10
            while True:  # until the batch waits for a lock (the account's)
                probe.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query LIKE %s",
                    ["%EXECUTE payments_ledger_batch%"],
                )
                if probe.fetchone()[0]:
                    break
                assert time.monotonic() < deadline, "the batch never waited"
                time.sleep(0.01)
            # k2 is the batch's already: an insert of it waits for the batch's transaction.
            with pytest.raises(DatabaseError, match="lock timeout"):
                probe.execute(insert, [peer.id])
            assert worker.is_alive() and not outcome  # it waits for the account
            probe.execute("SELECT balance FROM payments_ledgeraccount WHERE id = %s", [peer.id])
            assert int(probe.fetchone()[0]) == -1
            hold.execute("ROLLBACK")
            worker.join(10)
        assert len(outcome) == 1 and not isinstance(outcome[0], BaseException), outcome
        posted = outcome[0]
        assert posted.new_keys == {"k1", "k2"}  # type: ignore[attr-defined]
        assert posted.balances[peer.id][0] == -8  # type: ignore[attr-defined]
        assert int(LedgerAccount.objects.get(id=peer.id).balance) == -8
        assert Posting.objects.filter(key="k2").count() == 1
    finally:
        holder.close()
        prober.close()
