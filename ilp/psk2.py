"""PSK2, the end-to-end transport inside ILPv4 packets (``shared/spec/receiver/psk2.md``).

Two plaintext formats ride in the encrypted ``data`` of a Prepare / Fulfill / Reject:

- **draft 1** (RFC 0025 draft 1, ilp-protocol-psk2@0.2.1), the primary format:
  ``type ‖ paymentId(16) ‖ sequence u32 ‖ paymentAmount u64 ‖ chunkAmount u64 ‖
  var-octet applicationData ‖ extensions(1) ‖ junk``. Types 0 (chunk) and 1 (last chunk)
  are requests, 2 a fulfillment response and 3 an error response (the code's numbers;
  the RFC's second table says 3/4 and is wrong).
- **draft 2** (0.3.x-0.5.0): ``type ‖ requestId u32 ‖ amount u64 ‖ var-octet data ‖ junk``
  with 4 request, 5 response, 6 error.

The first plaintext byte tells them apart, which gives the same outcome as 0.3+'s "parse
as draft 2, else as legacy draft 1". Like the reference readers, the decoders ignore
everything after the application data (a missing extension byte included) and keep it as
``junk``, so a sender may pad packets to hide their size.

Crypto (identical in every published version): :mod:`ilp.crypto`'s envelope under the
labels ``"ilp_psk2_encryption"`` (the draft-1 text's ``"ilp_psk_encryption"`` is wrong) and
``"ilp_psk2_fulfillment"``: AES-256-GCM, ``IV ‖ tag ‖ ciphertext``, ``fulfillment =
HMAC(fulfillment_key, data)``, ``condition = SHA-256(fulfillment)``. Sans-IO: IVs are
passed in.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from enum import IntEnum
from functools import lru_cache
from typing import ClassVar, Final, TypeAlias

from ilp.crypto import (
    IV_LENGTH,
    MAX_PLAINTEXT_LENGTH,
    MIN_ENCRYPTED_LENGTH,
    PSK2_LABELS,
    TAG_LENGTH,
    DecryptionError,
    Envelope,
    hmac_sha256,
)
from ilp.errors import DecodeError, EncodeError
from ilp.oer import UINT64_MAX, Reader, encode_var_octets

__all__ = [
    "ENCRYPTION_KEY_STRING",
    "FULFILLMENT_KEY_STRING",
    "IV_LENGTH",
    "MAX_CIPHERTEXT_LENGTH",
    "MIN_ENCRYPTED_LENGTH",
    "PAYMENT_ID_LENGTH",
    "QUOTE_AMOUNT",
    "TAG_LENGTH",
    "UINT32_MAX",
    "ChunkRejection",
    "ChunkRequest",
    "ChunkResponse",
    "Draft1Packet",
    "Draft2Packet",
    "Psk2DecryptionError",
    "Psk2Packet",
    "Psk2Type",
    "Rejection",
    "Request",
    "Response",
    "b64url_decode",
    "b64url_encode",
    "condition_for_data",
    "decode_psk2",
    "decrypt",
    "decrypt_psk2",
    "encode_draft1",
    "encode_draft2",
    "encode_psk2",
    "encrypt",
    "encrypt_psk2",
    "encryption_key",
    "fulfillment_for",
    "fulfillment_key",
    "generation_key",
    "keys",
    "receiver_id",
    "reference_shared_secret",
    "secret_address_suffix",
]

ENCRYPTION_KEY_STRING: Final = PSK2_LABELS.encryption
FULFILLMENT_KEY_STRING: Final = PSK2_LABELS.fulfillment
# The three labels below are those of the reference receivers (0.2.1 and 0.3+); they are
# here so that addresses and secrets minted by those receivers can be reproduced.
_RECEIVER_ID_STRING: Final = b"ilp_psk2_receiver_id"
_GENERATION_STRING: Final = b"ilp_psk2_generation"
_ADDRESS_FROM_SECRET_STRING: Final = b"ilp_psk2_address_from_secret"

# The name says ciphertext; it is the most plaintext that fits (AES-GCM keeps the length).
MAX_CIPHERTEXT_LENGTH: Final = MAX_PLAINTEXT_LENGTH
PAYMENT_ID_LENGTH: Final = 16
UINT32_MAX: Final = 2**32 - 1
# Draft 1: Payment Amount 2^64-1 means "unbounded"; a quote sets both amounts to it.
QUOTE_AMOUNT: Final = UINT64_MAX


class Psk2Type(IntEnum):
    """The first plaintext byte."""

    CHUNK = 0  # draft 1 request, more chunks follow
    LAST_CHUNK = 1  # draft 1 request, last chunk of the payment
    CHUNK_RESPONSE = 2  # draft 1, inside a Fulfill
    CHUNK_ERROR = 3  # draft 1, inside a Reject
    REQUEST = 4  # draft 2, inside a Prepare
    RESPONSE = 5  # draft 2, inside a Fulfill
    ERROR = 6  # draft 2, inside a Reject


class Psk2DecryptionError(DecryptionError):
    """The data is not an AES-GCM envelope under this secret (short, or the tag fails).

    A subclass of :class:`~ilp.errors.DecodeError`, so "cannot read the PSK2 data" is one
    ``except`` whatever the cause; receivers answer it with F06 and empty data.
    """


# --- value types --------------------------------------------------------------------------


def _check_bytes(name: str, value: object, length: int | None = None) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    if length is not None and len(value) != length:
        raise EncodeError(f"{name} must be {length} bytes, not {len(value)}")


def _check_uint(name: str, value: object, maximum: int) -> None:
    # bool is an int subclass; a True amount is always a bug.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= maximum:
        raise EncodeError(f"{name} out of range: {value}")


def _check_draft1(p: ChunkRequest | ChunkResponse | ChunkRejection) -> None:
    _check_bytes("payment_id", p.payment_id, PAYMENT_ID_LENGTH)
    _check_uint("sequence", p.sequence, UINT32_MAX)
    _check_uint("payment_amount", p.payment_amount, UINT64_MAX)
    _check_uint("chunk_amount", p.chunk_amount, UINT64_MAX)
    _check_bytes("application_data", p.application_data)
    _check_bytes("junk", p.junk)


def _check_draft2(p: Request | Response | Rejection) -> None:
    _check_uint("request_id", p.request_id, UINT32_MAX)
    _check_uint("amount", p.amount, UINT64_MAX)
    _check_bytes("data", p.data)
    _check_bytes("junk", p.junk)


@dataclass(frozen=True, slots=True)
class ChunkRequest:
    """Draft 1 request (type 0, or 1 when ``last``), carried in a Prepare.

    ``payment_amount`` is what the whole payment should deliver (2^64-1: unbounded) and
    ``chunk_amount`` the minimum that must arrive in this Prepare (0: anything).
    ``junk`` is what follows the extension byte; it is ignored by receivers.
    """

    payment_id: bytes
    sequence: int
    payment_amount: int
    chunk_amount: int
    application_data: bytes = b""
    last: bool = False
    junk: bytes = b""

    def __post_init__(self) -> None:
        _check_draft1(self)
        if not isinstance(self.last, bool):
            raise TypeError("last must be a bool")

    @property
    def type(self) -> Psk2Type:
        return Psk2Type.LAST_CHUNK if self.last else Psk2Type.CHUNK

    @property
    def is_quote(self) -> bool:
        """A draft-1 informational quote: no real chunk can ever satisfy it."""
        return self.chunk_amount == QUOTE_AMOUNT


@dataclass(frozen=True, slots=True)
class ChunkResponse:
    """Draft 1 response (type 2), carried in a Fulfill.

    ``payment_amount`` is the total received so far for the Payment ID (this chunk
    included) and ``chunk_amount`` what arrived in this Prepare.
    """

    TYPE: ClassVar[Psk2Type] = Psk2Type.CHUNK_RESPONSE

    payment_id: bytes
    sequence: int
    payment_amount: int
    chunk_amount: int
    application_data: bytes = b""
    junk: bytes = b""

    def __post_init__(self) -> None:
        _check_draft1(self)

    @property
    def type(self) -> Psk2Type:
        return self.TYPE


@dataclass(frozen=True, slots=True)
class ChunkRejection:
    """Draft 1 error (type 3), carried in a Reject: same fields as :class:`ChunkResponse`,
    with ``payment_amount`` the total received *before* this chunk.
    """

    TYPE: ClassVar[Psk2Type] = Psk2Type.CHUNK_ERROR

    payment_id: bytes
    sequence: int
    payment_amount: int
    chunk_amount: int
    application_data: bytes = b""
    junk: bytes = b""

    def __post_init__(self) -> None:
        _check_draft1(self)

    @property
    def type(self) -> Psk2Type:
        return self.TYPE


@dataclass(frozen=True, slots=True)
class Request:
    """Draft 2 request (type 4): ``amount`` is the minimum that must arrive."""

    TYPE: ClassVar[Psk2Type] = Psk2Type.REQUEST

    request_id: int
    amount: int
    data: bytes = b""
    junk: bytes = b""

    def __post_init__(self) -> None:
        _check_draft2(self)

    @property
    def type(self) -> Psk2Type:
        return self.TYPE


@dataclass(frozen=True, slots=True)
class Response:
    """Draft 2 response (type 5), in a Fulfill: ``amount`` is what arrived."""

    TYPE: ClassVar[Psk2Type] = Psk2Type.RESPONSE

    request_id: int
    amount: int
    data: bytes = b""
    junk: bytes = b""

    def __post_init__(self) -> None:
        _check_draft2(self)

    @property
    def type(self) -> Psk2Type:
        return self.TYPE


@dataclass(frozen=True, slots=True)
class Rejection:
    """Draft 2 error (type 6), in a Reject: ``amount`` is what arrived."""

    TYPE: ClassVar[Psk2Type] = Psk2Type.ERROR

    request_id: int
    amount: int
    data: bytes = b""
    junk: bytes = b""

    def __post_init__(self) -> None:
        _check_draft2(self)

    @property
    def type(self) -> Psk2Type:
        return self.TYPE


Draft1Packet: TypeAlias = ChunkRequest | ChunkResponse | ChunkRejection
Draft2Packet: TypeAlias = Request | Response | Rejection
Psk2Packet: TypeAlias = Draft1Packet | Draft2Packet


# --- plaintext codec ----------------------------------------------------------------------


def encode_psk2(packet: Psk2Packet) -> bytes:
    """The plaintext of ``packet``; draft 1 gets the 0x00 extension byte 0.2.1 writes."""
    if isinstance(packet, Request | Response | Rejection):
        return encode_draft2(
            packet.TYPE, packet.request_id, packet.amount, packet.data, packet.junk
        )
    return encode_draft1(
        packet.type,
        packet.payment_id,
        packet.sequence,
        packet.payment_amount,
        packet.chunk_amount,
        packet.application_data,
        packet.junk,
    )


def encode_draft1(
    kind: int,
    payment_id: bytes,
    sequence: int,
    payment_amount: int,
    chunk_amount: int,
    application_data: bytes,
    junk: bytes = b"",
) -> bytes:
    """The plaintext of a draft-1 packet from fields already in range (no checks: the
    dataclasses check theirs; the receiver answers with values it decoded or bounded,
    with no object built per packet)."""
    return b"".join(
        (
            bytes((kind,)),
            payment_id,
            sequence.to_bytes(4, "big"),
            payment_amount.to_bytes(8, "big"),
            chunk_amount.to_bytes(8, "big"),
            encode_var_octets(application_data),
            b"\x00",
            junk,
        )
    )


def encode_draft2(kind: int, request_id: int, amount: int, data: bytes, junk: bytes = b"") -> bytes:
    """The plaintext of a draft-2 packet from fields already in range (see
    :func:`encode_draft1`)."""
    return b"".join(
        (
            bytes((kind,)),
            request_id.to_bytes(4, "big"),
            amount.to_bytes(8, "big"),
            encode_var_octets(data),
            junk,
        )
    )


_Draft1Class: TypeAlias = type[ChunkRequest] | type[ChunkResponse] | type[ChunkRejection]
_Draft2Class: TypeAlias = type[Request] | type[Response] | type[Rejection]
_DRAFT1_CLASSES: Final[tuple[_Draft1Class, ...]] = (
    ChunkRequest,
    ChunkRequest,
    ChunkResponse,
    ChunkRejection,
)
_DRAFT2_CLASSES: Final[tuple[_Draft2Class, ...]] = (Request, Response, Rejection)
_set = object.__setattr__


def _trusted_draft1(cls: _Draft1Class, head: bytes, app_data: bytes, junk: bytes) -> Draft1Packet:
    """Build from a decoded header whose fields are in range by construction: skipping
    ``__post_init__`` halves the decoder's cost on the receiver hot path."""
    value = object.__new__(cls)
    _set(value, "payment_id", head[0:16])
    _set(value, "sequence", int.from_bytes(head[16:20], "big"))
    _set(value, "payment_amount", int.from_bytes(head[20:28], "big"))
    _set(value, "chunk_amount", int.from_bytes(head[28:36], "big"))
    _set(value, "application_data", app_data)
    _set(value, "junk", junk)
    return value


