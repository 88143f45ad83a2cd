"""The one exception family of the protocol core.

Every decoder raises :class:`DecodeError` (never ``IndexError``, ``struct.error`` or
``UnicodeDecodeError``), whatever bytes arrive. The edge maps it to a wire error:
ILP Reject ``F01`` for an incoming packet, a BTP Error for a frame.
"""

from __future__ import annotations


class IlpError(Exception):
    """Base of every error raised by the ``ilp`` package."""


class DecodeError(IlpError, ValueError):
    """Bytes that are not a valid encoding of the expected type.

    ``offset`` is the byte position (from the start of the buffer handed to the
    decoder) where the problem was found; ``reason`` says what was wrong.
    """

    def __init__(self, reason: str, offset: int = 0) -> None:
        super().__init__(f"at offset {offset}: {reason}")
        self.reason = reason
        self.offset = offset


class EncodeError(IlpError, ValueError):
    """A value that cannot be encoded (out of range, too long, not ASCII)."""
