"""CCP route broadcasting payloads (``shared/spec/ccp.md``), byte-equal to ilp-protocol-ccp.

Two requests travel as the ``data`` of a zero-amount peer-protocol Prepare: a **route
control** request to ``peer.route.control`` (do/don't send me your routes, from which
epoch of which table) and a **route update** request to ``peer.route.update`` (a batch of
new and withdrawn routes out of the sender's epoch log). Both are answered with the
peer-protocol Fulfill (32 zero bytes, empty data).

This module holds the payload codecs and the Prepare/Fulfill that carry them; what a
node does with them (epochs, tables, relations) lives in ``links``. Decoders are strict
(trailing bytes, unknown modes, reserved prop bits and invalid addresses are refused)
and raise only :class:`~ilp.errors.DecodeError`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum
from typing import Final

from ilp.address import SCHEMES, is_valid_address
from ilp.conditions import PEER_CONDITION, PEER_FULFILLMENT
from ilp.errors import DecodeError, EncodeError
from ilp.oer import Reader, Writer
from ilp.packet import ErrorCode, Fulfill, Prepare, RejectError

__all__ = [
    "CCP_CONTROL_DESTINATION",
    "CCP_REQUEST_LIFETIME",
    "CCP_UPDATE_DESTINATION",
    "ROUTE_AUTH_LENGTH",
    "ROUTING_TABLE_ID_LENGTH",
    "Mode",
    "Route",
    "RouteControlRequest",
    "RouteProp",
    "RouteUpdateRequest",
    "ccp_fulfill",
    "decode_route_control_request",
    "decode_route_update_request",
    "encode_route_control_request",
    "encode_route_update_request",
    "route_control_prepare",
    "route_update_prepare",
    "validate_ccp_request",
]

CCP_CONTROL_DESTINATION: Final = "peer.route.control"
CCP_UPDATE_DESTINATION: Final = "peer.route.update"
#: The expiry ilp-protocol-ccp gives its requests (``now + 60 s``).
CCP_REQUEST_LIFETIME: Final = timedelta(seconds=60)
ROUTING_TABLE_ID_LENGTH: Final = 16
ROUTE_AUTH_LENGTH: Final = 32
_UINT16_MAX: Final = 0xFFFF
_UINT32_MAX: Final = 0xFFFF_FFFF
# Smallest encodings, used to refuse a list count that cannot fit in the bytes left
# before looping on it: a VarOctets item is >= 1 byte; a route is prefix(1) + path
# count(2) + auth(32) + props count(2); a prop is meta(1) + id(2) + value(1).
_MIN_ITEM: Final = 1
_MIN_ROUTE: Final = 1 + 2 + ROUTE_AUTH_LENGTH + 2
_MIN_PROP: Final = 1 + 2 + 1


class Mode(IntEnum):
    IDLE = 0  # stop sending me updates
    SYNC = 1  # send me updates from last_known_epoch on


# --- validation shared by constructors (EncodeError) -----------------------------------


def _check_uint(value: int, maximum: int, what: str) -> None:
    if type(value) is not int or not 0 <= value <= maximum:
        raise EncodeError(f"{what} must be an integer 0..{maximum}, got {value!r}")


def _check_fixed(value: bytes, length: int, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise EncodeError(f"{what} must be {length} bytes")


def _is_valid_prefix(prefix: str) -> bool:
    # A route prefix is an address, or a bare allocation scheme (the global prefix
    # `g`/`test` of a default route; 21.3.0 never advertises it, but it is a prefix).
    return prefix in SCHEMES or is_valid_address(prefix)


def _check_prefix(prefix: str, what: str) -> None:
    if not isinstance(prefix, str) or not _is_valid_prefix(prefix):
        raise EncodeError(f"{what} is not an ILP address prefix: {prefix!r}")


def _check_address(address: str, what: str) -> None:
    if not isinstance(address, str) or not is_valid_address(address):
        raise EncodeError(f"{what} is not an ILP address: {address!r}")


def _check_tuple(value: tuple[object, ...], item: type, what: str) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, item) for v in value):
        raise EncodeError(f"{what} must be a tuple of {item.__name__}")


# --- readers shared by decoders (DecodeError) ------------------------------------------


def _read_count(r: Reader, min_item: int, what: str) -> int:
    start = r.offset
    count = r.read_var_uint(f"{what} count")
    if count * min_item > r.remaining():
        raise DecodeError(f"{what} count {count} exceeds the bytes left", start)
    return count


def _read_prefix(r: Reader, what: str) -> str:
    start = r.offset
    text = r.read_ia5(what)
    if not _is_valid_prefix(text):
        raise DecodeError(f"{what} is not an ILP address prefix: {text[:80]!r}", start)
    return text


def _read_address(r: Reader, what: str) -> str:
    start = r.offset
    text = r.read_ia5(what)
    if not is_valid_address(text):
        raise DecodeError(f"{what} is not an ILP address: {text[:80]!r}", start)
    return text


# --- route control ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteControlRequest:
    """``peer.route.control`` data. An all-zero table id means "I know no table yet"."""

    mode: Mode
    last_known_routing_table_id: bytes = bytes(ROUTING_TABLE_ID_LENGTH)
    last_known_epoch: int = 0
    features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mode", Mode(self.mode))
        except ValueError:
            raise EncodeError(f"mode must be IDLE (0) or SYNC (1), got {self.mode!r}") from None
        _check_fixed(self.last_known_routing_table_id, ROUTING_TABLE_ID_LENGTH, "routing table id")
        _check_uint(self.last_known_epoch, _UINT32_MAX, "last_known_epoch")
        _check_tuple(self.features, str, "features")
        for feature in self.features:
            try:
                feature.encode("utf-8")
            except UnicodeEncodeError:
                raise EncodeError(f"feature is not encodable as UTF-8: {feature!r}") from None

    @property
    def last_known_routing_table_uuid(self) -> uuid.UUID:
        return uuid.UUID(bytes=self.last_known_routing_table_id)


def encode_route_control_request(request: RouteControlRequest) -> bytes:
    w = Writer()
    w.write_uint8(request.mode)
    w.write(request.last_known_routing_table_id)
    w.write_uint(request.last_known_epoch, 4)
    w.write_var_uint(len(request.features))
    for feature in request.features:
        w.write_utf8(feature)
    return w.getvalue()


def decode_route_control_request(data: bytes) -> RouteControlRequest:
    r = Reader(bytes(data))
    mode_byte = r.read_uint8("mode")
    if mode_byte not in (Mode.IDLE, Mode.SYNC):
        raise DecodeError(f"mode must be 0 (IDLE) or 1 (SYNC), got {mode_byte}", 0)
    table_id = r.read(ROUTING_TABLE_ID_LENGTH, "lastKnownRoutingTableId")
    epoch = r.read_uint(4, "lastKnownEpoch")
    count = _read_count(r, _MIN_ITEM, "features")
    features = tuple(r.read_utf8("feature") for _ in range(count))
    r.finish("route control request")
    return RouteControlRequest(Mode(mode_byte), table_id, epoch, features)


# --- route update ----------------------------------------------------------------------

_OPTIONAL: Final = 0x80
_TRANSITIVE: Final = 0x40
_PARTIAL: Final = 0x20
_UTF8: Final = 0x10
_RESERVED: Final = 0x0F


@dataclass(frozen=True, slots=True)
class RouteProp:
    """A route property. ``meta`` is the wire byte, kept whole so any received prop
    re-encodes byte for byte; build new ones with :meth:`create`, which applies
    ilp-protocol-ccp's encoding of the flags."""

    id: int
    value: bytes
    meta: int

    def __post_init__(self) -> None:
        _check_uint(self.id, _UINT16_MAX, "prop id")
        _check_uint(self.meta, 0xFF, "prop meta")
        if self.meta & _RESERVED:
            raise EncodeError(f"prop meta {self.meta:#04x} sets the reserved low 4 bits")
        if not isinstance(self.value, bytes):
            raise EncodeError("prop value must be bytes")
        if self.is_utf8:
            try:
                self.value.decode("utf-8")
            except UnicodeDecodeError:
                raise EncodeError("prop value is flagged UTF-8 but is not") from None

    @classmethod
    def create(
        cls,
        id: int,
        value: bytes | str,
        *,
        is_optional: bool,
        is_transitive: bool = True,
        is_partial: bool = False,
    ) -> RouteProp:
        """A prop as ilp-protocol-ccp writes it: a ``str`` value sets the utf8 bit; a
        non-optional prop is always transitive; partial is kept only on an optional
        transitive prop."""
        transitive = is_transitive or not is_optional
        meta = (
            (_OPTIONAL if is_optional else 0)
            | (_TRANSITIVE if transitive else 0)
            | (_PARTIAL if is_partial and is_optional and transitive else 0)
            | (_UTF8 if isinstance(value, str) else 0)
        )
        raw = value.encode("utf-8") if isinstance(value, str) else value
        return cls(id, raw, meta)

    @property
    def is_optional(self) -> bool:
        return bool(self.meta & _OPTIONAL)

    @property
    def is_transitive(self) -> bool:
        return bool(self.meta & _TRANSITIVE)

    @property
    def is_partial(self) -> bool:
        return bool(self.meta & _PARTIAL)

    @property
    def is_utf8(self) -> bool:
        return bool(self.meta & _UTF8)

    @property
    def text(self) -> str | None:
        """The value as text when the utf8 bit is set, else ``None``."""
        return self.value.decode("utf-8") if self.is_utf8 else None


