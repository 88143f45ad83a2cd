"""The ILP addresses of our receivers: ``<node>.receivers.<name>.<token>``.

``<node>`` is ``settings.ILP_ADDRESS``. The token is random (chosen at the view edge) and
the shared secret is derived from ``settings.ILP_RECEIVER_SECRET`` (hex) and the whole
destination by :mod:`ilp.psk2_receiver`, so any process, before or after a restart,
recovers it from the destination alone, and an address issued for one pointer cannot be
re-targeted to another. Changing the node address or the receiver secret invalidates every
address issued before.
"""

from __future__ import annotations

from functools import lru_cache

from django.conf import settings

from ilp.psk2_receiver import IssuedAddress, issue, secret_for

LOCAL_PREFIX_SEGMENT = "receivers"
# The reference receivers' token size; 24 base64url characters in the address.
TOKEN_LENGTH = 18


@lru_cache(maxsize=4)
def _secret_from_hex(hex_secret: str) -> bytes:
    try:
        secret = bytes.fromhex(hex_secret)
    except ValueError:
        raise ValueError("ILP_RECEIVER_SECRET must be hex") from None
    if len(secret) < 32:
        raise ValueError("ILP_RECEIVER_SECRET must be at least 32 bytes (64 hex digits)")
    return secret


def receiver_secret() -> bytes:
    """The node's long-lived receiver secret, from ``settings.ILP_RECEIVER_SECRET``."""
    return _secret_from_hex(settings.ILP_RECEIVER_SECRET)


def node_address() -> str:
    return str(settings.ILP_ADDRESS)


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
