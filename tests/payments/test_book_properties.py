"""Property: the book's holds, limits and balances follow a simple model, and match the DB."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from payments.errors import BalanceLimitExceeded
from payments.ledger import BalanceBook, PostingDraft, ensure_account
from payments.models import LedgerAccount

pytestmark = pytest.mark.django_db(transaction=True)

_ids = itertools.count()

# "hold_edge"/"credit_edge" aim at the limit itself: the amount is the room left under
# min_balance (or max_balance) plus (n % 3 - 1), i.e. one under, exactly at, or one over.
# Random amounts alone almost never land exactly on a limit.
ops = st.lists(
    st.tuples(
        st.sampled_from(
            ["hold", "hold_credit", "hold_edge", "credit_edge", "release", "commit", "repeat"]
        ),
        st.integers(min_value=0, max_value=60),
    ),
    max_size=25,
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=ops, min_balance=st.integers(-100, 0), max_balance=st.integers(0, 100))
# Exactly at min_balance (allowed), then one over (refused), then room again after a release.
@example(
    ops=[("hold", 60), ("hold", 40), ("hold", 1), ("release", 0), ("hold", 61)],
    min_balance=-100,
    max_balance=0,
).via("a debit hold landing exactly on min_balance")
# Exactly at max_balance after a commit moved the balance, then one over.
@example(
    ops=[("hold_credit", 30), ("commit", 0), ("hold_credit", 70), ("hold_credit", 1)],
    min_balance=0,
    max_balance=100,
).via("a credit hold landing exactly on max_balance")
# The edge ops: at, over and under each limit, with a committed debit in between.
@example(
    ops=[
        ("hold", 10),
        ("commit", 0),
        ("hold_edge", 1),
        ("hold_edge", 2),
        ("release", 0),
        ("hold_edge", 2),
        ("hold_edge", 0),
        ("credit_edge", 1),
        ("credit_edge", 2),
        ("credit_edge", 0),
    ],
    min_balance=-50,
    max_balance=20,
).via("edge ops at both limits")
# Limits of zero: a zero-credit account refuses a debit of 1 and takes a credit up to max.
@example(
    ops=[("hold_edge", 1), ("hold_edge", 2), ("credit_edge", 1), ("credit_edge", 2)],
    min_balance=0,
    max_balance=0,
).via("zero limits")
def test_book_follows_the_model(
    book: BalanceBook, ops: list[tuple[str, int]], min_balance: int, max_balance: int
) -> None:
    n = next(_ids)
    code = f"peer:prop{n}"
    ensure_account(code, kind="peer", min_balance=min_balance, max_balance=max_balance)
    ensure_account(f"node:prop{n}", kind="node")
    book.load_account_sync(code)
    balance = 0
    holds: dict[str, tuple[int, bool]] = {}  # key -> (amount, credit)
    committed: list[str] = []
    for i, (op, amount) in enumerate(ops):
        key = f"p{n}:{i}"
        debits = sum(a for a, c in holds.values() if not c)
        credits = sum(a for a, c in holds.values() if c)
        if op in ("hold_edge", "credit_edge"):
            room = (
                max_balance - balance - credits
                if op == "credit_edge"
                else balance - debits - min_balance
            )
            op = "hold_credit" if op == "credit_edge" else "hold"
            amount = max(0, room + amount % 3 - 1)
        if op in ("hold", "hold_credit"):
            credit = op == "hold_credit"
            allowed = (
                balance + credits + amount <= max_balance
                if credit
                else balance - debits - amount >= min_balance
            )
            if not allowed and amount:
                with pytest.raises(BalanceLimitExceeded):
                    getattr(book, op)(code, amount, key)
            else:
                getattr(book, op)(code, amount, key)
                if amount:
                    holds[key] = (amount, credit)
        elif op == "release" and holds:
            book.release(next(iter(holds)))
            holds.pop(next(iter(holds)))
        elif op == "commit" and holds:
            key, (held, credit) = next(iter(holds.items()))
            delta = held if credit else -held
            book.commit_sync(
                [PostingDraft(code, delta, key), PostingDraft(f"node:prop{n}", -delta, key + ":c")]
            )
            holds.pop(key)
            balance += delta
            committed.append(key)
        elif op == "repeat" and committed:
            # A key committed again is not applied again.
            book.commit_sync([PostingDraft(code, 1, committed[-1])])
        snap = book.snapshot(code)
        assert snap.balance == balance
        assert snap.pending_debits == sum(a for a, c in holds.values() if not c)
        assert snap.pending_credits == sum(a for a, c in holds.values() if c)
    assert int(LedgerAccount.objects.get(code=code).balance) == balance
    for key in list(holds):
        book.release(key)
