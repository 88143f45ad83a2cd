"""CCP payloads: every vector both ways, every invalid payload refused, Hypothesis."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ilp.ccp import (
    CCP_CONTROL_DESTINATION,
    CCP_UPDATE_DESTINATION,
    Mode,
    Route,
    RouteControlRequest,
    RouteProp,
    RouteUpdateRequest,
    ccp_fulfill,
    decode_route_control_request,
    decode_route_update_request,
    encode_route_control_request,
    encode_route_update_request,
    route_control_prepare,
    route_update_prepare,
    validate_ccp_request,
)
from ilp.errors import DecodeError, EncodeError
from ilp.packet import Prepare, RejectError, decode_prepare, encode_packet
from tests.conftest import load_vectors

CCP = load_vectors("ccp.json")
OBSERVED = load_vectors("observed-connector-21.3.0.json")
CONTROL = [v for v in CCP["vectors"] if v["name"].startswith("control_")]
UPDATE = [v for v in CCP["vectors"] if v["name"].startswith("update_")]


def table_id(text: str) -> bytes:
    return uuid.UUID(text).bytes


def meta_from_flags(p: dict[str, Any]) -> int:
    return (
        (0x80 if p["isOptional"] else 0)
        | (0x40 if p["isTransitive"] else 0)
        | (0x20 if p["isPartial"] else 0)
        | (0x10 if p["isUtf8"] else 0)
    )


def control_from_json(obj: dict[str, Any]) -> RouteControlRequest:
    return RouteControlRequest(
        Mode(obj["mode"]),
        table_id(obj["lastKnownRoutingTableId"]),
        obj["lastKnownEpoch"],
        tuple(obj["features"]),
    )


def update_from_json(obj: dict[str, Any]) -> RouteUpdateRequest:
    routes = tuple(
        Route(
            r["prefix"],
            tuple(r["path"]),
            bytes.fromhex(r["auth"]),
            tuple(
                RouteProp(
                    p["id"],
                    p["value"].encode() if p["isUtf8"] else bytes.fromhex(p["value"]),
                    meta_from_flags(p),
                )
                for p in r["props"]
            ),
        )
        for r in obj["newRoutes"]
    )
    return RouteUpdateRequest(
        table_id(obj["routingTableId"]),
        obj["currentEpochIndex"],
        obj["fromEpochIndex"],
        obj["toEpochIndex"],
        obj["holdDownTime"],
        obj["speaker"],
        routes,
        tuple(obj["withdrawnRoutes"]),
    )


@pytest.mark.parametrize("vector", CONTROL, ids=[v["name"] for v in CONTROL])
def test_control_vector_both_ways(vector: dict[str, Any]) -> None:
    expected = control_from_json(vector["object"])
    raw = bytes.fromhex(vector["data_hex"])
    assert decode_route_control_request(raw) == expected
    assert encode_route_control_request(expected) == raw
    assert vector["prepare"]["destination"] == CCP_CONTROL_DESTINATION


@pytest.mark.parametrize("vector", UPDATE, ids=[v["name"] for v in UPDATE])
def test_update_vector_both_ways(vector: dict[str, Any]) -> None:
    expected = update_from_json(vector["object"])
    raw = bytes.fromhex(vector["data_hex"])
    assert decode_route_update_request(raw) == expected
    assert encode_route_update_request(expected) == raw
    assert vector["prepare"]["destination"] == CCP_UPDATE_DESTINATION


VECTOR_EXPIRY = datetime(2018, 1, 1, 0, 1, tzinfo=UTC)


@pytest.mark.parametrize("vector", CONTROL, ids=[v["name"] for v in CONTROL])
def test_control_prepare_bytes(vector: dict[str, Any]) -> None:
    assert vector["prepare"]["expiresAt"] == "2018-01-01T00:01:00.000Z"
    prepare = route_control_prepare(control_from_json(vector["object"]), VECTOR_EXPIRY)
    assert encode_packet(prepare).hex() == vector["hex"]
    validate_ccp_request(prepare, VECTOR_EXPIRY)


@pytest.mark.parametrize("vector", UPDATE, ids=[v["name"] for v in UPDATE])
def test_update_prepare_bytes(vector: dict[str, Any]) -> None:
    prepare = route_update_prepare(update_from_json(vector["object"]), VECTOR_EXPIRY)
    assert encode_packet(prepare).hex() == vector["hex"]
    validate_ccp_request(prepare, VECTOR_EXPIRY)


def test_response_bytes() -> None:
    (vector,) = [v for v in CCP["vectors"] if v["name"] == "response"]
    assert encode_packet(ccp_fulfill()).hex() == vector["hex"]
    assert OBSERVED["scenarios"]["ccp_bob_update"]["updateResponseHex"] == vector["hex"]


def test_validate_refuses_wrong_condition_expiry_and_destination() -> None:
    (vector,) = [v for v in CCP["invalid"] if v["kind"] == "prepare"]
    prepare = decode_prepare(bytes.fromhex(vector["hex"]))
    decode_route_update_request(prepare.data)  # the payload itself is fine
    with pytest.raises(RejectError) as info:
        validate_ccp_request(prepare, VECTOR_EXPIRY)
    assert info.value.code == "F00"
    assert "condition" in info.value.message
    good = route_control_prepare(RouteControlRequest(Mode.SYNC), VECTOR_EXPIRY)
    validate_ccp_request(good, VECTOR_EXPIRY)  # expiresAt == now is still in time
    with pytest.raises(RejectError) as info:
        validate_ccp_request(good, VECTOR_EXPIRY + timedelta(milliseconds=1))
    assert info.value.message == "CCP route control request packet is expired."
    other = Prepare(0, VECTOR_EXPIRY, good.execution_condition, "peer.route.other")
    with pytest.raises(RejectError):
        validate_ccp_request(other, VECTOR_EXPIRY)


def test_observed_connector_payloads() -> None:
    scenarios = OBSERVED["scenarios"]
    for message in scenarios["bobIncoming"] + scenarios["bobIncomingAfterSync"]:
        if "parsed" not in message:
            continue
        raw = bytes.fromhex(message["dataHex"])
        if message["destination"] == CCP_CONTROL_DESTINATION:
            control = decode_route_control_request(raw)
            assert control == control_from_json(message["parsed"])
            assert encode_route_control_request(control) == raw
        else:
            update = decode_route_update_request(raw)
            assert update == update_from_json(message["parsed"])
            assert encode_route_update_request(update) == raw


def test_heartbeat_and_uuid_views() -> None:
    heartbeat = next(v for v in UPDATE if v["name"] == "update_heartbeat")
    update = decode_route_update_request(bytes.fromhex(heartbeat["data_hex"]))
    assert update.is_heartbeat
    assert str(update.routing_table_uuid) == heartbeat["object"]["routingTableId"]
    typical = next(v for v in UPDATE if v["name"] == "update_two_routes_two_withdrawn")
    assert not decode_route_update_request(bytes.fromhex(typical["data_hex"])).is_heartbeat
    initial = decode_route_control_request(bytes.fromhex(CONTROL[0]["data_hex"]))
    assert initial.last_known_routing_table_uuid == uuid.UUID(int=0)
    assert initial == RouteControlRequest(Mode.SYNC)  # the defaults are "know nothing"


INVALID_PAYLOADS = [v for v in CCP["invalid"] if v["kind"] != "prepare"]


@pytest.mark.parametrize("vector", INVALID_PAYLOADS, ids=[v["name"] for v in INVALID_PAYLOADS])
def test_invalid_payload_rejected(vector: dict[str, Any]) -> None:
    decode = (
        decode_route_control_request
        if vector["kind"] == "control_payload"
        else decode_route_update_request
    )
    with pytest.raises(DecodeError):
        decode(bytes.fromhex(vector["hex"]))


# --- props: the meta byte and ilp-protocol-ccp's encoder quirk ------------------------


def test_prop_vector_flags_and_text() -> None:
    vector = next(v for v in UPDATE if v["name"] == "update_with_props")
    update = decode_route_update_request(bytes.fromhex(vector["data_hex"]))
    props = update.new_routes[0].props
    assert [p.meta for p in props] == [0xF0, 0x40, 0x80]
    for prop, expected in zip(props, vector["object"]["newRoutes"][0]["props"], strict=True):
        assert (prop.is_optional, prop.is_transitive, prop.is_partial, prop.is_utf8) == (
            expected["isOptional"],
            expected["isTransitive"],
            expected["isPartial"],
            expected["isUtf8"],
        )
    assert props[0].text == "hello"
    assert props[1].text is None


def test_prop_create_reproduces_the_js_encoder() -> None:
    # The three props of update_with_props as they were given to ilp-protocol-ccp.
    assert RouteProp.create(
        4660, "hello", is_optional=True, is_transitive=True, is_partial=True
    ) == RouteProp(4660, b"hello", 0xF0)
    # non-optional: transitive forced on whatever was asked
    assert RouteProp.create(
        7, bytes.fromhex("deadbeef"), is_optional=False, is_transitive=False
    ) == RouteProp(7, bytes.fromhex("deadbeef"), 0x40)
    # optional, not transitive: partial dropped
    assert RouteProp.create(
        65535, b"", is_optional=True, is_transitive=False, is_partial=True
    ) == RouteProp(65535, b"", 0x80)


@pytest.mark.parametrize("meta", ["01", "0f", "f8"])
def test_reserved_meta_bits_rejected(meta: str) -> None:
    route = Route("g.x", ("g.conn",), bytes(32), (RouteProp(1, b"", 0x80),))
    raw = encode_route_update_request(_update(new_routes=(route,)))
    tampered = raw.replace(bytes.fromhex("80000100"), bytes.fromhex(meta + "000100"))
    assert tampered != raw
    with pytest.raises(DecodeError):
        decode_route_update_request(tampered)


def test_utf8_prop_with_invalid_text_rejected() -> None:
    route = Route("g.x", ("g.conn",), bytes(32), (RouteProp(1, b"\xff", 0x80),))
    raw = encode_route_update_request(_update(new_routes=(route,)))
    tampered = raw.replace(bytes.fromhex("80000101ff"), bytes.fromhex("90000101ff"))
    assert tampered != raw
    with pytest.raises(DecodeError):
        decode_route_update_request(tampered)


# --- strictness of addresses and counts -----------------------------------------------


def _update(**changes: Any) -> RouteUpdateRequest:
    fields: dict[str, Any] = {
        "routing_table_id": bytes(range(16)),
        "current_epoch_index": 1,
        "from_epoch_index": 0,
        "to_epoch_index": 1,
        "hold_down_time": 45000,
        "speaker": "test.conn",
    }
    fields.update(changes)
    return RouteUpdateRequest(**fields)


def _ia5(text: str) -> bytes:
    raw = text.encode("latin-1")
    return bytes((len(raw),)) + raw


HEAD = bytes(range(16)) + bytes.fromhex("0000000100000000000000010000afc8")


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (HEAD + _ia5("test.") + b"\x01\x00\x01\x00", "speaker with an empty segment"),
        (HEAD + _ia5("nosuch.x") + b"\x01\x00\x01\x00", "speaker with an unknown scheme"),
        (HEAD + _ia5("test.caf\xe9") + b"\x01\x00\x01\x00", "speaker above 0x7F"),
        (HEAD + _ia5("test.conn") + b"\x01\x00\x01\x01" + _ia5("te st"), "withdrawn prefix"),
        (
            HEAD
            + _ia5("test.conn")
            + b"\x01\x01"
            + _ia5("test.a")
            + b"\x01\x01"
            + _ia5("bad")
            + bytes(32)
            + b"\x01\x00\x01\x00",
            "path entry that is not an address",
        ),
        (HEAD + _ia5("test.conn") + b"\x01\x05" + b"\x01\x00", "route count past the end"),
        (HEAD + _ia5("test.conn") + b"\x00" + b"\x01\x00", "zero-length count"),
        (HEAD + _ia5("test.conn") + b"\x02\x00\x00" + b"\x01\x00", "count with a leading zero"),
        (HEAD + _ia5("test.conn") + b"\x01\x00\x01\x00" + b"\x00", "trailing byte"),
    ],
)
def test_update_rejections(payload: bytes, why: str) -> None:
    with pytest.raises(DecodeError):
        decode_route_update_request(payload)


def test_bare_scheme_is_a_valid_prefix() -> None:
    update = _update(
        new_routes=(Route("test", ("test.conn",), bytes(32)),), withdrawn_routes=("g",)
    )
    assert decode_route_update_request(encode_route_update_request(update)) == update


@pytest.mark.parametrize(
    "payload",
    [
        "02" + "00" * 16 + "00000000" + "0100",  # mode 2
        "ff" + "00" * 16 + "00000000" + "0100",  # mode 255
        "01" + "00" * 16 + "00000000" + "0101" + "01ff",  # feature not UTF-8
        "01" + "00" * 16 + "00000000" + "0100" + "00",  # trailing byte
        "01" + "00" * 16 + "00000000" + "01ff",  # features count past the end
    ],
)
def test_control_rejections(payload: str) -> None:
    with pytest.raises(DecodeError):
        decode_route_control_request(bytes.fromhex(payload))


@pytest.mark.parametrize(
    "build",
    [
        lambda: RouteControlRequest(2),  # type: ignore[arg-type]
        lambda: RouteControlRequest(Mode.SYNC, bytes(15)),
        lambda: RouteControlRequest(Mode.SYNC, last_known_epoch=2**32),
        lambda: RouteControlRequest(Mode.SYNC, features=["x"]),  # type: ignore[arg-type]
        lambda: RouteControlRequest(Mode.SYNC, features=("\ud800",)),
        lambda: Route("test.a", ("test.conn",), bytes(31)),
        lambda: Route("test.a.", ("test.conn",), bytes(32)),
        lambda: Route("test.a", ("conn",), bytes(32)),
        lambda: RouteProp(2**16, b"", 0x80),
        lambda: RouteProp(1, b"", 0x81),
        lambda: RouteProp(1, b"\xff", 0x10),
        lambda: _update(speaker="test"),
        lambda: _update(hold_down_time=-1),
        lambda: _update(withdrawn_routes=("x.y",)),
        lambda: _update(routing_table_id=bytes(17)),
    ],
)
def test_invalid_values_refused(build: Any) -> None:
    with pytest.raises(EncodeError):
        build()


def test_mode_is_stored_as_the_enum() -> None:
    assert RouteControlRequest(1).mode is Mode.SYNC  # type: ignore[arg-type]


# --- Hypothesis ------------------------------------------------------------------------

segment = st.text("abcxyz019_~-", min_size=1, max_size=8)
address_st = st.builds(
    lambda scheme, segments: ".".join([scheme, *segments]),
    st.sampled_from(["g", "test", "test1", "private", "example", "peer", "self", "local"]),
    st.lists(segment, min_size=1, max_size=4),
)
prefix_st = st.one_of(address_st, st.sampled_from(["g", "test"]))
uint32 = st.integers(0, 2**32 - 1)
prop_st = st.one_of(
    st.builds(
        RouteProp.create,
        st.integers(0, 0xFFFF),
        st.one_of(st.binary(max_size=40), st.text(max_size=20)),
        is_optional=st.booleans(),
        is_transitive=st.booleans(),
        is_partial=st.booleans(),
    ),
    # any legal meta byte, including combinations the JS encoder never writes
    st.builds(
        RouteProp,
        st.integers(0, 0xFFFF),
        st.binary(max_size=40).filter(lambda b: b.isascii()),
        st.integers(0, 15).map(lambda high: high << 4),
    ),
)
route_st = st.builds(
    Route,
    prefix_st,
    st.lists(address_st, max_size=4).map(tuple),
    st.binary(min_size=32, max_size=32),
    st.lists(prop_st, max_size=3).map(tuple),
)
update_st = st.builds(
    RouteUpdateRequest,
    st.binary(min_size=16, max_size=16),
    uint32,
    uint32,
    uint32,
    uint32,
    address_st,
    st.lists(route_st, max_size=4).map(tuple),
    st.lists(prefix_st, max_size=4).map(tuple),
)
control_st = st.builds(
    RouteControlRequest,
    st.sampled_from(Mode),
    st.binary(min_size=16, max_size=16),
    uint32,
    st.lists(st.text(max_size=10), max_size=4).map(tuple),
)


@given(control_st)
def test_control_round_trips(request: RouteControlRequest) -> None:
    assert decode_route_control_request(encode_route_control_request(request)) == request


@given(update_st)
def test_update_round_trips(request: RouteUpdateRequest) -> None:
    assert decode_route_update_request(encode_route_update_request(request)) == request


@given(update_st, st.data())
def test_update_truncations_rejected(request: RouteUpdateRequest, data: st.DataObject) -> None:
    raw = encode_route_update_request(request)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(DecodeError):
        decode_route_update_request(raw[:cut])


@given(control_st, st.data())
def test_control_truncations_rejected(request: RouteControlRequest, data: st.DataObject) -> None:
    raw = encode_route_control_request(request)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(DecodeError):
        decode_route_control_request(raw[:cut])


@given(update_st, st.data())
def test_mutated_updates_only_raise_decode_error(
    request: RouteUpdateRequest, data: st.DataObject
) -> None:
    raw = bytearray(encode_route_update_request(request))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] = data.draw(st.integers(0, 255))
    try:
        decoded = decode_route_update_request(bytes(raw))
    except DecodeError:
        return
    assert encode_route_update_request(decoded) == bytes(raw)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_decode_error(raw: bytes) -> None:
    try:
        control = decode_route_control_request(raw)
    except DecodeError:
        pass
    else:
        assert encode_route_control_request(control) == raw
    try:
        update = decode_route_update_request(raw)
    except DecodeError:
        pass
    else:
        assert encode_route_update_request(update) == raw
