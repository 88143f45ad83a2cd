"""``ilp.stream`` codecs, crypto and receipts against ``vectors/stream/stream.json``
(made by ilp-protocol-stream 2.7.2-alpha.3), plus hypothesis round trips."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ilp.errors import DecodeError, EncodeError
from ilp.oer import UINT64_MAX
from ilp.stream import (
    ConnectionAssetDetailsFrame,
    ConnectionCloseFrame,
    ConnectionDataBlockedFrame,
    ConnectionMaxDataFrame,
    ConnectionMaxStreamIdFrame,
    ConnectionNewAddressFrame,
    ConnectionStreamIdBlockedFrame,
    Frame,
    InvalidReceipt,
    ReceiptSetup,
    StreamCloseFrame,
    StreamDataBlockedFrame,
    StreamDataFrame,
    StreamDecryptionError,
    StreamMaxDataFrame,
    StreamMaxMoneyFrame,
    StreamMoneyBlockedFrame,
    StreamMoneyFrame,
    StreamPacket,
    StreamPacketType,
    StreamReceiptFrame,
    condition_for_data,
    create_receipt,
    decode_receipt,
    decode_stream_packet,
    decrypt,
    decrypt_packet,
    encode_receipt,
    encode_stream_packet,
    encrypt,
    encrypt_packet,
    encryption_key,
    fulfillment_for,
    fulfillment_key,
    verify_receipt,
)
from tests.conftest import load_vectors

VECTORS = load_vectors("stream/stream.json")
PACKETS = [p for p in VECTORS["packets"] if not p.get("decode_only")]
IDS = [p["name"] for p in PACKETS]


def frame_from_json(obj: dict[str, Any]) -> Frame:
    """The vector's JS field names to our frames, written apart from the codec."""
    name = obj["name"]
    n = {k: int(v) for k, v in obj.items() if isinstance(v, str) and v.isdigit()}
    if name == "ConnectionClose":
        return ConnectionCloseFrame(obj["errorCode"], obj["errorMessage"])
    if name == "ConnectionNewAddress":
        return ConnectionNewAddressFrame(obj["sourceAccount"])
    if name == "ConnectionAssetDetails":
        return ConnectionAssetDetailsFrame(obj["sourceAssetCode"], obj["sourceAssetScale"])
    if name == "ConnectionMaxData":
        return ConnectionMaxDataFrame(n["maxOffset"])
    if name == "ConnectionDataBlocked":
        return ConnectionDataBlockedFrame(n["maxOffset"])
    if name == "ConnectionMaxStreamId":
        return ConnectionMaxStreamIdFrame(n["maxStreamId"])
    if name == "ConnectionStreamIdBlocked":
        return ConnectionStreamIdBlockedFrame(n["maxStreamId"])
    if name == "StreamClose":
        return StreamCloseFrame(n["streamId"], obj["errorCode"], obj["errorMessage"])
    if name == "StreamMoney":
        return StreamMoneyFrame(n["streamId"], n["shares"])
    if name == "StreamMaxMoney":
        return StreamMaxMoneyFrame(n["streamId"], n["receiveMax"], n["totalReceived"])
    if name == "StreamMoneyBlocked":
        return StreamMoneyBlockedFrame(n["streamId"], n["sendMax"], n["totalSent"])
    if name == "StreamData":
        return StreamDataFrame(n["streamId"], n["offset"], bytes.fromhex(obj["data"]))
    if name == "StreamMaxData":
        return StreamMaxDataFrame(n["streamId"], n["maxOffset"])
    if name == "StreamDataBlocked":
        return StreamDataBlockedFrame(n["streamId"], n["maxOffset"])
    if name == "StreamReceipt":
        return StreamReceiptFrame(n["streamId"], bytes.fromhex(obj["receipt"]))
    raise AssertionError(f"unknown frame in vector: {name}")


def packet_from_json(obj: dict[str, Any]) -> StreamPacket:
    assert obj["version"] == 1
    return StreamPacket(
        int(obj["sequence"]),
        StreamPacketType(obj["ilp_packet_type"]),
        int(obj["prepare_amount"]),
        tuple(frame_from_json(f) for f in obj["frames"]),
    )


