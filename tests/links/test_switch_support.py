"""Doubles shared by the switch/CCP/echo tests (no tests here).

``FakeBook`` mirrors ``payments.ledger.BalanceBook``'s contract (debit holds checked
against ``min_balance``, credit holds against ``max_balance``, commits idempotent on the
posting keys and releasing the holds of those keys); the real book is used by the
``django_db`` tests in ``test_switch_ledger.py``. ``FakeLink`` stands in for a network
peer: a handler decides each reply.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ilp.conditions import sha256
from ilp.packet import Fulfill, Prepare, Reject, Reply
from links.peers import PeerContext
from links.switch import PacketSwitch
from payments.errors import BalanceLimitExceeded, CommitFailed
from payments.ledger import PostingDraft, ReceiptDraft

NODE = "test.conn"
FULFILLMENT = bytes(range(32))
CONDITION = sha256(FULFILLMENT)


def peer(
    name: str,
    relation: str = "child",
    *,
    address: str | None = None,
    asset_code: str = "USD",
    asset_scale: int = 9,
    max_packet_amount: int = 10**12,
    send_routes: bool | None = None,
    receive_routes: bool | None = None,
    node: str = NODE,
) -> PeerContext:
    if address is None:
        address = f"{node}.{name}" if relation == "child" else ""
    default_routes = relation != "child"
    return PeerContext(
        name=name,
        relation=relation,
        account_code=f"peer:{name}",
        address=address,
        asset_code=asset_code,
        asset_scale=asset_scale,
        max_packet_amount=max_packet_amount,
        send_routes=default_routes if send_routes is None else send_routes,
        receive_routes=default_routes if receive_routes is None else receive_routes,
    )


@dataclass
class _Account:
    balance: int = 0
    min_balance: int | None = None
    max_balance: int | None = None
    debits: int = 0
    credits: int = 0


@dataclass
class FakeBook:
    accounts: dict[str, _Account] = field(default_factory=dict)
    holds: dict[str, tuple[str, int, bool]] = field(default_factory=dict)
    applied: dict[str, PostingDraft] = field(default_factory=dict)
    commits: list[list[PostingDraft]] = field(default_factory=list)
    fail_commits: bool = False

    def account(
        self,
        code: str,
        *,
        balance: int = 0,
        min_balance: int | None = None,
        max_balance: int | None = None,
    ) -> None:
        self.accounts[code] = _Account(balance, min_balance, max_balance)

    def _acct(self, code: str) -> _Account:
        return self.accounts.setdefault(code, _Account())

    def hold(self, account_code: str, amount: int, key: str) -> None:
        self._hold(account_code, amount, key, credit=False)

    def hold_credit(self, account_code: str, amount: int, key: str) -> None:
        self._hold(account_code, amount, key, credit=True)

    def _hold(self, code: str, amount: int, key: str, *, credit: bool) -> None:
        assert amount >= 0
        if amount == 0:
            return
        if key in self.holds:
            assert self.holds[key] == (code, amount, credit), f"duplicate hold {key}"
            return
        a = self._acct(code)
        if credit:
            if a.max_balance is not None and a.balance + a.credits + amount > a.max_balance:
                raise BalanceLimitExceeded("exceeded maximum balance")
            a.credits += amount
        else:
            if a.min_balance is not None and a.balance - a.debits - amount < a.min_balance:
                raise BalanceLimitExceeded("insufficient liquidity")
            a.debits += amount
        self.holds[key] = (code, amount, credit)

    def release(self, key: str) -> None:
        held = self.holds.pop(key, None)
        if held is None:
            return
        code, amount, credit = held
        a = self._acct(code)
        if credit:
            a.credits -= amount
        else:
            a.debits -= amount

    def balance(self, account_code: str) -> int:
        return self._acct(account_code).balance

    def is_loaded(self, account_code: str) -> bool:
        return True

    async def load_account(self, account_code: str) -> None:
        self._acct(account_code)

    async def commit(
        self, postings: Sequence[PostingDraft], receipts: Sequence[ReceiptDraft] = ()
    ) -> None:
        await asyncio.sleep(0)
        if self.fail_commits:
            raise CommitFailed("database down")
        self.commits.append(list(postings))
        for p in postings:
            if p.key not in self.applied:
                self.applied[p.key] = p
                self._acct(p.account_code).balance += p.amount
        for p in postings:
            self.release(p.key)
        for r in receipts:
            self.release(r.key)

    def pending(self) -> int:
        return len(self.holds)

    def total(self) -> int:
        """Sum of every applied posting: zero when no money was created or lost."""
        return sum(p.amount for p in self.applied.values())


Handler = Callable[[Prepare], Awaitable[Any]]


class FakeLink:
    """A network peer: ``handler(prepare)`` gives the reply (or raises)."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.seen: list[Prepare] = []
        self.handler = handler or fulfill_with(FULFILLMENT)

    async def send_prepare(self, prepare: Prepare) -> Reply:
        self.seen.append(prepare)
        result: Reply = await self.handler(prepare)
        return result


