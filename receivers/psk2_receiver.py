"""PSK2 receiving on the packet hot path: ``<node>.receivers.<name>.<token>``.

The switch calls :func:`receive_prepare` for every Prepare under ``<node>.receivers.``,
after it has placed a hold of ``prepare.amount`` on the source account under
``packet_key``. This module does the I/O around the pure decision of
:mod:`ilp.psk2_receiver`:

1. split the destination; ``<node>.receivers`` plus fewer than one segment, or a name no
   receiver has → **F02** Unreachable (no such account here);
2. derive the shared secret from the destination (stateless, so any process and any
   restart accepts it; a missing, malformed or foreign token gives ``None`` and **F06**);
3. decrypt and check (R00 expired, F06 unreadable, F99 amount too low / quote with the
   encrypted PSK2 error, F05 wrong condition): :func:`ilp.psk2_receiver.open_prepare` and
   :func:`~ilp.psk2_receiver.respond`;
4. on accept, ``await book.commit([source posting -amount], [receipt +amount])`` and only
   then return the Fulfill (the receipt key says what may redeem it: ``psk2:`` a
   payer-chosen payment id, ``psk2-addr:`` one derived from the address, and for a tagged
   address ``<name>.<tag>.<token>`` the tag, see :mod:`receivers.addresses`; listeners
   of the tag are told, without waiting, through the channel layer:
   :func:`receivers.live.notify_tag`). If the commit fails: **T00**, never a Fulfill
   without the durable record. The receipt becomes an ``IncomingPayment`` and the receiver's
   ``+amount`` posting in ``payments.apply_receipts``.

Steady state does no database query per packet: the receiver name → account code map is
cached (:mod:`receivers.directory`), the secret is derived, and the payment total is not
looked up for the first chunk of a payment (draft 1, Sequence 0: nothing can have been
received for a fresh Payment ID) nor for draft 2 (no running totals); for later chunks
:meth:`~payments.ledger.BalanceBook.payment_total` answers from memory after its first
read. The commit is a group commit (one transaction per batch of packets).

Idempotency: every write is keyed by ``packet_key``, so a repeated packet is never counted
twice (the switch also answers a retransmission from memory within the Prepare's
lifetime, so it rarely gets here twice).

Draft 1 deviation from 0.2.1, on purpose: a chunk that arrives after a payment's last
chunk (type 1) is not refused by that fact alone (that would need per-payment state for
every single-chunk payment); it is refused once the total has reached a bounded Payment
Amount, as in the reference.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime

from channels.db import database_sync_to_async
from django.conf import settings

from ilp.packet import Fulfill, Prepare, Reject
from ilp.psk2 import IV_LENGTH, PAYMENT_ID_LENGTH, ChunkRequest
from ilp.psk2_receiver import Accept, Opened, Refuse, open_prepare, respond, secret_for
from payments.ledger import PostingDraft, ReceiptDraft, get_book
from payments.selectors import payment_total_db
from receivers.addresses import (
    LOCAL_PREFIX_SEGMENT,
    address_id_receipt_key,
    node_address,
    parse_tag_segment,
    payer_id_receipt_key,
    receiver_secret,
    receivers_base,
    tagged_receipt_key,
)
from receivers.directory import get_directory
from receivers.live import notify_tag
from receivers.stream_receiver import is_stream_destination, receive_stream

__all__ = ["LOCAL_PREFIX_SEGMENT", "ReceiverStats", "receive_prepare", "stats"]

logger = logging.getLogger(__name__)

MSG_UNREACHABLE = "no such receiver on this node"
MSG_COMMIT_FAILED = "could not record the payment"


@dataclass(slots=True)
class ReceiverStats:
    """Counters of this process's receiving (metrics; tests check the hot path with them)."""

    prepares: int = 0
    fulfilled: int = 0
    rejected: int = 0
    total_lookups: int = 0  # calls to book.payment_total
    commit_failures: int = 0


stats = ReceiverStats()


