"""BTP/2.0 frames (RFC 23 draft 7, ``shared/spec/btp.md``), as btp-packet 2.2.1 writes them.

One WebSocket binary message carries one frame: ``type`` (UInt8), ``requestId`` (UInt32)
and the type's contents in one OER var-octet-string. Every type ends with a list of
:class:`ProtocolData` entries whose count is a canonical VarUInt (``01 00`` for none).

Decoding is strict (``shared/spec/oer.md`` section 8): canonical lengths only, no bytes
after the last entry or after the envelope, IA5 names. :func:`decode_btp` raises only
:class:`~ilp.errors.DecodeError`, whatever bytes arrive.

The frames that carry an ILP packet (a Message or a Response with exactly one ``ilp``
entry) are the node's hot path, so they have a specialised encoder and decoder
(:func:`encode_ilp_frame`, :func:`peek_ilp_frame`) that never build objects and agree
byte for byte with the general codec; the general codec uses them too.
"""

import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum, StrEnum
from types import FunctionType
from typing import Any, ClassVar, Final, Literal, TypeAlias

from ilp._variant import python_method
from ilp.errors import DecodeError, EncodeError, IlpError
from ilp.oer import (
    UINT64_MAX,
    Reader,
    Writer,
    encode_length,
    format_generalized_time,
    parse_generalized_time,
    read_length_at,
)

__all__ = [
    "AUTH",
    "AUTH_TOKEN",
    "AUTH_USERNAME",
    "BTP_IDEMPOTENT",
    "ILP",
    "UINT32_MAX",
    "AuthRejected",
    "AuthRequest",
    "BtpError",
    "BtpErrorCode",
    "BtpMessage",
    "BtpPacket",
    "BtpReply",
    "BtpRequest",
    "BtpResponse",
    "BtpTransfer",
    "BtpType",
    "ContentType",
    "ProtocolData",
    "auth_credentials",
    "auth_message",
    "auth_response",
    "btp_error",
    "decode_btp",
    "encode_btp",
    "encode_ilp_frame",
    "find_entry",
    "ilp_message",
    "ilp_response",
    "offers_idempotent",
    "peek_header",
    "peek_ilp_frame",
    "read_auth",
]

UINT32_MAX: Final = 2**32 - 1

# Protocol (entry) names with a meaning of their own.
ILP: Final = "ilp"
AUTH: Final = "auth"
AUTH_USERNAME: Final = "auth_username"
AUTH_TOKEN: Final = "auth_token"
# BTP/2.0-I negotiation entry (btp.md section 7.1); its data is the text "1".
BTP_IDEMPOTENT: Final = "btp_idempotent"
_IDEMPOTENT_ON: Final = b"1"


class BtpType(IntEnum):
    RESPONSE = 1
    ERROR = 2
    # BTP/1 conditional transfers, removed in BTP/2.0: named so logs can say what
    # arrived, but there is no class for them and they decode as an unknown type.
    PREPARE = 3
    FULFILL = 4
    REJECT = 5
    MESSAGE = 6
    TRANSFER = 7


class ContentType(IntEnum):
    APPLICATION_OCTET_STREAM = 0
    TEXT_PLAIN_UTF8 = 1
    APPLICATION_JSON = 2


class BtpErrorCode(StrEnum):
    """The ``code`` of a BTP Error (RFC 23's table; btp.md section 1.3).

    ``T`` codes are temporary (retry later), ``F`` codes final. ``T99``/``F99`` are not
    in RFC 23: they mirror ILP's catch-all application errors for our own use.
    """

    T00 = "T00"
    T99 = "T99"
    F00 = "F00"
    F01 = "F01"
    F03 = "F03"
    F04 = "F04"
    F05 = "F05"
    F06 = "F06"
    F07 = "F07"
    F08 = "F08"
    F99 = "F99"

    @property
    def error_name(self) -> str:
        """The ``name`` that goes with the code on the wire, e.g. ``NotAcceptedError``."""
        return _ERROR_NAMES[self]


