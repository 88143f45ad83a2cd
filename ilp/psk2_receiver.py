"""The PSK2 receiver as pure functions: stateless addresses, and the accept/refuse decision.

Addresses and secrets (our own scheme; senders treat the address as opaque)::

    token        = random bytes chosen by the caller (16..64; 18 is the reference's size)
    destination  = prefix "." base64url_nopad(token)
    shared_secret = HMAC-SHA256(HMAC-SHA256(receiver_secret, "ilp_psk2_destination_secret"),
                                ASCII(destination))

The whole destination is the HMAC message, not just the token, so the secret is bound to
the receiver the address was issued for: a connector that rewrites
``<node>.receivers.alice.<token>`` into ``<node>.receivers.bob.<token>`` gets a different
secret at the receiver, the data no longer decrypts and the Prepare is refused, instead of
bob being credited with a payment alice's payer can prove. (psk2.md §6.3 asks for this
binding; the reference receivers did not have it.) The label differs from the reference's
``"ilp_psk2_generation"`` so that the same receiver secret can never serve both schemes.
A consequence: an address stays valid only while the node keeps its address.

The decision (psk2.md §7.1 and §7.4), in this order:

1. ``expires_at <= now``: **R00** (psk2.md recommends R00; the reference never checks).
2. no secret for the destination: **F06** "Payment is not for this receiver", no data.
3. the data does not decrypt or parse: **F06** "Unable to parse data", no data.
4. a response/error type in a request: **F06** "Unexpected request type" (draft 1) /
   "Unexpected packet type" (draft 2), no data.
5. the minimum in the request is more than arrived (quotes included, their Chunk Amount
   is 2^64-1): **F99** "" + encrypted error (type 3 with the total so far, or type 6).
   This comes before the condition check because a quote carries a random condition and
   draft-1 senders *require* F99 plus a type-3 error for it.
6. draft 1 only, the payment is already finished (the caller said so, or the total so far
   reached the Payment Amount): **F99** "" + type-3 error with the total so far.
7. the condition is not SHA-256 of our fulfillment: **F05**; draft 1 with no data (as
   0.2.1), draft 2 with a type-6 error (as 0.3+, so a probe still learns the amount).
8. otherwise accept: the fulfillment and a type-2 response (Payment Amount = total
   including this chunk) or a type-5 response.

The caller keeps the per-payment totals; since it needs the Payment ID to look them up,
the decision comes in two pure steps, :func:`open_prepare` (1-4) and :func:`respond`
(5-8); :func:`decide` chains them when the total is already known. Nothing here has a
clock, randomness or I/O: ``now`` and the response IV are passed in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from functools import lru_cache
from typing import Final, NamedTuple

from ilp.address import MAX_ADDRESS_LENGTH, validate_address
from ilp.crypto import (
    MIN_RECEIVER_SECRET_LENGTH,
    EnvelopeKeys,
    HmacKey,
    check_receiver_secret,
    hmac_sha256,
)
from ilp.errors import DecodeError, EncodeError
from ilp.oer import UINT64_MAX
from ilp.packet import Fulfill, Prepare, Reject
from ilp.psk2 import (
    PAYMENT_ID_LENGTH,
    ChunkRejection,
    ChunkRequest,
    ChunkResponse,
    Psk2Type,
    Rejection,
    Request,
    Response,
    b64url_decode,
    b64url_encode,
    decode_psk2,
    encode_draft1,
    encode_draft2,
    encode_psk2,
    keys,
)

__all__ = [
    "ADDRESS_SECRET_LABEL",
    "MAX_TOKEN_LENGTH",
    "MIN_RECEIVER_SECRET_LENGTH",
    "MIN_TOKEN_LENGTH",
    "MSG_BAD_PACKET_TYPE",
    "MSG_BAD_REQUEST_TYPE",
    "MSG_CONDITION_DRAFT1",
    "MSG_CONDITION_DRAFT2",
    "MSG_EXPIRED",
    "MSG_NOT_FOR_US",
    "MSG_UNREADABLE",
    "Accept",
    "IssuedAddress",
    "Opened",
    "Refuse",
    "RefuseReason",
    "decide",
    "issue",
    "open_prepare",
    "refuse",
    "respond",
    "secret_for",
]

ADDRESS_SECRET_LABEL: Final = b"ilp_psk2_destination_secret"
MIN_TOKEN_LENGTH: Final = 16
MAX_TOKEN_LENGTH: Final = 64
_MIN_SEGMENT = len(b64url_encode(bytes(MIN_TOKEN_LENGTH)))
_MAX_SEGMENT = len(b64url_encode(bytes(MAX_TOKEN_LENGTH)))

# The reference strings, byte for byte: some senders and tests look at them.
MSG_NOT_FOR_US: Final = "Payment is not for this receiver"
MSG_UNREADABLE: Final = "Unable to parse data"
MSG_BAD_REQUEST_TYPE: Final = "Unexpected request type"
MSG_BAD_PACKET_TYPE: Final = "Unexpected packet type"
MSG_CONDITION_DRAFT1: Final = "condition generated does not match prepare"
MSG_CONDITION_DRAFT2: Final = "Condition generated does not match prepare"
MSG_EXPIRED: Final = "Prepare expired"


# --- stateless addresses ------------------------------------------------------------------


class IssuedAddress(NamedTuple):
    destination: str
    shared_secret: bytes


@lru_cache(maxsize=16)
def _address_key(receiver_secret: bytes) -> HmacKey:
    return HmacKey(hmac_sha256(receiver_secret, ADDRESS_SECRET_LABEL))


def _derive(receiver_secret: bytes, destination: str) -> bytes:
    return _address_key(receiver_secret).digest(destination.encode("ascii"))


def issue(receiver_secret: bytes, prefix: str, token: bytes) -> IssuedAddress:
    """A fresh ``(destination, shared_secret)`` under ``prefix`` for the random ``token``.

    ``prefix`` is the receiver's own address (``<node>.receivers.<name>``); raises
    :class:`~ilp.address.InvalidAddress` if it, or the result, is not a valid address.
    """
    check_receiver_secret(receiver_secret)
    if not isinstance(token, bytes):
        raise TypeError(f"token must be bytes, not {type(token).__name__}")
    if not MIN_TOKEN_LENGTH <= len(token) <= MAX_TOKEN_LENGTH:
        raise EncodeError(
            f"token must be {MIN_TOKEN_LENGTH}..{MAX_TOKEN_LENGTH} bytes, not {len(token)}"
        )
    validate_address(prefix)
    destination = validate_address(f"{prefix}.{b64url_encode(token)}")
    return IssuedAddress(destination, _derive(receiver_secret, destination))


def secret_for(receiver_secret: bytes, destination: str, prefix: str) -> bytes | None:
    """The shared secret of an address :func:`issue` minted under ``prefix``, else ``None``.

    ``None`` when ``destination`` is not ``prefix`` plus exactly one segment that is a
    canonical unpadded base64url token of the allowed size. A well-formed token that we
    never issued still yields a secret, but one nobody else knows: the data will not
    decrypt. That is what makes the scheme stateless.

    Answers are cached (a pure function of its arguments; the most recent
    :data:`SECRET_CACHE_SIZE` addresses), since every packet of a payment asks again.
    """
    check_receiver_secret(receiver_secret)
    if not isinstance(destination, str) or not isinstance(prefix, str):
        raise TypeError("destination and prefix must be str")
    return _secret_for(receiver_secret, destination, prefix)


# Addresses whose secret is remembered: one per SPSP answer in use at a busy receiver.
SECRET_CACHE_SIZE: Final = 4096


@lru_cache(maxsize=SECRET_CACHE_SIZE)
def _secret_for(receiver_secret: bytes, destination: str, prefix: str) -> bytes | None:
    n = len(prefix)
    if (
        len(destination) > MAX_ADDRESS_LENGTH
        or not destination.isascii()
        or not destination.startswith(prefix)
        or destination[n : n + 1] != "."
    ):
        return None
    segment = destination[n + 1 :]
    if not _MIN_SEGMENT <= len(segment) <= _MAX_SEGMENT:
        return None
    # One spelling per token: the standard alphabet, padding and stray low bits in the
    # last character all decode, but do not re-encode to the same text.
    try:
        canonical = b64url_encode(b64url_decode(segment)) == segment
    except DecodeError:
        return None
    if not canonical:
        return None
    return _derive(receiver_secret, destination)


# --- the decision -------------------------------------------------------------------------


class RefuseReason(Enum):
    """Why a Prepare was refused, for logs and metrics (the code is what goes on the wire)."""

    EXPIRED = "expired"
    NOT_FOR_US = "not_for_us"
    UNREADABLE = "unreadable"
    BAD_TYPE = "bad_type"
    AMOUNT_TOO_LOW = "amount_too_low"
    PAYMENT_FINISHED = "payment_finished"
    WRONG_CONDITION = "wrong_condition"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Refuse:
    """Reject the Prepare with ``code``, ``message`` and ``data`` (an encrypted PSK2 error
    where the spec wants one, else empty)."""

    code: str
    message: str
    data: bytes
    reason: RefuseReason

    def to_reject(self, triggered_by: str) -> Reject:
        """The Reject to send; ``triggered_by`` is the receiver's own address."""
        return Reject(self.code, triggered_by, self.message, self.data)


