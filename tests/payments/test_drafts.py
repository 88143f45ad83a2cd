"""The drafts' written-out constructors: the inline fast test accepts exactly what the full
checks accept, and anything else raises the error the full checks raise (same order)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from ilp.oer import UINT64_MAX
from payments.errors import InvalidAmount
from payments.ledger.drafts import (
    MAX_CODE_LENGTH,
    MAX_KEY_LENGTH,
    MAX_RECEIPT_KEY_LENGTH,
    UINT32_MAX,
    PostingDraft,
    ReceiptDraft,
    _check_posting,
    _check_receipt,
)


class _Str(str):
    pass


class _Int(int):
    pass


def _outcome(fn: object, *args: object) -> tuple[type, str] | None:
    try:
        fn(*args)  # type: ignore[operator]
    except (ValueError, InvalidAmount) as exc:
        return type(exc), str(exc)
    return None


TEXTS: list[object] = ["", "a", "k" * MAX_RECEIPT_KEY_LENGTH, "k" * MAX_CODE_LENGTH, "k" * (MAX_CODE_LENGTH + 1)]
TEXTS += ["k" * MAX_KEY_LENGTH, "k" * (MAX_KEY_LENGTH + 1), _Str("sub"), b"bytes", None]
INTS: list[object] = [0, 1, -1, UINT64_MAX, -UINT64_MAX, UINT64_MAX + 1, -UINT64_MAX - 1]
INTS += [UINT32_MAX, UINT32_MAX + 1, True, 1.0, _Int(7), "1"]


def test_posting_draft_matches_the_full_checks() -> None:
    memos: list[object] = ["", "m", "m" * 255, "m" * 256, _Str("x"), None]
    for code, amount, key, memo in itertools.product(TEXTS, INTS, TEXTS, memos):
        expected = _outcome(_check_posting, code, amount, key, memo)
        assert _outcome(PostingDraft, code, amount, key, memo) == expected, (code, amount, key)
        if expected is None:
            d = PostingDraft(code, amount, key, memo)  # type: ignore[arg-type]
            assert (d.account_code, d.amount, d.key, d.memo) == (code, amount, key, memo)


def test_receipt_draft_matches_the_full_checks() -> None:
    pids: list[object] = [b"", b"p", b"p" * 16, b"p" * 32, b"p" * 33, bytearray(b"p"), "p"]
    texts = TEXTS[:4] + TEXTS[-3:] + ["k" * (MAX_RECEIPT_KEY_LENGTH + 1)]
    for code, pid, seq, amount, key in itertools.product(texts, pids, INTS, INTS, texts):
        expected = _outcome(_check_receipt, code, pid, seq, amount, key)
        got = _outcome(ReceiptDraft, code, pid, seq, amount, key)
        assert got == expected, (code, pid, seq, amount, key)


def test_drafts_stay_frozen_dataclasses() -> None:
    d = PostingDraft("peer", -5, "k")
    assert d == PostingDraft(account_code="peer", amount=-5, key="k", memo="")
    assert hash(d) == hash(PostingDraft("peer", -5, "k"))
    assert dataclasses.replace(d, amount=6).amount == 6
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.amount = 1  # type: ignore[misc]
    with pytest.raises(InvalidAmount):
        dataclasses.replace(d, amount=UINT64_MAX + 1)
    r = ReceiptDraft("recv", b"p" * 16, 1, 2, "k")
    assert dataclasses.astuple(r) == ("recv", b"p" * 16, 1, 2, "k")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.key = "x"  # type: ignore[misc]