_ERROR_NAMES: Final[dict[BtpErrorCode, str]] = {
    BtpErrorCode.T00: "UnreachableError",
    BtpErrorCode.T99: "ApplicationError",
    BtpErrorCode.F00: "NotAcceptedError",
    BtpErrorCode.F01: "InvalidFieldsError",
    BtpErrorCode.F03: "TransferNotFoundError",
    BtpErrorCode.F04: "InvalidFulfillmentError",
    BtpErrorCode.F05: "DuplicateIdError",
    BtpErrorCode.F06: "AlreadyRolledBackError",
    BtpErrorCode.F07: "AlreadyFulfilledError",
    BtpErrorCode.F08: "InsufficientBalanceError",
    BtpErrorCode.F99: "ApplicationError",
}


def _check_request_id(request_id: object) -> None:
    if type(request_id) is not int or not 0 <= request_id <= UINT32_MAX:
        raise EncodeError(f"requestId must be a UInt32, got {request_id!r}")


def _check_ascii(value: object, what: str) -> None:
    if not isinstance(value, str) or not value.isascii():
        raise EncodeError(f"{what} must be an ASCII (IA5) string, got {value!r}")


# _TYPE_NOTE: each frame class's ``TYPE`` annotation is a string, and this module has no
# ``from __future__ import annotations``, on purpose. Compiled, mypyc hands the dataclass
# decorator an annotation dict in which an unquoted ``ClassVar[BtpType]`` arrives as plain
# ``BtpType``, so ``TYPE`` became a field; a quoted annotation reaches dataclasses as the
# text ``ClassVar[...]`` both compiled and as Python (with the future import, Python would
# see the quotes themselves and miss the ClassVar).


def _compiled_probe() -> None:
    """Exists to tell whether this module runs compiled (see :data:`COMPILED`)."""


#: True when this module is the mypyc-built extension (``scripts/build_codec.py``).
COMPILED: Final = not isinstance(_compiled_probe, FunctionType)


@dataclass(frozen=True, slots=True)
class ProtocolData:
    """One protocolData entry.

    ``content_type`` is kept as the raw byte: values other than 0/1/2 are legal on the
    wire (btp.md section 1.1 says to treat them as 0) and must survive a round trip.
    """

    protocol_name: str
    content_type: int
    data: bytes

    def __post_init__(self) -> None:
        _init_entry(self, self.protocol_name, self.content_type, self.data)


def _slot_setter(cls: type, name: str) -> Callable[[Any, Any], None]:
    """The raw slot setter of field ``name`` of a frozen slotted dataclass."""
    setter: Callable[[Any, Any], None] = cls.__dict__[name].__set__
    return setter


_SET_NAME: Final = _slot_setter(ProtocolData, "protocol_name")
_SET_CONTENT_TYPE: Final = _slot_setter(ProtocolData, "content_type")
_SET_DATA: Final = _slot_setter(ProtocolData, "data")


def _check_protocol_data(entries: object) -> None:
    if not isinstance(entries, tuple):
        raise EncodeError("protocol_data must be a tuple of ProtocolData")
    for entry in entries:
        if not isinstance(entry, ProtocolData):
            raise EncodeError(f"protocol_data holds a {type(entry).__name__}, not ProtocolData")


def _store_entry(entry: ProtocolData, protocol_name: str, content_type: int, data: bytes) -> None:
    """Fill in a :class:`ProtocolData` (the frame classes have one of these each).

    Compiled, the attribute stores are direct writes to the native object; as Python they
    would hit the frozen ``__setattr__``, so the slot setters do it (as in ``ilp.packet``).
    """
    if COMPILED:
        entry.protocol_name = protocol_name  # type: ignore[misc]
        entry.content_type = content_type  # type: ignore[misc]
        entry.data = data  # type: ignore[misc]
    else:
        _SET_NAME(entry, protocol_name)
        _SET_CONTENT_TYPE(entry, content_type)
        _SET_DATA(entry, data)


