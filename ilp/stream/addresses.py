"""Stateless STREAM receiver addresses (``docs/STREAM.md`` section 4, "Ours").

::

    destination   = prefix ".~" base64url_nopad(token)
    token         = IV(12) ‖ tag(16) ‖ AES-256-GCM(token_key, IV, details, AAD = ASCII(prefix))
    details       = flags UInt8 [‖ receipt nonce(16) ‖ receipt secret(32)]   (flag 1: receipts)
    token_key     = HMAC-SHA256(receiver_secret, "ilp_stream_address_token")
    shared_secret = HMAC-SHA256(HMAC-SHA256(receiver_secret, "ilp_stream_destination_secret"),
                                ASCII(destination))
    connection id = SHA-256(ASCII(destination))[:16]

The leading ``~`` is outside the base64url alphabet, so a STREAM segment can never be a PSK2
token or tag: one look at the last segment tells the two apart. Nothing is stored per
address: the token carries what the connection needs (the receipt secret encrypted, as RFC
0039 requires), the prefix is authenticated as AAD and the secret covers the whole
destination, so an address re-targeted to another receiver or tag does not open. The labels
differ from PSK2's, so one receiver secret never serves both schemes with the same key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ilp.address import MAX_ADDRESS_LENGTH, validate_address
from ilp.crypto import HmacKey, check_receiver_secret, hmac_sha256
from ilp.errors import DecodeError, EncodeError
from ilp.psk2 import b64url_decode, b64url_encode
from ilp.stream.receipts import RECEIPT_NONCE_LENGTH, RECEIPT_SECRET_LENGTH, ReceiptSetup

__all__ = [
    "CONNECTION_ID_LENGTH",
    "SEGMENT_MARKER",
    "IssuedStreamAddress",
    "OpenedAddress",
    "connection_id",
    "is_stream_segment",
    "issue_stream_address",
    "open_stream_address",
]

SEGMENT_MARKER: Final = "~"
CONNECTION_ID_LENGTH: Final = 16
TOKEN_KEY_LABEL: Final = b"ilp_stream_address_token"
DESTINATION_SECRET_LABEL: Final = b"ilp_stream_destination_secret"

_IV: Final = 12
_TAG: Final = 16
_FLAG_RECEIPTS: Final = 0x01
_PLAIN_LENGTHS: Final = {0: 1, _FLAG_RECEIPTS: 1 + RECEIPT_NONCE_LENGTH + RECEIPT_SECRET_LENGTH}
_SEGMENT_LENGTHS: Final = frozenset(
    1 + len(b64url_encode(bytes(_IV + _TAG + n))) for n in _PLAIN_LENGTHS.values()
)


@dataclass(frozen=True, slots=True)
class IssuedStreamAddress:
    """What an SPSP4 answer carries."""

    destination: str
    shared_secret: bytes = field(repr=False)
    receipts_enabled: bool


@dataclass(frozen=True, slots=True)
class OpenedAddress:
    """A destination we issued: its secret, connection id and receipt setup (if any)."""

    destination: str
    shared_secret: bytes = field(repr=False)
    connection_id: bytes
    receipt: ReceiptSetup | None


@dataclass(frozen=True, slots=True)
class _Keys:
    token: AESGCM
    secret: HmacKey


@lru_cache(maxsize=16)
def _keys(receiver_secret: bytes) -> _Keys:
    return _Keys(
        AESGCM(hmac_sha256(receiver_secret, TOKEN_KEY_LABEL)),
        HmacKey(hmac_sha256(receiver_secret, DESTINATION_SECRET_LABEL)),
    )


def connection_id(destination: str) -> bytes:
    """The 16-byte id of the connection at ``destination`` (its receipts' payment id)."""
    return hashlib.sha256(destination.encode("ascii")).digest()[:CONNECTION_ID_LENGTH]


def is_stream_segment(segment: str) -> bool:
    """Whether an address segment is shaped like a STREAM token (cheap, not a proof)."""
    return segment[:1] == SEGMENT_MARKER


def issue_stream_address(
    receiver_secret: bytes, prefix: str, iv: bytes, *, receipt: ReceiptSetup | None = None
) -> IssuedStreamAddress:
    """A fresh STREAM address under ``prefix`` (``<node>.receivers.<name>[.<tag>]``).

    ``iv`` is 12 fresh random bytes (it makes the address unique, so never reuse one).
    Raises :class:`~ilp.address.InvalidAddress` if the prefix or result is not an address.
    """
    check_receiver_secret(receiver_secret)
    if not isinstance(iv, bytes) or len(iv) != _IV:
        raise EncodeError(f"iv must be {_IV} bytes")
    validate_address(prefix)
    details = bytes((0,)) if receipt is None else bytes((_FLAG_RECEIPTS,)) + receipt.nonce
    if receipt is not None:
        details += receipt.secret
    sealed = _keys(receiver_secret).token.encrypt(iv, details, prefix.encode("ascii"))
    token = iv + sealed[-_TAG:] + sealed[:-_TAG]
    destination = validate_address(f"{prefix}.{SEGMENT_MARKER}{b64url_encode(token)}")
    secret = _keys(receiver_secret).secret.digest(destination.encode("ascii"))
    return IssuedStreamAddress(destination, secret, receipt is not None)


def open_stream_address(
    receiver_secret: bytes, destination: str, prefix: str
) -> OpenedAddress | None:
    """The details of ``destination`` if :func:`issue_stream_address` minted it under
    ``prefix``, else ``None`` (not our shape, not authentic, or for another prefix)."""
    check_receiver_secret(receiver_secret)
    return _open(receiver_secret, destination, prefix)


@lru_cache(maxsize=4096)
def _open(receiver_secret: bytes, destination: str, prefix: str) -> OpenedAddress | None:
    # Cached: every packet of a connection asks again, and the answer is a pure function.
    n = len(prefix)
    if (
        len(destination) > MAX_ADDRESS_LENGTH
        or not destination.isascii()
        or not destination.startswith(prefix)
        or destination[n : n + 2] != "." + SEGMENT_MARKER
    ):
        return None
    segment = destination[n + 2 :]
    if 1 + len(segment) not in _SEGMENT_LENGTHS:
        return None
    try:
        token = b64url_decode(segment)
    except DecodeError:
        return None
    if b64url_encode(token) != segment:  # one spelling per token
        return None
    keys = _keys(receiver_secret)
    iv, tag, body = token[:_IV], token[_IV : _IV + _TAG], token[_IV + _TAG :]
    try:
        details = keys.token.decrypt(iv, body + tag, prefix.encode("ascii"))
    except InvalidTag:
        return None
    flags = details[0]
    if _PLAIN_LENGTHS.get(flags) != len(details):
        return None
    receipt = None
    if flags & _FLAG_RECEIPTS:
        receipt = ReceiptSetup(details[1:17], details[17:49])
    return OpenedAddress(
        destination,
        keys.secret.digest(destination.encode("ascii")),
        connection_id(destination),
        receipt,
    )
