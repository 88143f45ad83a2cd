"""The ledger: the only writer of postings and receipts.

The parts:

* :mod:`.drafts` — :class:`PostingDraft` and :class:`ReceiptDraft`, what callers write;
* :mod:`.book` — :class:`BalanceBook`: balances and in-flight holds in memory;
* :mod:`.writer` — the group commit: per-loop queues, the one writer thread, one
  transaction per batch;
* :mod:`.sql` — :func:`post_in_transaction` and the SQL helpers it shares with services;
* :mod:`.applier` — :class:`ReceiptApplier`, committed receipts to incoming payments;
* :mod:`.accounts` — the account-code builders (:func:`peer_account`,
  :func:`receiver_account`, :func:`node_account`, :func:`node_equity_account`) and
  :func:`ensure_account`;
* :mod:`.runtime` — the process-wide book and applier (:func:`get_book`, :func:`peek_book`,
  :func:`reset_book`, which reach the node runtime's book, and :func:`get_applier`) and their
  wiring;
* :mod:`.shared` — shared credit across processes (Redis).

Today's public names are re-exported here (``UINT64_MAX`` and ``INT64_MAX`` are
:mod:`ilp.oer`'s), so ``from payments.ledger import X`` and
``payments.ledger.X`` keep working.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from ilp.oer import INT64_MAX, UINT64_MAX
from payments.ledger import runtime as _runtime
from payments.ledger import sql as _sql
from payments.ledger.accounts import (
    ensure_account,
    node_account,
    node_equity_account,
    peer_account,
    receiver_account,
)
from payments.ledger.applier import APPLY_PUBLISH_RETRY, ReceiptApplier
from payments.ledger.book import BalanceBook
from payments.ledger.drafts import MAX_KEY_LENGTH, PostingDraft, ReceiptDraft
from payments.ledger.runtime import (
    _queue_apply_receipts as _queue_apply_receipts,
)
from payments.ledger.runtime import (
    get_applier,
    get_book,
    new_applier,
    new_book,
    peek_book,
    reset_book,
    wait_receipts_applied,
)
from payments.ledger.sql import SQLITE_WRITE_LOCK, post_in_transaction

__all__ = [
    "APPLY_PUBLISH_RETRY",
    "INT64_MAX",
    "MAX_KEY_LENGTH",
    "SQLITE_WRITE_LOCK",
    "UINT64_MAX",
    "BalanceBook",
    "PostingDraft",
    "ReceiptApplier",
    "ReceiptDraft",
    "ensure_account",
    "get_applier",
    "get_book",
    "new_applier",
    "new_book",
    "node_account",
    "node_equity_account",
    "peek_book",
    "peer_account",
    "post_in_transaction",
    "receiver_account",
    "reset_book",
    "wait_receipts_applied",
]

# Names that tests replace on this package (``monkeypatch.setattr(payments.ledger, ...)``),
# with the module whose code looks them up: an assignment here is passed on to it, so it
# takes effect. ``_applier`` is the process's current applier: read from its module each
# time, never copied here. This goes once tests build their own applier and sink instead of
# patching the process's (the book already belongs to the node runtime).
_SEAMS: dict[str, types.ModuleType] = {
    "post_in_transaction": _sql,
    "_queue_apply_receipts": _runtime,
    "_applier": _runtime,
}
_LIVE = frozenset({"_applier"})


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
