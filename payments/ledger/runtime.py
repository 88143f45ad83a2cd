"""The ledger's runtime objects: the book and the receipt applier, and their wiring.

The book belongs to the node runtime (``interledger_site.runtime.NodeRuntime.book``, built
with :func:`new_book` on its first use): :func:`get_book`, :func:`peek_book` and
:func:`reset_book` are thin delegates to the current runtime (``payments.node.runtime``).
Its receipt sink is :data:`PROCESS_RECEIPTS`. :func:`get_applier` is the process's
:class:`~payments.ledger.applier.ReceiptApplier` (one thread per process, whichever runtime
committed the receipts), with the payments services and the Celery task as its ``apply``
and ``publish``. The runtime closes both when the node stops.
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings

from payments.ledger.applier import APPLY_PUBLISH_RETRY, ReceiptApplier
from payments.ledger.book import BalanceBook
from payments.ledger.shared import shared_credit_from_settings
from payments.node import runtime as _runtime

_applier: ReceiptApplier | None = None
_book_lock = threading.Lock()


# --- the receipt applier -------------------------------------------------------------------


def _apply_receipts(receipt_ids: list[int]) -> int:
    # Imported when first called: ``payments.services`` imports this package.
    from payments import services

    return services.apply_receipts(receipt_ids=receipt_ids)


def _publish_apply_receipts(receipt_ids: list[int]) -> bool:
    """One ``payments.apply_receipts`` task to the worker; ``False`` when tasks run eagerly
    here (then the applier applies them itself). Raises when the broker refuses."""
    from payments.tasks import apply_receipts

    if apply_receipts.app.conf.task_always_eager:
        return False
    apply_receipts.apply_async(
        kwargs={"receipt_ids": receipt_ids}, retry=True, retry_policy=APPLY_PUBLISH_RETRY
    )
    return True


def new_applier(**options: Any) -> ReceiptApplier:
    """A :class:`ReceiptApplier` applying through ``services.apply_receipts`` and publishing
    ``payments.apply_receipts`` (``options``: ``delay``, by default
    ``settings.ILP_RECEIPT_APPLY_DELAY_S``, and ``max_batch``)."""
    options.setdefault("delay", settings.ILP_RECEIPT_APPLY_DELAY_S)
    return ReceiptApplier(apply=_apply_receipts, publish=_publish_apply_receipts, **options)


def get_applier() -> ReceiptApplier:
    """The process-wide :class:`ReceiptApplier` (created on first use)."""
    global _applier
    applier = _applier
    if applier is None:
        with _book_lock:
            if _applier is None:
                _applier = new_applier()
            applier = _applier
    return applier


def wait_receipts_applied(timeout: float = 30.0) -> bool:
    """Wait until every receipt committed so far in this process is applied (eager Celery)
    or sent to the worker. For tests, commands and shutdown; ``True`` when done."""
    applier = _applier
    return True if applier is None else applier.flush(timeout)


def _queue_apply_receipts(receipt_ids: list[int]) -> None:
    """Hand newly committed receipts to the :class:`ReceiptApplier` (called after COMMIT).

    Never blocks the ledger writer: the applier thread applies them in bulk (eager
    Celery, the embedded default) or publishes one ``payments.apply_receipts`` task per
    batch (a real worker). Receipts left unapplied (a crash, a lost message) are applied
    by the recovery sweep (:mod:`payments.recovery`), at start-up and periodically.
    """
    get_applier().submit(receipt_ids)


class ProcessReceipts:
    """The receipt sink of this process's books: the process-wide applier.

    Looks :func:`_queue_apply_receipts` and the applier up on every call, so replacing
    them (tests: a "lost" apply) takes effect for books that already exist.
    """

    def submit(self, receipt_ids: list[int]) -> None:
        _queue_apply_receipts(receipt_ids)

    def flush(self, timeout: float = 30.0) -> bool:
        return wait_receipts_applied(timeout)


PROCESS_RECEIPTS = ProcessReceipts()


# --- the book ----------------------------------------------------------------------------


def new_book(**options: Any) -> BalanceBook:
    """A :class:`BalanceBook` whose receipts go to the process's applier (``options``: the
    book's tuning, e.g. ``max_batch``). Tests use it to stand in for another process."""
    options.setdefault("shared", shared_credit_from_settings())
    return BalanceBook(receipts=PROCESS_RECEIPTS, **options)


def get_book() -> BalanceBook:
    """The current node runtime's book (built by the runtime on first use).

    On every packet (the receiver's commit): the module's import of ``runtime``, not a
    function-level one (an import statement per call was most of its cost)."""
    book: BalanceBook = _runtime().book
    return book


def peek_book() -> BalanceBook | None:
    """The current runtime's book if it was built (services notify it; they never build one)."""
    book: BalanceBook | None = _runtime().peek_book()
    return book


def close_applier() -> None:
    """Close the process's applier (pending receipts applied or published) and forget it."""
    global _applier
    with _book_lock:
        applier, _applier = _applier, None
    if applier is not None:
        applier.close()


def reset_book() -> None:
    """Close the current runtime's book and the process's applier and forget them (the
    node's stop, tests; the next ``get_book`` makes a new one)."""
    _runtime().reset_book()
    close_applier()