def _init_entry(
    self: ProtocolData, protocol_name: object, content_type: object, data: object
) -> None:
    """The checks of ``ProtocolData(...)``: its ``__post_init__`` as Python, its ``__init__``
    compiled (see ``ilp.packet``'s construction notes: a native attribute would refuse a
    wrong type before these checks could say what is wrong)."""
    _check_ascii(protocol_name, "protocolName")
    assert isinstance(protocol_name, str)
    if type(content_type) is not int:
        if not isinstance(content_type, int) or isinstance(content_type, bool):
            raise EncodeError(f"contentType must be an int, got {content_type!r}")
        # A ContentType member is stored as its plain value, as the decoder produces it.
        content_type = int(content_type)
    if not 0 <= content_type <= 0xFF:
        raise EncodeError(f"contentType must be a UInt8, got {content_type}")
    if not isinstance(data, bytes):
        raise EncodeError(f"protocol data must be bytes, got {type(data).__name__}")
    _store_entry(self, protocol_name, content_type, data)


def _trusted_entry(protocol_name: str, content_type: int, data: bytes) -> ProtocolData:
    """A :class:`ProtocolData` from fields the decoder has checked (IA5 name, UInt8, bytes)."""
    entry: ProtocolData = ProtocolData.__new__(ProtocolData)
    if COMPILED:  # one native call
        _store_entry(entry, protocol_name, content_type, data)
    else:  # inlined: a Python call costs as much as the stores
        _SET_NAME(entry, protocol_name)
        _SET_CONTENT_TYPE(entry, content_type)
        _SET_DATA(entry, data)
    return entry


def _write_protocol_data(w: Writer, entries: tuple[ProtocolData, ...]) -> None:
    w.write_var_uint(len(entries))
    for entry in entries:
        w.write_ia5(entry.protocol_name)
        w.write_uint8(entry.content_type)
        w.write_var_octets(entry.data)


def _read_protocol_data(r: Reader) -> tuple[ProtocolData, ...]:
    start = r.offset
    count = r.read_var_uint("protocolData count")
    # Each entry takes at least 3 bytes (empty name, contentType, empty data); a count
    # that cannot fit is refused before any loop runs on it.
    if count * 3 > r.remaining():
        raise DecodeError(f"protocolData count {count} exceeds the bytes left", start)
    entries = []
    for _ in range(count):
        name = r.read_ia5("protocolName")
        content_type = r.read_uint8("contentType")
        data = r.read_var_octets("protocol data")
        entries.append(_trusted_entry(name, content_type, data))
    return tuple(entries)


@dataclass(frozen=True, slots=True)
class BtpResponse:
    """Type 1: the successful reply to a Message or Transfer."""

    TYPE: "ClassVar[Literal[BtpType.RESPONSE]]" = BtpType.RESPONSE  # see _TYPE_NOTE

    request_id: int
    protocol_data: tuple[ProtocolData, ...] = ()

    def __post_init__(self) -> None:
        _init_response(self, self.request_id, self.protocol_data)

    def _write(self, w: Writer) -> None:
        _write_protocol_data(w, self.protocol_data)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> "BtpResponse":
        return _trusted_response(request_id, _read_protocol_data(r))


@dataclass(frozen=True, slots=True)
class BtpError:
    """Type 2: the request could not be processed at all (never an ILP-level error).

    ``triggered_at`` is the raw GeneralizedTime text: it is informational, so a peer's
    malformed time is kept as sent (see :attr:`triggered_at_time`). ``data`` is bytes;
    JS treats it as UTF-8 text (bare, or ``{"message": ...}`` JSON).
    """

    TYPE: "ClassVar[Literal[BtpType.ERROR]]" = BtpType.ERROR  # see _TYPE_NOTE

    request_id: int
    code: str
    name: str
    triggered_at: str
    data: bytes = b""
    protocol_data: tuple[ProtocolData, ...] = ()

    def __post_init__(self) -> None:
        _init_error(
            self,
            self.request_id,
            self.code,
            self.name,
            self.triggered_at,
            self.data,
            self.protocol_data,
        )

    @property
    def triggered_at_time(self) -> datetime | None:
        """``triggered_at`` as an aware UTC datetime, or ``None`` if it is not a time."""
        return parse_generalized_time(self.triggered_at)

    @property
    def message(self) -> str:
        """``data`` as text, the way JS reads it (invalid UTF-8 replaced, never an error)."""
        return self.data.decode("utf-8", "replace")

    def _write(self, w: Writer) -> None:
        w.write(self.code.encode("ascii"))
        w.write_ia5(self.name)
        w.write_ia5(self.triggered_at)
        w.write_var_octets(self.data)
        _write_protocol_data(w, self.protocol_data)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> "BtpError":
        start = r.offset
        code = r.read(3, "error code")
        if not code.isascii():
            raise DecodeError("error code: bytes above 0x7F are not IA5", start)
        name = r.read_ia5("error name")
        triggered_at = r.read_ia5("triggeredAt")
        data = r.read_var_octets("error data")
        return cls(
            request_id, code.decode("ascii"), name, triggered_at, data, _read_protocol_data(r)
        )


