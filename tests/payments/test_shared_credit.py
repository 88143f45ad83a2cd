"""Shared credit on a real PostgreSQL + Redis: one limit for every book (process) of the node.

Each test uses its own Redis key prefix (``payments.ledger.shared``), so nothing of another
test's mirror is seen; the flush test deletes only its own keys.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.db import connection

from payments.errors import BalanceLimitExceeded
from payments.ledger import BalanceBook, PostingDraft
from payments.ledger.shared import HoldDraft, SharedCredit
from payments.models import LedgerAccount
from tests.conftest import requires_postgres, requires_redis
from tests.payments.conftest import NODE, PEER, make_accounts

pytestmark = [
    requires_postgres,
    requires_redis,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
]

ROOT = Path(__file__).resolve().parents[2]
ROOM = 1000
AMOUNT = 10


@pytest.fixture
def prefix() -> Iterator[str]:
    import redis

    name = f"test:credit:{secrets.token_hex(4)}:"
    yield name
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    keys = list(client.scan_iter(match=name + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def shared(prefix: str, **kwargs: object) -> SharedCredit:
    options: dict[str, object] = {"prefix": prefix, "grace_ms": 200, "keeper_s": 0.05}
    options.update(kwargs)
    return SharedCredit(os.environ["REDIS_URL"], **options)  # type: ignore[arg-type]


def balance() -> int:
    return int(LedgerAccount.objects.get(code=PEER).balance)


def test_two_books_share_one_tight_limit(prefix: str) -> None:
    """Two books (as two processes have) pay out of one peer's room at once, with a next hop
    that answers after a random delay: the limit is never exceeded and the room is used."""
    make_accounts(peer_min=-ROOM, peer_max=None)
    books = [BalanceBook(shared=shared(prefix)), BalanceBook(shared=shared(prefix))]
    start = threading.Barrier(len(books))
    fulfilled = [0, 0]
    refused = [0, 0]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        book = books[i]

        async def packet(n: int) -> None:
            key = f"b{i}p{n}"
            try:
                await book.hold_many([HoldDraft(PEER, AMOUNT, key)])
            except BalanceLimitExceeded:
                refused[i] += 1
                return
            await asyncio.sleep(random.random() / 100)  # the next hop's answer
            await book.commit(
                [PostingDraft(PEER, -AMOUNT, key), PostingDraft(NODE, AMOUNT, f"{key}:n")]
            )
            fulfilled[i] += 1

        async def go() -> None:
            await book.load_account(PEER)
            start.wait()
            # Three times the room, 30 in flight per book.
            for chunk in range(0, 3 * ROOM // AMOUNT // 2, 30):
                await asyncio.gather(*(packet(n) for n in range(chunk, chunk + 30)))
            assert book.shared is not None
            await book.shared.aclose()

        try:
            asyncio.run(go())
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(books))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        for book in books:
            book.close()
    assert not errors, errors
    used = -balance()
    assert used <= ROOM  # never exceeded (balances only fall here: the last is the lowest)
    assert used >= 0.9 * ROOM
    assert used == AMOUNT * sum(fulfilled)  # every Fulfill booked once
    assert all(fulfilled), fulfilled  # both books got their share
    assert sum(refused) > 0


async def _hold_until_admitted(book: BalanceBook, key: str, amount: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            await book.hold_many([HoldDraft(PEER, amount, key)])
            return True
        except BalanceLimitExceeded:
            await asyncio.sleep(0.05)
    return False


CHILD = textwrap.dedent(
    """
    import asyncio, os, sys
    from datetime import UTC, datetime, timedelta
    import django
    django.setup()
    from payments.ledger import BalanceBook
    from payments.ledger.shared import HoldDraft, SharedCredit

    async def main():
        credit = SharedCredit(os.environ["REDIS_URL"], prefix=os.environ["PREFIX"],
                              grace_ms=200, keeper_s=0.05, hold_margin_ms=100,
                              leases=os.environ.get("LEASES", "1") == "1",
                              lease_ttl_ms=int(os.environ.get("LEASE_TTL_MS", "2000")))
        book = BalanceBook(shared=credit)
        await book.load_account("peer:alice")
        expires = datetime.now(UTC) + timedelta(milliseconds=int(os.environ["EXPIRES_MS"]))
        await book.hold_many([HoldDraft("peer:alice", 900, "child-hold")], expires_at=expires)
        print("held", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def test_a_killed_process_hold_expires(prefix: str) -> None:
    """A process that took a hold and was killed (kill -9: no release, no commit) leaves
    no stuck credit: its hold ends at the Prepare's expiry plus the margin."""
    make_accounts(peer_min=-ROOM, peer_max=None)
    s = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{s['USER']}@{s['HOST']}:{s['PORT']}/{s['NAME']}",
        "DJANGO_SETTINGS_MODULE": "interledger_site.settings",
        "PREFIX": prefix,
        "EXPIRES_MS": "1500",
    }
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "held"
    finally:
        child.kill()
        child.wait(30)
    book = BalanceBook(shared=shared(prefix, hold_margin_ms=100))

    async def go() -> tuple[bool, bool]:
        await book.load_account(PEER)
        # The dead process's 900 still count: 200 more do not fit...
        try:
            await book.hold_many([HoldDraft(PEER, 200, "early")])
            early = True
        except BalanceLimitExceeded:
            early = False
        # ...until its hold expires; then the whole room is free.
        later = await _hold_until_admitted(book, "all", ROOM, 30)
        assert book.shared is not None
        await book.shared.aclose()
        return early, later

    try:
        early, later = asyncio.run(go())
    finally:
        book.close()
    assert (early, later) == (False, True)


