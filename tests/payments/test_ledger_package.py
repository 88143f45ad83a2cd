"""The ``payments.ledger`` package: its re-exported names, the seams tests patch, the
account-code builders and the one ``UINT64_MAX``."""

from __future__ import annotations

import pytest

import ilp.oer
import payments.ledger as ledger
from payments.ledger import accounts, runtime, sql


def test_every_public_name_is_importable_from_the_package() -> None:
    for name in ledger.__all__:
        assert getattr(ledger, name) is not None, name


def test_the_constants_are_ilp_oers() -> None:
    assert ledger.UINT64_MAX is ilp.oer.UINT64_MAX
    assert ledger.INT64_MAX is ilp.oer.INT64_MAX


def test_patching_the_package_reaches_the_module_that_looks_the_name_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[list[int]] = []

    def queue(ids: list[int]) -> None:
        calls.append(ids)

    original = runtime._queue_apply_receipts
    with monkeypatch.context() as m:
        m.setattr(ledger, "_queue_apply_receipts", queue)
        assert runtime._queue_apply_receipts is queue
        runtime.PROCESS_RECEIPTS.submit([7])  # what a book's writer calls after COMMIT
        m.setattr(ledger, "post_in_transaction", None)
        assert sql.post_in_transaction is None
    assert calls == [[7]]
    assert runtime._queue_apply_receipts is original
    assert sql.post_in_transaction is ledger.post_in_transaction is not None


def test_the_process_applier_is_read_live_and_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    before = ledger._applier
    stand_in = object()
    with monkeypatch.context() as m:
        m.setattr(ledger, "_applier", stand_in)
        assert runtime._applier is stand_in
        assert ledger._applier is stand_in
    assert runtime._applier is before
    assert "_applier" not in vars(ledger)  # never a stale copy on the package


def test_account_codes() -> None:
    assert accounts.peer_account("alice") == "peer:alice"
    assert accounts.receiver_account("carol") == "receiver:carol"
    assert accounts.node_account("fees") == "node:fees"
    assert accounts.node_equity_account("USD", 9) == "node:equity:USD:9"