@dataclass(frozen=True, slots=True)
class BtpMessage:
    """Type 6: a request carrying side-protocol data (``ilp``, ``auth``, CCP-less extras)."""

    TYPE: "ClassVar[Literal[BtpType.MESSAGE]]" = BtpType.MESSAGE  # see _TYPE_NOTE

    request_id: int
    protocol_data: tuple[ProtocolData, ...] = ()

    def __post_init__(self) -> None:
        _init_message(self, self.request_id, self.protocol_data)

    def _write(self, w: Writer) -> None:
        _write_protocol_data(w, self.protocol_data)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> "BtpMessage":
        return _trusted_message(request_id, _read_protocol_data(r))


@dataclass(frozen=True, slots=True)
class BtpTransfer:
    """Type 7: settlement value (``amount`` is a UInt64 in the link's base units)."""

    TYPE: "ClassVar[Literal[BtpType.TRANSFER]]" = BtpType.TRANSFER  # see _TYPE_NOTE

    request_id: int
    amount: int
    protocol_data: tuple[ProtocolData, ...] = ()

    def __post_init__(self) -> None:
        _init_transfer(self, self.request_id, self.amount, self.protocol_data)

    def _write(self, w: Writer) -> None:
        w.write_uint(self.amount, 8)
        _write_protocol_data(w, self.protocol_data)

    @classmethod
    def _read(cls, request_id: int, r: Reader) -> "BtpTransfer":
        amount = r.read_uint(8, "Transfer amount")
        return cls(request_id, amount, _read_protocol_data(r))


_SET_MESSAGE_ID: Final = _slot_setter(BtpMessage, "request_id")
_SET_MESSAGE_DATA: Final = _slot_setter(BtpMessage, "protocol_data")
_SET_RESPONSE_ID: Final = _slot_setter(BtpResponse, "request_id")
_SET_RESPONSE_DATA: Final = _slot_setter(BtpResponse, "protocol_data")


def _store_message(message: BtpMessage, request_id: int, entries: tuple[ProtocolData, ...]) -> None:
    if COMPILED:
        message.request_id = request_id  # type: ignore[misc]
        message.protocol_data = entries  # type: ignore[misc]
    else:
        _SET_MESSAGE_ID(message, request_id)
        _SET_MESSAGE_DATA(message, entries)


def _store_response(
    response: BtpResponse, request_id: int, entries: tuple[ProtocolData, ...]
) -> None:
    if COMPILED:
        response.request_id = request_id  # type: ignore[misc]
        response.protocol_data = entries  # type: ignore[misc]
    else:
        _SET_RESPONSE_ID(response, request_id)
        _SET_RESPONSE_DATA(response, entries)


def _init_message(self: BtpMessage, request_id: object, protocol_data: object = ()) -> None:
    _check_request_id(request_id)
    _check_protocol_data(protocol_data)
    assert isinstance(request_id, int) and isinstance(protocol_data, tuple)
    _store_message(self, request_id, protocol_data)


def _init_response(self: BtpResponse, request_id: object, protocol_data: object = ()) -> None:
    _check_request_id(request_id)
    _check_protocol_data(protocol_data)
    assert isinstance(request_id, int) and isinstance(protocol_data, tuple)
    _store_response(self, request_id, protocol_data)


