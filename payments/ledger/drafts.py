"""What callers hand the book to write: :class:`PostingDraft` and :class:`ReceiptDraft`.

Both validate on construction (frozen, slotted), so a draft that exists is writable as is.
"""

from __future__ import annotations

from dataclasses import dataclass

from ilp.oer import UINT64_MAX
from payments.errors import InvalidAmount

MAX_KEY_LENGTH = 255
MAX_RECEIPT_KEY_LENGTH = MAX_KEY_LENGTH - len("receipt:")  # its posting is "receipt:<key>"
MAX_MEMO_LENGTH = 255
MAX_CODE_LENGTH = 200
MAX_PAYMENT_ID_BYTES = 32
UINT32_MAX = 2**32 - 1


def _check_int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidAmount(f"{what} must be an int, got {type(value).__name__}")
    return value


def _check_text(value: object, what: str, max_length: int) -> str:
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise ValueError(f"{what} must be a non-empty str of at most {max_length} characters")
    return value


@dataclass(frozen=True, slots=True)
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

    def __post_init__(self) -> None:
        _check_text(self.account_code, "account_code", MAX_CODE_LENGTH)
        _check_text(self.key, "key", MAX_KEY_LENGTH)
        if not isinstance(self.memo, str) or len(self.memo) > MAX_MEMO_LENGTH:
            raise ValueError(f"memo must be a str of at most {MAX_MEMO_LENGTH} characters")
        if abs(_check_int(self.amount, "amount")) > UINT64_MAX:
            raise InvalidAmount("amount out of range", amount=str(self.amount))


@dataclass(frozen=True, slots=True)
class ReceiptDraft:
    """One fulfilled PSK2 chunk for the receiving account ``account_code``.

    ``payment_id`` is the PSK2 payment id (1 to 32 bytes; stored as lowercase hex),
    ``sequence`` a UInt32, ``amount`` the amount that arrived (``0 <= amount < 2**64``).
    Idempotent on ``key`` (at most 247 characters: its posting is ``receipt:<key>``).
    """

    account_code: str
    payment_id: bytes
    sequence: int
    amount: int
    key: str

    def __post_init__(self) -> None:
        _check_text(self.account_code, "account_code", MAX_CODE_LENGTH)
        _check_text(self.key, "key", MAX_RECEIPT_KEY_LENGTH)
        if not isinstance(self.payment_id, bytes) or not (
            1 <= len(self.payment_id) <= MAX_PAYMENT_ID_BYTES
        ):
            raise ValueError("payment_id must be 1 to 32 bytes")
        sequence = _check_int(self.sequence, "sequence")
        if not 0 <= sequence <= UINT32_MAX:
            raise ValueError("sequence must be a UInt32")
        if not 0 <= _check_int(self.amount, "amount") <= UINT64_MAX:
            raise InvalidAmount("receipt amount out of range", amount=str(self.amount))
