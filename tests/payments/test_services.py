"""Services: receipts → incoming payments, adjustments, limits, accounts, check_ledger."""

from __future__ import annotations

import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from payments import services
from payments.errors import AccountKindMismatch, InvalidAmount, UnknownAccount
from payments.ledger import BalanceBook, PostingDraft, ReceiptDraft, ensure_account
from payments.models import IncomingPayment, LedgerAccount, Posting, Receipt
from payments.selectors import ledger_report
from tests.payments.conftest import NODE, PEER, RECEIVER, make_accounts

pytestmark = pytest.mark.django_db(transaction=True)

PID = b"\x01" * 16


def receive(book: BalanceBook, i: int, amount: int, *, pid: bytes = PID) -> None:
    key = f"pkt{i}"
    book.commit_sync(
        [PostingDraft(PEER, -amount, key)], [ReceiptDraft(RECEIVER, pid, i, amount, key)]
    )


def balance(code: str) -> int:
    return int(LedgerAccount.objects.get(code=code).balance)


def check_ledger() -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command("check_ledger", stdout=out)
    except CommandError as exc:
        return exc.returncode, out.getvalue()
    return 0, out.getvalue()


# --- apply_receipts -------------------------------------------------------------------------


def test_apply_receipts_credits_once(book: BalanceBook, captured_apply: list[list[int]]) -> None:
    make_accounts()
    receive(book, 0, 10)
    receive(book, 1, 15)
    receive(book, 2, 7, pid=b"\x02" * 16)
    ids = [i for batch in captured_apply for i in batch]
    assert len(ids) == 3
    assert balance(RECEIVER) == 0  # not yet applied: in flight
    code, _ = check_ledger()
    assert code == 0  # postings (-32) + unapplied receipts (+32) sum to zero

    assert services.apply_receipts(receipt_ids=ids) == 3
    assert services.apply_receipts(receipt_ids=ids) == 0  # replay: nothing more
    assert services.apply_receipts(receipt_ids=ids[:1]) == 0
    assert balance(RECEIVER) == 32
    assert balance(PEER) == -32
    first = IncomingPayment.objects.get(payment_id=PID.hex())
    assert (int(first.total), first.chunks) == (25, 2)
    assert not Receipt.objects.filter(applied_at__isnull=True).exists()
    postings = Posting.objects.filter(key__startswith="receipts:")
    assert [(p.key, int(p.amount)) for p in postings] == [(f"receipts:{min(ids)}", 32)]
    assert check_ledger()[0] == 0


def test_apply_receipts_accumulates_across_calls(
    book: BalanceBook, captured_apply: list[list[int]]
) -> None:
    make_accounts()
    receive(book, 0, 10)
    services.apply_receipts(receipt_ids=captured_apply.pop())
    receive(book, 1, 5)
    receive(book, 1, 5)  # a repeated packet is not a new receipt
    services.apply_receipts(receipt_ids=[i for b in captured_apply for i in b])
    payment = IncomingPayment.objects.get()
    assert (int(payment.total), payment.chunks) == (15, 2)
    assert payment.first_at <= payment.last_at
    assert balance(RECEIVER) == 15


def test_book_sees_receiver_balance_after_apply(
    book: BalanceBook, captured_apply: list[list[int]]
) -> None:
    make_accounts()
    book.load_account_sync(RECEIVER)
    receive(book, 0, 9)
    services.apply_receipts(receipt_ids=captured_apply[0])
    assert book.balance(RECEIVER) == 9  # told on commit, no refresh needed


def test_receipts_are_applied_on_commit_when_eager(book: BalanceBook, eager_celery: None) -> None:
    make_accounts()
    receive(book, 0, 4)
    assert balance(RECEIVER) == 4
    assert IncomingPayment.objects.get().chunks == 1


def test_sweep_applies_forgotten_receipts(
    book: BalanceBook, captured_apply: list[list[int]]
) -> None:
    make_accounts()
    receive(book, 0, 3)
    assert services.apply_pending_receipts(older_than=timedelta(hours=1)) == 0  # too recent
    assert services.apply_pending_receipts(older_than=timedelta(0)) == 1
    assert balance(RECEIVER) == 3


def test_zero_amount_receipt_counts_a_chunk(
    book: BalanceBook, captured_apply: list[list[int]]
) -> None:
    make_accounts()
    book.commit_sync([], [ReceiptDraft(RECEIVER, PID, 0, 0, "zero")])
    services.apply_receipts(receipt_ids=captured_apply[0])
    payment = IncomingPayment.objects.get()
    assert (int(payment.total), payment.chunks) == (0, 1)
    assert balance(RECEIVER) == 0


# --- adjustments, limits, accounts --------------------------------------------------------------


def test_account_adjust_is_double_entry_and_idempotent(book: BalanceBook) -> None:
    make_accounts()
    book.load_account_sync(PEER)
    services.account_adjust(account_code=PEER, amount=500, key="settle-1", memo="paid us")
    services.account_adjust(account_code=PEER, amount=500, key="settle-1")
    assert balance(PEER) == 500
    assert balance(NODE) == -500
    assert book.balance(PEER) == 500
    assert check_ledger()[0] == 0
    with pytest.raises(InvalidAmount):
        services.account_adjust(account_code=PEER, amount=0, key="z")
    with pytest.raises(UnknownAccount):
        services.account_adjust(account_code="peer:ghost", amount=1, key="g")
    with pytest.raises(InvalidAmount):
        services.account_adjust(account_code=PEER, amount=1, key="self", counter_account_code=PEER)


