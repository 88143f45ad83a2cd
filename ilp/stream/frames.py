"""STREAM frames (RFC 0029 section 5.3; ``docs/STREAM.md`` section 3).

A frame on the wire is ``type UInt8 ‖ contents VarOctetString``. Each frame type is one
frozen dataclass with a ``TYPE``; :data:`FRAME_CLASSES` maps the type byte to the class.
Reading follows ``ilp-protocol-stream`` 2.7.2 (``oer-utils``), so a packet a JS endpoint
accepts is accepted here:

- VarUInts are 1 to 8 bytes; a leading zero byte is accepted (JS reads the bytes as a
  number), 0 or more than 8 bytes is an error;
- ``StreamMaxMoneyFrame.receive_max`` and ``StreamMoneyBlockedFrame.send_max`` longer than 8 bytes
  saturate to 2^64-1 (RFC 5.1.4);
- text is UTF-8, read with U+FFFD for invalid sequences (JS ``toString('utf8')``);
- bytes left over inside a known frame's contents are ignored (room for new fields);
- a frame of an unknown type is skipped by :func:`read_frame` (it returns ``None``).

Writing is always canonical.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Final, TypeAlias

from ilp.errors import DecodeError, EncodeError
from ilp.oer import UINT64_MAX, Reader, Writer

__all__ = [
    "FRAME_CLASSES",
    "ConnectionAssetDetailsFrame",
    "ConnectionCloseFrame",
    "ConnectionDataBlockedFrame",
    "ConnectionMaxDataFrame",
    "ConnectionMaxStreamIdFrame",
    "ConnectionNewAddressFrame",
    "ConnectionStreamIdBlockedFrame",
    "ErrorCode",
    "Frame",
    "FrameType",
    "Irregular",
    "StreamCloseFrame",
    "StreamDataBlockedFrame",
    "StreamDataFrame",
    "StreamMaxDataFrame",
    "StreamMaxMoneyFrame",
    "StreamMoneyBlockedFrame",
    "StreamMoneyFrame",
    "StreamReceiptFrame",
    "encode_frame",
    "read_frame",
    "write_frame",
]

_MAX_VAR_UINT_BYTES: Final = 8
UINT8_MAX: Final = 255


class FrameType(IntEnum):
    CONNECTION_CLOSE = 0x01
    CONNECTION_NEW_ADDRESS = 0x02
    CONNECTION_MAX_DATA = 0x03
    CONNECTION_DATA_BLOCKED = 0x04
    CONNECTION_MAX_STREAM_ID = 0x05
    CONNECTION_STREAM_ID_BLOCKED = 0x06
    CONNECTION_ASSET_DETAILS = 0x07
    STREAM_CLOSE = 0x10
    STREAM_MONEY = 0x11
    STREAM_MAX_MONEY = 0x12
    STREAM_MONEY_BLOCKED = 0x13
    STREAM_DATA = 0x14
    STREAM_MAX_DATA = 0x15
    STREAM_DATA_BLOCKED = 0x16
    STREAM_RECEIPT = 0x17


class ErrorCode(IntEnum):
    """Close codes of ``ConnectionCloseFrame`` and ``StreamCloseFrame`` (RFC 0029 5.4).

    Frames keep the code as a plain ``int``: an unknown code is legal on the wire.
    """

    NO_ERROR = 0x01
    INTERNAL_ERROR = 0x02
    ENDPOINT_BUSY = 0x03
    FLOW_CONTROL_ERROR = 0x04
    STREAM_ID_ERROR = 0x05
    STREAM_STATE_ERROR = 0x06
    FRAME_FORMAT_ERROR = 0x07
    PROTOCOL_VIOLATION = 0x08
    APPLICATION_ERROR = 0x09


# --- field checks and readers -----------------------------------------------------------


def _uint(name: str, value: object, maximum: int = UINT64_MAX) -> None:
    # bool is an int subclass; a True amount is always a bug.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= maximum:
        raise EncodeError(f"{name} out of range: {value}")


def _text(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates
        raise EncodeError(f"{name} is not encodable as UTF-8") from exc


def _octets(name: str, value: object) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")


def read_var_uint(r: Reader, what: str) -> int:
    """A VarUInt as ``oer-utils`` reads it: 1..8 bytes, leading zeros allowed."""
    start = r.pos
    length = r.read_length(f"{what} length")
    if length == 0:
        r.pos = start
        raise r.fail(f"{what}: zero-length VarUInt")
    if length > _MAX_VAR_UINT_BYTES:
        r.pos = start
        raise r.fail(f"{what}: VarUInt of {length} bytes is too large")
    return int.from_bytes(r.read(length, what), "big")


def _read_saturating(r: Reader, what: str) -> int:
    """RFC 5.1.4: a receive/send maximum too large for a UInt64 reads as 2^64-1."""
    start = r.pos
    length = r.read_length(f"{what} length")
    if length > _MAX_VAR_UINT_BYTES:
        r.read(length, what)
        return UINT64_MAX
    r.pos = start
    return read_var_uint(r, what)


def _read_text(r: Reader, what: str) -> str:
    return r.read_utf8(what, strict=False)


# --- the frames ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionCloseFrame:
    TYPE: ClassVar[FrameType] = FrameType.CONNECTION_CLOSE
    error_code: int
    error_message: str = ""

    def __post_init__(self) -> None:
        _uint("error_code", self.error_code, UINT8_MAX)
        _text("error_message", self.error_message)

    def write(self, w: Writer) -> None:
        w.write_uint8(self.error_code)
        w.write_utf8(self.error_message)

    @classmethod
    def read(cls, r: Reader) -> ConnectionCloseFrame:
        return cls(r.read_uint8("error code"), _read_text(r, "error message"))


@dataclass(frozen=True, slots=True)
class ConnectionNewAddressFrame:
    """The sender's ILP address; not validated (``@interledger/pay`` sends ``""``)."""

    TYPE: ClassVar[FrameType] = FrameType.CONNECTION_NEW_ADDRESS
    source_account: str

    def __post_init__(self) -> None:
        _text("source_account", self.source_account)

    def write(self, w: Writer) -> None:
        w.write_utf8(self.source_account)

    @classmethod
    def read(cls, r: Reader) -> ConnectionNewAddressFrame:
        return cls(_read_text(r, "source account"))


