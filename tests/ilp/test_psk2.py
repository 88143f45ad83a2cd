"""ilp.psk2: every psk2.json vector byte for byte, both directions, plus Hypothesis."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ilp import psk2
from ilp.errors import DecodeError, EncodeError
from ilp.oer import UINT64_MAX, Reader
from ilp.psk2 import (
    ChunkRejection,
    ChunkRequest,
    ChunkResponse,
    Psk2DecryptionError,
    Psk2Type,
    Rejection,
    Request,
    Response,
    condition_for_data,
    decode_psk2,
    decrypt,
    decrypt_psk2,
    encode_psk2,
    encrypt,
    encrypt_psk2,
    fulfillment_for,
)
from tests.conftest import load_vectors

VECTORS = {v["name"]: v for v in load_vectors("receiver/psk2.json")["vectors"]}
HTTP_VECTORS = {v["name"]: v for v in load_vectors("receiver/http-ilp.json")["vectors"]}
HAVE_PACKET = importlib.util.find_spec("ilp.packet") is not None
needs_packet = pytest.mark.skipif(not HAVE_PACKET, reason="ilp.packet not written yet")

h = bytes.fromhex


# --- small wire readers so these tests do not depend on ilp.packet --------------------------


def prepare_fields(raw: bytes) -> dict[str, Any]:
    r = Reader(raw)
    assert r.read_uint8() == 12
    c = r.read_container()
    fields = {
        "amount": c.read_uint(8),
        "expires_at": c.read(17).decode(),
        "condition": c.read(32),
        "destination": c.read_var_octets().decode(),
        "data": c.read_var_octets(),
    }
    return fields


def reply_fields(raw: bytes) -> dict[str, Any]:
    r = Reader(raw)
    kind = r.read_uint8()
    c = r.read_container()
    if kind == 13:
        return {"type": "fulfill", "fulfillment": c.read(32), "data": c.read_var_octets()}
    assert kind == 14
    return {
        "type": "reject",
        "code": c.read(3).decode(),
        "triggered_by": c.read_var_octets().decode(),
        "message": c.read_var_octets().decode(),
        "data": c.read_var_octets(),
    }


def draft1_from_fields(f: dict[str, Any]) -> psk2.Draft1Packet:
    common = (h(f["paymentId"]), f["sequence"], int(f["paymentAmount"]), int(f["chunkAmount"]))
    app = h(f.get("applicationData", ""))
    if f["type"] == 2:
        return ChunkResponse(*common, app)
    if f["type"] == 3:
        return ChunkRejection(*common, app)
    return ChunkRequest(*common, app, last=f["type"] == 1)


def draft2_from_fields(f: dict[str, Any]) -> psk2.Draft2Packet:
    args = (f["requestId"], int(f["amount"]), h(f["data"]))
    if f["type"] == 4:
        return Request(*args)
    if f["type"] == 5:
        return Response(*args)
    return Rejection(*args)


def check_roundtrip(plaintext_hex: str, packet: psk2.Psk2Packet) -> None:
    assert encode_psk2(packet).hex() == plaintext_hex
    assert decode_psk2(h(plaintext_hex)) == packet


# --- keys and addresses -------------------------------------------------------------------


def test_draft1_receiver_address_and_secret() -> None:
    v = VECTORS["draft1_receiver_address_and_secret"]
    rs, token = h(v["inputs"]["receiverSecret"]), h(v["inputs"]["token"])
    e = v["expected"]
    assert psk2.receiver_id(rs) == e["receiverId"]
    assert psk2.b64url_encode(token) == e["tokenBase64url"]
    assert psk2.b64url_decode(e["tokenBase64url"]) == token
    assert psk2.generation_key(rs).hex() == e["sharedSecretGenerator"]
    secret = psk2.reference_shared_secret(rs, token)
    assert secret.hex() == e["sharedSecret"]
    assert base64.b64encode(secret).decode() == e["sharedSecretBase64"]
    address = f"{v['inputs']['receiverAddress']}.{e['receiverId']}.{e['tokenBase64url']}"
    assert address == e["destinationAccount"]


def test_draft1_packet_keys() -> None:
    v = VECTORS["draft1_packet_keys"]
    s = h(v["inputs"]["sharedSecret"])
    e = v["expected"]
    assert psk2.encryption_key(s).hex() == e["encryptionKey_hmac_ilp_psk2_encryption"]
    assert psk2.fulfillment_key(s).hex() == e["fulfillmentKey_hmac_ilp_psk2_fulfillment"]
    assert psk2.encryption_key(s).hex() != e["encryptionKey_if_rfc_text_ilp_psk_encryption"]


def test_draft2_receiver_address_and_secret() -> None:
    v = VECTORS["draft2_receiver_address_and_secret"]
    i, e = v["inputs"], v["expected"]
    rs, token, key_id = h(i["receiverSecret"]), h(i["token"]), h(i["keyId"])
    secret = psk2.reference_shared_secret(rs, token)
    assert secret.hex() == e["sharedSecret"]
    assert f"{i['receiverAddress']}.{psk2.b64url_encode(token)}" == e["destinationAccount"]
    variant = psk2.reference_shared_secret(rs, token + key_id)
    assert variant.hex() == e["keyIdVariant"]["sharedSecret"]
    suffix = psk2.b64url_encode(token + key_id)
    assert f"{i['receiverAddress']}.{suffix}" == e["keyIdVariant"]["destinationAccount"]
    assert psk2.b64url_decode(suffix) == token + key_id
    specific = psk2.secret_address_suffix(rs, h(i["specificSharedSecret"]))
    assert (
        f"{i['receiverAddress']}.{specific}"
        == e["registerRequestHandlerForSecret"]["destinationAccount"]
    )


def test_circular_payment_condition() -> None:
    v = VECTORS["circular_payment_condition"]
    fulfillment = h(v["inputs"]["fulfillment"])
    assert hashlib.sha256(fulfillment).hexdigest() == v["expected"]["condition"]


@pytest.mark.parametrize(
    ("text", "raw"),
    [
        ("TU9G2D8m14IQI3XQ0ddny9sZ", "4d4f46d83f26d782102375d0d1d767cbdb19"),
        ("CQ6B2kdrqsFSKWgvVsk_XqVQ", None),
        ("CQ6B2kdrqsFSKWgvVsk/XqVQ", None),  # standard alphabet accepted too
        ("_w", "ff"),
        ("_w==", "ff"),
    ],
)
def test_b64url_decode_is_lenient(text: str, raw: str | None) -> None:
    decoded = psk2.b64url_decode(text)
    if raw is not None:
        assert decoded.hex() == raw
    assert psk2.b64url_decode(psk2.b64url_encode(decoded)) == decoded


@pytest.mark.parametrize("text", ["a", "ab!c", "é", "abcde"])
def test_b64url_decode_refuses_garbage(text: str) -> None:
    with pytest.raises(DecodeError):
        psk2.b64url_decode(text)


# --- draft 1 vectors ----------------------------------------------------------------------


def test_draft1_single_chunk_fulfilled() -> None:
    v = VECTORS["draft1_single_chunk_fulfilled"]
    i, e = v["inputs"], v["expected"]
    s = h(i["sharedSecret"])
    request = ChunkRequest(
        h(i["paymentId"]), 0, UINT64_MAX, int(i["minDestinationAmount"]), last=True
    )
    assert request == draft1_from_fields(e["requestPlaintextFields"])
    check_roundtrip(e["requestPlaintext"], request)
    data = encrypt_psk2(s, request, h(i["requestIv"]))
    assert data.hex() == e["requestData"] == e["prepare"]["data"]
    assert decrypt_psk2(s, data) == request
    assert fulfillment_for(s, data).hex() == e["fulfillment"]
    assert condition_for_data(s, data).hex() == e["condition"]

    response = draft1_from_fields(e["responsePlaintextFields"])
    check_roundtrip(e["responsePlaintext"], response)
    response_data = encrypt_psk2(s, response, h(i["responseIv"]))
    assert response_data.hex() == e["responseData"] == e["fulfill"]["data"]
    assert decrypt_psk2(s, response_data) == response

    p = prepare_fields(h(e["preparePacket"]))
    assert p["data"] == data
    assert p["condition"].hex() == e["condition"]
    assert p["destination"] == i["destinationAccount"]
    f = reply_fields(h(e["fulfillPacket"]))
    assert f["fulfillment"].hex() == e["fulfillment"]
    assert f["data"] == response_data


@pytest.mark.parametrize("name", ["draft1_quote_unfulfillable", "draft1_amount_too_low"])
def test_draft1_rejected_with_psk_error(name: str) -> None:
    v = VECTORS[name]
    i, e = v["inputs"], v["expected"]
    s = h(i["sharedSecret"])
    request = decrypt_psk2(s, h(e["prepare"]["data"]))
    assert encode_psk2(request).hex() == e["requestPlaintext"]
    assert isinstance(request, ChunkRequest)
    assert request.last and request.payment_id.hex() == i["paymentId"]
    assert encrypt_psk2(s, request, h(i["requestIv"])).hex() == e["prepare"]["data"]
    assert request.is_quote is (name == "draft1_quote_unfulfillable")
    if "requestPlaintextFields" in e:
        assert request == draft1_from_fields(e["requestPlaintextFields"])

    error = draft1_from_fields(e["rejectDataFields"])
    assert isinstance(error, ChunkRejection)
    check_roundtrip(e["rejectDataPlaintext"], error)
    assert encrypt_psk2(s, error, h(i["responseIv"])).hex() == e["reject"]["data"]
    assert decrypt_psk2(s, h(e["reject"]["data"])) == error

    p = prepare_fields(h(e["preparePacket"]))
    assert p["data"].hex() == e["prepare"]["data"]
    assert p["condition"].hex() == e["prepare"]["executionCondition"]
    rj = reply_fields(h(e["rejectPacket"]))
    assert (rj["code"], rj["message"], rj["data"].hex()) == ("F99", "", e["reject"]["data"])


def test_draft1_condition_mismatch() -> None:
    v = VECTORS["draft1_condition_mismatch"]
    i, e = v["inputs"], v["expected"]
    s = h(i["sharedSecret"])
    p = prepare_fields(h(i["preparePacket"]))
    assert p["data"].hex() == i["prepare"]["data"]
    request = decrypt_psk2(s, p["data"])
    assert isinstance(request, ChunkRequest) and request.chunk_amount == 0
    assert fulfillment_for(s, p["data"]).hex() == e["wouldBeFulfillment"]
    assert condition_for_data(s, p["data"]).hex() == e["wouldBeCondition"]
    assert p["condition"].hex() != e["wouldBeCondition"]


def test_draft1_decrypt_failure() -> None:
    v = VECTORS["draft1_decrypt_failure"]
    s = h(v["inputs"]["sharedSecret"])
    data = prepare_fields(h(v["inputs"]["preparePacket"]))["data"]
    with pytest.raises(Psk2DecryptionError):
        decrypt(s, data)
    # The same bytes with the flipped last byte restored decrypt fine.
    fixed = data[:-1] + bytes((data[-1] ^ 1,))
    assert isinstance(decrypt_psk2(s, fixed), ChunkRequest)


def test_draft1_application_reject_request() -> None:
    v = VECTORS["draft1_application_reject"]
    i, e = v["inputs"], v["expected"]
    s = h(i["sharedSecret"])
    data = prepare_fields(h(e["preparePacket"]))["data"]
    request = decrypt_psk2(s, data)
    assert isinstance(request, ChunkRequest)
    assert request.payment_id.hex() == i["paymentId"] and request.last
    assert encrypt_psk2(s, request, h(i["requestIv"])) == data


def test_draft1_chunked_payment() -> None:
    v = VECTORS["draft1_chunked_payment"]
    i, e = v["inputs"], v["expected"]
    s = h(i["sharedSecret"])
    for chunk in e["chunks"]:
        p = prepare_fields(h(chunk["preparePacket"]))
        request = decrypt_psk2(s, p["data"])
        assert request == ChunkRequest(
            h(i["paymentId"]), chunk["sequence"], 1100, 0, last=chunk["type"] == 1
        )
        assert encrypt_psk2(s, request, h(chunk["requestIv"])) == p["data"]
        assert p["amount"] == int(chunk["amount"])
        assert fulfillment_for(s, p["data"]).hex() == chunk["fulfillment"]
        assert condition_for_data(s, p["data"]) == p["condition"]
        response = draft1_from_fields(chunk["responseFields"])
        data = encrypt_psk2(s, response, h(chunk["responseIv"]))
        assert data.hex() == chunk["response"]["data"]
        assert reply_fields(h(chunk["responsePacket"]))["data"] == data
    after = e["afterFinish"]
    p = prepare_fields(h(after["preparePacket"]))
    assert encrypt_psk2(s, decrypt_psk2(s, p["data"]), h(after["requestIv"])) == p["data"]
    error = draft1_from_fields(after["rejectFields"])
    assert encrypt_psk2(s, error, h(after["responseIv"])).hex() == after["reject"]["data"]


def test_draft1_receiver_edge_behaviour_packets() -> None:
    v = VECTORS["draft1_receiver_edge_behaviour"]
    s = h(v["inputs"]["sharedSecret"])
    for step in v["expected"]["steps"]:
        p = prepare_fields(h(step["preparePacket"]))
        request = decrypt_psk2(s, p["data"])
        assert request == ChunkRequest(
            h(step["paymentId"]),
            step["sequence"],
            int(step["paymentAmount"]),
            0,
            last=step["type"] == 1,
        )
        # No IVs are given: the IV is the first 12 bytes of the data.
        assert encrypt_psk2(s, request, p["data"][:12]) == p["data"]
        reply = reply_fields(h(step["responsePacket"]))
        out = step["outcome"]
        answer = decrypt_psk2(s, reply["data"])
        if out["result"] == "fulfill":
            assert answer == ChunkResponse(
                request.payment_id,
                request.sequence,
                int(out["responsePaymentAmount"]),
                int(out["responseChunkAmount"]),
            )
            assert reply["fulfillment"] == fulfillment_for(s, p["data"])
        else:
            assert answer == ChunkRejection(
                request.payment_id,
                request.sequence,
                int(out["errorPaymentAmount"]),
                int(out["errorChunkAmount"]),
            )
        assert encrypt_psk2(s, answer, reply["data"][:12]) == reply["data"]


# --- draft 2 vectors ----------------------------------------------------------------------


def _ivs(i: dict[str, Any]) -> tuple[bytes, bytes]:
    return h(i.get("request_IV") or i["requestIv"]), h(i.get("response_IV") or i["responseIv"])


@pytest.mark.parametrize(
    "name",
    [
        "draft2_request_fulfilled",
        "draft2_unfulfillable_quote",
        "draft2_amount_too_low",
        "draft2_application_reject",
    ],
)
def test_draft2_exchanges(name: str) -> None:
    v = VECTORS[name]
    i, e = v["inputs"], v["expected"]
    s = h(i["sharedSecret"])
    request_iv, response_iv = _ivs(i)
    request = draft2_from_fields(e["requestFields"])
    check_roundtrip(e["requestPlaintext"], request)
    data = encrypt_psk2(s, request, request_iv)
    assert data.hex() == e["prepare"]["data"]
    if "condition" in e:
        assert (
            condition_for_data(s, data).hex()
            == e["condition"]
            == e["prepare"]["executionCondition"]
        )
        assert fulfillment_for(s, data).hex() == e["fulfillment"]
    answer = draft2_from_fields(e["responseFields"])
    check_roundtrip(e["responsePlaintext"], answer)
    assert encrypt_psk2(s, answer, response_iv).hex() == e["response"]["data"]
    assert prepare_fields(h(e["preparePacket"]))["data"] == data
    reply = reply_fields(h(e["responsePacket"]))
    assert reply["data"].hex() == e["response"]["data"]
    if reply["type"] == "fulfill":
        assert isinstance(answer, Response)
        assert reply["fulfillment"].hex() == e["fulfillment"]
    else:
        assert isinstance(answer, Rejection)
        assert (reply["code"], reply["message"]) == (
            e["response"]["code"],
            e["response"]["message"],
        )


def test_draft2_receiver_accepts_legacy_draft1_packet() -> None:
    v = VECTORS["draft2_receiver_accepts_legacy_draft1_packet"]
    i, e = v["inputs"], v["expected"]
    s = h(i["sharedSecret"])
    p = prepare_fields(h(i["preparePacket"]))
    request = decrypt_psk2(s, p["data"])
    assert isinstance(request, ChunkRequest)
    saw = h(e["requestHandlerSaw"]["data"])
    assert request.payment_id + request.sequence.to_bytes(4, "big") == saw
    assert encrypt_psk2(s, request, h(i["requestIv"])) == p["data"]
    response = decode_psk2(h(e["responsePlaintext"]))
    assert response == ChunkResponse(request.payment_id, request.sequence, 0, p["amount"])
    assert encode_psk2(response).hex() == e["responsePlaintext"]
    assert encrypt_psk2(s, response, h(i["responseIv"])).hex() == e["response"]["data"]
    assert fulfillment_for(s, p["data"]).hex() == e["response"]["fulfillment"]


def test_draft2_packet_to_draft1_receiver() -> None:
    v = VECTORS["draft2_packet_to_draft1_receiver"]
    s = h(v["inputs"]["sharedSecret"])
    data = prepare_fields(h(v["inputs"]["preparePacket"]))["data"]
    request = decrypt_psk2(s, data)
    # Our decoder reads it (we accept both drafts); its plaintext is 14 bytes.
    assert isinstance(request, Request)
    assert len(encode_psk2(request)) == 14
    assert encrypt_psk2(s, request, data[:12]) == data


@pytest.mark.parametrize("case", ["amount_ok_condition_random", "amount_too_high_condition_random"])
def test_draft2_v0_3_1_unfulfillable(case: str) -> None:
    v = VECTORS["draft2_v0_3_1_unfulfillable_behaviour"]
    s = h(v["inputs"]["sharedSecret"])
    c = v["expected"][case]
    p = prepare_fields(h(c["preparePacket"]))
    request = decrypt_psk2(s, p["data"])
    assert request == Request(99, int(c["requestAmountField"]))
    assert encrypt_psk2(s, request, h(c["requestIv"])) == p["data"]
    error = draft2_from_fields(c["errorFields"])
    assert encrypt_psk2(s, error, h(c["responseIv"])).hex() == c["response"]["data"]
    assert reply_fields(h(c["responsePacket"]))["data"].hex() == c["response"]["data"]


# --- http-ilp.json carries PSK2 packets too ---------------------------------------------------


def _pay_header_secret(headers: dict[str, str]) -> tuple[str, bytes]:
    pay = headers.get("pay") or headers["Pay"]
    _, address, secret, _ = pay.split(" ")
    return address, base64.b64decode(secret)


def test_http_ilp_draft1_packets() -> None:
    v = HTTP_VECTORS["draft1_era_ilp_fetch_1_0_1_with_koa_ilp_1_0_0"]
    e = v["expected"]
    address, secret = _pay_header_secret(e["httpExchanges"][0]["response"]["headers"])
    for packet in e["ilpPackets"]:
        p = prepare_fields(h(packet["preparePacket"]))
        assert p["destination"] == packet["destination"] == address
        request = decrypt_psk2(secret, p["data"])
        assert encode_psk2(request).hex() == packet["requestPlaintext"]
        assert isinstance(request, ChunkRequest)
        assert request.payment_id.hex() == v["inputs"]["payToken"]
        reply = reply_fields(h(packet["responsePacket"]))
        answer = decrypt_psk2(secret, reply["data"])
        if reply["type"] == "fulfill":
            assert reply["fulfillment"] == fulfillment_for(secret, p["data"])
            assert answer == ChunkResponse(request.payment_id, 1, 1000, 1000)
        else:
            assert request.is_quote
            assert answer == ChunkRejection(request.payment_id, 0, 0, 1000)


def test_http_ilp_draft2_funding_request() -> None:
    v = HTTP_VECTORS["koa_ilp_1_1_1_exchanges"]
    e = v["expected"]
    funding = e["fundingRequest1"]
    p = prepare_fields(h(funding["preparePacket"]))
    case = next(c for c in e["cases"] if c["name"] == "paid_unfunded_token")
    address, secret = _pay_header_secret(case["response"]["headers"])
    assert p["destination"] == address
    request = decrypt_psk2(secret, p["data"])
    assert isinstance(request, Request)
    assert request.data.hex() == funding["data"] == v["inputs"]["payToken"]
    reply = reply_fields(h(funding["responsePacket"]))
    assert reply["fulfillment"] == fulfillment_for(secret, p["data"])
    answer = decrypt_psk2(secret, reply["data"])
    assert isinstance(answer, Response)
    assert answer.request_id == request.request_id
    assert answer.amount == int(funding["result"]["destinationAmount"])


# --- full packets through ilp.packet, once it exists ------------------------------------------

_FULL = [
    ("draft1_single_chunk_fulfilled", "preparePacket", "fulfillPacket"),
    ("draft1_quote_unfulfillable", "preparePacket", "rejectPacket"),
    ("draft1_amount_too_low", "preparePacket", "rejectPacket"),
    ("draft2_request_fulfilled", "preparePacket", "responsePacket"),
    ("draft2_unfulfillable_quote", "preparePacket", "responsePacket"),
    ("draft2_amount_too_low", "preparePacket", "responsePacket"),
    ("draft2_application_reject", "preparePacket", "responsePacket"),
]


@needs_packet
@pytest.mark.parametrize(("name", "prepare_key", "reply_key"), _FULL)
def test_full_packets_roundtrip(name: str, prepare_key: str, reply_key: str) -> None:
    from ilp import packet as ilp_packet

    e = VECTORS[name]["expected"]
    prepare = ilp_packet.decode_prepare(h(e[prepare_key]))
    assert prepare.data.hex() == e["prepare"]["data"]
    assert prepare.expires_at == datetime(2018, 2, 1, 0, 0, 30, tzinfo=UTC)
    assert ilp_packet.encode_packet(prepare).hex() == e[prepare_key]
    reply = ilp_packet.decode_reply(h(e[reply_key]))
    assert ilp_packet.encode_packet(reply).hex() == e[reply_key]


# --- properties ---------------------------------------------------------------------------

u32 = st.integers(0, psk2.UINT32_MAX)
u64 = st.integers(0, UINT64_MAX)
blob = st.binary(max_size=300)
pid = st.binary(min_size=16, max_size=16)

draft1_common = (pid, u32, u64, u64, blob)
packets = st.one_of(
    st.builds(ChunkRequest, *draft1_common, last=st.booleans(), junk=blob),
    st.builds(ChunkResponse, *draft1_common, junk=blob),
    st.builds(ChunkRejection, *draft1_common, junk=blob),
    st.builds(Request, u32, u64, blob, blob),
    st.builds(Response, u32, u64, blob, blob),
    st.builds(Rejection, u32, u64, blob, blob),
)
secrets = st.binary(min_size=32, max_size=32)
ivs = st.binary(min_size=12, max_size=12)


@given(packets)
def test_plaintext_roundtrip(packet: psk2.Psk2Packet) -> None:
    raw = encode_psk2(packet)
    assert raw[0] == packet.type
    assert decode_psk2(raw) == packet


@given(packets, secrets, ivs)
def test_encrypted_roundtrip(packet: psk2.Psk2Packet, secret: bytes, iv: bytes) -> None:
    data = encrypt_psk2(secret, packet, iv)
    assert data[:12] == iv
    assert len(data) == len(encode_psk2(packet)) + 28
    assert decrypt_psk2(secret, data) == packet


@given(st.binary(max_size=200), secrets, ivs)
def test_encrypt_decrypt(plaintext: bytes, secret: bytes, iv: bytes) -> None:
    assert decrypt(secret, encrypt(secret, plaintext, iv)) == plaintext


@given(st.binary(max_size=100), secrets, ivs, st.data())
def test_tampering_is_a_decode_error(
    plaintext: bytes, secret: bytes, iv: bytes, data: st.DataObject
) -> None:
    sealed = bytearray(encrypt(secret, plaintext, iv))
    index = data.draw(st.integers(0, len(sealed) - 1))
    sealed[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(Psk2DecryptionError):
        decrypt(secret, bytes(sealed))
    other = bytes(b ^ 0x55 for b in secret)
    with pytest.raises(DecodeError):
        decrypt(other, encrypt(secret, plaintext, iv))


@given(st.binary(max_size=100))
def test_decode_raises_only_decode_error(raw: bytes) -> None:
    try:
        packet = decode_psk2(raw)
    except DecodeError:
        return
    assert packet.type == raw[0]


@given(st.binary(max_size=100), secrets)
def test_decrypt_raises_only_decode_error(raw: bytes, secret: bytes) -> None:
    with pytest.raises(DecodeError):
        decrypt_psk2(secret, raw)


def test_decrypt_short_data() -> None:
    for n in (0, 1, 27):
        with pytest.raises(Psk2DecryptionError):
            decrypt(b"k" * 32, bytes(n))


def test_decode_is_lenient_after_application_data() -> None:
    base = encode_psk2(ChunkRequest(bytes(16), 1, 2, 3, b"ab"))
    assert base[-1] == 0
    # No extension byte at all (0.2.1 never reads it).
    assert decode_psk2(base[:-1]) == ChunkRequest(bytes(16), 1, 2, 3, b"ab")
    # A non-zero extension byte and junk after it.
    assert decode_psk2(base[:-1] + b"\x07junk") == ChunkRequest(
        bytes(16), 1, 2, 3, b"ab", junk=b"junk"
    )
    assert decode_psk2(encode_psk2(Request(1, 2)) + b"xyz") == Request(1, 2, junk=b"xyz")


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "07",
        "ff",
        "01" + "00" * 10,
        "04000000",
        "0400000001000000000000000005aa",  # data length beyond the end
        "04000000010000000000000000" + "8100",  # non-canonical long-form length
    ],
)
def test_decode_refuses(raw: str) -> None:
    with pytest.raises(DecodeError):
        decode_psk2(h(raw))


def test_types() -> None:
    assert ChunkRequest(bytes(16), 0, 0, 0).type is Psk2Type.CHUNK
    assert ChunkRequest(bytes(16), 0, 0, 0, last=True).type is Psk2Type.LAST_CHUNK
    assert ChunkResponse(bytes(16), 0, 0, 0).type == 2
    assert ChunkRejection(bytes(16), 0, 0, 0).type == 3
    assert (Request(0, 0).type, Response(0, 0).type, Rejection(0, 0).type) == (4, 5, 6)


@pytest.mark.parametrize(
    "build",
    [
        lambda: ChunkRequest(bytes(15), 0, 0, 0),
        lambda: ChunkRequest(bytes(16), -1, 0, 0),
        lambda: ChunkRequest(bytes(16), 2**32, 0, 0),
        lambda: ChunkResponse(bytes(16), 0, 2**64, 0),
        lambda: ChunkRejection(bytes(16), 0, 0, -5),
        lambda: ChunkRequest(bytes(16), 0, 0, 0, "x"),  # type: ignore[arg-type]
        lambda: ChunkRequest(bytes(16), 0, True, 0),
        lambda: ChunkRequest(bytes(16), 0, 0, 0, last=1),  # type: ignore[arg-type]
        lambda: Request(2**32, 0),
        lambda: Response(0, 2**64),
        lambda: Rejection(0, 0, bytearray()),  # type: ignore[arg-type]
    ],
)
def test_values_validate_on_construction(build: Any) -> None:
    # Range errors are EncodeError (a ValueError); wrong types are TypeError, as in ilp.packet.
    with pytest.raises((EncodeError, TypeError)):
        build()


def test_encrypt_validates() -> None:
    with pytest.raises(EncodeError):
        encrypt(b"k" * 32, b"x", bytes(16))  # the draft-1 text's 16-byte IV is wrong
    with pytest.raises(EncodeError):
        encrypt(b"", b"x", bytes(12))
    with pytest.raises(EncodeError):
        encrypt(b"k" * 32, bytes(psk2.MAX_CIPHERTEXT_LENGTH + 1), bytes(12))
    assert len(encrypt(b"k" * 32, bytes(psk2.MAX_CIPHERTEXT_LENGTH), bytes(12))) == 32767


def test_frozen() -> None:
    r = Request(1, 2)
    with pytest.raises(AttributeError):
        r.amount = 3  # type: ignore[misc]


# --- the precomputed HMAC used per packet --------------------------------------------------


@given(st.binary(max_size=200), st.binary(max_size=3000))
def test_hmac_key_equals_hmac_sha256(key: bytes, message: bytes) -> None:
    import hmac

    from ilp.crypto import HmacKey

    mac = HmacKey(key)
    assert mac.digest(message) == hmac.digest(key, message, "sha256")
    assert mac.digest(message) == mac.digest(message)  # the precomputed states are not consumed


def test_secret_for_is_cached_and_still_strict() -> None:
    from ilp import psk2_receiver

    receiver_secret = bytes(range(32))
    issued = psk2_receiver.issue(receiver_secret, "test.sut.receivers.bob", bytes(18))
    first = psk2_receiver.secret_for(receiver_secret, issued.destination, "test.sut.receivers.bob")
    again = psk2_receiver.secret_for(receiver_secret, issued.destination, "test.sut.receivers.bob")
    assert first == again == issued.shared_secret
    assert (
        psk2_receiver.secret_for(receiver_secret, issued.destination, "test.sut.receivers.b")
        is None
    )
    with pytest.raises(TypeError):
        psk2_receiver.secret_for(bytearray(receiver_secret), issued.destination, "test.sut")  # type: ignore[arg-type]