def test_the_vectors_cover_every_frame_type() -> None:
    seen = {f["type"] for p in PACKETS for f in p["decoded"]["frames"]}
    assert seen == {1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23}
    assert len(PACKETS) == 45 and len(VECTORS["receipts"]) == 8


@pytest.mark.parametrize("vector", PACKETS, ids=IDS)
def test_decode_and_reencode_byte_for_byte(vector: dict[str, Any]) -> None:
    plaintext = bytes.fromhex(vector["plaintext"])
    expected = packet_from_json(vector["decoded"])
    assert decode_stream_packet(plaintext) == expected
    assert encode_stream_packet(expected) == plaintext


@pytest.mark.parametrize("vector", PACKETS, ids=IDS)
def test_decrypt_and_derive(vector: dict[str, Any]) -> None:
    secret = bytes.fromhex(vector["shared_secret"])
    ciphertext = bytes.fromhex(vector["ciphertext"])
    assert encryption_key(secret).hex() == vector["encryption_key"]
    assert fulfillment_key(secret).hex() == vector["fulfillment_key"]
    assert decrypt(secret, ciphertext).hex() == vector["plaintext"]
    assert decrypt_packet(secret, ciphertext) == packet_from_json(vector["decoded"])
    fulfillment = fulfillment_for(secret, ciphertext)
    assert fulfillment.hex() == vector["fulfillment"]
    assert condition_for_data(secret, ciphertext).hex() == vector["condition"]
    assert hashlib.sha256(fulfillment).hexdigest() == vector["condition"]


@pytest.mark.parametrize("vector", PACKETS[:5], ids=IDS[:5])
def test_our_encryption_decrypts_with_the_given_key(vector: dict[str, Any]) -> None:
    secret = bytes.fromhex(vector["shared_secret"])
    plaintext = bytes.fromhex(vector["plaintext"])
    sealed = encrypt(secret, plaintext, bytes(range(12)))
    assert sealed[:12] == bytes(range(12)) and len(sealed) == len(plaintext) + 28
    # Independently: cryptography's AESGCM under the vector's key, tag moved to the end.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = bytes.fromhex(vector["encryption_key"])
    assert AESGCM(key).decrypt(sealed[:12], sealed[28:] + sealed[12:28], None) == plaintext


def test_unknown_frames_are_skipped_and_the_rest_kept() -> None:
    vector = next(p for p in VECTORS["packets"] if p.get("decode_only"))
    decoded = decode_stream_packet(bytes.fromhex(vector["plaintext"]))
    assert decoded == packet_from_json(vector["decoded"])


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=[v["name"] for v in VECTORS["invalid"]])
def test_invalid_inputs_fail_as_in_js(vector: dict[str, Any]) -> None:
    assert vector["js"].startswith("error:")
    if "ciphertext" in vector:
        with pytest.raises(StreamDecryptionError):
            decrypt(bytes.fromhex(vector["shared_secret"]), bytes.fromhex(vector["ciphertext"]))
        return
    with pytest.raises(DecodeError) as caught:
        decode_stream_packet(bytes.fromhex(vector["plaintext"]))
    if "version" in vector["js"]:
        assert "version 2" in caught.value.reason
    else:
        assert "truncated" in caught.value.reason


# --- JS reading rules beyond the vectors ----------------------------------------------------

BASE = bytes.fromhex("010c010701640101")  # version, Prepare, sequence 7, amount 100, 1 frame


def test_junk_after_the_frames_is_ignored() -> None:
    raw = BASE + bytes.fromhex("11040101010500000000")  # StreamMoney(1, 5) + padding
    assert decode_stream_packet(raw).frames == (StreamMoneyFrame(1, 5),)


def test_padding_to_a_size() -> None:
    packet = StreamPacket(1, StreamPacketType.PREPARE, 5, (StreamMoneyFrame(1, 1),))
    padded = encode_stream_packet(packet, pad_to=100)
    assert len(padded) == 100 and decode_stream_packet(padded) == packet
    sealed = encrypt_packet(bytes(32), packet, bytes(12), pad_to=200)
    assert len(sealed) == 200 and decrypt_packet(bytes(32), sealed) == packet


