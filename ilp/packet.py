"""ILPv4 packets: Prepare, Fulfill, Reject (RFC 27, ``shared/spec/ilp-packet.md``).

Each packet is a type byte and an OER var-octets envelope around the fields.
The decoders are the hottest code of the node (every packet of every link goes
through them twice), so they are written out by hand: slices and
``int.from_bytes`` on the one ``bytes`` buffer, the short length form inlined,
and no per-field method calls. They stay strict all the same: canonical lengths
(:func:`ilp.oer.read_length_at`), no byte before or after a field that is not
accounted for, real timestamps, valid addresses, data of at most 32767 bytes.
Every error is a :class:`~ilp.errors.DecodeError` whose offset is a position in
the buffer handed to the decoder.

The value types validate on construction; the decoders, which have already
checked every field, build them through ``_trusted`` without checking twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from enum import IntEnum
from types import FunctionType
from typing import Any, Final, NamedTuple

from ilp._variant import python_method
from ilp.address import (
    MAX_ADDRESS_LENGTH as _MAX_ADDRESS_LENGTH,
)
from ilp.address import (
    SCHEMES,
    InvalidAddress,
    address_from_bytes,
    is_valid_address,
)
from ilp.conditions import CONDITION_LENGTH as _CONDITION_LENGTH
from ilp.conditions import FULFILLMENT_LENGTH as _FULFILLMENT_LENGTH
from ilp.error_codes import ErrorCode as ErrorCode  # re-exported: its public home
from ilp.errors import DecodeError, EncodeError, IlpError
from ilp.oer import UINT64_MAX, encode_length, format_ilp_timestamp, parse_ilp_timestamp
from ilp.oer import read_length_at as _read_length_at

# What the decoders take: transports hand over bytes, bytearray or memoryview alike.
BytesLike = bytes | bytearray | memoryview

# Final, here and below: compiled, a Final is a C constant; anything else is a dict look-up.
CONDITION_LENGTH: Final = _CONDITION_LENGTH
FULFILLMENT_LENGTH: Final = _FULFILLMENT_LENGTH
MAX_DATA_LENGTH: Final = 32767
ERROR_CODE_LENGTH: Final = 3

# Offsets inside a Prepare's contents. Connectors rewrite only amount and expiresAt,
# which is why they sit at fixed positions in front of everything else.
_AMOUNT_END: Final = 8
_EXPIRY_END: Final = 25
_CONDITION_END: Final = 57
_PREPARE_FIXED_FIELDS: Final = (
    ("amount", _AMOUNT_END),
    ("expiresAt", _EXPIRY_END),
    ("executionCondition", _CONDITION_END),
)


class PacketType(IntEnum):
    PREPARE = 12
    FULFILL = 13
    REJECT = 14


def error_class(code: str) -> str:
    """``"F"``, ``"T"`` or ``"R"`` for a code (known or not); ``""`` if it has no class."""
    first = code[:1]
    return first if first in ("F", "T", "R") else ""


# --- value types ---------------------------------------------------------------------


def _as_bytes(value: object, field: str) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{field} must be bytes, not {type(value).__name__}")


def _check_data(data: bytes) -> None:
    if len(data) > MAX_DATA_LENGTH:
        raise ValueError(f"data is {len(data)} bytes; at most {MAX_DATA_LENGTH} are allowed")


def _wire_time(moment: object) -> datetime:
    """``moment`` as the wire carries it: aware UTC, whole milliseconds (truncated)."""
    if not isinstance(moment, datetime):
        raise TypeError(f"expires_at must be a datetime, not {type(moment).__name__}")
    if moment.tzinfo is UTC and moment.microsecond % 1000 == 0:
        return moment
    if moment.utcoffset() is None:
        raise ValueError("expires_at must be an aware datetime")
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(
            f"expires_at {moment.isoformat()} is outside years 1..9999 in UTC"
        ) from None
    return utc.replace(microsecond=utc.microsecond - utc.microsecond % 1000)


@dataclass(frozen=True, slots=True)
class Prepare:
    """An ILP Prepare. ``expires_at`` is normalised to UTC whole milliseconds."""

    amount: int
    expires_at: datetime
    execution_condition: bytes
    destination: str
    data: bytes = b""

    def __post_init__(self) -> None:
        _init_prepare(
            self,
            self.amount,
            self.expires_at,
            self.execution_condition,
            self.destination,
            self.data,
        )


@dataclass(frozen=True, slots=True)
class Fulfill:
    fulfillment: bytes
    data: bytes = b""

    def __post_init__(self) -> None:
        _init_fulfill(self, self.fulfillment, self.data)


@dataclass(frozen=True, slots=True)
class Reject:
    """An ILP Reject. ``code`` may be any 3 ASCII characters (unknown codes are legal)."""

    code: str
    triggered_by: str
    message: str = ""
    data: bytes = b""

    def __post_init__(self) -> None:
        _init_reject(self, self.code, self.triggered_by, self.message, self.data)


# --- construction ----------------------------------------------------------------------
#
# One validator per class takes the constructor's arguments as they came (any type) and
# stores the normalised values. As Python, the dataclass's __init__ stores the arguments
# and __post_init__ runs the validator. Compiled, the classes are native and a native
# attribute refuses a value of the wrong type with a TypeError of its own before
# __post_init__ could say what is wrong (or quietly turns True into 1), so there the
# validator itself is the __init__ (installed below): the same checks, the same errors.


def _compiled_probe() -> None:
    """Exists to tell whether this module runs compiled (see :data:`COMPILED`)."""


#: True when this module is the mypyc-built extension (``scripts/build_codec.py``), False
#: when it runs as plain Python.
COMPILED: Final = not isinstance(_compiled_probe, FunctionType)


def _setters(cls: type) -> tuple[Callable[[Any, Any], None], ...]:
    """The raw slot setters of a frozen slotted dataclass, in field order."""
    return tuple(cls.__dict__[f.name].__set__ for f in fields(cls))


# Stores into a frozen value. Compiled, they are plain attribute assignments, which mypyc
# turns into direct writes to the native object (the frozen __setattr__ is only for other
# code); as Python, those assignments would raise FrozenInstanceError, so the slot
# setters do it.
_PREPARE_SETTERS: Final = _setters(Prepare)
_FULFILL_SETTERS: Final = _setters(Fulfill)
_REJECT_SETTERS: Final = _setters(Reject)


def _store_prepare(
    prepare: Prepare,
    amount: int,
    expires_at: datetime,
    condition: bytes,
    destination: str,
    data: bytes,
) -> None:
    if COMPILED:
        prepare.amount = amount  # type: ignore[misc]
        prepare.expires_at = expires_at  # type: ignore[misc]
        prepare.execution_condition = condition  # type: ignore[misc]
        prepare.destination = destination  # type: ignore[misc]
        prepare.data = data  # type: ignore[misc]
    else:
        set_amount, set_expires_at, set_condition, set_destination, set_data = _PREPARE_SETTERS
        set_amount(prepare, amount)
        set_expires_at(prepare, expires_at)
        set_condition(prepare, condition)
        set_destination(prepare, destination)
        set_data(prepare, data)


def _store_fulfill(fulfill: Fulfill, fulfillment: bytes, data: bytes) -> None:
    if COMPILED:
        fulfill.fulfillment = fulfillment  # type: ignore[misc]
        fulfill.data = data  # type: ignore[misc]
    else:
        set_fulfillment, set_data = _FULFILL_SETTERS
        set_fulfillment(fulfill, fulfillment)
        set_data(fulfill, data)


def _store_reject(reject: Reject, code: str, triggered_by: str, message: str, data: bytes) -> None:
    if COMPILED:
        reject.code = code  # type: ignore[misc]
        reject.triggered_by = triggered_by  # type: ignore[misc]
        reject.message = message  # type: ignore[misc]
        reject.data = data  # type: ignore[misc]
    else:
        set_code, set_triggered_by, set_message, set_data = _REJECT_SETTERS
        set_code(reject, code)
        set_triggered_by(reject, triggered_by)
        set_message(reject, message)
        set_data(reject, data)


def _init_prepare(
    self: Prepare,
    amount: object,
    expires_at: object,
    execution_condition: object,
    destination: object,
    data: object = b"",
) -> None:
    if type(amount) is not int:
        raise TypeError(f"amount must be an int, not {type(amount).__name__}")
    if not 0 <= amount <= UINT64_MAX:
        raise ValueError(f"amount {amount} is not a UInt64")
    moment = _wire_time(expires_at)
    condition = _as_bytes(execution_condition, "execution_condition")
    if len(condition) != CONDITION_LENGTH:
        raise ValueError(f"execution_condition must be 32 bytes, not {len(condition)}")
    if not isinstance(destination, str) or not is_valid_address(destination):
        raise InvalidAddress(f"destination is not a valid ILP address: {destination!r}")
    raw_data = _as_bytes(data, "data")
    _check_data(raw_data)
    _store_prepare(self, amount, moment, condition, destination, raw_data)


def _init_fulfill(self: Fulfill, fulfillment: object, data: object = b"") -> None:
    preimage = _as_bytes(fulfillment, "fulfillment")
    if len(preimage) != FULFILLMENT_LENGTH:
        raise ValueError(f"fulfillment must be 32 bytes, not {len(preimage)}")
    raw_data = _as_bytes(data, "data")
    _check_data(raw_data)
    _store_fulfill(self, preimage, raw_data)


def _init_reject(
    self: Reject, code: object, triggered_by: object, message: object = "", data: object = b""
) -> None:
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, not {type(code).__name__}")
    if isinstance(code, ErrorCode):
        code = code.value
    elif len(code) != ERROR_CODE_LENGTH or not code.isascii():
        raise ValueError(f"error code must be 3 ASCII characters, not {code!r}")
    if not isinstance(triggered_by, str) or (triggered_by and not is_valid_address(triggered_by)):
        raise InvalidAddress(f"triggered_by is neither empty nor an ILP address: {triggered_by!r}")
    if not isinstance(message, str):
        raise TypeError(f"message must be a str, not {type(message).__name__}")
    try:
        message.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("message is not encodable as UTF-8") from None
    raw_data = _as_bytes(data, "data")
    _check_data(raw_data)
    _store_reject(self, code, triggered_by, message, raw_data)


if COMPILED:
    setattr(Prepare, "__init__", python_method(_init_prepare))  # noqa: B010
    setattr(Fulfill, "__init__", python_method(_init_fulfill))  # noqa: B010
    setattr(Reject, "__init__", python_method(_init_reject))  # noqa: B010


IlpPacket = Prepare | Fulfill | Reject
Reply = Fulfill | Reject


# Decoders build values with these: every field has been validated on the wire already,
# and going around the validator halves the cost of a decode.


def _trusted_prepare(
    amount: int, expires_at: datetime, condition: bytes, destination: str, data: bytes
) -> Prepare:
    prepare: Prepare = Prepare.__new__(Prepare)
    if COMPILED:  # one native call
        _store_prepare(prepare, amount, expires_at, condition, destination, data)
    else:  # inlined: a Python call costs as much as the five stores
        set_amount, set_expires_at, set_condition, set_destination, set_data = _PREPARE_SETTERS
        set_amount(prepare, amount)
        set_expires_at(prepare, expires_at)
        set_condition(prepare, condition)
        set_destination(prepare, destination)
        set_data(prepare, data)
    return prepare


def _trusted_fulfill(fulfillment: bytes, data: bytes) -> Fulfill:
    fulfill: Fulfill = Fulfill.__new__(Fulfill)
    if COMPILED:
        _store_fulfill(fulfill, fulfillment, data)
    else:
        set_fulfillment, set_data = _FULFILL_SETTERS
        set_fulfillment(fulfill, fulfillment)
        set_data(fulfill, data)
    return fulfill


def _trusted_reject(code: str, triggered_by: str, message: str, data: bytes) -> Reject:
    reject: Reject = Reject.__new__(Reject)
    if COMPILED:
        _store_reject(reject, code, triggered_by, message, data)
    else:
        set_code, set_triggered_by, set_message, set_data = _REJECT_SETTERS
        set_code(reject, code)
        set_triggered_by(reject, triggered_by)
        set_message(reject, message)
        set_data(reject, data)
    return reject


# --- errors raised by services -------------------------------------------------------


class RejectError(IlpError):
    """Raised by a service that refuses a Prepare; the edge turns it into a Reject.

    ``triggered_by`` is filled in by the edge (:meth:`to_reject`), because only the
    edge knows the node's address.
    """

    def __init__(self, code: str, message: str = "", data: bytes = b"") -> None:
        code = code.value if isinstance(code, ErrorCode) else code
        if not isinstance(code, str) or len(code) != ERROR_CODE_LENGTH or not code.isascii():
            raise ValueError(f"error code must be 3 ASCII characters, not {code!r}")
        super().__init__(f"{code} {message}".rstrip())
        self.code = code
        self.message = message
        self.data = data

    def to_reject(self, triggered_by: str) -> Reject:
        return Reject(self.code, triggered_by, self.message, self.data)


class AmountTooLarge(NamedTuple):
    """The data of an F08 Reject, in units of the link the Prepare arrived on."""

    received_amount: int
    maximum_amount: int


def amount_too_large_data(received: int, maximum: int) -> bytes:
    """F08 data: ``receivedAmount UInt64 || maximumAmount UInt64``."""
    for amount in (received, maximum):
        if not 0 <= amount <= UINT64_MAX:
            raise EncodeError(f"amount {amount} is not a UInt64")
    return received.to_bytes(8, "big") + maximum.to_bytes(8, "big")


def decode_amount_too_large_data(data: bytes) -> AmountTooLarge:
    """Read F08 data. Receivers should treat a :class:`DecodeError` as "no hint"."""
    if len(data) != 16:
        raise DecodeError(f"F08 data must be 16 bytes, not {len(data)}", min(len(data), 16))
    return AmountTooLarge(int.from_bytes(data[:8], "big"), int.from_bytes(data[8:], "big"))


# --- decoding ------------------------------------------------------------------------

_TYPE_NAMES: Final = {12: "Prepare", 13: "Fulfill", 14: "Reject"}


def _wrong_type(raw: BytesLike, expected: PacketType | None) -> DecodeError:
    if not raw:
        return DecodeError("empty packet: no type byte", 0)
    found = raw[0]
    if found in _TYPE_NAMES:
        assert expected is not None
        return DecodeError(
            f"expected an ILP {_TYPE_NAMES[expected]} (type {expected}), "
            f"got a {_TYPE_NAMES[found]} (type {found})",
            0,
        )
    return DecodeError(f"unknown ILP packet type {found}", 0)


def _envelope(raw: bytes, name: str) -> int:
    """Check the envelope of ``raw`` and return where its contents start.

    The contents must run exactly to the end of ``raw``: a shorter buffer is a
    truncation, a longer one has trailing bytes after the packet.
    """
    n = len(raw)
    if n < 2:
        raise DecodeError(f"truncated {name}: no envelope length", 1)
    length = raw[1]
    start = 2
    if length >= 0x80:
        length, start = _read_length_at(raw, 1, n, f"{name} envelope length")
    end = start + length
    if end != n:
        if end > n:
            raise DecodeError(
                f"truncated {name}: envelope declares {length} byte(s), {n - start} present", n
            )
        raise DecodeError(f"{n - end} trailing byte(s) after the {name} envelope", end)
    return start


def contents_start(raw: BytesLike) -> int:
    """Where the fields of a well-formed packet start (after type and envelope length).

    For error offsets of the protocols carried inside a packet that was decoded already.
    """
    return 2 if raw[1] < 0x80 else 2 + (raw[1] & 0x7F)


def _var_octets_end(raw: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    """``(start, stop)`` of the var-octets at ``pos`` inside a container ending at ``end``."""
    if pos >= end:
        raise DecodeError(f"truncated packet: {what} is missing", pos)
    length = raw[pos]
    start = pos + 1
    if length >= 0x80:
        length, start = _read_length_at(raw, pos, end, f"{what} length")
    stop = start + length
    if stop > end:
        raise DecodeError(
            f"{what} length {length} runs past the end of the packet ({end - start} left)", pos
        )
    return start, stop


# The fast answer to "is this an ILP address?" for the decoders: the same language as
# ilp.address's pattern (tests/ilp/test_codec_variant.py holds the two equal over
# Hypothesis input), as one pass over the bytes. Compiled, that loop costs a few
# instructions a byte, where a regex match (or even bytes.find) costs a thousand to start.
# A "no" goes to address_from_bytes, which says what is wrong.
_MAX_ADDRESS: Final = _MAX_ADDRESS_LENGTH
_SEGMENT_CHARS: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_~-"
# Per byte value: 1 a segment character, 2 the separator ".", 0 anything else.
_CHAR_CLASS: Final = bytes(
    1 if byte in _SEGMENT_CHARS else 2 if byte == 0x2E else 0 for byte in range(256)
)
_SCHEME_LIST: Final = tuple(sorted(scheme.encode("ascii") for scheme in SCHEMES))


def _is_address(raw: bytes) -> bool:
    n = len(raw)
    if n > _MAX_ADDRESS:
        return False
    classes = _CHAR_CLASS
    first_dot = -1
    previous = 2  # as if after a separator: an address cannot start with "."
    for i in range(n):
        kind = classes[raw[i]]
        if kind == 0:
            return False
        if kind == 2:
            if previous == 2:
                return False  # an empty segment
            if first_dot < 0:
                first_dot = i
        previous = kind
    if previous == 2 or first_dot < 0:
        return False  # ends with "." or has no segment after the scheme
    for scheme in _SCHEME_LIST:
        if len(scheme) == first_dot:
            j = 0
            while j < first_dot and scheme[j] == raw[j]:
                j += 1
            if j == first_dot:
                return True
    return False


def _address(raw: bytes, at: int, what: str) -> str:
    """The address in ``raw`` (found at ``at`` in the packet), or :class:`DecodeError`."""
    # The loop is the fast way only compiled; as Python, the regex is (a Python loop over
    # a 66-byte address costs more than the whole rest of a Prepare decode).
    if COMPILED and _is_address(raw):
        return raw.decode("ascii")
    try:
        return address_from_bytes(raw)
    except InvalidAddress as exc:
        raise DecodeError(f"{what}: {exc}", at) from None


def _check_data_length(length: int, pos: int) -> None:
    if length > MAX_DATA_LENGTH:
        raise DecodeError(f"data is {length} bytes; at most {MAX_DATA_LENGTH} are allowed", pos)


def _cut_short(
    raw: bytes, start: int, fields: tuple[tuple[str, int], ...], then: str
) -> DecodeError:
    """The error for contents too short for their fixed fields and the ``then`` field.

    ``fields`` are ``(name, end offset in the contents)``, in wire order.
    """
    have = len(raw) - start
    for name, field_end in fields:
        if have < field_end:
            return DecodeError(f"truncated packet: contents end inside {name}", len(raw))
    return DecodeError(f"truncated packet: {then} is missing", len(raw))


def _trailing(raw: bytes, stop: int, last: str) -> DecodeError:
    return DecodeError(f"{len(raw) - stop} trailing byte(s) inside the packet after {last}", stop)


def decode_prepare(raw: BytesLike) -> Prepare:
    # Written out for speed. Each length takes the obvious canonical fast path
    # inline (1 byte; 0x81 with a value >= 128; 0x82 without a leading zero) and
    # anything else goes through the checked helpers, which accept the remaining
    # canonical forms and raise the precise error for the rest.
    if type(raw) is not bytes:
        raw = bytes(raw)
    end = len(raw)
    if end < 4 or raw[0] != 12:
        if not raw or raw[0] != 12:
            raise _wrong_type(raw, PacketType.PREPARE)
        _envelope(raw, "Prepare")
    first = raw[1]
    if first < 0x80:
        start = 2
        declared = first
    elif first == 0x82 and raw[2]:
        start = 4
        declared = (raw[2] << 8) | raw[3]
    elif first == 0x81 and raw[2] >= 0x80:
        start = 3
        declared = raw[2]
    else:
        start = _envelope(raw, "Prepare")
        declared = end - start
    if start + declared != end:
        _envelope(raw, "Prepare")  # raises the truncation / trailing-bytes error

    fixed_end = start + _CONDITION_END
    if fixed_end >= end:
        raise _cut_short(raw, start, _PREPARE_FIXED_FIELDS, "destination")
    amount = int.from_bytes(raw[start : start + _AMOUNT_END], "big")
    expires_at = parse_ilp_timestamp(raw[start + _AMOUNT_END : start + _EXPIRY_END], start + 8)

    length = raw[fixed_end]
    if length < 0x80 and fixed_end + 1 + length <= end:
        dest_start = fixed_end + 1
        dest_stop = dest_start + length
    else:
        dest_start, dest_stop = _var_octets_end(raw, fixed_end, end, "destination")
    destination = _address(raw[dest_start:dest_stop], dest_start, "destination")

    pos = dest_stop
    length = raw[pos] if pos < end else 0xFF
    if length < 0x80:
        data_start = pos + 1
    elif length == 0x81 and pos + 2 < end and raw[pos + 1] >= 0x80:
        length = raw[pos + 1]
        data_start = pos + 2
    elif length == 0x82 and pos + 3 < end and raw[pos + 1]:
        length = (raw[pos + 1] << 8) | raw[pos + 2]
        data_start = pos + 3
    else:
        data_start, data_stop = _var_octets_end(raw, pos, end, "data")
        length = data_stop - data_start
    if data_start + length != end:
        data_start, data_stop = _var_octets_end(raw, pos, end, "data")  # overrun?
        raise _trailing(raw, data_stop, "data")
    if length > MAX_DATA_LENGTH:
        _check_data_length(length, pos)

    return _trusted_prepare(
        amount, expires_at, raw[start + _EXPIRY_END : fixed_end], destination, raw[data_start:end]
    )


def decode_fulfill(raw: BytesLike) -> Fulfill:
    if type(raw) is not bytes:
        raw = bytes(raw)
    if not raw or raw[0] != 13:
        raise _wrong_type(raw, PacketType.FULFILL)
    start = _envelope(raw, "Fulfill")
    end = len(raw)
    pos = start + FULFILLMENT_LENGTH
    if pos >= end:
        raise _cut_short(raw, start, (("fulfillment", FULFILLMENT_LENGTH),), "data")
    data_start, data_stop = _var_octets_end(raw, pos, end, "data")
    _check_data_length(data_stop - data_start, pos)
    if data_stop != end:
        raise _trailing(raw, data_stop, "data")
    return _trusted_fulfill(raw[start:pos], raw[data_start:data_stop])


def decode_reject(raw: BytesLike) -> Reject:
    if type(raw) is not bytes:
        raw = bytes(raw)
    if not raw or raw[0] != 14:
        raise _wrong_type(raw, PacketType.REJECT)
    start = _envelope(raw, "Reject")
    end = len(raw)
    pos = start + ERROR_CODE_LENGTH
    if pos > end:
        raise _cut_short(raw, start, (("code", ERROR_CODE_LENGTH),), "triggeredBy")
    if raw[start] >= 0x80 or raw[start + 1] >= 0x80 or raw[start + 2] >= 0x80:
        raise DecodeError("error code: bytes above 0x7F are not IA5", start)
    code_raw = raw[start:pos]

    by_start, by_stop = _var_octets_end(raw, pos, end, "triggeredBy")
    triggered_by = ""
    if by_stop > by_start:
        triggered_by = _address(raw[by_start:by_stop], by_start, "triggeredBy")

    msg_start, msg_stop = _var_octets_end(raw, by_stop, end, "message")
    # Relayed messages must never fail a packet: decode like JS, with U+FFFD.
    message = raw[msg_start:msg_stop].decode("utf-8", "replace")

    data_start, data_stop = _var_octets_end(raw, msg_stop, end, "data")
    _check_data_length(data_stop - data_start, msg_stop)
    if data_stop != end:
        raise _trailing(raw, data_stop, "data")
    return _trusted_reject(
        code_raw.decode("ascii"), triggered_by, message, raw[data_start:data_stop]
    )


_DECODERS: dict[int, Callable[[BytesLike], IlpPacket]] = {
    PacketType.PREPARE: decode_prepare,
    PacketType.FULFILL: decode_fulfill,
    PacketType.REJECT: decode_reject,
}


def decode_packet(raw: BytesLike) -> IlpPacket:
    """Any ILPv4 packet."""
    decoder = _DECODERS.get(raw[0]) if raw else None
    if decoder is None:
        raise _wrong_type(raw, None)
    return decoder(raw)


def decode_reply(raw: BytesLike) -> Reply:
    """A Fulfill or a Reject: what may come back for a Prepare."""
    if raw and raw[0] == PacketType.FULFILL:
        return decode_fulfill(raw)
    if raw and raw[0] == PacketType.REJECT:
        return decode_reject(raw)
    if raw and raw[0] == PacketType.PREPARE:
        raise DecodeError("expected an ILP Fulfill or Reject, got a Prepare (type 12)", 0)
    raise _wrong_type(raw, None)


# --- encoding ------------------------------------------------------------------------

# The one-byte length determinants, ready-made: almost every field uses one.
_SHORT_LENGTH: Final = tuple(bytes((n,)) for n in range(0x80))


def _length(n: int) -> bytes:
    return _SHORT_LENGTH[n] if n < 0x80 else encode_length(n)


def encode_prepare(p: Prepare) -> bytes:
    destination = p.destination.encode("ascii")
    data = p.data
    dest_len = len(destination)
    data_len = len(data)
    dest_prefix = _length(dest_len)
    data_prefix = _length(data_len)
    contents_len = _CONDITION_END + len(dest_prefix) + dest_len + len(data_prefix) + data_len
    return b"".join(
        (
            b"\x0c",
            _length(contents_len),
            p.amount.to_bytes(8, "big"),
            format_ilp_timestamp(p.expires_at),
            p.execution_condition,
            dest_prefix,
            destination,
            data_prefix,
            data,
        )
    )


def encode_fulfill(f: Fulfill) -> bytes:
    data = f.data
    data_prefix = _length(len(data))
    contents_len = FULFILLMENT_LENGTH + len(data_prefix) + len(data)
    return b"".join((b"\x0d", _length(contents_len), f.fulfillment, data_prefix, data))


def encode_reject(r: Reject) -> bytes:
    triggered_by = r.triggered_by.encode("ascii")
    message = r.message.encode("utf-8")
    contents = b"".join(
        (
            r.code.encode("ascii"),
            _length(len(triggered_by)),
            triggered_by,
            _length(len(message)),
            message,
            _length(len(r.data)),
            r.data,
        )
    )
    return b"\x0e" + _length(len(contents)) + contents


def encode_packet(p: object) -> bytes:
    """The bytes of a Prepare, Fulfill or Reject; :class:`EncodeError` for anything else
    (typed ``object`` because that is the contract, compiled or not)."""
    if isinstance(p, Prepare):
        return encode_prepare(p)
    if isinstance(p, Fulfill):
        return encode_fulfill(p)
    if isinstance(p, Reject):
        return encode_reject(p)
    raise EncodeError(f"not an ILP packet: {type(p).__name__}")
