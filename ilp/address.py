"""ILP addresses (RFC 15, ``shared/spec/ilp-packet.md`` section 4).

An address is a scheme followed by one or more ``.``-separated segments of
``[A-Za-z0-9_~-]``, at most 1023 bytes, compared byte for byte (case-sensitive,
never normalised). Routing prefixes are segment-aware: see :func:`is_prefix_of`.
"""

from __future__ import annotations

import re

from ilp.errors import IlpError

MAX_ADDRESS_LENGTH = 1023

SCHEMES: frozenset[str] = frozenset(
    {"g", "private", "example", "peer", "self", "test", "test1", "test2", "test3", "local"}
)

# The grammar of RFC 15 as one pattern (the same one ilp-packet 3.1.3 uses). The
# scheme alternation must stay in step with SCHEMES; a test checks that it does.
_PATTERN = r"(?:g|private|example|peer|self|test[1-3]?|local)(?:\.[A-Za-z0-9_~-]+)+"
_ADDRESS = re.compile(_PATTERN)
# Decoders match the raw bytes first, so a byte >= 0x80 can never slip through as a
# "similar" character (JS clears the high bit; we refuse the byte).
_ADDRESS_BYTES = re.compile(_PATTERN.encode("ascii"))


class InvalidAddress(IlpError, ValueError):
    """A string that is not a valid ILP address."""


def is_valid_address(s: str) -> bool:
    return len(s) <= MAX_ADDRESS_LENGTH and _ADDRESS.fullmatch(s) is not None


def validate_address(s: str) -> str:
    """``s`` itself if it is a valid ILP address, else :class:`InvalidAddress`."""
    if not isinstance(s, str):
        raise InvalidAddress(f"an ILP address is a str, not {type(s).__name__}")
    if len(s) > MAX_ADDRESS_LENGTH:
        raise InvalidAddress(f"ILP address longer than {MAX_ADDRESS_LENGTH} bytes ({len(s)})")
    if _ADDRESS.fullmatch(s) is None:
        raise InvalidAddress(f"not a valid ILP address: {s[:80]!r}")
    return s


def address_from_bytes(raw: bytes) -> str:
    """The address held in ``raw`` (wire form), or :class:`InvalidAddress`.

    Used by the decoders: the bytes are checked before they become a ``str``.
    """
    if len(raw) > MAX_ADDRESS_LENGTH:
        raise InvalidAddress(f"ILP address longer than {MAX_ADDRESS_LENGTH} bytes ({len(raw)})")
    if _ADDRESS_BYTES.fullmatch(raw) is None:
        raise InvalidAddress(f"not a valid ILP address: {raw[:80]!r}")
    return raw.decode("ascii")


def scheme_of(address: str) -> str:
    """The allocation scheme (first segment) of a valid address, e.g. ``"g"``."""
    return address.partition(".")[0]


def is_prefix_of(prefix: str, address: str) -> bool:
    """Segment-aware prefix test: ``test.a`` covers ``test.a`` and ``test.a.b``, not ``test.ab``."""
    if not address.startswith(prefix):
        return False
    return len(address) == len(prefix) or address[len(prefix)] == "."