def test_adjust_account_command(book: BalanceBook) -> None:
    make_accounts()
    call_command("adjust_account", PEER, "-25", "--key", "cli-1", stdout=io.StringIO())
    assert balance(PEER) == -25
    with pytest.raises(CommandError):
        call_command("adjust_account", "peer:ghost", "1", "--key", "cli-2", stdout=io.StringIO())


def test_account_set_limits_reaches_the_book(book: BalanceBook) -> None:
    make_accounts()
    book.load_account_sync(PEER)
    services.account_set_limits(account_code=PEER, min_balance=-5, max_balance=None)
    snap = book.snapshot(PEER)
    assert (snap.min_balance, snap.max_balance) == (-5, None)
    with pytest.raises(InvalidAmount):
        services.account_set_limits(account_code=PEER, min_balance=5, max_balance=1)


def test_ensure_account() -> None:
    a = ensure_account("peer:x", kind="peer", min_balance=-10, max_balance=10)
    b = ensure_account("peer:x", kind="peer", min_balance=-99)  # existing: limits kept
    assert a.pk == b.pk and b.min_balance == Decimal(-10)
    assert (a.asset_code, a.asset_scale) == ("USD", 9)
    with pytest.raises(AccountKindMismatch):
        ensure_account("peer:x", kind="receiver")
    with pytest.raises(AccountKindMismatch):
        ensure_account("peer:x", kind="peer", asset_code="EUR")
    with pytest.raises(InvalidAmount):
        ensure_account("peer:y", kind="peer", min_balance=1, max_balance=0)
    with pytest.raises(ValueError):
        ensure_account("peer:z", kind="wizard")


# --- check_ledger ---------------------------------------------------------------------------------


def test_check_ledger_passes_on_a_clean_ledger(book: BalanceBook, eager_celery: None) -> None:
    make_accounts()
    for i in range(5):
        receive(book, i, i + 1)
    services.account_adjust(account_code=PEER, amount=15, key="settle")
    code, out = check_ledger()
    assert code == 0, out
    assert "ledger check OK" in out
    assert PEER in out and RECEIVER in out


def test_check_ledger_detects_a_tampered_balance(book: BalanceBook, eager_celery: None) -> None:
    make_accounts()
    receive(book, 0, 10)
    LedgerAccount.objects.filter(code=RECEIVER).update(balance=Decimal(11))
    code, out = check_ledger()
    assert code == 1
    assert "MISMATCH" in out
    line = next(row for row in out.splitlines() if row.startswith(RECEIVER))
    assert "11" in line and "10" in line


def test_check_ledger_detects_an_unbalanced_asset(book: BalanceBook) -> None:
    make_accounts()
    book.commit_sync([PostingDraft(PEER, 7, "one-sided")])  # no counter posting
    code, out = check_ledger()
    assert code == 1
    assert "UNBALANCED" in out


def test_check_ledger_detects_a_wrong_incoming_payment(
    book: BalanceBook, eager_celery: None
) -> None:
    make_accounts()
    receive(book, 0, 10)
    IncomingPayment.objects.update(total=Decimal(12))
    code, out = check_ledger()
    assert code == 1
    assert "incoming payment" in out


def test_check_ledger_sees_a_deleted_posting(book: BalanceBook) -> None:
    make_accounts()
    services.account_adjust(account_code=PEER, amount=3, key="a")
    with connection.cursor() as cursor:  # tamper below the ORM (the admin cannot)
        cursor.execute("DELETE FROM payments_posting WHERE key = %s", ["adjust:a:counter"])
    assert check_ledger()[0] == 1


def test_large_amounts_are_exact_everywhere(book: BalanceBook, eager_celery: None) -> None:
    """Beyond 15 digits (Django's SQLite DecimalField converter rounds there) up to int64."""
    make_accounts(peer_min=None)
    big = 2**62 + 12345  # 19 digits
    book.commit_sync(
        [PostingDraft(PEER, -big, "big")], [ReceiptDraft(RECEIVER, PID, 0, big, "big")]
    )
    book.commit_sync([PostingDraft(PEER, 1, "one"), PostingDraft(NODE, -1, "one:c")])
    assert LedgerAccount.objects.get(code=RECEIVER).balance == Decimal(big)
    assert LedgerAccount.objects.get(code=PEER).balance == Decimal(-big + 1)
    assert IncomingPayment.objects.get().total == Decimal(big)
    assert Posting.objects.get(key="big").amount == Decimal(-big)
    book.load_account_sync(PEER)
    assert book.balance(PEER) == -big + 1
    assert book.payment_total_sync(RECEIVER, PID) == big
    report = ledger_report()
    assert report.ok
    assert {a.code: a.computed for a in report.accounts}[RECEIVER] == big
    assert check_ledger()[0] == 0
    # One unit off on a 19-digit balance is caught.
    LedgerAccount.objects.filter(code=RECEIVER).update(balance=Decimal(big + 1))
    assert check_ledger()[0] == 1
