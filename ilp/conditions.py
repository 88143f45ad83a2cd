"""Conditions and fulfillments: SHA-256 hashlocks (RFC 27).

A Prepare carries ``execution_condition = sha256(fulfillment)``; a Fulfill is
valid for it only if its 32-byte preimage hashes to that condition. The ``peer.*``
protocols (IL-DCP, CCP, ``peer.balance``) all use the fixed pair below.
"""

from __future__ import annotations

import hashlib
import hmac

CONDITION_LENGTH = 32
FULFILLMENT_LENGTH = 32


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def condition_for(fulfillment: bytes) -> bytes:
    """The execution condition that ``fulfillment`` fulfills."""
    if len(fulfillment) != FULFILLMENT_LENGTH:
        raise ValueError(f"a fulfillment is 32 bytes, not {len(fulfillment)}")
    return sha256(fulfillment)


def fulfillment_matches(fulfillment: bytes, condition: bytes) -> bool:
    """True iff ``sha256(fulfillment) == condition`` (both 32 bytes)."""
    if len(fulfillment) != FULFILLMENT_LENGTH or len(condition) != CONDITION_LENGTH:
        return False
    return hmac.compare_digest(sha256(fulfillment), condition)


#: The fulfillment of every ``peer.*`` request: 32 zero bytes.
PEER_FULFILLMENT = bytes(FULFILLMENT_LENGTH)
#: ``66687aad…5f2925``, the condition of every ``peer.*`` request.
PEER_CONDITION = sha256(PEER_FULFILLMENT)