def test_extra_bytes_inside_a_known_frame_are_ignored() -> None:
    raw = BASE + bytes.fromhex("110501010101ff")  # StreamMoney(1, 1) + 1 stray byte
    assert decode_stream_packet(raw).frames == (StreamMoneyFrame(1, 1),)


def test_a_leading_zero_varuint_is_read_as_js_does() -> None:
    raw = BASE + bytes.fromhex("1105010102000a")  # shares 0x000a in two bytes
    assert decode_stream_packet(raw).frames == (StreamMoneyFrame(1, 10),)


@pytest.mark.parametrize(
    "contents",
    ["010100", "0101090102030405060708090a"],  # zero-length and 9-byte VarUInt shares
)
def test_bad_varuints_fail(contents: str) -> None:
    body = bytes.fromhex(contents)
    with pytest.raises(DecodeError):
        decode_stream_packet(BASE + bytes((0x11, len(body))) + body)


def test_receive_and_send_max_saturate() -> None:
    huge = bytes.fromhex("09") + b"\x01" + bytes(8)  # 2^64 as a 9-byte VarUInt
    body = b"\x01\x01" + huge + b"\x01\x05"
    assert decode_stream_packet(BASE + bytes((0x12, len(body))) + body).frames == (
        StreamMaxMoneyFrame(1, UINT64_MAX, 5),
    )
    assert decode_stream_packet(BASE + bytes((0x13, len(body))) + body).frames == (
        StreamMoneyBlockedFrame(1, UINT64_MAX, 5),
    )


def test_invalid_utf8_reads_with_replacement_characters() -> None:
    body = b"\x01\x02\xc3\x28"  # code 1, message "\xc3(" (invalid UTF-8)
    frame = decode_stream_packet(BASE + bytes((0x01, len(body))) + body).frames[0]
    assert frame == ConnectionCloseFrame(1, "\ufffd(")


@pytest.mark.parametrize(
    "raw",
    [
        "010c01070164",  # no frame count
        "010f0107016400",  # ILP packet type 15
        "010c0107016401",  # one frame announced, none there
        "010c010701640700000000000000ff",  # a 7-byte frame count
        "010c0107016401ff",  # frame type without contents
    ],
)
def test_malformed_packets_fail(raw: str) -> None:
    with pytest.raises(DecodeError):
        decode_stream_packet(bytes.fromhex(raw))


def test_decrypt_refuses_short_data() -> None:
    with pytest.raises(StreamDecryptionError):
        decrypt(bytes(32), bytes(27))


@pytest.mark.parametrize(
    "build",
    [
        lambda: StreamMoneyFrame(1, -1),
        lambda: StreamMoneyFrame(1, UINT64_MAX + 1),
        lambda: ConnectionCloseFrame(256, ""),
        lambda: ConnectionAssetDetailsFrame("XRP", 300),
        lambda: StreamDataFrame(1, 0, "text"),
        lambda: StreamPacket(1, 99, 0),  # type: ignore[arg-type]
        lambda: StreamPacket(1, StreamPacketType.PREPARE, 0, [StreamMoneyFrame(1, 1)]),  # type: ignore[arg-type]
    ],
)
def test_values_validate_on_construction(build: Any) -> None:
    with pytest.raises((EncodeError, TypeError)):
        build()


# --- receipts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS["receipts"])
def test_receipts(vector: dict[str, Any]) -> None:
    setup = ReceiptSetup(bytes.fromhex(vector["nonce"]), bytes.fromhex(vector["secret"]))
    raw = create_receipt(
        setup, stream_id=int(vector["stream_id"]), total_received=int(vector["total_received"])
    )
    assert raw.hex() == vector["receipt"]
    receipt = verify_receipt(raw, setup.secret)
    assert (receipt.nonce, receipt.stream_id, receipt.total_received) == (
        setup.nonce,
        int(vector["stream_id"]),
        int(vector["total_received"]),
    )
    assert encode_receipt(decode_receipt(raw)) == raw
    with pytest.raises(InvalidReceipt):
        verify_receipt(raw, bytes(32))
    tampered = raw[:25] + bytes((raw[25] ^ 1,)) + raw[26:]
    with pytest.raises(InvalidReceipt):
        verify_receipt(tampered, setup.secret)
    with pytest.raises(InvalidReceipt):
        verify_receipt(b"\x02" + raw[1:], setup.secret)
    with pytest.raises(DecodeError):
        verify_receipt(raw[:-1], setup.secret)


