"""``peer.balance``: ask the peer for the balance of the shared account (``balance.md``).

Project-defined, shaped like IL-DCP: a zero-amount Prepare to ``peer.balance``
with the peer-protocol condition and empty data; the answer is a Fulfill with the
all-zero fulfillment whose data is exactly one Int64 (big-endian two's
complement). Positive means the responder owes the requester. JS nodes answer
F01 "unknown peer protocol.", which a requester must read as "not supported".
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ilp.conditions import PEER_CONDITION, PEER_FULFILLMENT
from ilp.errors import DecodeError
from ilp.oer import encode_int64
from ilp.packet import BytesLike, Fulfill, Prepare, contents_start, decode_fulfill

BALANCE_DESTINATION = "peer.balance"
BALANCE_REQUEST_LIFETIME = timedelta(seconds=60)
BALANCE_DATA_LENGTH = 8


def balance_request(expires_at: datetime) -> Prepare:
    return Prepare(0, expires_at, PEER_CONDITION, BALANCE_DESTINATION, b"")


def encode_balance(n: int) -> bytes:
    """The Fulfill data for balance ``n``; :class:`EncodeError` outside the Int64 range."""
    return encode_int64(n)


def balance_fulfill(n: int) -> Fulfill:
    return Fulfill(PEER_FULFILLMENT, encode_balance(n))


def decode_balance(data: BytesLike, *, base: int = 0) -> int:
    """Read Fulfill data; ``base`` is where it sits in a larger buffer (error offsets)."""
    if len(data) != BALANCE_DATA_LENGTH:
        raise DecodeError(
            f"balance data must be exactly 8 bytes (Int64), not {len(data)}",
            base + min(len(data), BALANCE_DATA_LENGTH),
        )
    return int.from_bytes(data, "big", signed=True)


def balance_from_fulfill(fulfill: Fulfill) -> int:
    if fulfill.fulfillment != PEER_FULFILLMENT:
        raise DecodeError("balance response does not carry the all-zero peer fulfillment", 0)
    return decode_balance(fulfill.data)


def decode_balance_fulfill(raw: BytesLike) -> int:
    """A whole balance response packet (offsets: within ``raw``)."""
    fulfill = decode_fulfill(raw)
    if fulfill.fulfillment != PEER_FULFILLMENT:
        raise DecodeError(
            "balance response does not carry the all-zero peer fulfillment", contents_start(raw)
        )
    return decode_balance(fulfill.data, base=len(raw) - len(fulfill.data))