@dataclass(frozen=True, slots=True)
class Opened:
    """A Prepare whose data decrypted to a request: steps 1-4 passed."""

    prepare: Prepare
    request: ChunkRequest | Request
    fulfillment: bytes
    shared_secret: bytes = field(repr=False)
    # The secret's keys, looked up once for the decrypt, the fulfillment and the answer.
    keys: EnvelopeKeys | None = field(default=None, repr=False, compare=False)

    @property
    def draft(self) -> int:
        return 1 if isinstance(self.request, ChunkRequest) else 2

    @property
    def amount(self) -> int:
        """What arrived: the Prepare amount."""
        return self.prepare.amount

    @property
    def payment_id(self) -> bytes:
        """The key the caller keeps totals under.

        Draft 1: the Payment ID. Draft 2 has none; the first 16 data bytes stand in (the
        pay token HTTP-ILP clients send, see the interop README), else 16 zero bytes.
        """
        r = self.request
        if isinstance(r, ChunkRequest):
            return r.payment_id
        return r.data[:PAYMENT_ID_LENGTH] if len(r.data) >= PAYMENT_ID_LENGTH else _ZERO_ID

    @property
    def sequence(self) -> int:
        """Draft 1: the Sequence; draft 2: the Request ID."""
        r = self.request
        return r.sequence if isinstance(r, ChunkRequest) else r.request_id

    @property
    def application_data(self) -> bytes:
        r = self.request
        return r.application_data if isinstance(r, ChunkRequest) else r.data

    @property
    def condition_matches(self) -> bool:
        return hashlib.sha256(self.fulfillment).digest() == self.prepare.execution_condition


