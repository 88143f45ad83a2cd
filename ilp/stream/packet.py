"""The STREAM packet, the plaintext inside ILP ``data`` (RFC 0029 5.2).

``version 1 ‖ ilp packet type ‖ sequence VarUInt ‖ prepare amount VarUInt ‖
frame count VarUInt ‖ frames ‖ junk``. The junk (zero padding, or fields of a later
version) is ignored, and so are frames of unknown types (:func:`read_frame`); the JS
reader's other rules are in :mod:`ilp.stream.frames`. :func:`decode_stream_packet`
raises only :class:`~ilp.errors.DecodeError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from ilp.errors import DecodeError, EncodeError
from ilp.oer import UINT64_MAX, Reader, Writer
from ilp.stream.frames import (
    FAST_READERS,
    FRAME_CLASSES,
    Frame,
    Irregular,
    read_frame,
    read_var_uint,
    var_uint_at,
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
        return _decode_fast(plaintext)
    except (Irregular, IndexError):
        return _decode_strict(plaintext)


_PACKET_TYPES: Final = {int(t): t for t in StreamPacketType}
_SET_SEQUENCE, _SET_TYPE, _SET_AMOUNT, _SET_FRAMES = (
    StreamPacket.__dict__[name].__set__
    for name in ("sequence", "packet_type", "prepare_amount", "frames")
)
_new = object.__new__


def _decode_fast(b: bytes) -> StreamPacket:
    """The common shapes by indexing (``ilp.stream.frames``' fast reader); anything else
    raises :class:`Irregular` for :func:`_decode_strict` to judge."""
    end = len(b)
    if end < 5 or b[0] != STREAM_VERSION:
        raise Irregular
    packet_type = _PACKET_TYPES.get(b[1])
    if packet_type is None:
        raise Irregular
    # One-byte VarUInts inline (the usual sequence, and counts): a call costs more than them.
    if b[2] == 1:
        sequence, i = b[3], 4
    else:
        sequence, i = var_uint_at(b, 2, end)
    if i + 1 < end and b[i] == 1:
        amount, i = b[i + 1], i + 2
    else:
        amount, i = var_uint_at(b, i, end)
    if i + 1 < end and b[i] == 1:
        count, i = b[i + 1], i + 2
    else:
        if i >= end or b[i] > _MAX_COUNT_BYTES:
            raise Irregular
        count, i = var_uint_at(b, i, end)
    if count > (end - i) // 2:
        raise Irregular
    frames = []
    readers = FAST_READERS
    for _ in range(count):
        n = b[i + 1] if i + 1 < end else 0x80
        start = i + 2
        i = start + n
        if n >= 0x80 or i > end:
            raise Irregular
        read = readers.get(b[start - 2])
        if read is not None:  # else a frame of an unknown type: skipped
            frames.append(read(b, start, i))
    packet: StreamPacket = _new(StreamPacket)
    _SET_SEQUENCE(packet, sequence)
    _SET_TYPE(packet, packet_type)
    _SET_AMOUNT(packet, amount)
    _SET_FRAMES(packet, tuple(frames))
    return packet


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
