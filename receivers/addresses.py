"""The ILP addresses of our receivers: ``<node>.receivers.<name>.<token>``.

A *tagged* address has one more segment, ``<node>.receivers.<name>.<tag>.<token>``: the
tag (16 bytes, base64url) says whom a payment to it is for (an HTTP-ILP pay token, a
page visitor, an order). The secret is derived from the whole destination, tag
included, so only addresses we issued decrypt: a tag seen on the hot path is authentic.
Receipts of tagged addresses get the key ``tag:<tag hex>:<packet key>``
(:func:`tagged_receipt_key`), which is how the tag's owner finds them (an indexed
prefix lookup on the unique ``key``); their ``payment_id`` stays the PSK2 one. Untagged
receipts are keyed ``psk2:``, ``psk2-addr:`` or ``stream:`` + packet key, by where their
``payment_id`` came from (see :data:`PAYER_ID_KEY_PREFIX`).

``<node>`` is ``settings.ILP_ADDRESS``. The token is random (chosen at the view edge) and
the shared secret is derived from ``settings.ILP_RECEIVER_SECRET`` (hex) and the whole
destination by :mod:`ilp.psk2_receiver`, so any process, before or after a restart,
recovers it from the destination alone, and an address issued for one pointer cannot be
re-targeted to another. Changing the node address or the receiver secret invalidates every
address issued before.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from django.conf import settings
from django.core.signals import setting_changed

from ilp.errors import DecodeError
from ilp.psk2 import b64url_decode, b64url_encode
from ilp.psk2_receiver import IssuedAddress, issue, secret_for
from ilp.stream import (
    IssuedStreamAddress,
    OpenedAddress,
    ReceiptSetup,
    issue_stream_address,
    open_stream_address,
)
from payments.ledger.drafts import MAX_RECEIPT_KEY_LENGTH

LOCAL_PREFIX_SEGMENT = "receivers"
# The reference receivers' token size; 24 base64url characters in the address.
TOKEN_LENGTH = 18
# A tag is 16 bytes: 22 base64url characters in the address.
TAG_LENGTH = 16
TAG_SEGMENT_LENGTH = 22
TAG_KEY_PREFIX = "tag:"


@lru_cache(maxsize=4)
def _secret_from_hex(hex_secret: str) -> bytes:
    try:
        secret = bytes.fromhex(hex_secret)
    except ValueError:
        raise ValueError("ILP_RECEIVER_SECRET must be hex") from None
    if len(secret) < 32:
        raise ValueError("ILP_RECEIVER_SECRET must be at least 32 bytes (64 hex digits)")
    return secret


# The two settings every received packet reads, kept here: a ``settings`` attribute read
# costs about a microsecond (``LazyObject.__getattribute__``), and a packet read three.
# Forgotten when either setting changes (``override_settings``, pytest-django's
# ``settings`` fixture: the ``setting_changed`` signal); assigning to ``django.conf.settings``
# directly, which nothing in the project does, would not be seen. Races are harmless: every
# thread computes the same values.
_address: str | None = None
_base: str | None = None
_secret: bytes | None = None


def _forget_cached(*, setting: str, **_: object) -> None:
    global _address, _base, _secret
    if setting in ("ILP_ADDRESS", "ILP_RECEIVER_SECRET"):
        _address = _base = _secret = None


setting_changed.connect(_forget_cached, dispatch_uid="receivers.addresses._forget_cached")


def receiver_secret() -> bytes:
    """The node's long-lived receiver secret, from ``settings.ILP_RECEIVER_SECRET``."""
    global _secret
    secret = _secret
    if secret is None:
        secret = _secret = _secret_from_hex(settings.ILP_RECEIVER_SECRET)
    return secret


def node_address() -> str:
    global _address
    address = _address
    if address is None:
        address = _address = str(settings.ILP_ADDRESS)
    return address


def receivers_base() -> str:
    """``<node>.receivers.``: what every local receiver's address starts with."""
    global _base
    base = _base
    if base is None:
        base = _base = f"{node_address()}.{LOCAL_PREFIX_SEGMENT}."
    return base


def receivers_prefix() -> str:
    """``<node>.receivers``: everything under it is routed to the local receivers."""
    return f"{node_address()}.{LOCAL_PREFIX_SEGMENT}"


def receiver_prefix(name: str) -> str:
    """``<node>.receivers.<name>``: the address of one receiver, before the token."""
    return f"{receivers_prefix()}.{name}"


def issue_address(name: str, token: bytes) -> IssuedAddress:
    """``(destination, shared_secret)`` for the receiver ``name`` and a fresh random ``token``."""
    return issue(receiver_secret(), receiver_prefix(name), token)


def shared_secret_of(name: str, destination: str) -> bytes | None:
    """The shared secret of ``destination`` if it is an address issued for ``name``."""
    return secret_for(receiver_secret(), destination, receiver_prefix(name))