def _trusted_draft2(cls: _Draft2Class, head: bytes, data: bytes, junk: bytes) -> Draft2Packet:
    value = object.__new__(cls)
    _set(value, "request_id", int.from_bytes(head[0:4], "big"))
    _set(value, "amount", int.from_bytes(head[4:12], "big"))
    _set(value, "data", data)
    _set(value, "junk", junk)
    return value


def decode_psk2(plaintext: bytes) -> Psk2Packet:
    """Parse a decrypted plaintext of either draft; only :class:`DecodeError` escapes."""
    if type(plaintext) is not bytes:
        plaintext = bytes(plaintext)  # a bytearray/memoryview would leak into the fields
    r = Reader(plaintext)
    kind = r.read_uint8("PSK2 type")
    if kind <= Psk2Type.CHUNK_ERROR:
        head = r.read(36, "draft-1 header (payment id, sequence, amounts)")
        app_data = r.read_var_octets("application data")
        # Extension byte: 0.2.1 writes 0x00 and never reads it; a missing one is fine too.
        junk = plaintext[r.pos + 1 :]
        draft1 = _trusted_draft1(_DRAFT1_CLASSES[kind], head, app_data, junk)
        if isinstance(draft1, ChunkRequest):
            _set(draft1, "last", kind == Psk2Type.LAST_CHUNK)
        return draft1
    if kind <= Psk2Type.ERROR:
        head = r.read(12, "draft-2 header (request id, amount)")
        data = r.read_var_octets("data")
        return _trusted_draft2(
            _DRAFT2_CLASSES[kind - Psk2Type.REQUEST], head, data, plaintext[r.pos :]
        )
    raise DecodeError(f"unknown PSK2 type {kind}", 0)


