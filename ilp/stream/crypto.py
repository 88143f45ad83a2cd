"""STREAM encryption and conditions (RFC 0029 5.1; ``docs/STREAM.md`` section 1).

:mod:`ilp.crypto`'s envelope under STREAM's labels: ``encryption_key = HMAC-SHA256(secret,
"ilp_stream_encryption")``, AES-256-GCM with a 12-byte IV, no associated data, laid out as
``IV ‖ tag(16) ‖ ciphertext``; ``fulfillment = HMAC-SHA256(HMAC-SHA256(secret,
"ilp_stream_fulfillment"), data)`` over the whole encrypted ``data`` and ``condition =
SHA-256(fulfillment)``.

Sans-IO: IVs are passed in. Derived keys are cached per secret (bounded LRU): every packet
of a connection uses the same secret.
"""

from __future__ import annotations

from typing import Final

from ilp.crypto import (
    IV_LENGTH,
    MIN_ENCRYPTED_LENGTH,
    STREAM_LABELS,
    TAG_LENGTH,
    DecryptionError,
    Envelope,
)
from ilp.stream.packet import StreamPacket, decode_stream_packet
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

ENCRYPTION_KEY_STRING: Final = STREAM_LABELS.encryption
FULFILLMENT_KEY_STRING: Final = STREAM_LABELS.fulfillment


class StreamDecryptionError(DecryptionError):
    """``data`` is not an AES-GCM envelope under this secret (short, or the tag fails).

    JS: "Unable to decrypt packet. Data was corrupted or packet was encrypted with the
    wrong key". A receiver answers it with F06 and no data.
    """


_ENVELOPE: Final = Envelope(STREAM_LABELS, StreamDecryptionError)
encryption_key = _ENVELOPE.encryption_key
fulfillment_key = _ENVELOPE.fulfillment_key
fulfillment_for = _ENVELOPE.fulfillment_for
condition_for_data = _ENVELOPE.condition_for_data
encrypt = _ENVELOPE.encrypt
decrypt = _ENVELOPE.decrypt


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
