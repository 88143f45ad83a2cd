"""IL-DCP: a child learns its address and asset from its parent (RFC 31, ``ildcp.md``).

The request is a zero-amount Prepare to ``peer.config`` with the peer-protocol
condition and empty data; the answer is a Fulfill with the all-zero fulfillment
whose data is ``clientAddress (IA5 var-octets) || assetScale (UInt8) ||
assetCode (UTF-8 var-octets)``, with no byte after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from ilp.address import InvalidAddress, address_from_bytes, is_valid_address
from ilp.conditions import PEER_CONDITION, PEER_FULFILLMENT
from ilp.errors import DecodeError
from ilp.oer import Reader, encode_var_octets
from ilp.packet import (
    BytesLike,
    ErrorCode,
    Fulfill,
    Prepare,
    RejectError,
    contents_start,
    decode_fulfill,
)

ILDCP_DESTINATION = "peer.config"
#: The expiry the JS client gives its request (``now + 60 s``).
ILDCP_REQUEST_LIFETIME = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class IldcpResponse:
    client_address: str
    asset_scale: int
    asset_code: str

    def __post_init__(self) -> None:
        if not isinstance(self.client_address, str) or not is_valid_address(self.client_address):
            raise InvalidAddress(f"client_address is not an ILP address: {self.client_address!r}")
        if type(self.asset_scale) is not int or not 0 <= self.asset_scale <= 255:
            raise ValueError(f"asset_scale must be an int in 0..255, not {self.asset_scale!r}")
        if not isinstance(self.asset_code, str):
            raise TypeError(f"asset_code must be a str, not {type(self.asset_code).__name__}")
        try:
            self.asset_code.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("asset_code is not encodable as UTF-8") from None


def ildcp_request(expires_at: datetime) -> Prepare:
    """The request a child sends; JS uses ``expires_at = now + ILDCP_REQUEST_LIFETIME``."""
    return Prepare(0, expires_at, PEER_CONDITION, ILDCP_DESTINATION, b"")


def validate_ildcp_request(prepare: Prepare, now: datetime) -> None:
    """Refuse what ilp-protocol-ildcp's ``serve()`` refuses, with its F00 messages."""
    if prepare.destination != ILDCP_DESTINATION:
        raise RejectError(ErrorCode.F00, "packet is not an IL-DCP request.")
    if prepare.execution_condition != PEER_CONDITION:
        raise RejectError(
            ErrorCode.F00, "packet does not contain correct condition for a peer protocol request."
        )
    if now > prepare.expires_at:
        raise RejectError(ErrorCode.F00, "IL-DCP request packet is expired.")


def encode_ildcp_response(response: IldcpResponse) -> bytes:
    """The Fulfill data of an IL-DCP response."""
    return b"".join(
        (
            encode_var_octets(response.client_address.encode("ascii")),
            bytes((response.asset_scale,)),
            encode_var_octets(response.asset_code.encode("utf-8")),
        )
    )


def ildcp_fulfill(response: IldcpResponse) -> Fulfill:
    """The parent's answer."""
    return Fulfill(PEER_FULFILLMENT, encode_ildcp_response(response))


def decode_ildcp_response(data: BytesLike, *, base: int = 0) -> IldcpResponse:
    """Read Fulfill data; ``base`` is where the data sits in a larger buffer (error offsets)."""
    reader = Reader(bytes(data), base)
    at = reader.offset
    raw_address = reader.read_var_octets("clientAddress")
    try:
        client_address = address_from_bytes(raw_address)
    except InvalidAddress as exc:
        raise DecodeError(f"clientAddress: {exc}", at) from None
    asset_scale = reader.read_uint8("assetScale")
    asset_code = reader.read_utf8("assetCode")
    reader.finish("IL-DCP response data")
    return IldcpResponse(client_address, asset_scale, asset_code)


def ildcp_response_from_fulfill(fulfill: Fulfill) -> IldcpResponse:
    """The response carried by a Fulfill the parent sent back (offsets: within its data)."""
    if fulfill.fulfillment != PEER_FULFILLMENT:
        raise DecodeError("IL-DCP response does not carry the all-zero peer fulfillment", 0)
    return decode_ildcp_response(fulfill.data)


def decode_ildcp_fulfill(raw: BytesLike) -> IldcpResponse:
    """A whole IL-DCP response packet (offsets: within ``raw``)."""
    fulfill = decode_fulfill(raw)
    if fulfill.fulfillment != PEER_FULFILLMENT:
        raise DecodeError(
            "IL-DCP response does not carry the all-zero peer fulfillment", contents_start(raw)
        )
    # data is the last field of a Fulfill: it starts len(data) bytes before the end
    return decode_ildcp_response(fulfill.data, base=len(raw) - len(fulfill.data))