@dataclass(frozen=True, slots=True)
class ConnectionMaxDataFrame:
    TYPE: ClassVar[FrameType] = FrameType.CONNECTION_MAX_DATA
    max_offset: int

    def __post_init__(self) -> None:
        _uint("max_offset", self.max_offset)

    def write(self, w: Writer) -> None:
        w.write_var_uint(self.max_offset)

    @classmethod
    def read(cls, r: Reader) -> ConnectionMaxDataFrame:
        return cls(read_var_uint(r, "max offset"))


@dataclass(frozen=True, slots=True)
class ConnectionDataBlockedFrame:
    TYPE: ClassVar[FrameType] = FrameType.CONNECTION_DATA_BLOCKED
    max_offset: int

    def __post_init__(self) -> None:
        _uint("max_offset", self.max_offset)

    def write(self, w: Writer) -> None:
        w.write_var_uint(self.max_offset)

    @classmethod
    def read(cls, r: Reader) -> ConnectionDataBlockedFrame:
        return cls(read_var_uint(r, "max offset"))


@dataclass(frozen=True, slots=True)
class ConnectionMaxStreamIdFrame:
    TYPE: ClassVar[FrameType] = FrameType.CONNECTION_MAX_STREAM_ID
    max_stream_id: int

    def __post_init__(self) -> None:
        _uint("max_stream_id", self.max_stream_id)

    def write(self, w: Writer) -> None:
        w.write_var_uint(self.max_stream_id)

    @classmethod
    def read(cls, r: Reader) -> ConnectionMaxStreamIdFrame:
        return cls(read_var_uint(r, "max stream id"))


@dataclass(frozen=True, slots=True)
class ConnectionStreamIdBlockedFrame:
    TYPE: ClassVar[FrameType] = FrameType.CONNECTION_STREAM_ID_BLOCKED
    max_stream_id: int

    def __post_init__(self) -> None:
        _uint("max_stream_id", self.max_stream_id)

    def write(self, w: Writer) -> None:
        w.write_var_uint(self.max_stream_id)

    @classmethod
    def read(cls, r: Reader) -> ConnectionStreamIdBlockedFrame:
        return cls(read_var_uint(r, "max stream id"))


@dataclass(frozen=True, slots=True)
class ConnectionAssetDetailsFrame:
    TYPE: ClassVar[FrameType] = FrameType.CONNECTION_ASSET_DETAILS
    source_asset_code: str
    source_asset_scale: int

    def __post_init__(self) -> None:
        _text("source_asset_code", self.source_asset_code)
        _uint("source_asset_scale", self.source_asset_scale, UINT8_MAX)

    def write(self, w: Writer) -> None:
        w.write_utf8(self.source_asset_code)
        w.write_uint8(self.source_asset_scale)

    @classmethod
    def read(cls, r: Reader) -> ConnectionAssetDetailsFrame:
        return cls(_read_text(r, "asset code"), r.read_uint8("asset scale"))