@dataclass(frozen=True, slots=True)
class Route:
    """A reachable prefix. ``path`` starts with the speaker; ``auth`` is opaque."""

    prefix: str
    path: tuple[str, ...]
    auth: bytes
    props: tuple[RouteProp, ...] = ()

    def __post_init__(self) -> None:
        _check_prefix(self.prefix, "route prefix")
        _check_tuple(self.path, str, "path")
        for hop in self.path:
            _check_address(hop, "path entry")
        _check_fixed(self.auth, ROUTE_AUTH_LENGTH, "route auth")
        _check_tuple(self.props, RouteProp, "props")


@dataclass(frozen=True, slots=True)
class RouteUpdateRequest:
    """``peer.route.update`` data: the epochs ``[from_epoch_index, to_epoch_index)`` of
    the speaker's table ``routing_table_id``. No routes at all is a heartbeat."""

    routing_table_id: bytes
    current_epoch_index: int
    from_epoch_index: int
    to_epoch_index: int
    hold_down_time: int  # milliseconds
    speaker: str
    new_routes: tuple[Route, ...] = ()
    withdrawn_routes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_fixed(self.routing_table_id, ROUTING_TABLE_ID_LENGTH, "routing table id")
        _check_uint(self.current_epoch_index, _UINT32_MAX, "current_epoch_index")
        _check_uint(self.from_epoch_index, _UINT32_MAX, "from_epoch_index")
        _check_uint(self.to_epoch_index, _UINT32_MAX, "to_epoch_index")
        _check_uint(self.hold_down_time, _UINT32_MAX, "hold_down_time")
        _check_address(self.speaker, "speaker")
        _check_tuple(self.new_routes, Route, "new_routes")
        _check_tuple(self.withdrawn_routes, str, "withdrawn_routes")
        for prefix in self.withdrawn_routes:
            _check_prefix(prefix, "withdrawn route")

    @property
    def routing_table_uuid(self) -> uuid.UUID:
        return uuid.UUID(bytes=self.routing_table_id)

    @property
    def is_heartbeat(self) -> bool:
        return not self.new_routes and not self.withdrawn_routes