# --- tagged addresses ----------------------------------------------------------------------


def tag_segment(tag: bytes) -> str:
    """The address segment of a 16-byte ``tag``."""
    if not isinstance(tag, bytes) or len(tag) != TAG_LENGTH:
        raise ValueError(f"a tag is {TAG_LENGTH} bytes")
    return b64url_encode(tag)


def parse_tag_segment(segment: str) -> bytes | None:
    """The tag of an address segment, or ``None`` unless it is the one canonical spelling
    (unpadded base64url of exactly 16 bytes)."""
    if len(segment) != TAG_SEGMENT_LENGTH:
        return None
    try:
        tag = b64url_decode(segment)
    except DecodeError:
        return None
    if len(tag) != TAG_LENGTH or b64url_encode(tag) != segment:
        return None
    return tag


def tagged_prefix(name: str, tag: bytes) -> str:
    """``<node>.receivers.<name>.<tag>``: where the tagged addresses of ``tag`` live."""
    return f"{receiver_prefix(name)}.{tag_segment(tag)}"


def issue_tagged_address(name: str, tag: bytes, token: bytes) -> IssuedAddress:
    """``(destination, shared_secret)`` for receiver ``name``, for whatever ``tag`` stands
    for, with a fresh random ``token``: payments to it are receipts keyed by the tag."""
    return issue(receiver_secret(), tagged_prefix(name, tag), token)


def tagged_receipt_key(tag: bytes, packet_key: str) -> str:
    """The receipt key of a packet paid to an address tagged ``tag``.

    Deterministic in ``(tag, packet_key)``, so a repeated packet is still written once.
    A packet key too long to fit is replaced by its SHA-256 (hex).
    """
    return _prefixed_key(f"{TAG_KEY_PREFIX}{tag.hex()}:", packet_key)


# Untagged receipts say where their ``payment_id`` came from, because a pay token may be
# redeemed against a payment id only when the payer chose it: a PSK2 Payment ID (draft 1)
# or the first 16 bytes of PSK2 data (draft 2) travel encrypted, so only the payer knows
# them. A STREAM connection id and the draft-2 fallback id are digests of the destination,
# which every connector on the path reads: anyone could present them.
PAYER_ID_KEY_PREFIX = "psk2:"
ADDRESS_ID_KEY_PREFIX = "psk2-addr:"
STREAM_KEY_PREFIX = "stream:"


def payer_id_receipt_key(packet_key: str) -> str:
    """Receipt key of an untagged PSK2 chunk whose payment id the payer chose (redeemable
    by that id: :func:`receivers.paid.paid_token_credited`)."""
    return _prefixed_key(PAYER_ID_KEY_PREFIX, packet_key)


def address_id_receipt_key(packet_key: str) -> str:
    """Receipt key of an untagged PSK2 chunk whose payment id is derived from the address."""
    return _prefixed_key(ADDRESS_ID_KEY_PREFIX, packet_key)


def stream_receipt_key(packet_key: str) -> str:
    """Receipt key of an untagged STREAM packet (payment id = the connection id)."""
    return _prefixed_key(STREAM_KEY_PREFIX, packet_key)


def _prefixed_key(prefix: str, packet_key: str) -> str:
    key = f"{prefix}{packet_key}"
    if len(key) > MAX_RECEIPT_KEY_LENGTH:
        key = f"{prefix}{hashlib.sha256(packet_key.encode()).hexdigest()}"
    return key


# --- STREAM addresses ----------------------------------------------------------------------
# ``<node>.receivers.<name>[.<tag>].~<token>`` (``ilp.stream.addresses``): the ``~`` keeps
# them apart from PSK2 tokens and tags; the same receiver secret, other labels.

STREAM_IV_LENGTH = 12


def issue_stream(
    name: str, iv: bytes, *, tag: bytes | None = None, receipt: ReceiptSetup | None = None
) -> IssuedStreamAddress:
    """A STREAM address (and its secret) for receiver ``name``, tagged with ``tag`` when
    given; ``iv`` is 12 fresh random bytes (drawn at the view edge). With ``receipt`` the
    connection issues RFC 0039 receipts."""
    prefix = receiver_prefix(name) if tag is None else tagged_prefix(name, tag)
    return issue_stream_address(receiver_secret(), prefix, iv, receipt=receipt)


def open_stream(destination: str, prefix: str) -> OpenedAddress | None:
    """What a STREAM ``destination`` issued under ``prefix`` carries, else ``None``."""
    return open_stream_address(receiver_secret(), destination, prefix)


def tag_key_prefix(tag: bytes) -> str:
    """What every receipt key of ``tag`` starts with (for ``key__startswith``)."""
    return f"{TAG_KEY_PREFIX}{tag.hex()}:"
