"""The ledger-writer thread (payments.ledger.writer.WriterThread): what the one-worker
executor it replaced guaranteed, kept."""

from __future__ import annotations

import gc
import logging
import threading

import pytest

from payments.ledger.writer import WriterThread


def test_runs_everything_in_order_in_one_thread() -> None:
    w = WriterThread("test-writer")
    seen: list[tuple[int, int]] = []
    for i in range(200):
        if i % 3:
            w.post(lambda i=i: seen.append((i, threading.get_ident())))
        else:
            w.submit(lambda i=i: seen.append((i, threading.get_ident())))
    assert w.submit(lambda: 42).result(timeout=10) == 42
    w.shutdown(wait=True)
    assert [i for i, _ in seen] == list(range(200))
    assert len({t for _, t in seen}) == 1 and seen[0][1] != threading.get_ident()


def test_submit_delivers_the_exception() -> None:
    w = WriterThread("test-writer")
    with pytest.raises(ZeroDivisionError):
        w.submit(lambda: 1 // 0).result(timeout=10)
    w.shutdown()


def test_a_failing_post_is_logged_and_the_thread_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    w = WriterThread("test-writer")
    with caplog.at_level(logging.ERROR, logger="payments.ledger.writer"):
        w.post(lambda: 1 // 0)
        assert w.submit(lambda: "alive").result(timeout=10) == "alive"
    assert any("failed" in r.getMessage() for r in caplog.records)
    w.shutdown()


def test_shutdown_drains_what_was_queued_then_refuses() -> None:
    w = WriterThread("test-writer")
    gate = threading.Event()
    done: list[int] = []
    w.post(gate.wait, 10)
    for i in range(5):
        w.post(done.append, i)
    stopper = threading.Thread(target=w.shutdown)
    stopper.start()
    stopper.join(0.05)
    assert stopper.is_alive()  # waits for the queued work
    gate.set()
    stopper.join(10)
    assert done == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError):
        w.post(done.append, 5)
    with pytest.raises(RuntimeError):
        w.submit(done.append, 5)
    w.shutdown()  # twice: no-op


def test_no_thread_until_used_and_a_dropped_writer_ends_its_thread() -> None:
    before = threading.active_count()
    w = WriterThread("test-writer-dropped")
    assert threading.active_count() == before
    w.submit(lambda: None).result(timeout=10)
    thread = next(t for t in threading.enumerate() if t.name == "test-writer-dropped")
    del w
    gc.collect()
    thread.join(10)
    assert not thread.is_alive()