def test_receipt_setup_sizes() -> None:
    with pytest.raises(EncodeError):
        ReceiptSetup(bytes(15), bytes(32))
    with pytest.raises(EncodeError):
        ReceiptSetup(bytes(16), bytes(31))
    assert "secret=…" in repr(ReceiptSetup(bytes(16), bytes(32)))


# --- hypothesis round trips --------------------------------------------------------------------

u64 = st.integers(0, UINT64_MAX)
u8 = st.integers(0, 255)
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
frames = st.one_of(
    st.builds(ConnectionCloseFrame, u8, text),
    st.builds(ConnectionNewAddressFrame, text),
    st.builds(ConnectionMaxDataFrame, u64),
    st.builds(ConnectionDataBlockedFrame, u64),
    st.builds(ConnectionMaxStreamIdFrame, u64),
    st.builds(ConnectionStreamIdBlockedFrame, u64),
    st.builds(ConnectionAssetDetailsFrame, text, u8),
    st.builds(StreamCloseFrame, u64, u8, text),
    st.builds(StreamMoneyFrame, u64, u64),
    st.builds(StreamMaxMoneyFrame, u64, u64, u64),
    st.builds(StreamMoneyBlockedFrame, u64, u64, u64),
    st.builds(StreamDataFrame, u64, u64, st.binary(max_size=300)),
    st.builds(StreamMaxDataFrame, u64, u64),
    st.builds(StreamDataBlockedFrame, u64, u64),
    st.builds(StreamReceiptFrame, u64, st.binary(max_size=80)),
)
packets = st.builds(
    StreamPacket,
    u64,
    st.sampled_from(StreamPacketType),
    u64,
    st.lists(frames, max_size=6).map(tuple),
)


@given(packet=packets)
def test_packets_round_trip(packet: StreamPacket) -> None:
    raw = encode_stream_packet(packet)
    assert decode_stream_packet(raw) == packet
    assert encode_stream_packet(decode_stream_packet(raw)) == raw


@given(
    packet=packets,
    secret=st.binary(min_size=1, max_size=64),
    iv=st.binary(min_size=12, max_size=12),
)
def test_packets_round_trip_encrypted(packet: StreamPacket, secret: bytes, iv: bytes) -> None:
    sealed = encrypt_packet(secret, packet, iv)
    assert decrypt_packet(secret, sealed) == packet
    assert hashlib.sha256(fulfillment_for(secret, sealed)).digest() == condition_for_data(
        secret, sealed
    )


@given(
    nonce=st.binary(min_size=16, max_size=16),
    secret=st.binary(min_size=32, max_size=32),
    stream_id=u8,
    total=u64,
)
def test_receipts_round_trip(nonce: bytes, secret: bytes, stream_id: int, total: int) -> None:
    raw = create_receipt(ReceiptSetup(nonce, secret), stream_id=stream_id, total_received=total)
    assert len(raw) == 58
    receipt = verify_receipt(raw, secret)
    assert (receipt.stream_id, receipt.total_received) == (stream_id, total)


# --- python -m ilp decode --kind stream ------------------------------------------------------


@pytest.mark.parametrize("vector", PACKETS[:12], ids=IDS[:12])
def test_the_decode_command_prints_the_vector_form(
    vector: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from ilp.__main__ import main

    assert main(["decode", "--kind", "stream", vector["plaintext"]]) == 0
    assert json.loads(capsys.readouterr().out) == vector["decoded"]
    assert (
        main(
            [
                "decode",
                "--kind",
                "stream",
                "--secret",
                vector["shared_secret"],
                vector["ciphertext"],
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed.pop("fulfillment") == vector["fulfillment"]
    assert printed.pop("condition") == vector["condition"]
    assert printed == vector["decoded"]
    assert main(["decode", "--kind", "stream", "--secret", "00" * 32, vector["ciphertext"]]) == 2