def _write_route(w: Writer, route: Route) -> None:
    w.write_ia5(route.prefix)
    w.write_var_uint(len(route.path))
    for hop in route.path:
        w.write_ia5(hop)
    w.write(route.auth)
    w.write_var_uint(len(route.props))
    for prop in route.props:
        w.write_uint8(prop.meta)
        w.write_uint(prop.id, 2)
        w.write_var_octets(prop.value)


def encode_route_update_request(request: RouteUpdateRequest) -> bytes:
    w = Writer()
    w.write(request.routing_table_id)
    w.write_uint(request.current_epoch_index, 4)
    w.write_uint(request.from_epoch_index, 4)
    w.write_uint(request.to_epoch_index, 4)
    w.write_uint(request.hold_down_time, 4)
    w.write_ia5(request.speaker)
    w.write_var_uint(len(request.new_routes))
    for route in request.new_routes:
        _write_route(w, route)
    w.write_var_uint(len(request.withdrawn_routes))
    for prefix in request.withdrawn_routes:
        w.write_ia5(prefix)
    return w.getvalue()


def _read_prop(r: Reader) -> RouteProp:
    start = r.offset
    meta = r.read_uint8("prop meta")
    if meta & _RESERVED:
        raise DecodeError(f"prop meta {meta:#04x} sets the reserved low 4 bits", start)
    prop_id = r.read_uint(2, "prop id")
    value_at = r.offset
    value = r.read_var_octets("prop value")
    if meta & _UTF8:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("prop value is flagged UTF-8 but is not", value_at) from None
    return RouteProp(prop_id, value, meta)


