"""The writer's lanes: with two, a batch goes out while the one before is in flight.

The hand-over (``_LoopWriter``) against a stand-in book whose batches block until the test
lets them finish, then the real book on PostgreSQL with its batches held at the account's
row lock.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import connection, connections

from payments.ledger import PostingDraft, ReceiptDraft, new_book
from payments.ledger.book import writer_lanes
from payments.ledger.writer import _Job, _LoopWriter, _Outcome
from payments.models import LedgerAccount, Posting, Receipt
from tests.conftest import requires_postgres
from tests.payments.conftest import PEER, RECEIVER, make_accounts, until


class GatedBook:
    """What a ``_LoopWriter`` needs of a book; each batch waits for its gate."""

    max_batch = 5000
    refresh_interval = 3600.0

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes
        self.closed = False
        self._executors = [ThreadPoolExecutor(max_workers=1) for _ in range(lanes)]
        self._lock = threading.Lock()
        self._lane = threading.local()  # the lane whose drain this thread runs
        self.batches: list[tuple[int, list[_Job]]] = []  # (lane, jobs) as each batch starts
        self.in_flight: dict[int, int] = {n: 0 for n in range(lanes)}
        self.most_in_flight = 0
        self.gates: list[threading.Event] = []
        self.hold = True  # new batches wait for their gate
        self.delay: Callable[[], float] | None = None

    def lane_submit(self, lane: int, fn: Callable[..., Any], *args: Any) -> Any:
        return self._executors[lane].submit(self._as_lane, lane, fn, *args)

    def _as_lane(self, lane: int, fn: Callable[..., Any], *args: Any) -> Any:
        self._lane.n = lane
        with self._lock:
            self.in_flight[lane] += 1
            assert self.in_flight[lane] == 1, "a lane ran two drains at once"
        try:
            return fn(*args)
        finally:
            with self._lock:
                self.in_flight[lane] -= 1

    def process_jobs(self, jobs: list[_Job], *, defer_apply: bool = False) -> _Outcome | None:
        lane: int = self._lane.n
        gate = threading.Event()
        with self._lock:
            self.batches.append((lane, jobs))
            self.gates.append(gate)
            self.most_in_flight = max(self.most_in_flight, sum(self.in_flight.values()))
        if self.hold:
            assert gate.wait(10)
        elif self.delay is not None:
            time.sleep(self.delay())
        for job in jobs:
            job.result = id(job)
        return None

    def open_gates(self) -> None:
        self.hold = False
        with self._lock:
            for gate in self.gates:
                gate.set()

    def apply_outcome(self, outcome: _Outcome) -> None: ...

    def mirror_outcome(self, args: Any) -> None: ...

    def mirror_outcome_on_loop(self, args: Any) -> None: ...

    def due_for_refresh(self) -> bool:
        return False

    def shutdown(self) -> None:
        self.open_gates()
        for executor in self._executors:
            executor.shutdown(wait=True)


@pytest.fixture
def gated() -> Iterator[Callable[[int], GatedBook]]:
    made: list[GatedBook] = []

    def make(lanes: int) -> GatedBook:
        book = GatedBook(lanes)
        made.append(book)
        return book

    yield make
    for book in made:
        book.shutdown()


def submit(writer: _LoopWriter) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    writer.submit(_Job("commit", fut))
    return fut


async def test_with_two_lanes_the_next_batch_goes_out_while_the_first_is_in_flight(
    gated: Callable[[int], GatedBook],
) -> None:
    book = gated(2)
    writer = _LoopWriter(book, asyncio.get_running_loop())  # type: ignore[arg-type]
    first = [submit(writer) for _ in range(3)]
    await until(lambda: len(book.batches) == 1)
    second = [submit(writer) for _ in range(4)]
    await until(lambda: len(book.batches) == 2)  # the first batch is still held
    assert [len(jobs) for _, jobs in book.batches] == [3, 4]
    assert sorted(lane for lane, _ in book.batches) == [0, 1]
    # Both lanes busy: these wait, and the first lane to finish takes them all.
    third = [submit(writer) for _ in range(5)]
    await asyncio.sleep(0.05)
    assert len(book.batches) == 2
    book.open_gates()
    await asyncio.wait_for(asyncio.gather(*first, *second, *third), 10)
    assert [len(jobs) for _, jobs in book.batches] == [3, 4, 5]
    assert book.most_in_flight == 2
    writer.close()


async def test_with_one_lane_a_batch_waits_for_the_one_before(
    gated: Callable[[int], GatedBook],
) -> None:
    book = gated(1)
    writer = _LoopWriter(book, asyncio.get_running_loop())  # type: ignore[arg-type]
    first = submit(writer)
    await until(lambda: len(book.batches) == 1)
    later = [submit(writer) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert len(book.batches) == 1
    book.open_gates()
    await asyncio.wait_for(asyncio.gather(first, *later), 10)
    assert [len(jobs) for _, jobs in book.batches] == [1, 3]
    assert book.most_in_flight == 1
    writer.close()


async def test_a_light_load_uses_the_first_lane_only(gated: Callable[[int], GatedBook]) -> None:
    book = gated(2)
    book.hold = False
    writer = _LoopWriter(book, asyncio.get_running_loop())  # type: ignore[arg-type]
    for _ in range(5):
        await asyncio.wait_for(submit(writer), 10)
    assert [lane for lane, _ in book.batches] == [0] * 5
    writer.close()


@pytest.mark.parametrize("lanes", [1, 2, 3])
async def test_no_job_is_left_behind_however_submits_and_batches_interleave(
    gated: Callable[[int], GatedBook], lanes: int
) -> None:
    """Jobs submitted at random moments against batches of random length: every one is
    taken exactly once, and no lane ever runs two batches at once."""
    rng = random.Random(lanes)
    book = gated(lanes)
    book.hold = False
    book.delay = lambda: rng.random() * 0.002
    writer = _LoopWriter(book, asyncio.get_running_loop())  # type: ignore[arg-type]
    futures = []
    for _ in range(400):
        futures.extend(submit(writer) for _ in range(rng.randint(1, 6)))
        if rng.random() < 0.5:
            await asyncio.sleep(rng.random() * 0.002)
    results = await asyncio.wait_for(asyncio.gather(*futures), 30)
    taken = [job for _, jobs in book.batches for job in jobs]
    assert len(taken) == len(futures) == len(set(map(id, taken)))
    assert len(set(results)) == len(futures)
    assert book.most_in_flight <= lanes
    writer.close()


@pytest.mark.django_db(transaction=True)
def test_sqlite_has_one_lane_postgres_two_by_default(settings: Any) -> None:
    if connection.vendor == "postgresql":
        assert writer_lanes() == 2
        settings.ILP_LEDGER_WRITER_LANES = 1
        assert writer_lanes() == 1
    else:
        settings.ILP_LEDGER_WRITER_LANES = 4
        assert writer_lanes() == 1  # one write lock: a second lane would only wait on it


def _lock_waiters(cursor: Any) -> int:
    cursor.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return int(cursor.fetchone()[0])


@requires_postgres
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_batches_in_flight_on_one_account_both_commit_in_order(
    captured_apply: list[list[int]],
) -> None:
    """The second lane's batch waits in the server on the account's row lock while the
    first one does, and both land: the balance, the rows and the book's memory exact."""
    make_accounts(peer_min=None)
    book = new_book(lanes=2)
    # Cursors made before the event loop runs (Django refuses to make them in one).
    locker = connections.create_connection("default")
    watcher = connections.create_connection("default")
    try:
        book.load_account_sync(PEER)
        book.commit_sync([PostingDraft(PEER, -1, "warm")])  # ids known: the one-trip path
        with locker.cursor() as cursor, watcher.cursor() as watch:
            cursor.execute("BEGIN")
            peer_id = LedgerAccount.objects.get(code=PEER).id
            cursor.execute(
                "SELECT id FROM payments_ledgeraccount WHERE id = %s FOR UPDATE", [peer_id]
            )

            async def go() -> None:
                def pay(key: str, amount: int) -> Any:
                    return book.commit(
                        [PostingDraft(PEER, -amount, key)],
                        [ReceiptDraft(RECEIVER, b"\x07" * 16, amount, amount, key)],
                    )

                first = asyncio.ensure_future(pay("a", 2))
                await until(lambda: _lock_waiters(watch) == 1)
                second = asyncio.ensure_future(pay("b", 3))
                await until(lambda: _lock_waiters(watch) == 2)  # both batches in flight
                assert not first.done() and not second.done()
                cursor.execute("ROLLBACK")
                await asyncio.wait_for(asyncio.gather(first, second), 10)

            asyncio.run(go())
        assert int(LedgerAccount.objects.get(code=PEER).balance) == -6
        assert book.balance(PEER) == -6
        assert set(Posting.objects.filter(account__code=PEER).values_list("key", flat=True)) == {
            "warm",
            "a",
            "b",
        }
        assert Receipt.objects.filter(account__code=RECEIVER).count() == 2
        assert book.stats.failed_batches == 0
    finally:
        locker.close()
        watcher.close()
        book.close()