class _IvPool:
    """Fresh 12-byte IVs cut from one ``os.urandom`` read of :data:`IV_POOL_BYTES`.

    Each IV is still 96 unpredictable bits used once; one system call (which drops the
    GIL) serves hundreds of packets instead of one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._pos = 0

    def take(self) -> bytes:
        with self._lock:
            pos = self._pos
            if pos + IV_LENGTH > len(self._buffer):
                self._buffer = os.urandom(IV_POOL_BYTES)
                pos = 0
            self._pos = pos + IV_LENGTH
            return self._buffer[pos : pos + IV_LENGTH]


IV_POOL_BYTES = IV_LENGTH * 512
_ivs = _IvPool()


def _reject(code: str, message: str) -> Reject:
    return Reject(code, node_address(), message)


def _receipt_ids(opened: Opened, packet_key: str, tag: bytes | None) -> tuple[bytes, str]:
    """``(payment_id, receipt key)`` of this chunk: the payment id groups receipts into an
    ``IncomingPayment``; the key makes the write idempotent and says what may redeem it.

    Draft 1: the Payment ID. Draft 2 has none: the first 16 data bytes when there are
    (HTTP-ILP pay tokens), else a digest of the destination, so that the requests made
    with one SPSP answer form one payment. Only a payer-chosen id is keyed ``psk2:`` (a
    pay token may be redeemed against it); the digest is readable by anyone on the path,
    so it is keyed ``psk2-addr:``. A tagged address keys by its tag
    (:func:`receivers.addresses.tagged_receipt_key`) whatever the id.
    """
    request = opened.request
    payer_chosen = isinstance(request, ChunkRequest) or len(request.data) >= PAYMENT_ID_LENGTH
    if payer_chosen:
        payment_id = opened.payment_id
    else:
        destination = opened.prepare.destination.encode("ascii")
        payment_id = hashlib.sha256(destination).digest()[:PAYMENT_ID_LENGTH]
    if tag is not None:
        key = tagged_receipt_key(tag, packet_key)
    elif payer_chosen:
        key = payer_id_receipt_key(packet_key)
    else:
        key = address_id_receipt_key(packet_key)
    return payment_id, key


def _totals_shared() -> bool:
    """Whether other processes of the node may receive chunks of the same payment.

    With ``REDIS_URL`` the node runs as several processes: a draft-1 payment's chunks
    reach us through whichever process the source's packets land on (an HTTP-OER peer
    behind the load balancer, a sender in another process), so a process's memory of the
    receipts it committed itself is not the payment's total.
    """
    return bool(getattr(settings, "REDIS_URL", ""))


def _has_total(opened: Opened) -> bool:
    """Whether the payment may have received something before this chunk: a draft-1 chunk
    after the first (draft 2 keeps no totals; nothing can have arrived for a fresh Payment
    ID). Checked before :func:`_paid_so_far`, so the common single chunk awaits nothing."""
    request = opened.request
    return isinstance(request, ChunkRequest) and request.sequence != 0


async def _paid_so_far(account_code: str, opened: Opened) -> int:
    """What this payment received before this chunk (draft 1; draft 2 has no totals).

    One process: the book's memory (exact for receipts it committed). Several: the
    receipts in the database, the node's shared truth (every earlier chunk's Fulfill went
    out only after its receipt was durable), one indexed query per chunk after the first.
    """
    if not _has_total(opened):
        return 0
    request = opened.request
    assert isinstance(request, ChunkRequest)
    stats.total_lookups += 1
    if _totals_shared():
        total: int = await database_sync_to_async(payment_total_db)(
            account_code=account_code, payment_id=request.payment_id
        )
        return total
    return await get_book().payment_total(account_code, request.payment_id)


async def receive_prepare(
    prepare: Prepare, *, source_account: str, packet_key: str, now: datetime
) -> Fulfill | Reject:
    """Fulfill or Reject a Prepare for one of our receivers (see the module docstring).

    ``source_account`` is the ledger account the hold was placed on, ``packet_key`` the
    hold's key (it keys the posting and the receipt), ``now`` an aware UTC datetime.
    Never raises for anything a peer can send. On a Reject the hold is left to the switch.

    One coroutine for the whole decision and the commit (no awaited helpers on the way
    of a packet: each would be a coroutine built and awaited per packet).
    """
    stats.prepares += 1
    node = node_address()
    destination = prepare.destination
    base = receivers_base()
    if not destination.startswith(base):
        return _refused(_reject("F02", MSG_UNREACHABLE))
    name, dot, rest = destination[len(base) :].partition(".")
    directory = get_directory()
    known, account_code = directory.peek(name)  # a hit: no coroutine to build and await
    if not known:
        account_code = await directory.account_code(name)
    if account_code is None:
        return _refused(
            _reject("F02", f"{MSG_UNREACHABLE}: {name[:63]!r}" if name else MSG_UNREACHABLE)
        )

    prefix = f"{base}{name}"
    tag: bytes | None = None
    if "." in rest:
        # <name>.<tag>.<token>: an address issued for a tag (a pay token, a visitor, an
        # order). A malformed tag makes no secret: F06 like any foreign address.
        segment = rest.partition(".")[0]
        tag = parse_tag_segment(segment)
        prefix = f"{prefix}.{segment}"
    if is_stream_destination(rest):
        reply = await receive_stream(
            prepare,
            account_code=account_code,
            prefix=prefix,
            tag=tag,
            source_account=source_account,
            packet_key=packet_key,
            now=now,
        )
        if isinstance(reply, Fulfill):
            stats.fulfilled += 1
        else:
            stats.rejected += 1
        return reply
    secret = (
        secret_for(receiver_secret(), destination, prefix)
        if dot and (tag is not None or "." not in rest)
        else None
    )
    opened = open_prepare(prepare, secret, now=now)
    if type(opened) is Refuse:
        return _refused(opened.to_reject(node))
    assert isinstance(opened, Opened)

    paid_so_far = 0
    if _has_total(opened):
        try:
            paid_so_far = await _paid_so_far(account_code, opened)
        except Exception:
            logger.exception("receivers: payment total lookup failed for %s", account_code)
            return _refused(_reject("T00", MSG_COMMIT_FAILED))
    decision = respond(opened, paid_so_far=paid_so_far, iv=_ivs.take())
    if type(decision) is Refuse:
        return _refused(decision.to_reject(node))
    assert isinstance(decision, Accept)

    # The durable record before the Fulfill: the source posting (keyed by the switch's
    # hold) and the receipt (its key from _receipt_ids) in one group commit.
    amount = opened.amount
    payment_id, receipt_key = _receipt_ids(opened, packet_key, tag)
    try:
        await get_book().commit(
            (PostingDraft(source_account, -amount, packet_key),),
            (ReceiptDraft(account_code, payment_id, opened.sequence, amount, receipt_key),),
        )
    except Exception:
        stats.commit_failures += 1
        logger.exception(
            "receivers: commit failed for packet %s to %s; rejecting", packet_key, account_code
        )
        return _refused(_reject("T00", MSG_COMMIT_FAILED))
    if tag is not None:
        notify_tag(tag)
    stats.fulfilled += 1
    return decision.to_fulfill()


def _refused(reply: Reject) -> Reject:
    stats.rejected += 1
    return reply
