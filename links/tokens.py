"""Peer tokens: generation, salted hashing and constant-time checks.

A token is stored only as ``hmac-sha256$<salt hex>$<digest hex>`` where
``digest = HMAC-SHA256(key=salt, msg=token)`` and ``salt`` is 16 random bytes per row.
HMAC-SHA256 is fast on purpose: an HTTP-OER peer may be found by trying its token
against every HTTP peer, and tokens we generate carry 256 bits of entropy. Comparisons
use :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

ALGORITHM = "hmac-sha256"


def generate_token() -> str:
    """A fresh URL-safe token (43 characters, 256 bits)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str, *, salt: bytes | None = None) -> str:
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hmac.new(salt, token.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"{ALGORITHM}${salt.hex()}${digest}"


def check_token(token: str, encoded: str) -> bool:
    """``True`` when ``token`` matches ``encoded``; constant time in the token's content."""
    try:
        algorithm, salt_hex, digest_hex = encoded.split("$")
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        return False
    if algorithm != ALGORITHM:
        return False
    candidate = hmac.new(salt, token.encode("utf-8"), hashlib.sha256).hexdigest()
    return hmac.compare_digest(candidate, digest_hex)


def token_fingerprint(token: str) -> bytes:
    """A cache key for a token that does not keep the token itself in memory."""
    return hashlib.sha256(token.encode("utf-8")).digest()