_ZERO_ID: Final = bytes(PAYMENT_ID_LENGTH)


@dataclass(frozen=True, slots=True)
class Accept:
    """Fulfill the Prepare: ``to_fulfill()`` carries the fulfillment and the encrypted
    response. ``total`` is the caller's total for the payment including this chunk;
    ``closes_payment`` tells the caller to refuse later chunks of a draft-1 payment (it was
    the last chunk, or the total reached the Payment Amount)."""

    opened: Opened
    data: bytes
    total: int
    closes_payment: bool

    @property
    def fulfillment(self) -> bytes:
        return self.opened.fulfillment

    @property
    def request(self) -> ChunkRequest | Request:
        return self.opened.request

    @property
    def payment_id(self) -> bytes:
        return self.opened.payment_id

    @property
    def sequence(self) -> int:
        return self.opened.sequence

    @property
    def amount(self) -> int:
        return self.opened.amount

    @property
    def application_data(self) -> bytes:
        return self.opened.application_data

    def to_fulfill(self) -> Fulfill:
        return Fulfill(self.opened.fulfillment, self.data)


def _plain(code: str, message: str, reason: RefuseReason) -> Refuse:
    return Refuse(code, message, b"", reason)


def open_prepare(
    prepare: Prepare, shared_secret: bytes | None, *, now: datetime
) -> Opened | Refuse:
    """Steps 1-4: expiry, address, decryption, request type. ``now`` is an aware datetime;
    ``shared_secret`` is what :func:`secret_for` returned for the destination."""
    if prepare.expires_at <= now:
        return _plain("R00", MSG_EXPIRED, RefuseReason.EXPIRED)
    if shared_secret is None:
        return _plain("F06", MSG_NOT_FOR_US, RefuseReason.NOT_FOR_US)
    secret_keys = keys(shared_secret)
    try:
        request = decode_psk2(secret_keys.decrypt(prepare.data))
    except DecodeError:
        return _plain("F06", MSG_UNREADABLE, RefuseReason.UNREADABLE)
    if isinstance(request, ChunkResponse | ChunkRejection):
        return _plain("F06", MSG_BAD_REQUEST_TYPE, RefuseReason.BAD_TYPE)
    if isinstance(request, Response | Rejection):
        return _plain("F06", MSG_BAD_PACKET_TYPE, RefuseReason.BAD_TYPE)
    fulfillment = secret_keys.fulfillment_for(prepare.data)
    return Opened(prepare, request, fulfillment, shared_secret, secret_keys)


def _keys_of(opened: Opened) -> EnvelopeKeys:
    found = opened.keys
    return found if found is not None else keys(opened.shared_secret)


def _check_paid(paid_so_far: int) -> None:
    if not isinstance(paid_so_far, int) or isinstance(paid_so_far, bool) or paid_so_far < 0:
        raise ValueError(f"paid_so_far must be a non-negative int, not {paid_so_far!r}")


