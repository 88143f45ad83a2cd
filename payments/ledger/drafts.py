"""What callers hand the book to write: :class:`PostingDraft` and :class:`ReceiptDraft`.

Both validate on construction (frozen, slotted), so a draft that exists is writable as is.
"""

from __future__ import annotations

from dataclasses import dataclass

from ilp.oer import UINT64_MAX
from payments.errors import InvalidAmount

MAX_KEY_LENGTH = 255
MAX_RECEIPT_KEY_LENGTH = 247  # the receipt key, the sender-visible part of the contract
MAX_MEMO_LENGTH = 255
MAX_CODE_LENGTH = 200
MAX_PAYMENT_ID_BYTES = 32
UINT32_MAX = 2**32 - 1

# Frozen: the fields are set through object.__setattr__ (what the generated __init__ does).
_set = object.__setattr__


def _check_int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidAmount(f"{what} must be an int, got {type(value).__name__}")
    return value


def _check_text(value: object, what: str, max_length: int) -> str:
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise ValueError(f"{what} must be a non-empty str of at most {max_length} characters")
    return value


# The drafts' __init__ are written out (init=False) rather than generated with a
# __post_init__: one is built per packet on the event loop, and the generated __init__
# plus a __post_init__ calling a checker per field was ~2 us a draft. The written-out one
# tests the common case (exact types, in range) inline, and only when that fails runs the
# full checks, in the same order as before, so the same error is raised for the same input.


@dataclass(frozen=True, slots=True, init=False)
class PostingDraft:
    """One balance change to write: ``amount`` is signed (positive = we owe the holder more).

    ``key`` makes it idempotent: a key already in the ledger is never applied again (the
    first write wins, so a key must name exactly one change). ``|amount| <= 2**64 - 1``.
    A zero amount is allowed and writes nothing.
    """

    account_code: str
    amount: int
    key: str
    memo: str = ""

    def __init__(self, account_code: str, amount: int, key: str, memo: str = "") -> None:
        if not (
            type(account_code) is str
            and 0 < len(account_code) <= MAX_CODE_LENGTH
            and type(key) is str
            and 0 < len(key) <= MAX_KEY_LENGTH
            and type(memo) is str
            and len(memo) <= MAX_MEMO_LENGTH
            and type(amount) is int
            and -UINT64_MAX <= amount <= UINT64_MAX
        ):
            _check_posting(account_code, amount, key, memo)
        _set(self, "account_code", account_code)
        _set(self, "amount", amount)
        _set(self, "key", key)
        _set(self, "memo", memo)


def _check_posting(account_code: object, amount: object, key: object, memo: object) -> None:
    _check_text(account_code, "account_code", MAX_CODE_LENGTH)
    _check_text(key, "key", MAX_KEY_LENGTH)
    if not isinstance(memo, str) or len(memo) > MAX_MEMO_LENGTH:
        raise ValueError(f"memo must be a str of at most {MAX_MEMO_LENGTH} characters")
    if abs(_check_int(amount, "amount")) > UINT64_MAX:
        raise InvalidAmount("amount out of range", amount=str(amount))


@dataclass(frozen=True, slots=True, init=False)
class ReceiptDraft:
    """One fulfilled PSK2 chunk for the receiving account ``account_code``.

    ``payment_id`` is the PSK2 payment id (1 to 32 bytes; stored as lowercase hex),
    ``sequence`` a UInt32, ``amount`` the amount that arrived (``0 <= amount < 2**64``).
    Idempotent on ``key`` (at most :data:`MAX_RECEIPT_KEY_LENGTH` characters).
    """

    account_code: str
    payment_id: bytes
    sequence: int
    amount: int
    key: str

    def __init__(
        self, account_code: str, payment_id: bytes, sequence: int, amount: int, key: str
    ) -> None:
        if not (
            type(account_code) is str
            and 0 < len(account_code) <= MAX_CODE_LENGTH
            and type(key) is str
            and 0 < len(key) <= MAX_RECEIPT_KEY_LENGTH
            and type(payment_id) is bytes
            and 1 <= len(payment_id) <= MAX_PAYMENT_ID_BYTES
            and type(sequence) is int
            and 0 <= sequence <= UINT32_MAX
            and type(amount) is int
            and 0 <= amount <= UINT64_MAX
        ):
            _check_receipt(account_code, payment_id, sequence, amount, key)
        _set(self, "account_code", account_code)
        _set(self, "payment_id", payment_id)
        _set(self, "sequence", sequence)
        _set(self, "amount", amount)
        _set(self, "key", key)


def _check_receipt(
    account_code: object, payment_id: object, sequence: object, amount: object, key: object
) -> None:
    _check_text(account_code, "account_code", MAX_CODE_LENGTH)
    _check_text(key, "key", MAX_RECEIPT_KEY_LENGTH)
    if not isinstance(payment_id, bytes) or not (1 <= len(payment_id) <= MAX_PAYMENT_ID_BYTES):
        raise ValueError("payment_id must be 1 to 32 bytes")
    if not 0 <= _check_int(sequence, "sequence") <= UINT32_MAX:
        raise ValueError("sequence must be a UInt32")
    if not 0 <= _check_int(amount, "amount") <= UINT64_MAX:
        raise InvalidAmount("receipt amount out of range", amount=str(amount))