# --- keys and crypto (ilp.crypto, under PSK2's labels) -------------------------------------

_ENVELOPE: Final = Envelope(PSK2_LABELS, Psk2DecryptionError)
encryption_key = _ENVELOPE.encryption_key
fulfillment_key = _ENVELOPE.fulfillment_key
fulfillment_for = _ENVELOPE.fulfillment_for
condition_for_data = _ENVELOPE.condition_for_data
encrypt = _ENVELOPE.encrypt
decrypt = _ENVELOPE.decrypt
keys = _ENVELOPE.keys  # one lookup for a packet's decrypt, fulfillment and answer


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes):
        raise TypeError(f"a PSK2 secret is bytes, not {type(secret).__name__}")
    if not secret:
        raise EncodeError("a PSK2 secret must not be empty")


def encrypt_psk2(secret: bytes, packet: Psk2Packet, iv: bytes) -> bytes:
    """``encrypt(secret, encode_psk2(packet), iv)``."""
    return encrypt(secret, encode_psk2(packet), iv)


def decrypt_psk2(secret: bytes, data: bytes) -> Psk2Packet:
    """``decode_psk2(decrypt(secret, data))``; raises only :class:`DecodeError`."""
    return decode_psk2(decrypt(secret, data))


# --- address helpers ----------------------------------------------------------------------


