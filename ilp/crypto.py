"""The shared-secret envelope PSK2 and STREAM have in common, parameterized by labels.

Both protocols (``shared/spec/receiver/psk2.md``; RFC 0029 5.1, ``docs/STREAM.md`` section
1) derive two keys from the shared secret ``S`` with HMAC-SHA256 and a protocol label::

    encryption_key  = HMAC-SHA256(S, <encryption label>)
    fulfillment_key = HMAC-SHA256(S, <fulfillment label>)

and seal the plaintext with AES-256-GCM, a 12-byte IV and no associated data, laid out as
``IV ‖ tag(16) ‖ ciphertext``; ``fulfillment = HMAC-SHA256(fulfillment_key, data)`` over
the whole encrypted ``data`` and ``condition = SHA-256(fulfillment)``. Only the labels
differ (:data:`PSK2_LABELS`, :data:`STREAM_LABELS`), so :class:`Envelope` is written once
and :mod:`ilp.psk2` and :mod:`ilp.stream.crypto` each bind one.

Also here: :class:`HmacKey` (HMAC-SHA256 under a fixed key, for per-packet MACs),
:func:`hmac_sha256` and :func:`check_receiver_secret`, which the stateless receivers of
both protocols (:mod:`ilp.psk2_receiver`, :mod:`ilp.stream.addresses`) derive their keys
with.

Sans-IO: IVs are passed in. Derived keys are cached per secret (bounded LRU, one cache per
envelope): every packet of a payment or connection uses the same secret.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ilp.errors import DecodeError, EncodeError

__all__ = [
    "IV_LENGTH",
    "MAX_PLAINTEXT_LENGTH",
    "MIN_ENCRYPTED_LENGTH",
    "MIN_RECEIVER_SECRET_LENGTH",
    "PSK2_LABELS",
    "STREAM_LABELS",
    "TAG_LENGTH",
    "DecryptionError",
    "Envelope",
    "EnvelopeKeys",
    "HmacKey",
    "Labels",
    "check_receiver_secret",
    "hmac_sha256",
]

IV_LENGTH: Final = 12
TAG_LENGTH: Final = 16
MIN_ENCRYPTED_LENGTH: Final = IV_LENGTH + TAG_LENGTH
# ILP data is at most 32767 bytes and the envelope takes 28 of them.
MAX_PLAINTEXT_LENGTH: Final = 32767 - MIN_ENCRYPTED_LENGTH
MIN_RECEIVER_SECRET_LENGTH: Final = 32
# Enough for every secret in flight at a busy receiver: each SPSP query mints one, and a
# miss only costs two HMACs and an AES key schedule.
KEY_CACHE_SIZE: Final = 4096
_SHA256_BLOCK: Final = 64
_IPAD: Final = bytes(x ^ 0x36 for x in range(256))
_OPAD: Final = bytes(x ^ 0x5C for x in range(256))


class DecryptionError(DecodeError):
    """``data`` is not an AES-GCM envelope under this secret (short, or the tag fails).
    Each protocol raises its own subclass; receivers answer it with F06 and no data."""


@dataclass(frozen=True, slots=True)
class Labels:
    """What one protocol calls its keys: ``name`` (in messages) and the two HMAC labels."""

    name: str
    encryption: bytes
    fulfillment: bytes


# "ilp_psk2_encryption" in every published version (draft 1's "ilp_psk_encryption" is wrong).
PSK2_LABELS: Final = Labels("PSK2", b"ilp_psk2_encryption", b"ilp_psk2_fulfillment")
STREAM_LABELS: Final = Labels("STREAM", b"ilp_stream_encryption", b"ilp_stream_fulfillment")


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


class HmacKey:
    """HMAC-SHA256 (RFC 2104) under one fixed key, for keys used once per packet.

    The inner and outer SHA-256 states after the padded key are computed once; each MAC
    is then two small ``copy``/``update``/``digest`` rounds. Same output as
    ``hmac.digest(key, message, "sha256")``, about half the time, and it keeps the GIL
    for messages under 2 KiB, where ``hmac.digest`` releases and re-takes it on every
    call (on a busy multi-threaded server that round trip can cost milliseconds).
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _SHA256_BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_SHA256_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def check_receiver_secret(receiver_secret: bytes) -> None:
    """A stateless receiver's long-lived secret: bytes, at least 32 of them."""
    if not isinstance(receiver_secret, bytes):
        raise TypeError(f"receiver_secret must be bytes, not {type(receiver_secret).__name__}")
    if len(receiver_secret) < MIN_RECEIVER_SECRET_LENGTH:
        raise EncodeError(f"receiver_secret must be at least {MIN_RECEIVER_SECRET_LENGTH} bytes")