def fulfill_with(fulfillment: bytes, data: bytes = b"") -> Handler:
    async def handler(prepare: Prepare) -> Fulfill:
        return Fulfill(fulfillment, data)

    return handler


def reject_with(reject: Reject) -> Handler:
    async def handler(prepare: Prepare) -> Reject:
        return reject

    return handler


def never() -> Handler:
    async def handler(prepare: Prepare) -> Reply:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return handler


class FakeReceiver:
    """Stands in for ``receivers.psk2_receiver.receive_prepare``."""

    def __init__(self, book: FakeBook, reply: Reply | None = None) -> None:
        self.book = book
        self.reply = reply
        self.calls: list[tuple[Prepare, str, str]] = []

    async def __call__(
        self, prepare: Prepare, *, source_account: str, packet_key: str, now: datetime
    ) -> Fulfill | Reject:
        self.calls.append((prepare, source_account, packet_key))
        reply = self.reply or Fulfill(FULFILLMENT)
        if isinstance(reply, Fulfill):
            await self.book.commit([PostingDraft(source_account, -prepare.amount, packet_key)])
        return reply


@dataclass
class Rig:
    switch: PacketSwitch
    book: FakeBook
    links: dict[str, FakeLink]
    receiver: FakeReceiver

    def link(self, name: str, handler: Handler | None = None) -> FakeLink:
        link = self.links[name] = FakeLink(handler)
        return link


def make_rig(
    peers: Sequence[PeerContext] = (),
    *,
    node: str = NODE,
    clock: Callable[[], datetime] | None = None,
    fee_ppm: int = 0,
    window_ms: int = 1000,
    max_hold_ms: int = 30_000,
    interval_s: float = 30.0,
    table_id: bytes = bytes(range(16)),
) -> Rig:
    book = FakeBook()
    links: dict[str, FakeLink] = {}
    receiver = FakeReceiver(book)
    switch = PacketSwitch(
        node_address=node,
        asset_code="USD",
        asset_scale=9,
        book=book,
        links=links.get,
        receiver=receiver,
        fee_ppm=fee_ppm,
        min_message_window_ms=window_ms,
        max_hold_time_ms=max_hold_ms,
        route_broadcast_interval_s=interval_s,
        clock=clock or (lambda: datetime.now(UTC)),
        routing_table_id=table_id,
        routing_secret=b"s" * 32,
    )
    switch.set_peers(peers)
    return Rig(switch, book, links, receiver)


def fixed_clock(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def prepare(
    destination: str,
    amount: int = 100,
    *,
    expires_in: float = 10.0,
    condition: bytes = CONDITION,
    data: bytes = b"",
    now: datetime | None = None,
) -> Prepare:
    base = now or datetime.now(UTC)
    return Prepare(amount, base + timedelta(seconds=expires_in), condition, destination, data)
