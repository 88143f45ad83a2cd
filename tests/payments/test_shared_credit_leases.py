"""Leases of shared credit (``payments.ledger.shared``): holds taken from a process's slice
of a limited account's room, with no round trip, and the limit still exact across books.

Each book is one process's; each runs its own event loop in a thread here. Each test has
its own Redis key prefix (the ``prefix`` fixture of ``test_shared_credit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable

import pytest
from django.db import connection

from payments.errors import BalanceLimitExceeded
from payments.ledger import BalanceBook, PostingDraft
from payments.ledger.shared import HoldDraft, SharedCredit
from payments.models import LedgerAccount
from tests.conftest import requires_postgres, requires_redis
from tests.payments.conftest import NODE, PEER, make_accounts
from tests.payments.test_shared_credit import CHILD, ROOT, prefix, shared

pytestmark = [
    requires_postgres,
    requires_redis,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
]

__all__ = ["prefix"]  # the fixture, used by name


def leased(prefix: str, **kwargs: object) -> SharedCredit:
    options: dict[str, object] = {"leases": True, "commit_delay_s": 0.01}
    options.update(kwargs)
    return shared(prefix, **options)


def balance() -> int:
    return int(LedgerAccount.objects.get(code=PEER).balance)


def run_books(books: list[BalanceBook], body: Callable[[int], Awaitable[None]]) -> None:
    """``body(i)`` on book ``i``'s own event loop, all at once (as processes would)."""
    start = threading.Barrier(len(books))
    errors: list[BaseException] = []

    def run(i: int) -> None:
        async def go() -> None:
            await books[i].load_account(PEER)
            start.wait()
            try:
                await body(i)
            finally:
                credit = books[i].shared
                assert credit is not None
                await credit.aclose()

        try:
            asyncio.run(go())
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(books))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors


