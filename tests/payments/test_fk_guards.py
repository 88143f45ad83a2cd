"""On Postgres the hot tables' foreign keys are guards (migration 0008): the writer checks
its accounts once per batch (``payments_require_accounts``) and triggers refuse deleting
a referenced account or incoming payment. The rule stays "every posting, receipt and
incoming payment names an existing row"."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from django.db import IntegrityError, OperationalError, connection, connections, transaction

from payments.ledger import ensure_account, post_in_transaction
from payments.models import IncomingPayment, LedgerAccount, Posting, Receipt
from tests.conftest import requires_postgres

pytestmark = [pytest.mark.django_db(transaction=True), requires_postgres]

NOW = datetime(2026, 12, 7, 0, 0, tzinfo=UTC)
MISSING = 10**12


def foreign_keys(table: str) -> set[str]:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT a.attname FROM pg_constraint c JOIN pg_attribute a "
            "ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey) "
            "WHERE c.contype = 'f' AND c.conrelid = %s::regclass",
            [table],
        )
        return {str(row[0]) for row in cur.fetchall()}


def test_the_hot_columns_have_guards_instead_of_constraints() -> None:
    assert "account_id" not in foreign_keys("payments_posting")
    assert foreign_keys("payments_receipt").isdisjoint({"account_id", "incoming_payment_id"})
    assert "account_id" not in foreign_keys("payments_incomingpayment")
    assert "account_id" in foreign_keys("payments_webhook")  # the others stay


@pytest.mark.parametrize("where", ["posting", "receipt"])
@pytest.mark.parametrize("one_trip", [True, False])
def test_a_batch_naming_a_missing_account_fails_whole(where: str, one_trip: bool) -> None:
    peer = ensure_account("peer:alice", kind="peer").id
    rcv = ensure_account("receiver:carol", kind="receiver").id
    postings = [(peer, -5, "a", ""), (MISSING if where == "posting" else peer, -1, "b", "")]
    receipts = [(MISSING if where == "receipt" else rcv, "00" * 16, 0, 5, "a")]
    with pytest.raises(IntegrityError, match=f"ledger account {MISSING} does not exist"):
        if one_trip:
            post_in_transaction(postings, now=NOW, receipts=receipts, commit_locking=[peer])
        else:
            with transaction.atomic():
                post_in_transaction(postings, now=NOW, receipts=receipts)
    assert not connection.in_atomic_block
    assert (Posting.objects.count(), Receipt.objects.count()) == (0, 0)
    assert int(LedgerAccount.objects.get(id=peer).balance) == 0
    # The same batch without the missing account goes through on the same connection.
    ok = post_in_transaction(
        [(peer, -5, "a", "")],
        now=NOW,
        receipts=[(rcv, "00" * 16, 0, 5, "a")],
        commit_locking=[peer],
    )
    assert ok.new_keys == {"a"} and len(ok.new_receipts) == 1


def raw(sql: str, params: list[object]) -> None:
    with connection.cursor() as cur:
        cur.execute(sql, params)


def test_a_referenced_account_cannot_be_deleted_or_renumbered() -> None:
    peer = ensure_account("peer:alice", kind="peer").id
    rcv = ensure_account("receiver:carol", kind="receiver").id
    payer = ensure_account("receiver:dave", kind="receiver").id
    unused = ensure_account("peer:unused", kind="peer").id
    post_in_transaction(
        [(peer, -5, "a", "")],
        now=NOW,
        receipts=[(rcv, "00" * 16, 0, 5, "a")],
        commit_locking=[peer],
    )
    IncomingPayment.objects.create(
        account_id=payer, payment_id="11" * 16, total=1, chunks=1, first_at=NOW, last_at=NOW
    )
    for pk in (peer, rcv, payer):  # by a posting, a receipt, an incoming payment
        with pytest.raises(IntegrityError, match="still referenced"):
            raw("DELETE FROM payments_ledgeraccount WHERE id = %s", [pk])
        with pytest.raises(IntegrityError, match="still referenced"):
            raw("UPDATE payments_ledgeraccount SET id = %s WHERE id = %s", [MISSING, pk])
    raw("UPDATE payments_ledgeraccount SET balance = balance WHERE id = %s", [peer])  # fine
    raw("DELETE FROM payments_ledgeraccount WHERE id = %s", [unused])  # nothing names it
    assert set(LedgerAccount.objects.values_list("id", flat=True)) == {peer, rcv, payer}


def test_a_linked_incoming_payment_cannot_be_deleted() -> None:
    rcv = ensure_account("receiver:carol", kind="receiver").id
    linked = IncomingPayment.objects.create(
        account_id=rcv, payment_id="22" * 16, total=5, chunks=1, first_at=NOW, last_at=NOW
    )
    alone = IncomingPayment.objects.create(
        account_id=rcv, payment_id="33" * 16, total=5, chunks=1, first_at=NOW, last_at=NOW
    )
    Receipt.objects.create(
        account_id=rcv, payment_id="22" * 16, sequence=0, amount=5, key="r", incoming_payment=linked
    )
    with pytest.raises(IntegrityError, match="still referenced by its receipts"):
        raw("DELETE FROM payments_incomingpayment WHERE id = %s", [linked.id])
    raw("DELETE FROM payments_incomingpayment WHERE id = %s", [alone.id])
    assert list(IncomingPayment.objects.values_list("id", flat=True)) == [linked.id]


def test_the_batch_check_holds_its_accounts_until_the_commit() -> None:
    """As a foreign key check's ``FOR KEY SHARE``: a concurrent delete of an account the
    batch names waits for the batch's commit (and then finds it referenced)."""
    rcv = ensure_account("receiver:carol", kind="receiver").id
    checked = threading.Event()
    release = threading.Event()
    errors: list[BaseException] = []

    def batch() -> None:
        try:
            with transaction.atomic():
                raw("SELECT payments_require_accounts(%s::bigint[])", [[rcv]])
                checked.set()
                release.wait(10)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=batch)
    thread.start()
    try:
        assert checked.wait(10)
        with pytest.raises(OperationalError, match="lock timeout"), transaction.atomic():
            raw("SET LOCAL lock_timeout = '200ms'", [])
            raw("DELETE FROM payments_ledgeraccount WHERE id = %s", [rcv])
    finally:
        release.set()
        thread.join(10)
    assert not errors