@dataclass(frozen=True, slots=True)
class EnvelopeKeys:
    """The keys one secret derives, looked up once per packet (:meth:`Envelope.keys`):
    the receivers decrypt, compute the fulfillment and encrypt the answer under one
    secret, so one cache lookup serves all three."""

    aead: AESGCM
    encryption: bytes
    fulfillment: bytes
    fulfillment_mac: HmacKey
    envelope: Envelope

    def fulfillment_for(self, data: bytes) -> bytes:
        """The fulfillment of a Prepare whose ``data`` is the encrypted blob ``data``."""
        return self.fulfillment_mac.digest(data)

    def encrypt(self, plaintext: bytes, iv: bytes) -> bytes:
        """``iv ‖ tag ‖ ciphertext``; ``iv`` must be 12 fresh random bytes (never reused)."""
        if not isinstance(iv, bytes):
            raise TypeError(f"iv must be bytes, not {type(iv).__name__}")
        if len(iv) != IV_LENGTH:
            raise EncodeError(f"iv must be {IV_LENGTH} bytes, not {len(iv)}")
        if not isinstance(plaintext, bytes):
            raise TypeError(f"plaintext must be bytes, not {type(plaintext).__name__}")
        if len(plaintext) > MAX_PLAINTEXT_LENGTH:
            raise EncodeError(
                f"{self.envelope.labels.name} plaintext of {len(plaintext)} bytes does not "
                "fit ILP data"
            )
        sealed = self.aead.encrypt(iv, plaintext, None)
        # cryptography returns ciphertext ‖ tag; PSK2 and STREAM put the tag first.
        return iv + sealed[-TAG_LENGTH:] + sealed[:-TAG_LENGTH]

    def decrypt(self, data: bytes) -> bytes:
        """The plaintext inside ``data``, or the envelope's ``error``."""
        envelope = self.envelope
        if len(data) < MIN_ENCRYPTED_LENGTH:
            raise envelope.error(
                f"{envelope.labels.name} data of {len(data)} bytes is shorter than IV and tag "
                f"({MIN_ENCRYPTED_LENGTH})",
                0,
            )
        data = bytes(data)
        tag = data[IV_LENGTH:MIN_ENCRYPTED_LENGTH]
        try:
            return self.aead.decrypt(data[:IV_LENGTH], data[MIN_ENCRYPTED_LENGTH:] + tag, None)
        except InvalidTag:
            raise envelope.error("AES-GCM tag does not verify", IV_LENGTH) from None


class Envelope:
    """The keys, AES-256-GCM envelope, fulfillment and condition of one protocol's labels;
    decryption failures raise ``error`` (a :class:`DecryptionError`)."""

    __slots__ = ("_keys", "error", "labels")

    def __init__(self, labels: Labels, error: type[DecryptionError]) -> None:
        self.labels = labels
        self.error = error
        self._keys: Callable[[bytes], EnvelopeKeys] = lru_cache(maxsize=KEY_CACHE_SIZE)(
            self._derive
        )

    def _derive(self, secret: bytes) -> EnvelopeKeys:
        enc = hmac_sha256(secret, self.labels.encryption)
        fulfillment = hmac_sha256(secret, self.labels.fulfillment)
        return EnvelopeKeys(AESGCM(enc), enc, fulfillment, HmacKey(fulfillment), self)

    def keys(self, secret: bytes) -> EnvelopeKeys:
        """The keys of ``secret`` (cached): for several operations under one secret."""
        # lru_cache would happily key on a str or bytearray; refuse them before they get there.
        if not isinstance(secret, bytes):
            raise TypeError(f"a {self.labels.name} secret is bytes, not {type(secret).__name__}")
        if not secret:
            raise EncodeError(f"a {self.labels.name} secret must not be empty")
        return self._keys(secret)

    def encryption_key(self, secret: bytes) -> bytes:
        """``HMAC-SHA256(secret, <encryption label>)``, the AES-256 key."""
        return self.keys(secret).encryption

    def fulfillment_key(self, secret: bytes) -> bytes:
        """``HMAC-SHA256(secret, <fulfillment label>)``."""
        return self.keys(secret).fulfillment

    def fulfillment_for(self, secret: bytes, data: bytes) -> bytes:
        """The fulfillment of a Prepare whose ``data`` is the encrypted blob ``data``."""
        return self.keys(secret).fulfillment_mac.digest(data)

    def condition_for_data(self, secret: bytes, data: bytes) -> bytes:
        """``SHA-256(fulfillment_for(secret, data))``: what a sender puts on the Prepare."""
        return hashlib.sha256(self.fulfillment_for(secret, data)).digest()

    def encrypt(self, secret: bytes, plaintext: bytes, iv: bytes) -> bytes:
        """``iv ‖ tag ‖ ciphertext``; ``iv`` must be 12 fresh random bytes (never reused)."""
        return self.keys(secret).encrypt(plaintext, iv)

    def decrypt(self, secret: bytes, data: bytes) -> bytes:
        """The plaintext inside ``data``, or :attr:`error`."""
        return self.keys(secret).decrypt(data)
