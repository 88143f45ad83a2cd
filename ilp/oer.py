"""The OER subset used by every Interledger wire format (``shared/spec/oer.md``).

:class:`Reader` reads one container strictly: every read is bounds-checked against
the container, nested containers get their own ``Reader`` so that a length can never
escape into its parent, and :meth:`Reader.finish` rejects trailing bytes.
:class:`Writer` is the mirror image and always writes the canonical form.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

from ilp.errors import DecodeError, EncodeError

UINT64_MAX: Final = 2**64 - 1
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

# Lengths beyond 2**32 never occur in ILP/BTP/CCP; refusing them early keeps a hostile
# length from ever being compared against a huge number.
_MAX_LENGTH_OF_LENGTH: Final = 4
_ILP_TIMESTAMP_LEN: Final = 17
_GENERALIZED_TIME: Final = re.compile(rb"^(\d{14})(?:\.(\d{1,3}))?Z$")
_from_iso: Final = datetime.fromisoformat


def encode_length(length: int) -> bytes:
    """The canonical length determinant for ``length``."""
    if length < 0:
        raise EncodeError("length must not be negative")
    if length < 0x80:
        return bytes((length,))
    size = (length.bit_length() + 7) // 8
    if size > 8:
        raise EncodeError("length does not fit in 8 bytes")
    return bytes((0x80 | size,)) + length.to_bytes(size, "big")


def encode_var_octets(value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes((n,)) + value
    return encode_length(n) + value


def encode_var_uint(value: int) -> bytes:
    if value < 0 or value > UINT64_MAX:
        raise EncodeError(f"VarUInt out of range: {value}")
    size = max(1, (value.bit_length() + 7) // 8)
    return bytes((size,)) + value.to_bytes(size, "big")


def encode_uint(value: int, size: int) -> bytes:
    if value < 0 or value >= 1 << (8 * size):
        raise EncodeError(f"UInt{8 * size} out of range: {value}")
    return value.to_bytes(size, "big")


def encode_int64(value: int) -> bytes:
    if value < INT64_MIN or value > INT64_MAX:
        raise EncodeError(f"Int64 out of range: {value}")
    return value.to_bytes(8, "big", signed=True)


def encode_ia5(value: str) -> bytes:
    try:
        raw = value.encode("ascii")
    except UnicodeEncodeError as exc:
        raise EncodeError(f"not an IA5 (ASCII) string: {value!r}") from exc
    return encode_var_octets(raw)


def encode_utf8(value: str) -> bytes:
    return encode_var_octets(value.encode("utf-8"))


def format_ilp_timestamp(moment: datetime) -> bytes:
    """17 ASCII digits ``YYYYMMDDHHmmssfff`` in UTC, truncated to the millisecond."""
    if moment.tzinfo is not UTC:
        if moment.tzinfo is None:
            raise EncodeError("ILP timestamps need an aware datetime")
        try:
            moment = moment.astimezone(UTC)
        except OverflowError as exc:
            raise EncodeError(f"{moment.isoformat()} is outside years 1..9999 in UTC") from exc
    # One integer formatted once: the cheapest way to the 17 digits on the hot path.
    date = (moment.year * 100 + moment.month) * 100 + moment.day
    time = ((moment.hour * 100 + moment.minute) * 100 + moment.second) * 1000
    return b"%017d" % (date * 1_000_000_000 + time + moment.microsecond // 1000)


def parse_ilp_timestamp(raw: bytes, offset: int = 0) -> datetime:
    """Strictly parse a 17-digit ILP timestamp into an aware UTC datetime.

    ``offset`` is where ``raw`` sits in the packet, for the error. Only 17 ASCII
    digits that name a real UTC millisecond are accepted (no hour 24, no second 60,
    no February 30), whatever the JS parsers roll over.
    """
    if len(raw) != _ILP_TIMESTAMP_LEN or not raw.isdigit():
        raise DecodeError("timestamp must be 17 ASCII digits YYYYMMDDHHmmssfff", offset)
    text = raw.decode("ascii")
    # fromisoformat is the fastest strict parser CPython has; the input is already
    # known to be digits, so only the ranges remain for it to check. Hour 24 is
    # refused explicitly because newer Pythons read "24:00" as the next midnight.
    if text[8:10] < "24":
        try:
            return _from_iso(f"{text[:8]}T{text[8:14]}.{text[14:]}+00:00")
        except ValueError:
            pass
    raise DecodeError(f"timestamp is not a real UTC time: {text}", offset)


def format_generalized_time(moment: datetime) -> str:
    """``YYYYMMDDHHMMSS.fffZ`` with exactly three fraction digits, as btp-packet writes it."""
    if moment.tzinfo is None:
        raise EncodeError("GeneralizedTime needs an aware datetime")
    u = moment.astimezone(UTC)
    return (
        f"{u.year:04d}{u.month:02d}{u.day:02d}{u.hour:02d}{u.minute:02d}{u.second:02d}"
        f".{u.microsecond // 1000:03d}Z"
    )


def parse_generalized_time(text: str) -> datetime | None:
    """Lenient read of a BTP ``triggeredAt``; ``None`` when it is not a time we understand."""
    match = _GENERALIZED_TIME.match(text.encode("ascii", "replace"))
    if match is None:
        return None
    digits, fraction = match.group(1), match.group(2) or b""
    try:
        return datetime(
            int(digits[0:4]),
            int(digits[4:6]),
            int(digits[6:8]),
            int(digits[8:10]),
            int(digits[10:12]),
            int(digits[12:14]),
            int(fraction.ljust(3, b"0")) * 1000,
            tzinfo=UTC,
        )
    except ValueError:
        return None


def read_length_at(buf: bytes, pos: int, end: int, what: str = "length prefix") -> tuple[int, int]:
    """Read the length determinant at ``buf[pos]``, inside a container ending at ``end``.

    Returns ``(length, position after the determinant)``. The single home of the
    canonical-length rules; the hot packet decoders call it directly for long forms,
    :meth:`Reader.read_length` for everything. Error offsets are positions in ``buf``.
    It does not check that ``length`` bytes follow: the caller knows its container.
    """
    if pos >= end:
        raise DecodeError(f"truncated {what}: need 1 byte, 0 left", pos)
    first = buf[pos]
    if first < 0x80:
        return first, pos + 1
    size = first & 0x7F
    if size == 0:
        raise DecodeError(f"{what}: indefinite length form 0x80 does not exist in OER", pos)
    if size > _MAX_LENGTH_OF_LENGTH:
        raise DecodeError(f"{what}: length of length {size} is too large", pos)
    stop = pos + 1 + size
    if stop > end:
        raise DecodeError(
            f"truncated {what}: need {size} byte(s), {max(end - pos - 1, 0)} left", pos + 1
        )
    if buf[pos + 1] == 0:
        raise DecodeError(f"{what}: non-canonical length (leading zero byte)", pos)
    length = int.from_bytes(buf[pos + 1 : stop], "big")
    if length < 0x80:
        raise DecodeError(f"{what}: non-canonical length (long form for {length})", pos)
    return length, stop


class Reader:
    """A strict reader over one container.

    ``base`` is the container's offset within the outermost buffer, so every
    :class:`DecodeError` names an absolute offset.
    """

    __slots__ = ("base", "buf", "end", "pos")

    def __init__(self, buf: bytes, base: int = 0) -> None:
        self.buf = buf
        self.pos = 0
        self.end = len(buf)
        self.base = base

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def fail(self, reason: str) -> DecodeError:
        return DecodeError(reason, self.base + self.pos)

    def remaining(self) -> int:
        return self.end - self.pos

    def at_end(self) -> bool:
        return self.pos >= self.end

    def finish(self, what: str = "container") -> None:
        if self.pos != self.end:
            raise self.fail(f"{self.end - self.pos} trailing byte(s) after {what}")

    def read(self, n: int, what: str = "field") -> bytes:
        pos = self.pos
        if n > self.end - pos:
            raise self.fail(f"truncated {what}: need {n} byte(s), {self.end - pos} left")
        self.pos = pos + n
        return self.buf[pos : pos + n]

    def read_uint8(self, what: str = "UInt8") -> int:
        pos = self.pos
        if pos >= self.end:
            raise self.fail(f"truncated {what}: need 1 byte, 0 left")
        self.pos = pos + 1
        return self.buf[pos]

    def read_uint(self, size: int, what: str = "UInt") -> int:
        return int.from_bytes(self.read(size, what), "big")

    def read_int64(self, what: str = "Int64") -> int:
        return int.from_bytes(self.read(8, what), "big", signed=True)

    def read_length(self, what: str = "length prefix") -> int:
        try:
            length, self.pos = read_length_at(self.buf, self.pos, self.end, what)
        except DecodeError as exc:
            raise DecodeError(exc.reason, self.base + exc.offset) from None
        return length

    def read_var_octets(self, what: str = "variable-length octet string") -> bytes:
        length = self.read_length(f"{what} length")
        return self.read(length, what)

    def read_container(self, what: str = "container") -> Reader:
        length = self.read_length(f"{what} length")
        start = self.pos
        raw = self.read(length, what)
        return Reader(raw, self.base + start)

    def read_var_uint(self, what: str = "VarUInt", max_bytes: int = 8) -> int:
        start = self.pos
        length = self.read_length(f"{what} length")
        if length == 0:
            self.pos = start
            raise self.fail(f"{what}: zero-length VarUInt")
        if length > max_bytes:
            self.pos = start
            raise self.fail(f"{what}: {length} bytes is too long")
        raw = self.read(length, what)
        if length > 1 and raw[0] == 0:
            self.pos = start
            raise self.fail(f"{what}: non-canonical VarUInt (leading zero byte)")
        return int.from_bytes(raw, "big")

    def read_ia5(self, what: str = "IA5String") -> str:
        start = self.pos
        raw = self.read_var_octets(what)
        if not raw.isascii():
            self.pos = start
            raise self.fail(f"{what}: bytes above 0x7F are not IA5")
        return raw.decode("ascii")

    def read_utf8(self, what: str = "UTF8String", *, strict: bool = True) -> str:
        start = self.pos
        raw = self.read_var_octets(what)
        try:
            return raw.decode("utf-8", "strict" if strict else "replace")
        except UnicodeDecodeError:
            self.pos = start
            raise self.fail(f"{what}: invalid UTF-8") from None


class Writer:
    """Builds one encoding; the mirror of :class:`Reader`."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, raw: bytes) -> None:
        self.parts.append(raw)

    def write_uint8(self, value: int) -> None:
        self.parts.append(encode_uint(value, 1))

    def write_uint(self, value: int, size: int) -> None:
        self.parts.append(encode_uint(value, size))

    def write_int64(self, value: int) -> None:
        self.parts.append(encode_int64(value))

    def write_length(self, length: int) -> None:
        self.parts.append(encode_length(length))

    def write_var_octets(self, value: bytes) -> None:
        self.parts.append(encode_var_octets(value))

    def write_var_uint(self, value: int) -> None:
        self.parts.append(encode_var_uint(value))

    def write_ia5(self, value: str) -> None:
        self.parts.append(encode_ia5(value))

    def write_utf8(self, value: str) -> None:
        self.parts.append(encode_utf8(value))

    def getvalue(self) -> bytes:
        return b"".join(self.parts)
