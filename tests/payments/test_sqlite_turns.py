"""The turns at SQLite's write lock: the ledger writer's batches before background writers,
and a background writer never starved."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from payments.ledger.sql import SqliteWriteTurns


def _wait_for(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def _waiters(turns: SqliteWriteTurns) -> tuple[int, int]:
    return turns._urgent_waiting, turns._background_waiting


def test_a_waiting_batch_goes_before_a_background_writer_that_waited_longer() -> None:
    turns = SqliteWriteTurns()
    order: list[str] = []
    release = threading.Event()

    def hold_then(name: str, urgent: bool, hold: threading.Event | None = None) -> None:
        with turns.turn(urgent=urgent):
            order.append(name)
            if hold is not None:
                hold.wait(5)

    first = threading.Thread(target=hold_then, args=("chunk 1", False, release))
    first.start()
    _wait_for(turns.locked)
    # The applier's next chunk asks first, then a batch of the ledger writer.
    second = threading.Thread(target=hold_then, args=("chunk 2", False))
    second.start()
    _wait_for(lambda: _waiters(turns) == (0, 1))
    batch = threading.Thread(target=hold_then, args=("batch", True))
    batch.start()
    _wait_for(lambda: _waiters(turns) == (1, 1))
    release.set()
    for t in (first, second, batch):
        t.join(5)
    assert order == ["chunk 1", "batch", "chunk 2"]


def test_a_background_writer_goes_after_a_streak_of_batches() -> None:
    turns = SqliteWriteTurns()
    order: list[str] = []
    step = threading.Event()
    stop = threading.Event()

    def batches() -> None:
        # A writer with a batch always waiting: each turn ends only once the background
        # writer is seen waiting, so the streak is counted against it.
        for n in range(2 * SqliteWriteTurns.URGENT_STREAK):
            with turns.turn(urgent=True):
                order.append(f"batch {n}")
                step.set()
                _wait_for(lambda: stop.is_set() or _waiters(turns)[1] == 1)

    def background() -> None:
        step.wait(5)
        with turns.turn(urgent=False):
            order.append("chunk")
        stop.set()

    threads = [threading.Thread(target=batches), threading.Thread(target=background)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert order.index("chunk") == SqliteWriteTurns.URGENT_STREAK
    assert len(order) == 2 * SqliteWriteTurns.URGENT_STREAK + 1
    assert not turns.locked()
