"""The STREAM packet, the plaintext inside ILP ``data`` (RFC 0029 5.2).

``version 1 ‖ ilp packet type ‖ sequence VarUInt ‖ prepare amount VarUInt ‖
frame count VarUInt ‖ frames ‖ junk``. The junk (zero padding, or fields of a later
version) is ignored, and so are frames of unknown types (:func:`read_frame`); the JS
reader's other rules are in :mod:`ilp.stream.frames`. :func:`decode_stream_packet`
raises only :class:`~ilp.errors.DecodeError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from ilp.errors import DecodeError, EncodeError
from ilp.oer import UINT64_MAX, Reader, Writer
from ilp.stream.frames import (
    FRAME_CLASSES,
    Frame,
    Irregular,
    read_frame,
    read_var_uint,
    write_frame,
)

__all__ = [
    "MAX_PLAINTEXT_LENGTH",
    "STREAM_VERSION",
    "StreamPacket",
    "StreamPacketType",
    "decode_stream_packet",
    "encode_stream_packet",
]

STREAM_VERSION: Final = 1
# ILP data is at most 32767 bytes and the encryption envelope takes 28 of them.
MAX_PLAINTEXT_LENGTH: Final = 32767 - 28
# oer-utils reads the frame count as a JS number: a length byte of 1..6.
_MAX_COUNT_BYTES: Final = 6


class StreamPacketType(IntEnum):
    """The ILPv4 packet a STREAM packet must ride in."""

    PREPARE = 12
    FULFILL = 13
    REJECT = 14


@dataclass(frozen=True, slots=True)
class StreamPacket:
    """One STREAM packet. ``prepare_amount``: on a Prepare the minimum the receiver must
    get, on a Fulfill or Reject what it got."""

    sequence: int
    packet_type: StreamPacketType
    prepare_amount: int = 0
    frames: tuple[Frame, ...] = ()

    def __post_init__(self) -> None:
        for name in ("sequence", "prepare_amount"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int")
            if not 0 <= value <= UINT64_MAX:
                raise EncodeError(f"{name} out of range: {value}")
        if not isinstance(self.packet_type, StreamPacketType):
            try:
                object.__setattr__(self, "packet_type", StreamPacketType(self.packet_type))
            except ValueError:
                raise EncodeError(f"not an ILP packet type: {self.packet_type!r}") from None
        if not isinstance(self.frames, tuple):
            raise TypeError("frames must be a tuple")
        for frame in self.frames:
            if type(frame) not in _FRAME_TYPES:
                raise TypeError(f"not a STREAM frame: {type(frame).__name__}")


_FRAME_TYPES: Final = frozenset(FRAME_CLASSES.values())


def encode_stream_packet(packet: StreamPacket, *, pad_to: int | None = None) -> bytes:
    """The plaintext of ``packet``; ``pad_to`` appends zero bytes up to that length."""
    w = Writer()
    w.write_uint8(STREAM_VERSION)
    w.write_uint8(packet.packet_type)
    w.write_var_uint(packet.sequence)
    w.write_var_uint(packet.prepare_amount)
    w.write_var_uint(len(packet.frames))
    for frame in packet.frames:
        write_frame(w, frame)
    raw = w.getvalue()
    if pad_to is not None and pad_to > len(raw):
        raw += bytes(pad_to - len(raw))
    if len(raw) > MAX_PLAINTEXT_LENGTH:
        raise EncodeError(f"STREAM packet of {len(raw)} bytes does not fit ILP data")
    return raw


def decode_stream_packet(plaintext: bytes) -> StreamPacket:
    """Parse a decrypted STREAM packet; only :class:`DecodeError` escapes."""
    if type(plaintext) is not bytes:
        plaintext = bytes(plaintext)
    try:
        # _decode_fast, inlined (a Python call is a tenth of the compiled read).
        packet: StreamPacket = (_fast_reader[0] if _fast_reader else _load_fast_reader())(plaintext)
        return packet
    except (Irregular, IndexError):
        return _decode_strict(plaintext)


def _decode_fast(b: bytes) -> StreamPacket:
    """The common shapes (``ilp._stream_read``); anything else raises :class:`Irregular` for
    :func:`_decode_strict` to judge."""
    read = _fast_reader[0] if _fast_reader else _load_fast_reader()
    packet: StreamPacket = read(b)
    return packet


_fast_reader: list[Callable[[bytes], StreamPacket]] = []


def _load_fast_reader() -> Callable[[bytes], StreamPacket]:
    # Imported on first use, not at the top: ilp._stream_read imports ilp.stream (the frame
    # classes), and a compiled module must not be entered while it is still initialising.
    from ilp._stream_read import read_packet

    _fast_reader[:] = [read_packet]
    return read_packet


def _decode_strict(plaintext: bytes) -> StreamPacket:
    """Every rule, every error with its offset (the fast reader's fallback)."""
    r = Reader(plaintext)
    version = r.read_uint8("version")
    if version != STREAM_VERSION:
        raise DecodeError(f"unsupported STREAM version {version}", 0)
    kind = r.read_uint8("ILP packet type")
    try:
        packet_type = StreamPacketType(kind)
    except ValueError:
        raise DecodeError(f"ILP packet type {kind} is not 12, 13 or 14", 1) from None
    sequence = read_var_uint(r, "sequence")
    prepare_amount = read_var_uint(r, "prepare amount")
    count_at = r.pos
    count = read_var_uint(r, "frame count")
    if plaintext[count_at] > _MAX_COUNT_BYTES:
        raise DecodeError("frame count: more than 6 bytes", count_at)
    # Each frame takes at least two bytes: refuse an impossible count before looping.
    if count > r.remaining() // 2:
        raise DecodeError(f"{count} frames cannot fit in {r.remaining()} bytes", count_at)
    frames: list[Frame] = []
    for _ in range(count):
        frame = read_frame(r)
        if frame is not None:
            frames.append(frame)
    # Whatever follows the frames is junk (padding): ignored, as the RFC requires.
    return StreamPacket(sequence, packet_type, prepare_amount, tuple(frames))
