"""The fast reader of STREAM packets (``ilp.stream.packet.decode_stream_packet`` tries it first).

The common shapes (short-form lengths, VarUInts of 1 to 8 bytes) are read by indexing the
plaintext, and the frames are built through their slots, without their ``__post_init__``
checks: what is read here always passes them (a VarUInt of at most 8 bytes is a UInt64, a byte
is a UInt8, text decoded with replacement characters encodes as UTF-8). Anything else (a
long-form length, a saturating maximum, a truncation, a bad byte) raises
:class:`~ilp.stream.frames.Irregular` and the strict reader (``ilp.stream.packet``) decides, so
this reader accepts a subset of what the strict one accepts and returns the same frames for it
(``tests/ilp/test_stream_fast.py`` holds them equal). Unknown frame types are skipped, as the
strict reader does.

Its own module, at the package's top level, so that ``make install`` compiles it with mypyc
(``ilp._variant.COMPILED_MODULES``): the frame classes stay Python dataclasses (their module is
not compiled), built here through their slot setters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from ilp.stream.frames import (
    ConnectionAssetDetailsFrame,
    ConnectionCloseFrame,
    ConnectionDataBlockedFrame,
    ConnectionMaxDataFrame,
    ConnectionMaxStreamIdFrame,
    ConnectionNewAddressFrame,
    ConnectionStreamIdBlockedFrame,
    Frame,
    Irregular,
    StreamCloseFrame,
    StreamDataBlockedFrame,
    StreamDataFrame,
    StreamMaxDataFrame,
    StreamMaxMoneyFrame,
    StreamMoneyBlockedFrame,
    StreamMoneyFrame,
    StreamReceiptFrame,
)

__all__ = ["read_packet"]

_MAX_VAR_UINT_BYTES: Final = 8
# oer-utils reads the frame count as a JS number: a length byte of 1..6.
_MAX_COUNT_BYTES: Final = 6
_STREAM_VERSION: Final = 1

Setter = Callable[[Any, Any], None]
_new: Final = object.__new__
# The classes, their setters and ``_new`` are read through ``Final`` names: compiled, a
# ``Final`` is a C static, where an imported name is a lookup in the module's dict on
# every use.


def _slot(cls: type, name: str) -> Setter:
    setter: Setter = cls.__dict__[name].__set__
    return setter


def _uint(b: bytes, i: int, end: int) -> tuple[int, int]:
    """The VarUInt at ``b[i]`` (1..8 bytes, short-form length) and the position after it."""
    if i >= end:
        raise Irregular
    n = b[i]
    j = i + 1 + n
    if n == 1 and j <= end:
        return b[i + 1], j
    if n < 1 or n > _MAX_VAR_UINT_BYTES or j > end:
        raise Irregular
    # Shifted in byte by byte: compiled, this is native arithmetic on the buffer, where
    # ``int.from_bytes`` costs a slice and a bound-method call (twice the time at 2 bytes).
    value = b[i + 1]
    k = i + 2
    while k < j:
        value = (value << 8) | b[k]
        k += 1
    return value, j


def _text(b: bytes, i: int, end: int) -> tuple[str, int]:
    if i >= end:
        raise Irregular
    n = b[i]
    j = i + 1 + n
    if n >= 0x80 or j > end:
        raise Irregular
    return b[i + 1 : j].decode("utf-8", "replace"), j


def _octets(b: bytes, i: int, end: int) -> bytes:
    if i >= end:
        raise Irregular
    n = b[i]
    j = i + 1 + n
    if n >= 0x80 or j > end:
        raise Irregular
    return b[i + 1 : j]


def _byte(b: bytes, i: int, end: int) -> int:
    if i >= end:
        raise Irregular
    return b[i]


# --- one reader per frame type: (plaintext, contents start, contents end) -> frame -------------

_CLOSE_CLASS: Final[type] = ConnectionCloseFrame
_CLOSE_CODE: Final = _slot(ConnectionCloseFrame, "error_code")
_CLOSE_MESSAGE: Final = _slot(ConnectionCloseFrame, "error_message")


def _connection_close(b: bytes, i: int, end: int) -> Frame:
    code = _byte(b, i, end)
    message = _text(b, i + 1, end)[0]
    frame: ConnectionCloseFrame = _new(_CLOSE_CLASS)
    _CLOSE_CODE(frame, code)
    _CLOSE_MESSAGE(frame, message)
    return frame


_NEW_ADDRESS_CLASS: Final[type] = ConnectionNewAddressFrame
_NEW_ADDRESS: Final = _slot(ConnectionNewAddressFrame, "source_account")


def _connection_new_address(b: bytes, i: int, end: int) -> Frame:
    address = _text(b, i, end)[0]
    frame: ConnectionNewAddressFrame = _new(_NEW_ADDRESS_CLASS)
    _NEW_ADDRESS(frame, address)
    return frame


class _Uints:
    """The reader of a frame of one to three VarUInts: its class and its fields' setters.
    A native class, so that :func:`_read_frame` calls ``read`` directly, not through a
    Python call with boxed positions."""

    def __init__(self, cls: type, *names: str) -> None:
        self.cls = cls
        self.count = len(names)
        setters = [_slot(cls, name) for name in names]
        # Unused places hold the first setter; ``count`` keeps them from being called.
        self.set_a, self.set_b, self.set_c = (setters + setters[:1] * 2)[:3]

    def read(self, b: bytes, i: int, end: int) -> Frame:
        # A frame that turns out irregular half-way is dropped with the exception.
        frame: Frame = _new(self.cls)
        value, i = _uint(b, i, end)
        self.set_a(frame, value)
        if self.count > 1:
            # A receive or send max of more than 8 bytes saturates: Irregular, for the
            # strict reader.
            value, i = _uint(b, i, end)
            self.set_b(frame, value)
            if self.count > 2:
                self.set_c(frame, _uint(b, i, end)[0])
        return frame


_ASSET_CLASS: Final[type] = ConnectionAssetDetailsFrame
_ASSET_CODE: Final = _slot(ConnectionAssetDetailsFrame, "source_asset_code")
_ASSET_SCALE: Final = _slot(ConnectionAssetDetailsFrame, "source_asset_scale")


def _connection_asset_details(b: bytes, i: int, end: int) -> Frame:
    code, i = _text(b, i, end)
    scale = _byte(b, i, end)
    frame: ConnectionAssetDetailsFrame = _new(_ASSET_CLASS)
    _ASSET_CODE(frame, code)
    _ASSET_SCALE(frame, scale)
    return frame


_SC_CLASS: Final[type] = StreamCloseFrame
_SC_ID: Final = _slot(StreamCloseFrame, "stream_id")
_SC_CODE: Final = _slot(StreamCloseFrame, "error_code")
_SC_MESSAGE: Final = _slot(StreamCloseFrame, "error_message")


def _stream_close(b: bytes, i: int, end: int) -> Frame:
    stream_id, i = _uint(b, i, end)
    code = _byte(b, i, end)
    message = _text(b, i + 1, end)[0]
    frame: StreamCloseFrame = _new(_SC_CLASS)
    _SC_ID(frame, stream_id)
    _SC_CODE(frame, code)
    _SC_MESSAGE(frame, message)
    return frame


_MONEY_CLASS: Final[type] = StreamMoneyFrame
_MONEY_ID: Final = _slot(StreamMoneyFrame, "stream_id")
_MONEY_SHARES: Final = _slot(StreamMoneyFrame, "shares")


def _stream_money(b: bytes, i: int, end: int) -> Frame:
    stream_id, i = _uint(b, i, end)
    shares = _uint(b, i, end)[0]
    frame: StreamMoneyFrame = _new(_MONEY_CLASS)
    _MONEY_ID(frame, stream_id)
    _MONEY_SHARES(frame, shares)
    return frame


_DATA_CLASS: Final[type] = StreamDataFrame
_DATA_ID: Final = _slot(StreamDataFrame, "stream_id")
_DATA_OFFSET: Final = _slot(StreamDataFrame, "offset")
_DATA_DATA: Final = _slot(StreamDataFrame, "data")


def _stream_data(b: bytes, i: int, end: int) -> Frame:
    stream_id, i = _uint(b, i, end)
    offset, i = _uint(b, i, end)
    data = _octets(b, i, end)
    frame: StreamDataFrame = _new(_DATA_CLASS)
    _DATA_ID(frame, stream_id)
    _DATA_OFFSET(frame, offset)
    _DATA_DATA(frame, data)
    return frame


_RECEIPT_CLASS: Final[type] = StreamReceiptFrame
_RECEIPT_ID: Final = _slot(StreamReceiptFrame, "stream_id")
_RECEIPT_RECEIPT: Final = _slot(StreamReceiptFrame, "receipt")


def _stream_receipt(b: bytes, i: int, end: int) -> Frame:
    stream_id, i = _uint(b, i, end)
    receipt = _octets(b, i, end)
    frame: StreamReceiptFrame = _new(_RECEIPT_CLASS)
    _RECEIPT_ID(frame, stream_id)
    _RECEIPT_RECEIPT(frame, receipt)
    return frame


_MAX_DATA: Final = _Uints(ConnectionMaxDataFrame, "max_offset")
_DATA_BLOCKED: Final = _Uints(ConnectionDataBlockedFrame, "max_offset")
_MAX_STREAM_ID: Final = _Uints(ConnectionMaxStreamIdFrame, "max_stream_id")
_STREAM_ID_BLOCKED: Final = _Uints(ConnectionStreamIdBlockedFrame, "max_stream_id")
_STREAM_MAX_MONEY: Final = _Uints(StreamMaxMoneyFrame, "stream_id", "receive_max", "total_received")
_STREAM_MONEY_BLOCKED: Final = _Uints(
    StreamMoneyBlockedFrame, "stream_id", "send_max", "total_sent"
)
_STREAM_MAX_DATA: Final = _Uints(StreamMaxDataFrame, "stream_id", "max_offset")
_STREAM_DATA_BLOCKED: Final = _Uints(StreamDataBlockedFrame, "stream_id", "max_offset")


def _read_frame(t: int, b: bytes, i: int, end: int) -> Frame | None:
    """The frame of type ``t`` in ``b[i:end]``, or None for a type this version does not
    know (skipped, as the strict reader does). Every type ``ilp.stream.frames.FRAME_CLASSES``
    knows; the money frames first. Compiled, a chain of native comparisons and direct calls:
    no dict lookup, no boxed arguments."""
    if t == 0x11:
        return _stream_money(b, i, end)
    if t == 0x12:
        return _STREAM_MAX_MONEY.read(b, i, end)
    if t == 0x02:
        return _connection_new_address(b, i, end)
    if t == 0x07:
        return _connection_asset_details(b, i, end)
    if t == 0x17:
        return _stream_receipt(b, i, end)
    if t == 0x10:
        return _stream_close(b, i, end)
    if t == 0x01:
        return _connection_close(b, i, end)
    if t == 0x13:
        return _STREAM_MONEY_BLOCKED.read(b, i, end)
    if t == 0x14:
        return _stream_data(b, i, end)
    if t == 0x15:
        return _STREAM_MAX_DATA.read(b, i, end)
    if t == 0x16:
        return _STREAM_DATA_BLOCKED.read(b, i, end)
    if t == 0x03:
        return _MAX_DATA.read(b, i, end)
    if t == 0x04:
        return _DATA_BLOCKED.read(b, i, end)
    if t == 0x05:
        return _MAX_STREAM_ID.read(b, i, end)
    if t == 0x06:
        return _STREAM_ID_BLOCKED.read(b, i, end)
    return None


class _PacketClass:
    """``ilp.stream.packet.StreamPacket`` and its slot setters, bound by that module."""

    def __init__(self, cls: type, types: dict[int, object]) -> None:
        self.cls = cls
        self.types = types
        self.sequence = _slot(cls, "sequence")
        self.packet_type = _slot(cls, "packet_type")
        self.prepare_amount = _slot(cls, "prepare_amount")
        self.frames = _slot(cls, "frames")


_bound: Final[list[_PacketClass]] = []


def _bind() -> _PacketClass:
    # ilp.stream.packet imports this module on its first decode, so it is complete by now.
    from ilp.stream.packet import StreamPacket, StreamPacketType

    _bound[:] = [_PacketClass(StreamPacket, {int(t): t for t in StreamPacketType})]
    return _bound[0]


def read_packet(b: bytes) -> Any:
    """The ``StreamPacket`` in the plaintext ``b``, or :class:`Irregular`."""
    end = len(b)
    if end < 5 or b[0] != _STREAM_VERSION:
        raise Irregular
    bound = _bound[0] if _bound else _bind()
    packet_type = bound.types.get(b[1])
    if packet_type is None:
        raise Irregular
    sequence, i = _uint(b, 2, end)
    amount, i = _uint(b, i, end)
    if i >= end or b[i] > _MAX_COUNT_BYTES:
        raise Irregular
    count, i = _uint(b, i, end)
    if count > (end - i) // 2:
        raise Irregular
    frames: list[Frame] = []
    for _ in range(count):
        if i + 1 >= end:
            raise Irregular
        n = b[i + 1]
        start = i + 2
        i = start + n
        if n >= 0x80 or i > end:
            raise Irregular
        frame = _read_frame(b[start - 2], b, start, i)
        if frame is not None:  # else a frame of an unknown type: skipped
            frames.append(frame)
    packet: Any = _new(bound.cls)
    bound.sequence(packet, sequence)
    bound.packet_type(packet, packet_type)
    bound.prepare_amount(packet, amount)
    bound.frames(packet, tuple(frames))
    return packet
