"""Money held for sending: DB-level reservations, in-memory ledger holds, booking.

**Reservations** (this module's :func:`reserve_on`, under the source account's row lock
``FOR NO KEY UPDATE``, the ledger's lock order: accounts by id, then outgoing payments):
an active payment's ``amount_reserved - amount_debited`` and a pending or sending circular
payment's ``amount_out`` are reserved on the source account in the database, so every
process sees them (unlike the in-memory book holds). ``balance - floor - reserved`` is
what may still be sent.

**Holds and booking** of a chunk that goes straight to a peer's link (a :class:`Sender`
with a ``peer_account``): before sending, an in-memory debit hold on the source and a
credit hold on the peer (keys from :func:`hold_keys`); on a valid Fulfill
:func:`book_chunk` commits ``source -amount`` and ``peer +amount`` under those keys
(retried: money that moved must be booked); on a Reject :func:`release_holds`. Through
the switch (no ``peer_account``) the switch holds and books itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db.models import F, Sum

from ilp.oer import UINT64_MAX
from ilp.packet import Reject
from payments.errors import BalanceLimitExceeded, PaymentsError
from payments.ledger import PostingDraft, get_book, node_account
from payments.ledger.shared import HoldDraft
from payments.models import LedgerAccount
from payments.models_outgoing import CircularPayment, OutgoingPayment
from payments.sending.errors import BookingFailed, InsufficientBalance, OutgoingNotAllowed

__all__ = [
    "OPERATOR_ACCOUNT",
    "SUSPENSE_ACCOUNT",
    "account_available",
    "book_chunk",
    "check_amount",
    "commit_booking",
    "hold_chunk",
    "hold_keys",
    "lock_source_account",
    "release_holds",
    "reserve_on",
]

log = logging.getLogger(__name__)

OPERATOR_ACCOUNT = node_account("operator")
SUSPENSE_ACCOUNT = node_account("suspense")
COMMIT_ATTEMPTS = 5


def _int(value: Decimal | int | None) -> int:
    return int(value or 0)


def check_amount(amount: object, what: str = "amount") -> int:
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= UINT64_MAX:
        raise OutgoingNotAllowed(f"{what} must be an integer from 1 to 2**64-1")
    return amount


def _floor(account: LedgerAccount) -> int | None:
    """How low the account may go for sending: its ``min_balance``; a receiver account
    without one may not go below 0; a node account without one is unbounded."""
    if account.min_balance is not None:
        return int(account.min_balance)
    return 0 if account.kind == LedgerAccount.Kind.RECEIVER else None


def _outstanding(account_id: int, *, exclude_payment: int | None = None) -> int:
    """Source units reserved on the account by active payments and not yet debited."""
    active = OutgoingPayment.objects.filter(
        source_account_id=account_id, status__in=OutgoingPayment.ACTIVE
    )
    if exclude_payment is not None:
        active = active.exclude(pk=exclude_payment)
    reserved = active.aggregate(
        r=Sum(F("amount_reserved") - F("amount_debited"), default=Decimal(0))
    )["r"]
    circular = CircularPayment.objects.filter(
        source_account_id=account_id,
        status__in=(CircularPayment.Status.PENDING, CircularPayment.Status.SENDING),
    ).aggregate(r=Sum("amount_out", default=Decimal(0)))["r"]
    return max(_int(reserved), 0) + _int(circular)


def account_available(*, account: LedgerAccount, exclude_payment: int | None = None) -> int | None:
    """What may still be sent from ``account`` (``None``: unbounded). Read it under the
    account's row lock to act on it."""
    floor = _floor(account)
    if floor is None:
        return None
    return int(account.balance) - floor - _outstanding(account.pk, exclude_payment=exclude_payment)


def lock_source_account(code: str) -> LedgerAccount:
    account = LedgerAccount.objects.select_for_update(no_key=True).filter(code=code).first()
    if account is None:
        raise OutgoingNotAllowed(f"no account {code!r}", account=code)
    return account


def reserve_on(account: LedgerAccount, amount: int, *, exclude_payment: int | None) -> None:
    """Refuse (:class:`InsufficientBalance`) unless ``amount`` fits what ``account`` may
    still send; the caller holds the account's row lock and writes the reservation."""
    available = account_available(account=account, exclude_payment=exclude_payment)
    if available is not None and amount > available:
        raise InsufficientBalance(
            f"account {account.code} can send {max(available, 0)}, not {amount}",
            account=account.code,
            available=str(max(available, 0)),
            amount=str(amount),
        )


# --- in-memory holds and booking of a chunk sent straight to a peer -----------------------------


def hold_keys(base: str) -> tuple[str, str]:
    """The source and peer posting keys of the chunk ``base`` (``outgoing:<id>:<seq>``)."""
    return base, f"{base}:peer"


async def hold_chunk(
    *,
    source_account: str,
    peer_account: str,
    amount: int,
    base: str,
    expires_at: datetime | None = None,
) -> Reject | None:
    """Debit hold on the source and credit hold on the peer, both or neither (``None``:
    held; else the T04 Reject to answer instead of sending).

    One ``await book.hold_many``: with shared credit (Redis) the two holds go in the
    loop's next batched script call instead of blocking the event loop on a round trip
    each; ``expires_at`` (the Prepare's) bounds how long Redis keeps them."""
    source_key, peer_key = hold_keys(base)
    try:
        await get_book().hold_many(
            [
                HoldDraft(source_account, amount, source_key),
                HoldDraft(peer_account, amount, peer_key, credit=True),
            ],
            expires_at=expires_at,
        )
    except BalanceLimitExceeded as exc:
        if exc.details.get("account") == peer_account:
            message = f"insufficient liquidity. account={peer_account}"
        else:
            message = "insufficient balance on the source."
        return Reject("T04", str(settings.ILP_ADDRESS), message)
    return None


def release_holds(base: str) -> None:
    book = get_book()
    for key in hold_keys(base):
        book.release(key)


async def book_chunk(
    *, source_account: str, peer_account: str, amount: int, base: str, memo: str
) -> None:
    """Commit a fulfilled chunk's ``source -amount`` / ``peer +amount`` under its hold keys."""
    source_key, peer_key = hold_keys(base)
    await commit_booking(
        [
            PostingDraft(source_account, -amount, source_key, memo),
            PostingDraft(peer_account, amount, peer_key, memo),
        ]
    )


async def commit_booking(postings: Sequence[PostingDraft]) -> None:
    """``book.commit`` retried (it is idempotent on the keys): money that moved must be
    booked. :class:`BookingFailed` when it still fails (never a payment failure)."""
    book = get_book()
    delay = 0.05
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            await book.commit(postings)
            return
        except PaymentsError as exc:
            if attempt == COMMIT_ATTEMPTS - 1:
                raise BookingFailed(f"cannot book {postings[0].key}: {exc.message}") from exc
            log.warning("payments: commit of %s failed; retrying", postings[0].key, exc_info=True)
            await asyncio.sleep(delay)
            delay *= 4
