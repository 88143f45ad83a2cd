"""Echo / ping as ilp-connector 21.3.0 speaks it (``echo.md``).

A ping is a Prepare addressed to a connector's own address whose data is
``ECHOECHOECHOECHO || 0x00 || sourceAddress (var-octets)``; the connector sends a
new Prepare to ``sourceAddress`` with the same amount and condition and data
``ECHOECHOECHOECHO || 0x01`` (exactly 17 bytes), and relays whatever comes back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum

from ilp.address import InvalidAddress, address_from_bytes, is_valid_address
from ilp.errors import DecodeError
from ilp.oer import Reader, encode_var_octets
from ilp.packet import BytesLike, Prepare

ECHO_PREFIX = b"ECHOECHOECHOECHO"
MIN_ECHO_DATA_LENGTH = len(ECHO_PREFIX) + 1


class EchoType(IntEnum):
    REQUEST = 0
    RESPONSE = 1


@dataclass(frozen=True, slots=True)
class EchoRequest:
    """A ping: "send an echo to ``source_address``"."""

    source_address: str

    def __post_init__(self) -> None:
        if not isinstance(self.source_address, str) or not is_valid_address(self.source_address):
            raise InvalidAddress(f"source_address is not an ILP address: {self.source_address!r}")


@dataclass(frozen=True, slots=True)
class EchoResponse:
    """The echo a connector sends back; it carries nothing."""


EchoMessage = EchoRequest | EchoResponse


def is_echo(data: BytesLike) -> bool:
    """Whether ``data`` claims to be echo data (it may still fail to decode)."""
    return bytes(data[: len(ECHO_PREFIX)]) == ECHO_PREFIX


def decode_echo(data: BytesLike, *, base: int = 0) -> EchoMessage:
    """Read Prepare data; ``base`` is where it sits in a larger buffer (error offsets).

    Every failure is a :class:`DecodeError` (the responder answers F01 with its reason).
    """
    raw = bytes(data)
    if len(raw) < MIN_ECHO_DATA_LENGTH:
        raise DecodeError(f"packet data too short for echo request. length={len(raw)}", base)
    if raw[: len(ECHO_PREFIX)] != ECHO_PREFIX:
        raise DecodeError("packet data does not start with ECHO prefix.", base)
    reader = Reader(raw, base)
    reader.pos = len(ECHO_PREFIX)
    kind = reader.read_uint8("echo type")
    if kind == EchoType.RESPONSE:
        reader.finish("echo response")
        return EchoResponse()
    if kind != EchoType.REQUEST:
        raise DecodeError(f"unknown echo type {kind}", base + len(ECHO_PREFIX))
    at = reader.offset
    raw_address = reader.read_var_octets("echo sourceAddress")
    try:
        source_address = address_from_bytes(raw_address)
    except InvalidAddress as exc:
        raise DecodeError(f"echo sourceAddress: {exc}", at) from None
    reader.finish("echo request")
    return EchoRequest(source_address)


def encode_echo(message: EchoMessage) -> bytes:
    if isinstance(message, EchoRequest):
        return (
            ECHO_PREFIX
            + bytes((EchoType.REQUEST,))
            + encode_var_octets(message.source_address.encode("ascii"))
        )
    return ECHO_PREFIX + bytes((EchoType.RESPONSE,))


def echo_response_prepare(ping: Prepare, request: EchoRequest, expires_at: datetime) -> Prepare:
    """The echo sent back for ``ping``: same amount and condition, to the source address.

    21.3.0 sets ``expires_at = ping.expires_at - minMessageWindow`` (1 s by default);
    the caller decides, and should answer R02 instead when that is already past.
    """
    return Prepare(
        ping.amount,
        expires_at,
        ping.execution_condition,
        request.source_address,
        encode_echo(EchoResponse()),
    )