@dataclass(frozen=True, slots=True)
class StreamCloseFrame:
    TYPE: ClassVar[FrameType] = FrameType.STREAM_CLOSE
    stream_id: int
    error_code: int
    error_message: str = ""

    def __post_init__(self) -> None:
        _uint("stream_id", self.stream_id)
        _uint("error_code", self.error_code, UINT8_MAX)
        _text("error_message", self.error_message)

    def write(self, w: Writer) -> None:
        w.write_var_uint(self.stream_id)
        w.write_uint8(self.error_code)
        w.write_utf8(self.error_message)

    @classmethod
    def read(cls, r: Reader) -> StreamCloseFrame:
        stream_id = read_var_uint(r, "stream id")
        return cls(stream_id, r.read_uint8("error code"), _read_text(r, "error message"))


@dataclass(frozen=True, slots=True)
class StreamMoneyFrame:
    """``shares`` of the Prepare amount go to ``stream_id`` (RFC 5.3.8)."""

    TYPE: ClassVar[FrameType] = FrameType.STREAM_MONEY
    stream_id: int
    shares: int

    def __post_init__(self) -> None:
        _uint("stream_id", self.stream_id)
        _uint("shares", self.shares)

    def write(self, w: Writer) -> None:
        w.write_var_uint(self.stream_id)
        w.write_var_uint(self.shares)

    @classmethod
    def read(cls, r: Reader) -> StreamMoneyFrame:
        return cls(read_var_uint(r, "stream id"), read_var_uint(r, "shares"))


@dataclass(frozen=True, slots=True)
class StreamMaxMoneyFrame:
    TYPE: ClassVar[FrameType] = FrameType.STREAM_MAX_MONEY
    stream_id: int
    receive_max: int
    total_received: int

    def __post_init__(self) -> None:
        _uint("stream_id", self.stream_id)
        _uint("receive_max", self.receive_max)
        _uint("total_received", self.total_received)

    def write(self, w: Writer) -> None:
        w.write_var_uint(self.stream_id)
        w.write_var_uint(self.receive_max)
        w.write_var_uint(self.total_received)

    @classmethod
    def read(cls, r: Reader) -> StreamMaxMoneyFrame:
        stream_id = read_var_uint(r, "stream id")
        receive_max = _read_saturating(r, "receive max")
        return cls(stream_id, receive_max, read_var_uint(r, "total received"))


@dataclass(frozen=True, slots=True)
class StreamMoneyBlockedFrame:
    TYPE: ClassVar[FrameType] = FrameType.STREAM_MONEY_BLOCKED
    stream_id: int
    send_max: int
    total_sent: int

    def __post_init__(self) -> None:
        _uint("stream_id", self.stream_id)
        _uint("send_max", self.send_max)
        _uint("total_sent", self.total_sent)

    def write(self, w: Writer) -> None:
        w.write_var_uint(self.stream_id)
        w.write_var_uint(self.send_max)
        w.write_var_uint(self.total_sent)

    @classmethod
    def read(cls, r: Reader) -> StreamMoneyBlockedFrame:
        stream_id = read_var_uint(r, "stream id")
        send_max = _read_saturating(r, "send max")
        return cls(stream_id, send_max, read_var_uint(r, "total sent"))


@dataclass(frozen=True, slots=True)
class StreamDataFrame:
    TYPE: ClassVar[FrameType] = FrameType.STREAM_DATA
    stream_id: int
    offset: int
    data: bytes

    def __post_init__(self) -> None:
        _uint("stream_id", self.stream_id)
        _uint("offset", self.offset)
        _octets("data", self.data)

    def write(self, w: Writer) -> None:
        w.write_var_uint(self.stream_id)
        w.write_var_uint(self.offset)
        w.write_var_octets(self.data)

    @classmethod
    def read(cls, r: Reader) -> StreamDataFrame:
        stream_id = read_var_uint(r, "stream id")
        offset = read_var_uint(r, "offset")
        return cls(stream_id, offset, r.read_var_octets("stream data"))