def _trusted_message(request_id: int, entries: tuple[ProtocolData, ...]) -> BtpMessage:
    message: BtpMessage = BtpMessage.__new__(BtpMessage)
    if COMPILED:
        _store_message(message, request_id, entries)
    else:
        _SET_MESSAGE_ID(message, request_id)
        _SET_MESSAGE_DATA(message, entries)
    return message


def _trusted_response(request_id: int, entries: tuple[ProtocolData, ...]) -> BtpResponse:
    response: BtpResponse = BtpResponse.__new__(BtpResponse)
    if COMPILED:
        _store_response(response, request_id, entries)
    else:
        _SET_RESPONSE_ID(response, request_id)
        _SET_RESPONSE_DATA(response, entries)
    return response


# The colder classes store through object.__setattr__ (the checked values have the
# declared types, so a native attribute takes them as they are).
_set = object.__setattr__


def _init_error(
    self: BtpError,
    request_id: object,
    code: object,
    name: object,
    triggered_at: object,
    data: object = b"",
    protocol_data: object = (),
) -> None:
    _check_request_id(request_id)
    if isinstance(code, BtpErrorCode):
        # Store the plain text so a decoded Error and a built one compare and repr alike.
        code = code.value
    _check_ascii(code, "error code")
    assert isinstance(code, str)
    if len(code) != 3:
        raise EncodeError(f"error code must be 3 characters, got {code!r}")
    _check_ascii(name, "error name")
    _check_ascii(triggered_at, "triggeredAt")
    if not isinstance(data, bytes):
        raise EncodeError(f"error data must be bytes, got {type(data).__name__}")
    _check_protocol_data(protocol_data)
    for field, value in (
        ("request_id", request_id),
        ("code", code),
        ("name", name),
        ("triggered_at", triggered_at),
        ("data", data),
        ("protocol_data", protocol_data),
    ):
        _set(self, field, value)


def _init_transfer(
    self: BtpTransfer, request_id: object, amount: object, protocol_data: object = ()
) -> None:
    _check_request_id(request_id)
    if type(amount) is not int or not 0 <= amount <= UINT64_MAX:
        raise EncodeError(f"Transfer amount must be a UInt64, got {amount!r}")
    _check_protocol_data(protocol_data)
    _set(self, "request_id", request_id)
    _set(self, "amount", amount)
    _set(self, "protocol_data", protocol_data)


if COMPILED:
    # See _init_entry: compiled, the checks are the __init__ itself.
    setattr(ProtocolData, "__init__", python_method(_init_entry))  # noqa: B010
    setattr(BtpMessage, "__init__", python_method(_init_message))  # noqa: B010
    setattr(BtpResponse, "__init__", python_method(_init_response))  # noqa: B010
    setattr(BtpError, "__init__", python_method(_init_error))  # noqa: B010
    setattr(BtpTransfer, "__init__", python_method(_init_transfer))  # noqa: B010


BtpPacket: TypeAlias = BtpResponse | BtpError | BtpMessage | BtpTransfer
BtpRequest: TypeAlias = BtpMessage | BtpTransfer
BtpReply: TypeAlias = BtpResponse | BtpError

_READERS: Final[dict[int, Callable[[int, Reader], BtpPacket]]] = {
    BtpType.RESPONSE: BtpResponse._read,
    BtpType.ERROR: BtpError._read,
    BtpType.MESSAGE: BtpMessage._read,
    BtpType.TRANSFER: BtpTransfer._read,
}


# --- the hot path: one "ilp" entry in a Message or a Response -------------------------

# count 1 (VarUInt 01 01), name "ilp" (03 'ilp'), contentType 0.
_ILP_ENTRY_HEAD: Final = b"\x01\x01\x03ilp\x00"
_HEADER: Final = struct.Struct(">BI")
_SHORT_LENGTHS: Final = tuple(bytes((n,)) for n in range(0x80))


def _length_prefix(n: int) -> bytes:
    return _SHORT_LENGTHS[n] if n < 0x80 else encode_length(n)