def _error(
    opened: Opened,
    code: str,
    message: str,
    reason: RefuseReason,
    *,
    paid_so_far: int,
    iv: bytes,
    data: bytes = b"",
) -> Refuse:
    """Refuse with the PSK2 error that answers ``opened`` in kind."""
    r = opened.request
    error: ChunkRejection | Rejection
    if isinstance(r, ChunkRequest):
        # The running total can outgrow a UInt64 only through a caller's bug or an absurd
        # payment; the wire field saturates rather than the receiver crashing.
        error = ChunkRejection(
            r.payment_id, r.sequence, min(paid_so_far, UINT64_MAX), opened.amount, data
        )
    else:
        error = Rejection(r.request_id, opened.amount, data)
    return Refuse(code, message, _keys_of(opened).encrypt(encode_psk2(error), iv), reason)


def respond(
    opened: Opened,
    *,
    paid_so_far: int,
    iv: bytes,
    closed: bool = False,
    response_data: bytes = b"",
) -> Accept | Refuse:
    """Steps 5-8 for a request :func:`open_prepare` let through.

    ``paid_so_far`` is what the caller has already accepted for ``opened.payment_id``
    (this chunk excluded); ``closed`` whether an earlier chunk closed that payment
    (:attr:`Accept.closes_payment`). ``iv`` is 12 fresh random bytes for the encrypted
    response or error; ``response_data`` goes into the response's application data.
    """
    _check_paid(paid_so_far)
    r = opened.request
    amount = opened.amount
    if isinstance(r, ChunkRequest):
        if r.chunk_amount > amount:
            return _error(
                opened, "F99", "", RefuseReason.AMOUNT_TOO_LOW, paid_so_far=paid_so_far, iv=iv
            )
        # 0.2.1 marks a payment finished once received >= expected; with received 0
        # nothing was accepted yet, so a Payment Amount of 0 still takes its first chunk.
        if closed or (paid_so_far > 0 and paid_so_far >= r.payment_amount):
            return _error(
                opened, "F99", "", RefuseReason.PAYMENT_FINISHED, paid_so_far=paid_so_far, iv=iv
            )
        if not opened.condition_matches:
            return _plain("F05", MSG_CONDITION_DRAFT1, RefuseReason.WRONG_CONDITION)
        total = paid_so_far + amount
        if not isinstance(response_data, bytes):
            raise TypeError(f"response_data must be bytes, not {type(response_data).__name__}")
        # The ChunkResponse's fields, in range by construction (decoded, or bounded here):
        # encoded with no object built and checked per packet.
        plaintext = encode_draft1(
            Psk2Type.CHUNK_RESPONSE,
            r.payment_id,
            r.sequence,
            min(total, UINT64_MAX),
            amount,
            response_data,
        )
        closes = r.last or total >= r.payment_amount
    else:
        if r.amount > amount:
            return _error(
                opened, "F99", "", RefuseReason.AMOUNT_TOO_LOW, paid_so_far=paid_so_far, iv=iv
            )
        if not opened.condition_matches:
            return _error(
                opened,
                "F05",
                MSG_CONDITION_DRAFT2,
                RefuseReason.WRONG_CONDITION,
                paid_so_far=paid_so_far,
                iv=iv,
            )
        total = paid_so_far + amount
        if not isinstance(response_data, bytes):
            raise TypeError(f"response_data must be bytes, not {type(response_data).__name__}")
        plaintext = encode_draft2(Psk2Type.RESPONSE, r.request_id, amount, response_data)
        closes = False  # draft 2 has no multi-chunk payments to close
    return Accept(opened, _keys_of(opened).encrypt(plaintext, iv), total, closes)


def decide(
    prepare: Prepare,
    shared_secret: bytes | None,
    *,
    now: datetime,
    paid_so_far: int,
    iv: bytes,
    closed: bool = False,
    response_data: bytes = b"",
) -> Accept | Refuse:
    """:func:`open_prepare` then :func:`respond`, for callers that know the total already."""
    opened = open_prepare(prepare, shared_secret, now=now)
    if isinstance(opened, Refuse):
        return opened
    return respond(
        opened, paid_so_far=paid_so_far, iv=iv, closed=closed, response_data=response_data
    )


def refuse(
    opened: Opened,
    *,
    paid_so_far: int,
    iv: bytes,
    code: str = "F99",
    message: str = "",
    data: bytes = b"",
) -> Refuse:
    """The caller's own refusal of a request it could have accepted (receiver disabled,
    invoice maximum reached, ...): ``code`` (F99 by default) with the PSK2 error in kind,
    so the sender still learns the amount that arrived.

    0.2.1's application reject sent empty data; psk2.md §7.4 recommends the error, which
    every sender reads or ignores. ``data`` is the error's application data.
    """
    _check_paid(paid_so_far)
    return _error(
        opened, code, message, RefuseReason.REFUSED, paid_so_far=paid_so_far, iv=iv, data=data
    )
