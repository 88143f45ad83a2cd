"""STREAM receipts (RFC 0039; ``docs/STREAM.md`` section 5).

``version(1) ‖ nonce(16) ‖ stream id UInt8 ‖ total received UInt64 ‖ HMAC-SHA256(secret,
the 26 bytes before)``: 58 bytes. The receiver gets the nonce and the 32-byte secret from
a verifier (SPSP ``Receipt-Nonce`` / ``Receipt-Secret``) and puts a receipt with the total
received so far in each Fulfill; the verifier checks the HMAC and credits increases.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Final

from ilp.errors import DecodeError, EncodeError, IlpError
from ilp.oer import UINT64_MAX

__all__ = [
    "RECEIPT_LENGTH",
    "RECEIPT_NONCE_LENGTH",
    "RECEIPT_SECRET_LENGTH",
    "RECEIPT_VERSION",
    "InvalidReceipt",
    "Receipt",
    "ReceiptSetup",
    "create_receipt",
    "decode_receipt",
    "encode_receipt",
    "verify_receipt",
]

RECEIPT_VERSION: Final = 1
RECEIPT_NONCE_LENGTH: Final = 16
RECEIPT_SECRET_LENGTH: Final = 32
RECEIPT_LENGTH: Final = 58
_SIGNED_LENGTH: Final = 26
_HMAC_LENGTH: Final = 32


class InvalidReceipt(IlpError):
    """A well-formed receipt that does not verify (wrong version or HMAC)."""


def _check_bytes(name: str, value: object, length: int) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    if len(value) != length:
        raise EncodeError(f"{name} must be {length} bytes, not {len(value)}")


def _check_uint(name: str, value: object, maximum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int")
    if not 0 <= value <= maximum:
        raise EncodeError(f"{name} out of range: {value}")


@dataclass(frozen=True, slots=True)
class ReceiptSetup:
    """What a verifier pre-shares with the receiver for one connection."""

    nonce: bytes
    secret: bytes

    def __post_init__(self) -> None:
        _check_bytes("receipt nonce", self.nonce, RECEIPT_NONCE_LENGTH)
        _check_bytes("receipt secret", self.secret, RECEIPT_SECRET_LENGTH)

    def __repr__(self) -> str:  # the secret never goes to a log
        return f"ReceiptSetup(nonce={self.nonce.hex()}, secret=…)"


@dataclass(frozen=True, slots=True)
class Receipt:
    """A decoded receipt; ``hmac`` is what the receipt carries, checked by :func:`verify_receipt`."""

    nonce: bytes
    stream_id: int
    total_received: int
    hmac: bytes
    version: int = RECEIPT_VERSION

    def __post_init__(self) -> None:
        _check_bytes("nonce", self.nonce, RECEIPT_NONCE_LENGTH)
        _check_bytes("hmac", self.hmac, _HMAC_LENGTH)
        _check_uint("stream_id", self.stream_id, 255)
        _check_uint("total_received", self.total_received, UINT64_MAX)
        _check_uint("version", self.version, 255)


def _signed_part(version: int, nonce: bytes, stream_id: int, total_received: int) -> bytes:
    return bytes((version,)) + nonce + bytes((stream_id,)) + total_received.to_bytes(8, "big")


def encode_receipt(receipt: Receipt) -> bytes:
    signed = _signed_part(receipt.version, receipt.nonce, receipt.stream_id, receipt.total_received)
    return signed + receipt.hmac


def decode_receipt(raw: bytes) -> Receipt:
    """Any 58 bytes, without checking version or HMAC (JS ``decodeReceipt``)."""
    if len(raw) != RECEIPT_LENGTH:
        raise DecodeError(f"a receipt is {RECEIPT_LENGTH} bytes, not {len(raw)}", 0)
    raw = bytes(raw)
    return Receipt(
        nonce=raw[1:17],
        stream_id=raw[17],
        total_received=int.from_bytes(raw[18:26], "big"),
        hmac=raw[26:],
        version=raw[0],
    )


def create_receipt(setup: ReceiptSetup, *, stream_id: int, total_received: int) -> bytes:
    """The 58-byte receipt for ``total_received`` on ``stream_id`` (a UInt8)."""
    _check_uint("stream_id", stream_id, 255)
    _check_uint("total_received", total_received, UINT64_MAX)
    signed = _signed_part(RECEIPT_VERSION, setup.nonce, stream_id, total_received)
    return signed + hmac.digest(setup.secret, signed, "sha256")


def verify_receipt(raw: bytes, secret: bytes) -> Receipt:
    """The receipt if it is version 1 and its HMAC is right under ``secret``.

    Raises :class:`~ilp.errors.DecodeError` when it is not 58 bytes and
    :class:`InvalidReceipt` when the version or the HMAC is wrong (JS ``verifyReceipt``).
    Whether the amount is new, or the nonce stale, is the verifier's business.
    """
    receipt = decode_receipt(raw)
    if receipt.version != RECEIPT_VERSION:
        raise InvalidReceipt(f"receipt version {receipt.version} is not {RECEIPT_VERSION}")
    expected = hmac.digest(secret, bytes(raw[:_SIGNED_LENGTH]), "sha256")
    if not hmac.compare_digest(expected, receipt.hmac):
        raise InvalidReceipt("receipt HMAC does not verify")
    return receipt
