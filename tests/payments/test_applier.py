"""The receipt applier: receipts are applied in bulk off the ledger writer's critical path."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection

from payments import ledger, services
from payments.ledger import BalanceBook, PostingDraft, ReceiptDraft, new_applier
from payments.models import IncomingPayment, LedgerAccount, PendingReceipt, Posting, Receipt
from tests.payments.conftest import PEER, RECEIVER, amake_accounts, db, make_accounts

pytestmark = pytest.mark.django_db(transaction=True)

PID = b"\x03" * 16


def pay(i: int, amount: int = 2, pid: bytes = PID) -> tuple[list[PostingDraft], list[ReceiptDraft]]:
    key = f"a{i}"
    return [PostingDraft(PEER, -amount, key)], [ReceiptDraft(RECEIVER, pid, i, amount, key)]


async def test_commit_returns_before_receipts_are_applied_then_they_are(
    book: BalanceBook, eager_celery: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    await amake_accounts()
    await book.load_account(PEER)
    applier = new_applier(delay=0.3)
    monkeypatch.setattr(ledger, "_applier", applier)
    try:
        for i in range(5):
            await book.commit(*pay(i))
        # The commits are durable; applying waits for the applier's window.
        assert await db(lambda: Receipt.objects.filter(applied_at__isnull=True).count()) == 5
        assert await db(lambda: IncomingPayment.objects.count()) == 0
        assert await db(lambda: ledger.wait_receipts_applied(10))
        payment = await db(lambda: IncomingPayment.objects.get())
        assert (int(payment.total), payment.chunks) == (10, 5)
        assert await db(lambda: int(LedgerAccount.objects.get(code=RECEIVER).balance)) == 10
        assert applier.batches == 1  # one bulk apply for the five commits
        assert applier.applied == 5
    finally:
        applier.close()


def test_bulk_apply_is_a_fixed_number_of_statements(
    book: BalanceBook, captured_apply: list[list[int]]
) -> None:
    make_accounts()
    for i in range(3):
        book.commit_sync(*pay(i))
    few = [i for batch in captured_apply for i in batch]
    captured_apply.clear()
    for i in range(3, 103):
        book.commit_sync(*pay(i, pid=bytes([i + 100]) * 16))
    many = [i for batch in captured_apply for i in batch]

    def statements(ids: list[int]) -> int:
        from django.test.utils import CaptureQueriesContext

        with CaptureQueriesContext(connection) as ctx:
            assert services.apply_receipts(receipt_ids=ids) == len(ids)
        return len(ctx.captured_queries)

    assert statements(many) == statements(few)  # 100 receipts, 100 payments: same count
    assert IncomingPayment.objects.count() == 101
    assert int(LedgerAccount.objects.get(code=RECEIVER).balance) == 206
    # One posting per receiving account and apply, whatever the number of receipts.
    postings = Posting.objects.filter(key__startswith="receipts:").order_by("id")
    assert [(p.key, int(p.amount)) for p in postings] == [
        (f"receipts:{many[0]}", 200),  # applied first, above
        (f"receipts:{few[0]}", 6),
    ]
    assert not Receipt.objects.filter(applied_at__isnull=True).exists()
    linked = Receipt.objects.filter(incoming_payment__payment_id=PID.hex()).count()
    assert linked == 3


def test_apply_keeps_first_and_last_at_across_batches(
    book: BalanceBook, captured_apply: list[list[int]]
) -> None:
    make_accounts()
    book.commit_sync(*pay(0))
    first = captured_apply.pop()
    book.commit_sync(*pay(1))
    second = captured_apply.pop()
    Receipt.objects.filter(id__in=first).update(
        created_at=Receipt.objects.get(id=first[0]).created_at - timedelta(hours=1)
    )
    services.apply_receipts(receipt_ids=second)
    services.apply_receipts(receipt_ids=first)  # an older receipt applied later
    payment = IncomingPayment.objects.get()
    receipts = {r.id: r.created_at for r in Receipt.objects.all()}
    assert payment.first_at == receipts[first[0]]
    assert payment.last_at == receipts[second[0]]
    assert (int(payment.total), payment.chunks) == (4, 2)


def test_flush_from_many_threads_and_close_applies_what_is_pending(
    book: BalanceBook, eager_celery: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_accounts()
    # A window no test outlives: whatever is applied below was applied without waiting it.
    applier = new_applier(delay=3600.0)
    monkeypatch.setattr(ledger, "_applier", applier)
    book.commit_sync(*pay(0))  # commit_sync waits for its receipts: flushed at once
    assert Receipt.objects.get().applied_at is not None
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(applier.flush(5))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 4
    applier.submit([])  # nothing: no wake-up
    ids = list(Receipt.objects.values_list("id", flat=True))
    Receipt.objects.update(applied_at=None, incoming_payment=None)  # never applied ...
    PendingReceipt.objects.bulk_create(PendingReceipt(receipt_id=i) for i in ids)
    IncomingPayment.objects.all().delete()
    Posting.objects.filter(key__startswith="receipts:").delete()
    LedgerAccount.objects.filter(code=RECEIVER).update(balance=0)
    applier.submit(ids)
    applier.close()  # ... close applies it without waiting for the hour's window
    thread = applier._thread
    assert thread is not None and not thread.is_alive()  # drained and stopped, not waiting
    assert Receipt.objects.get().applied_at is not None
    applier.submit(ids)  # closed: left to the sweep, no thread started again
    assert applier.applied == 2


def test_sweep_applies_forgotten_receipts_once(
    book: BalanceBook, eager_celery: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_accounts()
    monkeypatch.setattr(ledger, "_queue_apply_receipts", lambda ids: None)  # "lost" task
    book.commit_sync(*pay(0))
    book.commit_sync(*pay(1))
    Receipt.objects.filter(key="a0").update(
        created_at=Receipt.objects.get(key="a0").created_at - timedelta(minutes=5)
    )
    applier = new_applier()
    try:
        assert applier.sweep(older_than=timedelta(minutes=1)) == 1  # the old one only
        assert list(
            Receipt.objects.filter(applied_at__isnull=True).values_list("key", flat=True)
        ) == ["a1"]
        assert applier.sweep(older_than=timedelta(0)) == 1
        assert applier.sweep(older_than=timedelta(0)) == 0  # nothing counted twice
    finally:
        applier.close()
    assert int(LedgerAccount.objects.get(code=RECEIVER).balance) == 4
    assert IncomingPayment.objects.get().chunks == 2


def test_tag_key_index_exists() -> None:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, Receipt._meta.db_table)
    assert constraints["payments_receipt_tag_key"]["columns"] == ["key"]


def test_each_receipt_is_linked_to_its_own_payment(
    book: BalanceBook, captured_apply: list[list[int]]
) -> None:
    """One chunk, several payments of several chunks each, a zero-amount chunk: every
    receipt is linked to the upsert's row of its own (account, payment id), each payment
    sums its own receipts (the link is a join on the upsert's ``RETURNING``)."""
    make_accounts()
    pids = [bytes([n]) * 16 for n in (7, 8, 9)]
    for i in range(9):
        book.commit_sync(*pay(i, amount=i % 3, pid=pids[i % 3]))  # pid 7: zero amounts
    ids = [i for batch in captured_apply for i in batch]
    assert services.apply_receipts(receipt_ids=ids) == 9
    payments = {p.payment_id: p for p in IncomingPayment.objects.all()}
    assert {pid: (int(p.total), p.chunks) for pid, p in payments.items()} == {
        pids[0].hex(): (0, 3),
        pids[1].hex(): (3, 3),
        pids[2].hex(): (6, 3),
    }
    for receipt in Receipt.objects.all():
        assert receipt.applied_at is not None
        assert receipt.incoming_payment_id == payments[receipt.payment_id].pk
    assert int(LedgerAccount.objects.get(code=RECEIVER).balance) == 9
    assert services.apply_receipts(receipt_ids=ids) == 0  # applied: nothing twice
    assert int(LedgerAccount.objects.get(code=RECEIVER).balance) == 9


def test_a_receipt_whose_posting_exists_is_marked_not_counted(
    book: BalanceBook, captured_apply: list[list[int]]
) -> None:
    """Receipts whose account's posting key is already there (not possible through the
    service, the key names the first receipt and a receipt is claimed once: a ledger
    repaired by hand) are marked applied without a link and move no total or balance; a
    later apply of the same payment's other chunk counts."""
    make_accounts()
    book.commit_sync(*pay(0, amount=5))
    book.commit_sync(*pay(1, amount=7))
    ids = [i for batch in captured_apply for i in batch]
    receiver = LedgerAccount.objects.get(code=RECEIVER)
    services.account_adjust(account_code=RECEIVER, amount=5, key="by-hand")
    Posting.objects.filter(key="adjust:by-hand").update(key=f"receipts:{ids[0]}")  # the key
    assert services.apply_receipts(receipt_ids=ids[:1]) == 0  # the chunk has no other
    assert not IncomingPayment.objects.exists()
    assert services.apply_receipts(receipt_ids=ids) == 1
    payment = IncomingPayment.objects.get()
    assert (int(payment.total), payment.chunks) == (7, 1)
    links = dict(Receipt.objects.values_list("key", "incoming_payment_id"))
    assert links == {"a0": None, "a1": payment.pk}
    assert not Receipt.objects.filter(applied_at__isnull=True).exists()
    assert int(LedgerAccount.objects.get(pk=receiver.pk).balance) == 5 + 7


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's WAL")
def test_ledger_connections_checkpoint_less_often_and_the_applier_does(
    book: BalanceBook, eager_celery: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger's SQLite connections raise the WAL's checkpoint threshold (a backstop);
    the applier thread checkpoints on its own, passively, once the interval has passed."""
    from payments.ledger import applier as applier_module
    from payments.ledger.sql import SQLITE_LEDGER_AUTOCHECKPOINT, _cursor

    make_accounts()
    cursor = _cursor()
    cursor.execute("PRAGMA wal_autocheckpoint")
    assert cursor.fetchone()[0] == SQLITE_LEDGER_AUTOCHECKPOINT
    checkpoints: list[tuple[int, int, int]] = []

    def checkpoint() -> None:
        c = _cursor()
        c.execute("PRAGMA wal_checkpoint(PASSIVE)")
        checkpoints.append(tuple(c.fetchone()))

    monkeypatch.setattr(applier_module, "sqlite_checkpoint", checkpoint)
    monkeypatch.setattr(applier_module, "SQLITE_CHECKPOINT_INTERVAL", 0.0)
    applier = new_applier(delay=0.01)
    monkeypatch.setattr(ledger, "_applier", applier)
    try:
        book.commit_sync(*pay(0))
        assert ledger.wait_receipts_applied(10)
    finally:
        applier.close()
    assert checkpoints and checkpoints[-1][0] == 0  # ran, not busy
    assert Receipt.objects.get().applied_at is not None


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's WAL")
def test_restart_wal_completes_the_checkpoint_and_starts_the_wal_over() -> None:
    """A checkpoint alone leaves the WAL's frames in place until a write begins with all
    of them copied, which the ledger writer, committing beside the applier's passive
    checkpoint, seldom does; the restart step copies what is left and makes that write
    itself, so the WAL is back to a frame or two (and ``user_version`` unchanged)."""
    from payments.ledger.sql import _cursor, sqlite_checkpoint, sqlite_restart_wal

    make_accounts()

    def write(prefix: str) -> None:
        for i in range(20):
            services.account_adjust(account_code=RECEIVER, amount=1, key=f"{prefix}{i}")

    def wal_frames() -> int:
        cursor = _cursor()
        cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")  # (busy, frames in the WAL, copied)
        return int(cursor.fetchone()[1])

    write("a")
    sqlite_checkpoint()
    checkpointed_only = wal_frames()
    write("b")
    sqlite_restart_wal()
    restarted = wal_frames()
    assert checkpointed_only > 20 and restarted <= 2, (checkpointed_only, restarted)
    cursor = _cursor()
    cursor.execute("PRAGMA user_version")
    assert cursor.fetchone()[0] == 0


def test_a_large_batch_is_applied_in_chunks_on_sqlite_each_under_the_write_lock() -> None:
    """A gathered batch can be thousands of receipts: on SQLite each chunk is its own
    transaction under the write lock (the ledger writer waits for one chunk at most); on
    Postgres, which has row locks, the batch is one call."""
    from payments.ledger.applier import SQLITE_APPLY_CHUNK, ReceiptApplier
    from payments.ledger.sql import SQLITE_WRITE_LOCK

    calls: list[tuple[int, bool]] = []

    def apply(ids: list[int]) -> int:
        calls.append((len(ids), SQLITE_WRITE_LOCK.locked()))
        return len(ids)

    applier = ReceiptApplier(apply=apply, publish=lambda ids: False, delay=3600.0)
    try:
        applier.submit(range(2 * SQLITE_APPLY_CHUNK + 100))
        assert applier.flush(10)
    finally:
        applier.close()
    assert applier.applied == 2 * SQLITE_APPLY_CHUNK + 100
    if connection.vendor == "sqlite":
        assert calls == [(SQLITE_APPLY_CHUNK, True), (SQLITE_APPLY_CHUNK, True), (100, True)]
    else:
        assert calls == [(2 * SQLITE_APPLY_CHUNK + 100, False)]
