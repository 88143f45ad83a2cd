"""The STREAM packet's fast reader (``ilp.stream.packet._decode_fast``) against the strict one.

The fast reader handles the common shapes and raises ``Irregular`` for everything else, which
the strict reader then judges: it must never accept what the strict reader refuses, and what it
accepts it must read exactly as the strict reader does. Checked on valid packets, on packets
with one byte changed, cut short or extended, and on arbitrary bytes.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ilp.errors import DecodeError
from ilp.stream.frames import (
    FRAME_CLASSES,
    ConnectionAssetDetailsFrame,
    ConnectionCloseFrame,
    ConnectionDataBlockedFrame,
    ConnectionMaxDataFrame,
    ConnectionMaxStreamIdFrame,
    ConnectionNewAddressFrame,
    ConnectionStreamIdBlockedFrame,
    Irregular,
    StreamCloseFrame,
    StreamDataBlockedFrame,
    StreamDataFrame,
    StreamMaxDataFrame,
    StreamMaxMoneyFrame,
    StreamMoneyBlockedFrame,
    StreamMoneyFrame,
    StreamReceiptFrame,
)
from ilp.stream.packet import (
    StreamPacket,
    StreamPacketType,
    _decode_fast,
    _decode_strict,
    decode_stream_packet,
    encode_stream_packet,
)
from tests.ilp.test_stream import packets


def _agree(raw: bytes) -> None:
    try:
        strict: StreamPacket | DecodeError = _decode_strict(raw)
    except DecodeError as exc:
        strict = exc
    try:
        fast = _decode_fast(raw)
    except (Irregular, IndexError):
        return  # the strict reader decides: nothing to compare
    assert not isinstance(strict, DecodeError), f"fast accepted what strict refuses: {strict}"
    assert fast == strict
    assert [type(f) for f in fast.frames] == [type(f) for f in strict.frames]
    assert type(fast.packet_type) is StreamPacketType


@given(packet=packets)
def test_valid_packets_read_the_same(packet: StreamPacket) -> None:
    raw = encode_stream_packet(packet)
    _agree(raw)
    assert decode_stream_packet(raw) == packet


@given(packet=packets, at=st.integers(0, 10_000), value=st.integers(0, 255))
def test_one_byte_changed(packet: StreamPacket, at: int, value: int) -> None:
    raw = bytearray(encode_stream_packet(packet))
    raw[at % len(raw)] = value
    _agree(bytes(raw))


@given(packet=packets, cut=st.integers(0, 10_000), tail=st.binary(max_size=20))
def test_cut_short_or_extended(packet: StreamPacket, cut: int, tail: bytes) -> None:
    raw = encode_stream_packet(packet)
    _agree(raw[: cut % (len(raw) + 1)])
    _agree(raw + tail)


@given(raw=st.binary(max_size=80))
def test_arbitrary_bytes(raw: bytes) -> None:
    _agree(raw)


def test_the_fast_reader_takes_a_money_packet() -> None:
    packet = StreamPacket(1, StreamPacketType.PREPARE, 10, (StreamMoneyFrame(1, 1),))
    assert _decode_fast(encode_stream_packet(packet)) == packet


def test_the_fast_reader_takes_every_frame_type() -> None:
    # One of each, with values of 1 to 8 bytes: none may fall back to the strict reader.
    frames = (
        ConnectionCloseFrame(1, "bye"),
        ConnectionNewAddressFrame("test.alice"),
        ConnectionMaxDataFrame(2**64 - 1),
        ConnectionDataBlockedFrame(1000),
        ConnectionMaxStreamIdFrame(2**40),
        ConnectionStreamIdBlockedFrame(3),
        ConnectionAssetDetailsFrame("XRP", 9),
        StreamCloseFrame(5, 2, "done"),
        StreamMoneyFrame(1, 256),
        StreamMaxMoneyFrame(1, 2**64 - 1, 5000),
        StreamMoneyBlockedFrame(7, 2**56, 65_536),
        StreamDataFrame(1, 17, b"data"),
        StreamMaxDataFrame(2, 2**32),
        StreamDataBlockedFrame(2, 2**24 + 1),
        StreamReceiptFrame(1, bytes(58)),
    )
    assert {type(frame) for frame in frames} == set(FRAME_CLASSES.values())
    packet = StreamPacket(2**63, StreamPacketType.FULFILL, 2**16, frames)
    assert _decode_fast(encode_stream_packet(packet)) == packet