def _read_route(r: Reader) -> Route:
    prefix = _read_prefix(r, "route prefix")
    path_count = _read_count(r, _MIN_ITEM, "path")
    path = tuple(_read_address(r, "path entry") for _ in range(path_count))
    auth = r.read(ROUTE_AUTH_LENGTH, "route auth")
    prop_count = _read_count(r, _MIN_PROP, "props")
    props = tuple(_read_prop(r) for _ in range(prop_count))
    return Route(prefix, path, auth, props)


def decode_route_update_request(data: bytes) -> RouteUpdateRequest:
    r = Reader(bytes(data))
    table_id = r.read(ROUTING_TABLE_ID_LENGTH, "routingTableId")
    current = r.read_uint(4, "currentEpochIndex")
    from_epoch = r.read_uint(4, "fromEpochIndex")
    to_epoch = r.read_uint(4, "toEpochIndex")
    hold_down = r.read_uint(4, "holdDownTime")
    speaker = _read_address(r, "speaker")
    route_count = _read_count(r, _MIN_ROUTE, "newRoutes")
    routes = tuple(_read_route(r) for _ in range(route_count))
    withdrawn_count = _read_count(r, _MIN_ITEM, "withdrawnRoutes")
    withdrawn = tuple(_read_prefix(r, "withdrawn route") for _ in range(withdrawn_count))
    r.finish("route update request")
    return RouteUpdateRequest(
        table_id, current, from_epoch, to_epoch, hold_down, speaker, routes, withdrawn
    )


# --- the ILP packets that carry them ---------------------------------------------------


def route_control_prepare(request: RouteControlRequest, expires_at: datetime) -> Prepare:
    """The Prepare ilp-protocol-ccp sends; it uses ``expires_at = now + CCP_REQUEST_LIFETIME``."""
    return Prepare(
        0,
        expires_at,
        PEER_CONDITION,
        CCP_CONTROL_DESTINATION,
        encode_route_control_request(request),
    )


def route_update_prepare(request: RouteUpdateRequest, expires_at: datetime) -> Prepare:
    return Prepare(
        0, expires_at, PEER_CONDITION, CCP_UPDATE_DESTINATION, encode_route_update_request(request)
    )


def ccp_fulfill() -> Fulfill:
    """The answer to both requests, also when the update is ignored: ``0d21 00*32 00``."""
    return Fulfill(PEER_FULFILLMENT, b"")


_KIND_OF_DESTINATION: Final = {
    CCP_CONTROL_DESTINATION: "control",
    CCP_UPDATE_DESTINATION: "update",
}


def validate_ccp_request(prepare: Prepare, now: datetime) -> None:
    """Refuse what ilp-protocol-ccp's ``deserializeCcpRoute*Request`` refuses, with its
    F00 messages. The payload is decoded separately (a :class:`DecodeError` there is
    the caller's F01)."""
    kind = _KIND_OF_DESTINATION.get(prepare.destination)
    if kind is None:
        raise RejectError(
            ErrorCode.F00, f"unrecognized ccp message. destination={prepare.destination}"
        )
    if prepare.execution_condition != PEER_CONDITION:
        raise RejectError(
            ErrorCode.F00, "packet does not contain correct condition for a peer protocol request."
        )
    if now > prepare.expires_at:
        raise RejectError(ErrorCode.F00, f"CCP route {kind} request packet is expired.")