def test_mirror_is_rebuilt_after_a_redis_flush(prefix: str) -> None:
    """The mirror's keys vanish (a flushed or restarted Redis): the books rebuild it from
    Postgres and re-assert their live holds before admitting anything; nothing stays stuck."""
    import redis

    make_accounts(peer_min=-ROOM, peer_max=None)
    a = BalanceBook(shared=shared(prefix))
    b = BalanceBook(shared=shared(prefix))
    client = redis.Redis.from_url(os.environ["REDIS_URL"])

    async def go() -> dict[str, object]:
        seen: dict[str, object] = {}
        for book in (a, b):
            await book.load_account(PEER)
        await a.hold_many([HoldDraft(PEER, 300, "c1")])
        await a.commit([PostingDraft(PEER, -300, "c1"), PostingDraft(NODE, 300, "c1:n")])
        await a.hold_many([HoldDraft(PEER, 500, "inflight")])  # a's packet in flight
        keys = list(client.scan_iter(match=prefix + "*"))
        assert keys
        client.delete(*keys)  # what FLUSHDB or a restart without persistence does to us
        # b asks first: 300 + 500 held + 300 > 1000 must not fit once rebuilt.
        try:
            await b.hold_many([HoldDraft(PEER, 300, "b1")])
            seen["b1"] = True
        except BalanceLimitExceeded:
            seen["b1"] = False
        await b.hold_many([HoldDraft(PEER, 200, "b2")])  # exactly the rest fits
        a.release("inflight")  # a's packet was rejected: its room comes back
        seen["after_release"] = await _hold_until_admitted(b, "b3", 500, 10)
        for book in (a, b):
            assert book.shared is not None
            seen[f"resyncs_{id(book)}"] = book.shared.stats.resyncs
            await book.shared.aclose()
        return seen

    try:
        seen = asyncio.run(go())
    finally:
        a.close()
        b.close()
        client.close()
    assert seen["b1"] is False
    assert seen["after_release"] is True
    assert all(v >= 1 for k, v in seen.items() if k.startswith("resyncs_"))  # type: ignore[operator]


def test_holds_take_both_sides_or_neither(prefix: str) -> None:
    """A forward's debit hold on the source and credit hold on the next hop go together: a
    next hop without room leaves no debit hold behind."""
    accounts = make_accounts(peer_min=-ROOM, peer_max=ROOM)
    assert accounts
    book = BalanceBook(shared=shared(prefix))
    expires = datetime.now(UTC) + timedelta(seconds=30)

    async def go() -> tuple[bool, int]:
        for code in (PEER, "peer:bob"):
            await book.load_account(code)
        await book.hold_many([HoldDraft("peer:bob", ROOM, "fill", credit=True)])
        try:
            await book.hold_many(
                [HoldDraft(PEER, 10, "p:in"), HoldDraft("peer:bob", 10, "p:out", credit=True)],
                expires_at=expires,
            )
            taken = True
        except BalanceLimitExceeded as exc:
            taken = False
            assert exc.details["account"] == "peer:bob"
        # the source's whole room is still there
        await book.hold_many([HoldDraft(PEER, ROOM, "whole")])
        assert book.shared is not None
        await book.shared.aclose()
        return taken, book.snapshot(PEER).pending_debits

    try:
        taken, pending = asyncio.run(go())
    finally:
        book.close()
    assert (taken, pending) == (False, ROOM)
