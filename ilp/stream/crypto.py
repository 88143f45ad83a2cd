"""STREAM encryption and conditions (RFC 0029 5.1; ``docs/STREAM.md`` section 1).

``encryption_key = HMAC-SHA256(secret, "ilp_stream_encryption")``, AES-256-GCM with a
12-byte IV, no associated data, laid out as ``IV ‖ tag(16) ‖ ciphertext``;
``fulfillment = HMAC-SHA256(HMAC-SHA256(secret, "ilp_stream_fulfillment"), data)`` over
the whole encrypted ``data`` and ``condition = SHA-256(fulfillment)``.

Sans-IO: IVs are passed in. Derived keys are cached per secret (bounded LRU): every packet
of a connection uses the same secret.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ilp.errors import DecodeError, EncodeError
from ilp.psk2 import HmacKey
from ilp.stream.packet import MAX_PLAINTEXT_LENGTH, StreamPacket, decode_stream_packet
from ilp.stream.packet import encode_stream_packet as _encode

__all__ = [
    "ENCRYPTION_KEY_STRING",
    "FULFILLMENT_KEY_STRING",
    "IV_LENGTH",
    "MIN_ENCRYPTED_LENGTH",
    "TAG_LENGTH",
    "StreamDecryptionError",
    "condition_for_data",
    "decrypt",
    "decrypt_packet",
    "encrypt",
    "encrypt_packet",
    "encryption_key",
    "fulfillment_for",
    "fulfillment_key",
]

ENCRYPTION_KEY_STRING: Final = b"ilp_stream_encryption"
FULFILLMENT_KEY_STRING: Final = b"ilp_stream_fulfillment"
IV_LENGTH: Final = 12
TAG_LENGTH: Final = 16
MIN_ENCRYPTED_LENGTH: Final = IV_LENGTH + TAG_LENGTH
_KEY_CACHE_SIZE: Final = 4096


class StreamDecryptionError(DecodeError):
    """``data`` is not an AES-GCM envelope under this secret (short, or the tag fails).

    JS: "Unable to decrypt packet. Data was corrupted or packet was encrypted with the
    wrong key". A receiver answers it with F06 and no data.
    """


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes):
        raise TypeError(f"a STREAM shared secret is bytes, not {type(secret).__name__}")
    if not secret:
        raise EncodeError("a STREAM shared secret must not be empty")


@lru_cache(maxsize=_KEY_CACHE_SIZE)
def _keys(secret: bytes) -> tuple[AESGCM, bytes, bytes, HmacKey]:
    enc = hmac.digest(secret, ENCRYPTION_KEY_STRING, "sha256")
    fulfillment = hmac.digest(secret, FULFILLMENT_KEY_STRING, "sha256")
    return AESGCM(enc), enc, fulfillment, HmacKey(fulfillment)


def encryption_key(secret: bytes) -> bytes:
    """``HMAC-SHA256(secret, "ilp_stream_encryption")``, the AES-256 key."""
    _check_secret(secret)
    return _keys(secret)[1]


def fulfillment_key(secret: bytes) -> bytes:
    """``HMAC-SHA256(secret, "ilp_stream_fulfillment")``."""
    _check_secret(secret)
    return _keys(secret)[2]


def fulfillment_for(secret: bytes, data: bytes) -> bytes:
    """The fulfillment of a Prepare whose ``data`` is the encrypted packet ``data``."""
    _check_secret(secret)
    return _keys(secret)[3].digest(data)


def condition_for_data(secret: bytes, data: bytes) -> bytes:
    """``SHA-256(fulfillment_for(secret, data))``: what a sender puts on a payable Prepare."""
    return hashlib.sha256(fulfillment_for(secret, data)).digest()


def encrypt(secret: bytes, plaintext: bytes, iv: bytes) -> bytes:
    """``iv ‖ tag ‖ ciphertext``; ``iv`` must be 12 fresh random bytes (never reused)."""
    _check_secret(secret)
    if not isinstance(iv, bytes) or len(iv) != IV_LENGTH:
        raise EncodeError(f"the IV must be {IV_LENGTH} bytes")
    if not isinstance(plaintext, bytes):
        raise TypeError("plaintext must be bytes")
    if len(plaintext) > MAX_PLAINTEXT_LENGTH:
        raise EncodeError(f"STREAM plaintext of {len(plaintext)} bytes does not fit ILP data")
    sealed = _keys(secret)[0].encrypt(iv, plaintext, None)
    # cryptography returns ciphertext ‖ tag; STREAM puts the tag first.
    return iv + sealed[-TAG_LENGTH:] + sealed[:-TAG_LENGTH]


def decrypt(secret: bytes, data: bytes) -> bytes:
    """The plaintext inside ``data``, or :class:`StreamDecryptionError`."""
    _check_secret(secret)
    if len(data) < MIN_ENCRYPTED_LENGTH:
        raise StreamDecryptionError(
            f"STREAM data of {len(data)} bytes is shorter than IV and tag", 0
        )
    data = bytes(data)
    tag = data[IV_LENGTH:MIN_ENCRYPTED_LENGTH]
    try:
        return _keys(secret)[0].decrypt(data[:IV_LENGTH], data[MIN_ENCRYPTED_LENGTH:] + tag, None)
    except InvalidTag:
        raise StreamDecryptionError("AES-GCM tag does not verify", IV_LENGTH) from None


def encrypt_packet(
    secret: bytes, packet: StreamPacket, iv: bytes, *, pad_to: int | None = None
) -> bytes:
    """``encrypt(secret, encode_stream_packet(packet), iv)``; ``pad_to`` is the size of the
    encrypted data to pad to with zero bytes (hides the packet's size, as JS ``enablePadding``)."""
    plain_size = None if pad_to is None else pad_to - MIN_ENCRYPTED_LENGTH
    return encrypt(secret, _encode(packet, pad_to=plain_size), iv)


def decrypt_packet(secret: bytes, data: bytes) -> StreamPacket:
    """``decode_stream_packet(decrypt(secret, data))``; raises only :class:`DecodeError`."""
    return decode_stream_packet(decrypt(secret, data))
