"""The packet-path rules of Open Payments incoming payments (called by
:mod:`receivers.stream_receiver` for every authentic STREAM Prepare to a tagged address).

An incoming payment's credentials are one STREAM address tagged with its id, so every
packet paid toward it carries that tag. For such a packet:

- after ``expiresAt``, or once the payment is completed (by ``POST .../complete`` or by
  reaching ``incomingAmount``), the Prepare is refused: **F99** whose reply closes the
  connection (``ConnectionClose``), nothing credited;
- a packet that would take the total past ``incomingAmount`` is refused: **F99** with
  ``StreamMaxMoney(incomingAmount, received)``, nothing credited. The total is the durable
  one (the book's, ``payment_total`` of the connection) plus what this process has in
  flight for the payment (:class:`_InFlight`, taken synchronously with the check, released
  after the commit), so concurrent packets in one process never overshoot. Across processes
  two packets in flight at once may each pass (the bound is then exceeded by at most what
  was in flight): the rows stay exact, the cap is best effort there.

The payment's limits are read from the database once per :data:`CACHE_TTL_S` seconds per
tag (tags that are not incoming payments too), so a ``complete`` made by another process
is seen within that time; this process forgets its own entry at once.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from channels.db import database_sync_to_async

from ilp.oer import UINT64_MAX
from ilp.stream import ConnectionCloseFrame, ErrorCode, Frame, StreamMaxMoneyFrame
from payments.ledger.drafts import MAX_RECEIPT_KEY_LENGTH as MAX_RECEIPT_KEY
from receivers.addresses import tag_key_prefix, tagged_receipt_key

CACHE_TTL_S: Final = 2.0
CACHE_MAX: Final = 4096
MSG_EXPIRED: Final = "incoming payment expired"
MSG_COMPLETED: Final = "incoming payment completed"


@dataclass(frozen=True, slots=True)
class PaymentLimits:
    """What the packet path must enforce for one incoming payment."""

    incoming_amount: int | None
    expires_at: datetime | None
    completed: bool
    # The page visitor it was created for (its receipts count for the visitor too).
    visitor: bytes | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """Refuse the packet (F99) with these reply frames; nothing is credited."""

    frames: tuple[Frame, ...]
    reason: str


class Admitted:
    """An amount held as in flight for one payment; :meth:`release` once the packet is
    committed or refused (either way). ``seen`` is everything in flight for the payment
    when it was taken, this amount included."""

    __slots__ = ("_amount", "_key", "_released", "seen")

    def __init__(self, key: bytes, amount: int, seen: int) -> None:
        self._key = key
        self._amount = amount
        self._released = False
        self.seen = seen

    def release(self) -> None:
        if not self._released:
            self._released = True
            in_flight.sub(self._key, self._amount)


class _InFlight:
    """Amounts admitted and not yet committed, per incoming payment (this process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._amounts: dict[bytes, int] = {}

    def get(self, key: bytes) -> int:
        with self._lock:
            return self._amounts.get(key, 0)

    def add(self, key: bytes, amount: int) -> int:
        with self._lock:
            total = self._amounts[key] = self._amounts.get(key, 0) + amount
            return total

    def sub(self, key: bytes, amount: int) -> None:
        with self._lock:
            left = self._amounts.get(key, 0) - amount
            if left > 0:
                self._amounts[key] = left
            else:
                self._amounts.pop(key, None)


in_flight = _InFlight()


class _LimitsCache:
    def __init__(
        self, *, maximum: int = CACHE_MAX, ttl: float = CACHE_TTL_S, clock: Callable[[], float]
    ) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, tuple[float, PaymentLimits | None]] = OrderedDict()
        self._maximum = maximum
        self._ttl = ttl
        self._clock = clock

    def get(self, tag: bytes) -> tuple[bool, PaymentLimits | None]:
        with self._lock:
            entry = self._entries.get(tag)
            if entry is None or entry[0] <= self._clock():
                return False, None
            self._entries.move_to_end(tag)
            return True, entry[1]

    def put(self, tag: bytes, limits: PaymentLimits | None) -> None:
        with self._lock:
            self._entries[tag] = (self._clock() + self._ttl, limits)
            self._entries.move_to_end(tag)
            while len(self._entries) > self._maximum:
                self._entries.popitem(last=False)

    def forget(self, tag: bytes) -> None:
        with self._lock:
            self._entries.pop(tag, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


cache = _LimitsCache(clock=time.monotonic)


def _load(tag: bytes) -> PaymentLimits | None:
    from receivers.open_payments.models import IncomingPaymentResource

    row = (
        IncomingPaymentResource.objects.filter(id=uuid.UUID(bytes=tag))
        .values("incoming_amount", "expires_at", "completed_at", "visitor")
        .first()
    )
    if row is None:
        return None
    amount = row["incoming_amount"]
    visitor = row["visitor"]
    return PaymentLimits(
        None if amount is None else int(amount),
        row["expires_at"],
        row["completed_at"] is not None,
        None if visitor is None else bytes(visitor),
    )


async def limits_for(tag: bytes) -> PaymentLimits | None:
    """The limits of the incoming payment whose id is ``tag``, ``None`` for other tags."""
    found, limits = cache.get(tag)
    if found:
        return limits
    loaded: PaymentLimits | None = await database_sync_to_async(_load)(tag)
    cache.put(tag, loaded)
    return loaded


def receipt_key(payment: PaymentLimits | None, tag: bytes, packet_key: str) -> str:
    """The receipt key of a packet to an address tagged ``tag``: the tagged key
    (:func:`receivers.addresses.tagged_receipt_key`), under the payment's page visitor's tag
    first when it has one (``tag:<visitor>:tag:<payment>:<packet key>``), so the visitor's
    total and the payment's (:func:`.selectors.receipt_prefix`) both find it. Deterministic
    in its inputs; a packet key too long to fit is replaced by its SHA-256 (hex)."""
    if payment is None or payment.visitor is None:
        return tagged_receipt_key(tag, packet_key)
    prefix = tag_key_prefix(payment.visitor) + tag_key_prefix(tag)
    key = prefix + packet_key
    if len(key) > MAX_RECEIPT_KEY:
        key = prefix + hashlib.sha256(packet_key.encode()).hexdigest()
    return key


def refuse_closed(limits: PaymentLimits, now: datetime) -> Refused | None:
    """Refused when the payment is past ``expiresAt`` or completed, else ``None``."""
    if limits.expires_at is not None and limits.expires_at <= now:
        reason = MSG_EXPIRED
    elif limits.completed:
        reason = MSG_COMPLETED
    else:
        return None
    return Refused((ConnectionCloseFrame(ErrorCode.APPLICATION_ERROR, reason),), reason)


def reserve(key: bytes, amount: int) -> Admitted:
    """Hold ``amount`` as in flight for the payment ``key`` (its connection id) **before**
    reading its durable total: whichever of two concurrent packets reserves second then
    counts the first, either as in flight or in the total (the book adds a commit to its
    total before the committer releases), so the check below never undercounts."""
    return Admitted(key, amount, in_flight.add(key, amount))


def check(
    limits: PaymentLimits, held: Admitted, *, received: int, stream_id: int
) -> Refused | None:
    """``None`` when the held amount fits under ``incomingAmount`` given the durable
    total ``received`` (read after :func:`reserve`), else why not."""
    cap = limits.incoming_amount
    if cap is None:
        return None
    if received >= cap:
        return Refused(
            (ConnectionCloseFrame(ErrorCode.APPLICATION_ERROR, MSG_COMPLETED),), MSG_COMPLETED
        )
    if received + held.seen > cap:
        return Refused(
            (StreamMaxMoneyFrame(stream_id, cap, min(received, UINT64_MAX)),),
            "beyond incomingAmount",
        )
    return None
