"""The ledger: balance book, group-commit writer and receipt applier (see :mod:`.book`).

Today's public names are re-exported here, so ``from payments.ledger import X`` and
``payments.ledger.X`` keep working.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from payments.ledger import book as _book_module
from payments.ledger.book import (
    _ACCOUNT_FIELDS as _ACCOUNT_FIELDS,
)
from payments.ledger.book import (
    APPLY_PUBLISH_RETRY,
    INSERT_CHUNK,
    INT64_MAX,
    MAX_CODE_LENGTH,
    MAX_KEY_LENGTH,
    MAX_MEMO_LENGTH,
    MAX_PAYMENT_ID_BYTES,
    MAX_RECEIPT_KEY_LENGTH,
    POSTING_COLUMNS,
    RECEIPT_COLUMNS,
    SQLITE_WRITE_LOCK,
    SWEEP_CHUNK,
    UINT32_MAX,
    UINT64_MAX,
    AccountSnapshot,
    BalanceBook,
    BookStats,
    PostingDraft,
    PostResult,
    ReceiptApplier,
    ReceiptDraft,
    ensure_account,
    get_applier,
    get_book,
    peek_book,
    post_in_transaction,
    reset_book,
    wait_receipts_applied,
)
from payments.ledger.book import (
    _cursor as _cursor,
)
from payments.ledger.book import (
    _queue_apply_receipts as _queue_apply_receipts,
)

__all__ = [
    "APPLY_PUBLISH_RETRY",
    "INSERT_CHUNK",
    "INT64_MAX",
    "MAX_CODE_LENGTH",
    "MAX_KEY_LENGTH",
    "MAX_MEMO_LENGTH",
    "MAX_PAYMENT_ID_BYTES",
    "MAX_RECEIPT_KEY_LENGTH",
    "POSTING_COLUMNS",
    "RECEIPT_COLUMNS",
    "SQLITE_WRITE_LOCK",
    "SWEEP_CHUNK",
    "UINT32_MAX",
    "UINT64_MAX",
    "AccountSnapshot",
    "BalanceBook",
    "BookStats",
    "PostResult",
    "PostingDraft",
    "ReceiptApplier",
    "ReceiptDraft",
    "ensure_account",
    "get_applier",
    "get_book",
    "peek_book",
    "post_in_transaction",
    "reset_book",
    "wait_receipts_applied",
]

# Names that tests replace on this package (``monkeypatch.setattr(payments.ledger, ...)``)
# and the module whose code looks them up: an assignment here is passed on to it, so it
# takes effect. ``_book`` and ``_applier`` are the process's current instances: read
# from their module each time, never copied here.
_SEAMS: dict[str, types.ModuleType] = {
    "post_in_transaction": _book_module,
    "_queue_apply_receipts": _book_module,
    "_book": _book_module,
    "_applier": _book_module,
}
_LIVE = frozenset({"_book", "_applier"})


class _LedgerPackage(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name in _LIVE:
            return getattr(_SEAMS[name], name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        owner = _SEAMS.get(name)
        if owner is not None:
            setattr(owner, name, value)
        if name not in _LIVE:
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _LedgerPackage