@pytest.mark.parametrize("room", [20_000, 600])
def test_leased_holds_never_pass_the_limit(prefix: str, room: int) -> None:
    """Three books take holds from their leases at once, three times the room, every
    admitted packet fulfilled (a few rejected first): the committed total never passes the
    limit, most holds came from leases (no round trip), and the room is used. Were a lease
    not counted in Redis, each book could admit the whole room."""
    make_accounts(peer_min=-room, peer_max=None)
    books = [BalanceBook(shared=leased(prefix)) for _ in range(3)]
    fulfilled = [0, 0, 0]
    admitted = [0, 0, 0]
    rng = random.Random(7)

    async def body(i: int) -> None:
        book = books[i]

        async def packet(n: int) -> None:
            key = f"b{i}p{n}"
            try:
                await book.hold_many([HoldDraft(PEER, 10, key)])
            except BalanceLimitExceeded:
                return
            admitted[i] += 1
            await asyncio.sleep(rng.random() / 200)  # the next hop's answer
            if n % 13 == 0:  # rejected: the room goes back into the lease
                book.release(key)
                return
            await book.commit([PostingDraft(PEER, -10, key), PostingDraft(NODE, 10, f"{key}:n")])
            fulfilled[i] += 1

        for chunk in range(0, room // 10, 50):
            await asyncio.gather(*(packet(n) for n in range(chunk, chunk + 50)))

    try:
        run_books(books, body)
    finally:
        for book in books:
            book.close()
    used = -balance()
    assert used == 10 * sum(fulfilled)
    assert used <= room
    assert used >= 0.9 * room
    lease_holds = sum(b.shared.stats.lease_holds for b in books if b.shared)
    if room > 10_000:  # mostly far from the limit: leases carry most admitted holds
        assert lease_holds > 0.4 * sum(admitted), (lease_holds, admitted)


def test_room_in_another_books_lease_comes_back(prefix: str) -> None:
    """A hold refused only because the room sits in another book's unused lease is
    admitted on a retry within a keeper pass or two (the squeeze), not after the lease
    expires."""
    room = 10_000
    make_accounts(peer_min=-room, peer_max=None)
    a = BalanceBook(shared=leased(prefix))
    b = BalanceBook(shared=leased(prefix))
    seen: dict[str, object] = {}
    a_ready, b_done = threading.Event(), threading.Event()

    async def body(i: int) -> None:
        if i == 0:
            assert a.shared is not None
            for n in range(40):  # a steady rate: a's lease grows
                await a.hold_many([HoldDraft(PEER, 10, f"a{n}")])
                await asyncio.sleep(0.005)
            lease = next(iter(a.shared._leases.values()))
            seen["a_spare"] = lease.amount - lease.used
            a_ready.set()
            n = 0
            while not b_done.is_set():  # a keeps sending: its lease is never idle
                n += 1
                with contextlib.suppress(BalanceLimitExceeded):
                    await a.hold_many([HoldDraft(PEER, 1, f"a:more{n}")])
                    a.release(f"a:more{n}")
                await asyncio.sleep(0.01)
            return
        await asyncio.get_running_loop().run_in_executor(None, a_ready.wait)
        whole = room - 400  # a's 40 packets stay in flight; the rest is free
        started = time.monotonic()
        tries = 0
        try:
            while True:
                tries += 1
                try:
                    await b.hold_many([HoldDraft(PEER, whole, "b:whole")])
                    break
                except BalanceLimitExceeded:
                    if time.monotonic() - started > 5:
                        raise
                    await asyncio.sleep(0.05)
        finally:
            b_done.set()
        seen["b_wait"] = time.monotonic() - started
        seen["b_tries"] = tries

    try:
        run_books([a, b], body)
    finally:
        a.close()
        b.close()
    assert isinstance(seen["a_spare"], int) and seen["a_spare"] > 0  # the room was in a's lease
    assert (
        isinstance(seen["b_tries"], int) and seen["b_tries"] > 1
    )  # refused at first: exact, never more than the room
    assert isinstance(seen["b_wait"], float) and seen["b_wait"] < 2


def test_a_killed_process_lease_frees_at_its_expiry(prefix: str) -> None:
    """A process killed with a lease (and a hold taken from it) leaves no stuck credit: the
    lease counts until it expires, then the whole room is free."""
    make_accounts(peer_min=-1000, peer_max=None)
    s = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{s['USER']}@{s['HOST']}:{s['PORT']}/{s['NAME']}",
        "DJANGO_SETTINGS_MODULE": "interledger_site.settings",
        "PREFIX": prefix,
        "EXPIRES_MS": "1000",
        "LEASE_TTL_MS": "3000",
    }
    # The child's first hold (100) goes to Redis and asks for a lease; a second one (10)
    # comes from it.
    child_code = CHILD.replace(
        'await book.hold_many([HoldDraft("peer:alice", 900, "child-hold")], expires_at=expires)',
        'await book.hold_many([HoldDraft("peer:alice", 100, "c1")], expires_at=expires)\n'
        "    for n in range(200):\n"
        "        await asyncio.sleep(0.01)\n"
        '        await book.hold_many([HoldDraft("peer:alice", 10, f"c2-{n}")],'
        " expires_at=expires)\n"
        "        if credit.stats.lease_holds:\n"
        "            break\n"
        "    assert credit.stats.lease_holds",
    )
    child = subprocess.Popen(
        [sys.executable, "-c", child_code],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    killed_at = 0.0
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "held"
    finally:
        child.kill()
        child.wait(30)
        killed_at = time.monotonic()
    book = BalanceBook(shared=leased(prefix, hold_margin_ms=100))

    async def go() -> tuple[bool, float]:
        await book.load_account(PEER)
        # The child's holds have expired (1 s + 100 ms) well before its lease (3 s): the
        # lease alone keeps the whole room from fitting.
        await asyncio.sleep(max(0.0, killed_at + 1.5 - time.monotonic()))
        try:
            await book.hold_many([HoldDraft(PEER, 1000, "early")])
            early = True
        except BalanceLimitExceeded:
            early = False
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                await book.hold_many([HoldDraft(PEER, 1000, "all")])
                break
            except BalanceLimitExceeded:
                await asyncio.sleep(0.05)
        assert book.shared is not None
        await book.shared.aclose()
        return early, time.monotonic() - killed_at

    try:
        early, freed_after = asyncio.run(go())
    finally:
        book.close()
    assert early is False
    assert freed_after < 20


def test_epoch_change_drops_leases_and_keeps_their_holds(prefix: str) -> None:
    """Redis loses its keys (a flush) while book a has holds taken from its lease: after
    the rebuild, a's holds in flight still count (re-asserted), a's unused lease does not,
    and a's later commits shrink the re-asserted entry (no room counted twice or lost)."""
    import redis

    make_accounts(peer_min=-1000, peer_max=None)
    a = BalanceBook(shared=leased(prefix))
    b = BalanceBook(shared=leased(prefix))
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    seen: dict[str, object] = {}

    async def go() -> None:
        assert a.shared is not None and b.shared is not None
        for book in (a, b):
            await book.load_account(PEER)
        n = 0
        while a.shared.stats.lease_holds < 5 and n < 200:  # some of them from the lease
            await a.hold_many([HoldDraft(PEER, 10, f"a{n}")])
            n += 1
            await asyncio.sleep(0.005)
        held = 10 * n
        seen["held"] = held
        seen["a_lease_holds"] = a.shared.stats.lease_holds
        keys = list(client.scan_iter(match=prefix + "*"))
        client.delete(*keys)  # FLUSHDB, for our keys
        await a.shared.check_epoch()
        # b sees exactly the room a's packets in flight leave.
        try:
            await b.hold_many([HoldDraft(PEER, 1000 - held + 1, "b:over")])
            seen["over"] = True
        except BalanceLimitExceeded:
            seen["over"] = False
        await b.hold_many([HoldDraft(PEER, 1000 - held, "b:rest")])
        b.release("b:rest")
        # a's packets are fulfilled: their room becomes balance, counted once.
        await asyncio.gather(
            *(
                a.commit([PostingDraft(PEER, -10, f"a{k}"), PostingDraft(NODE, 10, f"a{k}:n")])
                for k in range(n)
            )
        )
        await a.shared.aclose()  # sends the commits' ops
        await b.hold_many([HoldDraft(PEER, 1000 - held, "b:after")])
        try:
            await b.hold_many([HoldDraft(PEER, 1, "b:one-more")])
            seen["one_more"] = True
        except BalanceLimitExceeded:
            seen["one_more"] = False
        seen["a_resyncs"] = a.shared.stats.resyncs
        await b.shared.aclose()

    try:
        asyncio.run(go())
    finally:
        a.close()
        b.close()
        client.close()
    assert isinstance(seen["a_lease_holds"], int) and seen["a_lease_holds"] >= 1
    assert seen["over"] is False
    assert seen["one_more"] is False
    assert isinstance(seen["a_resyncs"], int) and seen["a_resyncs"] >= 1


def test_a_book_that_missed_the_flush_stops_using_its_lease(prefix: str) -> None:
    """Book a does not notice that Redis lost its keys (its keeper is asleep): once the
    rebuilt mirror admits anything (after the grace), a takes nothing more from its lease
    (a's lease no longer counts anywhere) but asks Redis, and is refused when b has taken
    the room."""
    import redis

    make_accounts(peer_min=-1000, peer_max=None)
    a = BalanceBook(shared=leased(prefix, keeper_s=30))
    b = BalanceBook(shared=leased(prefix))
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    seen: dict[str, object] = {}

    async def go() -> None:
        assert a.shared is not None and b.shared is not None
        for book in (a, b):
            await book.load_account(PEER)
        n = 0
        while n < 300:  # until a's lease has taken holds and still has room for more
            await a.hold_many([HoldDraft(PEER, 10, f"a{n}")])
            n += 1
            lease = next(iter(a.shared._leases.values()), None)
            if a.shared.stats.lease_holds >= 3 and lease and lease.amount - lease.used >= 10:
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # a's lease calls (its top-ups) are answered
        seen["spare"] = lease.amount - lease.used if lease else 0
        resyncs = a.shared.stats.resyncs
        client.delete(*list(client.scan_iter(match=prefix + "*")))
        # b rebuilds the mirror (a does not hear of it) and takes what it sees free.
        await b.hold_many([HoldDraft(PEER, 1000 - 10 * n, "b:rest")])
        seen["a_heard"] = a.shared.stats.resyncs > resyncs
        try:
            await a.hold_many([HoldDraft(PEER, 10, "a:late")])
            seen["late"] = True
        except BalanceLimitExceeded:
            seen["late"] = False
        for book in (a, b):
            assert book.shared is not None
            await book.shared.aclose()

    try:
        asyncio.run(go())
    finally:
        a.close()
        b.close()
        client.close()
    assert isinstance(seen["spare"], int) and seen["spare"] >= 10
    assert seen["a_heard"] is False
    assert seen["late"] is False


def test_a_key_committed_twice_shrinks_its_lease_once(prefix: str) -> None:
    """A packet committed twice in one batch (a retry; the ledger books it once) ends its
    hold once: the lease in Redis never counts less than the book's own view of it (less
    would be room that is not there)."""
    import redis

    make_accounts(peer_min=-1000, peer_max=None)
    peer_id = LedgerAccount.objects.get(code=PEER).id
    book = BalanceBook(shared=leased(prefix))
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    seen: dict[str, int] = {}

    async def go() -> None:
        credit = book.shared
        assert credit is not None
        await book.load_account(PEER)
        n = 0
        while credit.stats.lease_holds < 1 and n < 200:
            await book.hold_many([HoldDraft(PEER, 10, f"warm{n}")])
            book.release(f"warm{n}")
            n += 1
            await asyncio.sleep(0.005)
        before = credit.stats.lease_holds
        await book.hold_many([HoldDraft(PEER, 10, "twice")])
        assert credit.stats.lease_holds == before + 1  # from the lease
        post = [PostingDraft(PEER, -10, "twice"), PostingDraft(NODE, 10, "twice:n")]
        await asyncio.gather(book.commit(post), book.commit(post))
        lease = next(iter(credit._leases.values()))
        seen["local"] = lease.amount
        seen["used"] = lease.used
        key = lease.key
        await credit.aclose()  # the commits' ops go
        raw = client.hget(f"{credit._keys()}h:{peer_id}", key)
        assert isinstance(raw, bytes)
        _, hi, lo = raw.decode().split()
        seen["redis"] = int(hi) * 2**32 + int(lo)

    try:
        asyncio.run(go())
    finally:
        book.close()
        client.close()
    assert seen["used"] == 0
    assert seen["redis"] >= seen["local"] > 0
    assert balance() == -10  # booked once
