"""A committed batch's shared-credit ops ride the event loop's next script call
(``SharedCredit.commit``): no Redis round trip in the writer thread, and the mirror ends up
with the committed balance and without the committed holds."""

from __future__ import annotations

import asyncio
import os

import pytest

from payments.ledger import BalanceBook, PostingDraft
from payments.ledger.shared import HoldDraft, SharedCredit
from payments.models import LedgerAccount
from tests.conftest import requires_postgres, requires_redis
from tests.payments.conftest import NODE, PEER, make_accounts
from tests.payments.test_shared_credit import prefix, shared

pytestmark = [
    requires_postgres,
    requires_redis,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
]

__all__ = ["prefix"]  # the fixture, used by name


def test_a_commit_is_mirrored_by_the_loop_not_the_writer(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    make_accounts(peer_min=-1000, peer_max=None)
    peer_id = LedgerAccount.objects.get(code=PEER).id
    book = BalanceBook(shared=shared(prefix))
    credit = book.shared
    assert credit is not None
    sync_commits: list[object] = []
    real = SharedCredit.commit_sync
    monkeypatch.setattr(
        SharedCredit,
        "commit_sync",
        lambda self, *a: (sync_commits.append(a), real(self, *a))[1],
    )
    client = redis.Redis.from_url(os.environ["REDIS_URL"])

    async def go() -> None:
        await book.load_account(PEER)
        await book.hold_many([HoldDraft(PEER, 300, "c1"), HoldDraft(PEER, 200, "c2")])
        await asyncio.gather(
            book.commit([PostingDraft(PEER, -300, "c1"), PostingDraft(NODE, 300, "c1:n")]),
            book.commit([PostingDraft(PEER, -200, "c2"), PostingDraft(NODE, 200, "c2:n")]),
        )
        await credit.aclose()  # waits for the loop's queued call

    try:
        asyncio.run(go())
        keys = credit._keys()
        held = client.hgetall(f"{keys}h:{peer_id}")
        mirror = client.hmget(f"{keys}a:{peer_id}", "bh", "bl", "dh", "dl")
    finally:
        book.close()
        client.close()
    assert sync_commits == []  # the writer thread made no commit call
    assert credit.stats.commits >= 1
    # Both holds ended with their commits. What may be left is this process's lease of the
    # account's room, if the keeper took one meanwhile (a slow run: its value is
    # "D|C <high> <low>"); it is held like a hold until the book closes.
    leases = {k: v.split() for k, v in held.items() if k.startswith(b"lease:")}
    assert set(held) == set(leases)
    leased = sum(int(h) * 2**32 + int(low) for kind, h, low in leases.values() if kind == b"D")
    bh, bl, dh, dl = (int(v) for v in mirror)
    assert (bh * 2**32 + bl, dh * 2**32 + dl) == (-500, leased)
    assert int(LedgerAccount.objects.get(code=PEER).balance) == -500