@dataclass(frozen=True, slots=True)
class StreamMaxDataFrame:
    TYPE: ClassVar[FrameType] = FrameType.STREAM_MAX_DATA
    stream_id: int
    max_offset: int

    def __post_init__(self) -> None:
        _uint("stream_id", self.stream_id)
        _uint("max_offset", self.max_offset)

    def write(self, w: Writer) -> None:
        w.write_var_uint(self.stream_id)
        w.write_var_uint(self.max_offset)

    @classmethod
    def read(cls, r: Reader) -> StreamMaxDataFrame:
        return cls(read_var_uint(r, "stream id"), read_var_uint(r, "max offset"))


@dataclass(frozen=True, slots=True)
class StreamDataBlockedFrame:
    TYPE: ClassVar[FrameType] = FrameType.STREAM_DATA_BLOCKED
    stream_id: int
    max_offset: int

    def __post_init__(self) -> None:
        _uint("stream_id", self.stream_id)
        _uint("max_offset", self.max_offset)

    def write(self, w: Writer) -> None:
        w.write_var_uint(self.stream_id)
        w.write_var_uint(self.max_offset)

    @classmethod
    def read(cls, r: Reader) -> StreamDataBlockedFrame:
        return cls(read_var_uint(r, "stream id"), read_var_uint(r, "max offset"))


@dataclass(frozen=True, slots=True)
class StreamReceiptFrame:
    """An RFC 0039 receipt (``ilp.stream.receipts``), carried opaque here."""

    TYPE: ClassVar[FrameType] = FrameType.STREAM_RECEIPT
    stream_id: int
    receipt: bytes

    def __post_init__(self) -> None:
        _uint("stream_id", self.stream_id)
        _octets("receipt", self.receipt)

    def write(self, w: Writer) -> None:
        w.write_var_uint(self.stream_id)
        w.write_var_octets(self.receipt)

    @classmethod
    def read(cls, r: Reader) -> StreamReceiptFrame:
        return cls(read_var_uint(r, "stream id"), r.read_var_octets("receipt"))


Frame: TypeAlias = (
    ConnectionCloseFrame
    | ConnectionNewAddressFrame
    | ConnectionMaxDataFrame
    | ConnectionDataBlockedFrame
    | ConnectionMaxStreamIdFrame
    | ConnectionStreamIdBlockedFrame
    | ConnectionAssetDetailsFrame
    | StreamCloseFrame
    | StreamMoneyFrame
    | StreamMaxMoneyFrame
    | StreamMoneyBlockedFrame
    | StreamDataFrame
    | StreamMaxDataFrame
    | StreamDataBlockedFrame
    | StreamReceiptFrame
)


#: Type byte → frame class: the registry of every frame this version knows.
FRAME_CLASSES: Final[dict[int, type[Frame]]] = {
    cls.TYPE: cls
    for cls in (
        ConnectionCloseFrame,
        ConnectionNewAddressFrame,
        ConnectionMaxDataFrame,
        ConnectionDataBlockedFrame,
        ConnectionMaxStreamIdFrame,
        ConnectionStreamIdBlockedFrame,
        ConnectionAssetDetailsFrame,
        StreamCloseFrame,
        StreamMoneyFrame,
        StreamMaxMoneyFrame,
        StreamMoneyBlockedFrame,
        StreamDataFrame,
        StreamMaxDataFrame,
        StreamDataBlockedFrame,
        StreamReceiptFrame,
    )
}


def write_frame(w: Writer, frame: Frame) -> None:
    """``type ‖ var-octets(contents)`` onto ``w``."""
    if type(frame) not in _KNOWN:
        raise TypeError(f"not a STREAM frame: {type(frame).__name__}")
    contents = Writer()
    frame.write(contents)
    w.write_uint8(frame.TYPE)
    w.write_var_octets(contents.getvalue())


def encode_frame(frame: Frame) -> bytes:
    w = Writer()
    write_frame(w, frame)
    return w.getvalue()


def read_frame(r: Reader) -> Frame | None:
    """The next frame, or ``None`` for a frame of an unknown type (skipped whole)."""
    kind = r.read_uint8("frame type")
    contents = r.read_container("frame contents")
    cls = FRAME_CLASSES.get(kind)
    if cls is None:
        return None
    try:
        return cls.read(contents)
    except (EncodeError, TypeError) as exc:  # cannot happen for read values; belt and braces
        raise DecodeError(f"frame type {kind}: {exc}", contents.offset) from None


_KNOWN: Final = frozenset(FRAME_CLASSES.values())


class Irregular(Exception):
    """The fast reader (``ilp._stream_read``) met something only the strict reader may judge."""