def encode_ilp_frame(btp_type: BtpType, request_id: int, ilp: bytes) -> bytes:
    """The bytes of a Message or Response carrying exactly ``[{ilp, 0, ilp}]``.

    Identical to ``encode_btp(ilp_message(...))`` / ``encode_btp(ilp_response(...))``
    without building the objects.
    """
    if btp_type is not BtpType.MESSAGE and btp_type is not BtpType.RESPONSE:
        raise EncodeError(f"an ilp frame is a Message or a Response, not {btp_type!r}")
    _check_request_id(request_id)
    if not isinstance(ilp, bytes):
        raise EncodeError(f"ILP packet must be bytes, got {type(ilp).__name__}")
    n = len(ilp)
    data_prefix = _length_prefix(n)
    return b"".join(
        (
            _HEADER.pack(btp_type, request_id),
            _length_prefix(len(_ILP_ENTRY_HEAD) + len(data_prefix) + n),
            _ILP_ENTRY_HEAD,
            data_prefix,
            ilp,
        )
    )


def _length_at(raw: bytes, pos: int, end: int) -> tuple[int, int]:
    """``(length, start of the value)`` of the determinant at ``pos``, or ``(-1, 0)`` if it
    is not a canonical one that fits. The short and two-byte forms inlined; the others go
    to the one home of the canonical rules (:func:`ilp.oer.read_length_at`)."""
    if pos >= end:
        return -1, 0
    first = raw[pos]
    if first < 0x80:
        return first, pos + 1
    if first == 0x82 and pos + 2 < end and raw[pos + 1] != 0:
        return (raw[pos + 1] << 8) | raw[pos + 2], pos + 3
    try:
        return read_length_at(raw, pos, end)
    except DecodeError:
        return -1, 0  # the general decoder will say what is wrong


def _ilp_data_start(raw: bytes) -> int:
    """Where the ilp bytes start if ``raw`` is exactly a Message or Response with one
    ``ilp`` entry of content type 0 (they run to the end); -1 for any other frame."""
    end = len(raw)
    if end < 14:  # 5 header + 1 length + 7 entry head + 1 data length
        return -1
    kind = raw[0]
    if kind != 6 and kind != 1:
        return -1
    contents_len, pos = _length_at(raw, 5, end)
    if contents_len < 0 or pos + contents_len != end or end - pos < 8:
        return -1
    # The entry head, byte by byte (compiled, each is one load): count 01 01, name 03 'ilp',
    # contentType 00.
    if (
        raw[pos] != 1
        or raw[pos + 1] != 1
        or raw[pos + 2] != 3
        or raw[pos + 3] != 0x69
        or raw[pos + 4] != 0x6C
        or raw[pos + 5] != 0x70
        or raw[pos + 6] != 0
    ):
        return -1
    data_len, pos = _length_at(raw, pos + 7, end)
    if data_len < 0 or pos + data_len != end:
        return -1
    return pos


def _request_id(raw: bytes) -> int:
    return (raw[1] << 24) | (raw[2] << 16) | (raw[3] << 8) | raw[4]


def peek_ilp_frame(raw: bytes) -> tuple[BtpType, int, bytes] | None:
    """``(type, request id, ilp bytes)`` if ``raw`` is exactly a Message or Response with
    one ``ilp`` entry of content type 0; ``None`` for any other frame, valid or not.

    Whenever it returns a value, :func:`decode_btp` would decode ``raw`` to the same
    thing (a test checks it), so callers may skip the general decoder.
    """
    start = _ilp_data_start(raw)
    if start < 0:
        return None
    return (_MESSAGE if raw[0] == 6 else _RESPONSE), _request_id(raw), raw[start:]


_MESSAGE: Final = BtpType.MESSAGE
_RESPONSE: Final = BtpType.RESPONSE


# --- the general codec -----------------------------------------------------------------


