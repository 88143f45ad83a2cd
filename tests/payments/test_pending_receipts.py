"""The receipt applier's queue in the database (``PendingReceipt``): a receipt is queued by
the statement that writes it and taken off by the apply that credits it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection, transaction

from payments import services
from payments.ledger import BalanceBook, PostingDraft, ReceiptDraft
from payments.models import LedgerAccount, PendingReceipt, Posting, Receipt
from payments.selectors import ledger_report
from tests.conftest import requires_postgres
from tests.payments.conftest import PEER, RECEIVER, make_accounts

pytestmark = pytest.mark.django_db(transaction=True)

PID = b"\x09" * 16


def pay(i: int, amount: int = 3) -> tuple[list[PostingDraft], list[ReceiptDraft]]:
    key = f"q{i}"
    return [PostingDraft(PEER, -amount, key)], [ReceiptDraft(RECEIVER, PID, i, amount, key)]


def queued() -> list[int]:
    return sorted(PendingReceipt.objects.values_list("receipt_id", flat=True))


def test_the_writer_queues_each_new_receipt_once_and_the_apply_takes_it_off(
    book: BalanceBook, captured_apply: list[list[int]]
) -> None:
    make_accounts(peer_min=None)
    for i in range(5):
        book.commit_sync(*pay(i))
    book.commit_sync(*pay(0))  # a retry of a packet: no second receipt, no second queue row
    ids = sorted(Receipt.objects.values_list("id", flat=True))
    assert len(ids) == 5
    assert queued() == ids
    assert ledger_report().ok

    assert services.apply_receipts(receipt_ids=ids[:2]) == 2
    assert queued() == ids[2:]
    assert (
        list(
            Receipt.objects.filter(applied_at__isnull=False)
            .order_by("id")
            .values_list("id", flat=True)
        )
        == ids[:2]
    )
    # Applied once: asked again, the receipts off the queue are skipped.
    assert services.apply_receipts(receipt_ids=ids) == 3
    assert services.apply_receipts(receipt_ids=ids) == 0
    assert queued() == []
    assert int(LedgerAccount.objects.get(code=RECEIVER).balance) == 15
    # One posting per account and apply: the sum of the receipts it applied.
    postings = Posting.objects.filter(key__startswith=services.RECEIPT_POSTING_PREFIX)
    assert sorted((p.key, int(p.amount), p.memo) for p in postings) == sorted(
        [
            (f"receipts:{ids[0]}", 6, f"receipts {ids[0]}..{ids[1]} (2)"),
            (f"receipts:{ids[2]}", 9, f"receipts {ids[2]}..{ids[4]} (3)"),
        ]
    )
    assert ledger_report().ok


def test_a_receipt_off_the_queue_is_not_applied_and_check_ledger_says_so(
    book: BalanceBook, captured_apply: list[list[int]]
) -> None:
    make_accounts(peer_min=None)
    book.commit_sync(*pay(1))
    book.commit_sync(*pay(2))
    first, second = sorted(Receipt.objects.values_list("id", flat=True))
    PendingReceipt.objects.filter(receipt_id=first).delete()

    assert services.apply_receipts(receipt_ids=[first, second]) == 1
    assert Receipt.objects.get(id=first).applied_at is None
    report = ledger_report()
    assert (report.unqueued, report.queued_applied, report.ok) == ([first], [], False)

    PendingReceipt.objects.create(receipt_id=first)
    assert ledger_report().ok
    PendingReceipt.objects.create(receipt_id=second)  # applied, queued again
    report = ledger_report()
    assert (report.unqueued, report.queued_applied, report.ok) == ([], [second], False)


def test_the_sweep_reads_the_queue(book: BalanceBook, captured_apply: list[list[int]]) -> None:
    make_accounts(peer_min=None)
    for i in range(3):
        book.commit_sync(*pay(i))
    assert services.apply_pending_receipts(older_than=timedelta(0)) == 3
    assert queued() == []
    assert not Receipt.objects.filter(applied_at__isnull=True).exists()


@requires_postgres
def test_the_apply_updates_each_receipt_in_place(
    book: BalanceBook, captured_apply: list[list[int]]
) -> None:
    """Marking a receipt applied is a HOT update: no index names ``applied_at`` and its page
    has room (migration 0009's fillfactor), so no index entry is written for it."""
    make_accounts(peer_min=None)
    for start in range(0, 200, 50):
        book.commit_sync([], [r for i in range(start, start + 50) for r in pay(i)[1]])
    ids = sorted(Receipt.objects.values_list("id", flat=True))
    assert len(ids) == 200
    with transaction.atomic():
        assert services.apply_receipts(receipt_ids=ids) == 200
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables "
                "WHERE relname = 'payments_receipt'"
            )
            updated, hot = cursor.fetchone()
    assert (updated, hot) == (200, 200)