def b64url_encode(raw: bytes) -> str:
    """Unpadded base64url: address-safe (``[A-Za-z0-9_-]``)."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Lenient base64 as Node reads it: either alphabet, padding optional.

    Raises :class:`DecodeError` on anything else (bad characters, impossible length).
    """
    if not text.isascii():
        raise DecodeError("base64 text must be ASCII", 0)
    normal = text.rstrip("=").replace("-", "+").replace("_", "/")
    if len(normal) % 4 == 1:
        raise DecodeError("impossible base64 length", len(text))
    try:
        return base64.b64decode(normal + "=" * (-len(normal) % 4), validate=True)
    except binascii.Error as exc:
        raise DecodeError(f"not base64: {exc}", 0) from None


@lru_cache(maxsize=64)
def generation_key(receiver_secret: bytes) -> bytes:
    """``HMAC(receiver_secret, "ilp_psk2_generation")``, the reference receivers' secret
    generator (0.2.1 and 0.3+ alike)."""
    _check_secret(receiver_secret)
    return hmac_sha256(receiver_secret, _GENERATION_STRING)


def reference_shared_secret(receiver_secret: bytes, keygen: bytes) -> bytes:
    """``HMAC(generation_key, keygen)``: the secret a reference receiver hands out for the
    token ``keygen`` (18 random bytes, in 0.3+ followed by the keyId)."""
    return hmac_sha256(generation_key(receiver_secret), keygen)


def receiver_id(receiver_secret: bytes) -> str:
    """0.2.1's receiverId segment: ``base64url(HMAC(receiver_secret, "ilp_psk2_receiver_id")[:8])``."""
    _check_secret(receiver_secret)
    return b64url_encode(hmac_sha256(receiver_secret, _RECEIVER_ID_STRING)[:8])


def secret_address_suffix(receiver_secret: bytes, shared_secret: bytes) -> str:
    """The address segment 0.4+ ``registerRequestHandlerForSecret`` serves a chosen secret at."""
    _check_secret(receiver_secret)
    generator = hmac_sha256(receiver_secret, _ADDRESS_FROM_SECRET_STRING)
    return b64url_encode(hmac_sha256(generator, shared_secret)[:18])