def peek_header(raw: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """``(type byte, request id)`` of a frame, readable even when the rest is not."""
    if len(raw) < 5:
        return None
    return raw[0], int.from_bytes(raw[1:5], "big")


def decode_btp(raw: bytes | bytearray | memoryview) -> BtpPacket:
    """Decode one BTP frame; :class:`DecodeError` on anything that is not exactly one."""
    if type(raw) is not bytes:
        raw = bytes(raw)
    start = _ilp_data_start(raw)
    if start >= 0:  # the hot path: what peek_ilp_frame recognises, without the tuple
        entries = (_trusted_entry(ILP, 0, raw[start:]),)
        if raw[0] == 6:
            return _trusted_message(_request_id(raw), entries)
        return _trusted_response(_request_id(raw), entries)
    r = Reader(raw)
    type_byte = r.read_uint8("BTP type")
    read = _READERS.get(type_byte)
    if read is None:
        try:
            label = BtpType(type_byte).name + " (BTP/1, removed in BTP/2.0)"
        except ValueError:
            label = str(type_byte)
        raise DecodeError(f"unknown BTP type {label}", 0)
    request_id = r.read_uint(4, "requestId")
    contents = r.read_container("BTP contents")
    r.finish("BTP envelope")
    packet = read(request_id, contents)
    contents.finish(f"{BtpType(type_byte).name} contents")
    return packet


def encode_btp(packet: BtpPacket) -> bytes:
    """The canonical bytes of ``packet`` (what btp-packet 2.2.1 writes)."""
    if (type(packet) is BtpMessage or type(packet) is BtpResponse) and _is_single_ilp_entry(
        packet.protocol_data
    ):
        return encode_ilp_frame(packet.TYPE, packet.request_id, packet.protocol_data[0].data)
    contents = Writer()
    packet._write(contents)
    body = contents.getvalue()
    return b"".join((_HEADER.pack(packet.TYPE, packet.request_id), encode_length(len(body)), body))


def _is_single_ilp_entry(entries: tuple[ProtocolData, ...]) -> bool:
    return len(entries) == 1 and entries[0].protocol_name == ILP and entries[0].content_type == 0


# --- entries and the frames the node builds --------------------------------------------


def find_entry(packet: BtpPacket, name: str) -> ProtocolData | None:
    """The first entry called ``name`` (ilp-plugin-btp's ``sendData`` and auth check also
    take the first), or ``None``."""
    for entry in packet.protocol_data:
        if entry.protocol_name == name:
            return entry
    return None


def ilp_message(request_id: int, ilp_bytes: bytes) -> BtpMessage:
    """What ilp-plugin-btp's ``sendData`` sends: one ``ilp`` entry, content type 0."""
    return BtpMessage(
        request_id, (ProtocolData(ILP, ContentType.APPLICATION_OCTET_STREAM, ilp_bytes),)
    )


def ilp_response(request_id: int, ilp_bytes: bytes) -> BtpResponse:
    """The reply to an ILP-carrying Message: exactly one ``ilp`` entry (a Fulfill or Reject)."""
    return BtpResponse(
        request_id, (ProtocolData(ILP, ContentType.APPLICATION_OCTET_STREAM, ilp_bytes),)
    )


def btp_error(
    request_id: int,
    code: BtpErrorCode | str,
    name: str | None,
    message: str,
    now: datetime,
) -> BtpError:
    """An Error frame the way ilp-plugin-btp's auth rejection looks: ``data`` is the bare
    message text, ``triggeredAt`` is ``now`` with three fraction digits. ``name=None``
    takes the name that goes with a known ``code``."""
    if name is None:
        try:
            name = BtpErrorCode(code).error_name
        except ValueError:
            raise EncodeError(f"no default name for error code {code!r}") from None
    return BtpError(
        request_id,
        code,
        name,
        format_generalized_time(now),
        message.encode("utf-8"),
    )


# --- authentication (btp.md section 3) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """The credentials of an auth Message. ``username`` is ``""`` when absent (RFC form)."""

    username: str
    token: str
    idempotent: bool = False

    def __post_init__(self) -> None:
        _init_auth(self, self.username, self.token, self.idempotent)

    def token_matches(self, secret: str) -> bool:
        """Constant-time comparison with the configured token (compared as UTF-8 bytes)."""
        return hmac.compare_digest(self.token.encode("utf-8"), secret.encode("utf-8"))


def _init_auth(
    self: AuthRequest, username: object, token: object, idempotent: object = False
) -> None:
    if not isinstance(username, str) or not isinstance(token, str):
        raise EncodeError("username and token must be str")
    _set(self, "username", username)
    _set(self, "token", token)
    _set(self, "idempotent", idempotent)


if COMPILED:
    setattr(AuthRequest, "__init__", python_method(_init_auth))  # noqa: B010


class AuthRejected(IlpError):
    """A first frame that is not an acceptable auth Message.

    ``message`` is ilp-plugin-btp's text for the same case, so JS logs read the same; the
    wire reaction is always Error F00 NotAcceptedError with it as data, then close.
    """

    code: Final = BtpErrorCode.F00

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _entry_text(entry: ProtocolData, what: str) -> str:
    try:
        return entry.data.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthRejected(f"{what} is not UTF-8 text") from None


def read_auth(packet: BtpPacket) -> AuthRequest:
    """The credentials of an auth frame, or :class:`AuthRejected` with the JS reason.

    Checks in ilp-plugin-btp's order: a Message; at least two entries; ``auth`` first
    (it is the primary protocol, which is what makes this an auth request); an
    ``auth_token`` entry anywhere after it. ``auth_username`` and ``btp_idempotent`` are
    optional and may come in any order. The ``auth`` entry's type and data are not
    checked, as in JS.
    """
    if type(packet) is not BtpMessage:
        raise AuthRejected("First message sent over BTP connection must be auth packet")
    entries = packet.protocol_data
    if len(entries) < 2:
        raise AuthRejected("Auth packet must have auth and auth_token subprotocols")
    if entries[0].protocol_name != AUTH:
        raise AuthRejected("First subprotocol must be auth")
    token_entry = find_entry(packet, AUTH_TOKEN)
    if token_entry is None:
        raise AuthRejected("auth_token subprotocol is required")
    token = _entry_text(token_entry, AUTH_TOKEN)
    username_entry = find_entry(packet, AUTH_USERNAME)
    username = "" if username_entry is None else _entry_text(username_entry, AUTH_USERNAME)
    return AuthRequest(username, token, offers_idempotent(packet))


def auth_credentials(packet: BtpPacket) -> AuthRequest | None:
    """The credentials if ``packet`` is a well-formed auth Message, else ``None``."""
    try:
        return read_auth(packet)
    except AuthRejected:
        return None


def auth_message(
    request_id: int, username: str, token: str, *, idempotent: bool = False
) -> BtpMessage:
    """The auth frame exactly as ilp-plugin-btp 1.5.0 sends it (``auth`` empty octets,
    ``auth_username`` and ``auth_token`` as text), plus the BTP/2.0-I offer if asked."""
    entries = [
        ProtocolData(AUTH, ContentType.APPLICATION_OCTET_STREAM, b""),
        ProtocolData(AUTH_USERNAME, ContentType.TEXT_PLAIN_UTF8, username.encode("utf-8")),
        ProtocolData(AUTH_TOKEN, ContentType.TEXT_PLAIN_UTF8, token.encode("utf-8")),
    ]
    if idempotent:
        entries.append(_idempotent_entry())
    return BtpMessage(request_id, tuple(entries))


def auth_response(request_id: int, *, idempotent: bool = False) -> BtpResponse:
    """A successful auth reply: no entries (as JS sends), or the BTP/2.0-I acceptance."""
    return BtpResponse(request_id, (_idempotent_entry(),) if idempotent else ())


def _idempotent_entry() -> ProtocolData:
    return ProtocolData(BTP_IDEMPOTENT, ContentType.TEXT_PLAIN_UTF8, _IDEMPOTENT_ON)


def offers_idempotent(packet: BtpPacket) -> bool:
    """Whether a frame (auth Message or its Response) carries ``btp_idempotent = "1"``."""
    flag = find_entry(packet, BTP_IDEMPOTENT)
    return flag is not None and flag.data == _IDEMPOTENT_ON
