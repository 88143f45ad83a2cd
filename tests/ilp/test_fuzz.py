"""Every decoder in ``ilp`` against random and mutated bytes: only DecodeError may escape.

Mutations start from every valid vector of every protocol (bit flips, byte changes,
truncations, deletions, and insertions of other valid vectors), so that the fuzzing
reaches deep into the formats instead of dying on the type byte. Where a decoder has
an encoder, anything it accepts must re-encode to exactly the same bytes: a strict
decoder accepts only the canonical encoding.

Modules written by others (``ilp.btp``, ``ilp.ccp``, ``ilp.psk2``) are imported with
``pytest.importorskip``, so this file runs before they land.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ilp.errors import DecodeError
from ilp.oer import encode_length, read_length_at
from tests.conftest import load_vectors

SECRET = bytes(range(32))


def _hexes(obj: Any) -> list[bytes]:
    """Every ``hex``/``*_hex``/``*Packet``/``*Plaintext``/``*Data`` string in a vector file."""
    found: list[bytes] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            hexlike = key == "hex" or key.endswith(("_hex", "Packet", "Plaintext", "Data"))
            if isinstance(value, str) and hexlike:
                with contextlib.suppress(ValueError):  # a few such keys hold text
                    found.append(bytes.fromhex(value))
            else:
                found.extend(_hexes(value))
    elif isinstance(obj, list):
        for item in obj:
            found.extend(_hexes(item))
    return found


VECTOR_FILES = [
    "ilp-packet.json",
    "btp.json",
    "ildcp.json",
    "ccp.json",
    "echo.json",
    "balance.json",
    "oer.json",
    "receiver/psk2.json",
]
_STREAM = load_vectors("stream/stream.json")
# STREAM plaintexts, ciphertexts (under their own secrets) and receipts.
STREAM_SEEDS = {
    bytes.fromhex(v[key])
    for group in ("packets", "invalid", "receipts")
    for v in _STREAM[group]
    for key in ("plaintext", "ciphertext", "receipt")
    if v.get(key)
}
# Short seeds only: mutating a 32 KiB packet a byte at a time finds nothing new and is slow.
CORPUS = sorted(
    {raw for name in VECTOR_FILES for raw in _hexes(load_vectors(name)) if 0 < len(raw) <= 600}
    | STREAM_SEEDS
)


# --- the decoders --------------------------------------------------------------------


def _identity(value: Any) -> Any:
    return value


# (module, decoder name, encoder name or None, how to call the decoder)
DECODERS: list[tuple[str, str, str | None, Callable[[Callable[..., Any], bytes], Any]]] = [
    ("ilp.packet", "decode_packet", "encode_packet", lambda f, raw: f(raw)),
    ("ilp.packet", "decode_prepare", "encode_prepare", lambda f, raw: f(raw)),
    ("ilp.packet", "decode_fulfill", "encode_fulfill", lambda f, raw: f(raw)),
    ("ilp.packet", "decode_reject", "encode_reject", lambda f, raw: f(raw)),
    ("ilp.packet", "decode_reply", "encode_packet", lambda f, raw: f(raw)),
    ("ilp.packet", "decode_amount_too_large_data", None, lambda f, raw: f(raw)),
    ("ilp.oer", "parse_ilp_timestamp", "format_ilp_timestamp", lambda f, raw: f(raw)),
    ("ilp.oer", "read_length_at", None, lambda f, raw: f(raw, 0, len(raw))),
    ("ilp.ildcp", "decode_ildcp_response", "encode_ildcp_response", lambda f, raw: f(raw)),
    ("ilp.ildcp", "decode_ildcp_fulfill", None, lambda f, raw: f(raw)),
    ("ilp.balance", "decode_balance", "encode_balance", lambda f, raw: f(raw)),
    ("ilp.balance", "decode_balance_fulfill", None, lambda f, raw: f(raw)),
    ("ilp.echo", "decode_echo", "encode_echo", lambda f, raw: f(raw)),
    ("ilp.btp", "decode_btp", "encode_btp", lambda f, raw: f(raw)),
    ("ilp.btp", "peek_ilp_frame", None, lambda f, raw: f(raw)),
    ("ilp.btp", "peek_header", None, lambda f, raw: f(raw)),
    (
        "ilp.ccp",
        "decode_route_control_request",
        "encode_route_control_request",
        lambda f, raw: f(raw),
    ),
    (
        "ilp.ccp",
        "decode_route_update_request",
        "encode_route_update_request",
        lambda f, raw: f(raw),
    ),
    ("ilp.psk2", "decode_psk2", None, lambda f, raw: f(raw)),
    ("ilp.psk2", "decrypt", None, lambda f, raw: f(SECRET, raw)),
    ("ilp.psk2", "decrypt_psk2", None, lambda f, raw: f(SECRET, raw)),
    # STREAM reads junk, unknown frames and leading-zero VarUInts as JS does: no round trip.
    ("ilp.stream.packet", "decode_stream_packet", None, lambda f, raw: f(raw)),
    ("ilp.stream.crypto", "decrypt", None, lambda f, raw: f(SECRET, raw)),
    ("ilp.stream.crypto", "decrypt_packet", None, lambda f, raw: f(SECRET, raw)),
    ("ilp.stream.receipts", "decode_receipt", "encode_receipt", lambda f, raw: f(raw)),
    ("ilp.stream.receipts", "verify_receipt", None, lambda f, raw: _verify_receipt(f, raw)),
]


def _verify_receipt(verify: Callable[..., Any], raw: bytes) -> Any:
    # A receipt that does not verify is InvalidReceipt, the one other outcome allowed here.
    receipts = importlib.import_module("ilp.stream.receipts")
    with contextlib.suppress(receipts.InvalidReceipt):
        return verify(raw, SECRET)
    return None


def _lossy(value: Any) -> bool:
    """Decoded values that cannot re-encode to their input by design."""
    # Relayed Reject messages are read with U+FFFD for invalid UTF-8, like JS does.
    return "\ufffd" in str(getattr(value, "message", ""))


Check = Callable[[bytes], None]


def checker(module_name: str, decoder: str, encoder: str | None, call: Any) -> Check:
    """A function that feeds one input to the decoder and checks the outcome."""
    module = pytest.importorskip(module_name)
    decode = getattr(module, decoder)
    encode = getattr(module, encoder) if encoder is not None else None

    def check(raw: bytes) -> None:
        try:
            value = call(decode, raw)
        except DecodeError as exc:
            assert 0 <= exc.offset <= len(raw) + 9, (raw.hex(), exc)
            return
        # Anything else that escapes fails the test with its own traceback.
        if encode is not None and not _lossy(value):
            assert encode(value) == raw, raw.hex()

    return check


PARAMS = [pytest.param(*d, id=f"{d[0]}.{d[1]}") for d in DECODERS]


# --- inputs --------------------------------------------------------------------------


def _split_envelope(raw: bytes) -> tuple[bytes, bytes] | None:
    """``(head, contents)`` if ``raw`` is an ILP packet (1-byte head) or a BTP frame
    (type and request id, 5 bytes) whose envelope length is right."""
    for head_length in (1, 5):
        try:
            length, start = read_length_at(raw, head_length, len(raw))
        except DecodeError:
            continue
        if start + length == len(raw):
            return raw[:head_length], raw[start:]
    return None


def _mutate(draw: st.DrawFn, data: bytearray) -> None:
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "delete", "insert", "splice"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and at < len(data):
            data[at] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0x81, 0x82, 0xFF]))
        elif op == "truncate":
            del data[at:]
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "splice":  # a whole valid vector in the middle of another
            data[at:at] = draw(st.sampled_from(CORPUS))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid vector, damaged. Half the time only the contents of an ILP packet or
    BTP frame are damaged and the envelope length is made right again, so that the
    decoder gets past the envelope check and has to catch the damage field by field."""
    seed = draw(st.sampled_from(CORPUS))
    envelope = _split_envelope(seed)
    if envelope is not None and draw(st.booleans()):
        head, contents = envelope
        damaged = bytearray(contents)
        _mutate(draw, damaged)
        return head + encode_length(len(damaged)) + bytes(damaged)
    data = bytearray(seed)
    _mutate(draw, data)
    return bytes(data)


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize(("module_name", "decoder", "encoder", "call"), PARAMS)
@FUZZ
@given(raw=st.binary(max_size=200))
def test_random_bytes(
    module_name: str, decoder: str, encoder: str | None, call: Any, raw: bytes
) -> None:
    checker(module_name, decoder, encoder, call)(raw)


@pytest.mark.parametrize(("module_name", "decoder", "encoder", "call"), PARAMS)
@FUZZ
@given(raw=mutated())
def test_mutated_vectors(
    module_name: str, decoder: str, encoder: str | None, call: Any, raw: bytes
) -> None:
    checker(module_name, decoder, encoder, call)(raw)


@pytest.mark.parametrize(("module_name", "decoder", "encoder", "call"), PARAMS)
def test_every_vector_and_every_truncation(
    module_name: str, decoder: str, encoder: str | None, call: Any
) -> None:
    check = checker(module_name, decoder, encoder, call)
    for raw in CORPUS:
        for cut in range(len(raw) + 1):
            check(raw[:cut])


@pytest.mark.parametrize(("module_name", "decoder", "encoder", "call"), PARAMS)
def test_every_truncation_of_contents_in_a_right_envelope(
    module_name: str, decoder: str, encoder: str | None, call: Any
) -> None:
    check = checker(module_name, decoder, encoder, call)
    for raw in CORPUS:
        envelope = _split_envelope(raw)
        if envelope is None:
            continue
        head, contents = envelope
        for cut in range(len(contents)):
            check(head + encode_length(cut) + contents[:cut])


# One packet of each shape; the flips of the others add time, not paths.
ILP_SEEDS = [
    bytes.fromhex(v["hex"])
    for v in load_vectors("ilp-packet.json")["vectors"]
    if v["name"] in {"prepare_basic", "prepare_data_len_128", "fulfill_basic", "reject_F08"}
]


@pytest.mark.parametrize(("module_name", "decoder", "encoder", "call"), PARAMS)
def test_every_single_bit_flip_of_the_ilp_vectors(
    module_name: str, decoder: str, encoder: str | None, call: Any
) -> None:
    check = checker(module_name, decoder, encoder, call)
    for raw in ILP_SEEDS:
        for at in range(len(raw)):
            for bit in range(8):
                flipped = bytearray(raw)
                flipped[at] ^= 1 << bit
                check(bytes(flipped))


@given(raw=mutated())
@FUZZ
def test_btp_fast_path_agrees_with_the_general_decoder(raw: bytes) -> None:
    btp = pytest.importorskip("ilp.btp")
    fast = btp.peek_ilp_frame(raw)
    if fast is None:
        return
    frame = btp.decode_btp(raw)  # must not raise: the fast path said it is a frame
    btp_type, request_id, ilp = fast
    assert (frame.TYPE, frame.request_id) == (btp_type, request_id)
    assert btp.find_entry(frame, "ilp").data == ilp


def test_corpus_covers_every_protocol() -> None:
    first_bytes = {raw[0] for raw in CORPUS}
    assert {0x0C, 0x0D, 0x0E, 0x01, 0x02, 0x06, 0x07} <= first_bytes
    assert len(CORPUS) > 150
    assert importlib.import_module("ilp.packet") is not None


# --- the byte entry points of the layers above the codecs ----------------------------
# They catch DecodeError themselves and turn it into a protocol answer, so for them
# nothing at all may escape, whatever the bytes.

NOW = datetime(2018, 1, 1, tzinfo=UTC)
BTP_VECTORS = {v["name"]: bytes.fromhex(v["hex"]) for v in load_vectors("btp.json")["vectors"]}


@FUZZ
@given(frames=st.lists(mutated() | st.binary(max_size=100), min_size=1, max_size=5))
def test_btp_sessions_take_any_frames(frames: list[bytes]) -> None:
    session_module = pytest.importorskip("ilp.btp_session")
    server = session_module.BtpServerSession(authenticate=lambda _auth: True)
    server.receive_frame(BTP_VECTORS["message_auth_ilp_plugin_btp"], NOW)
    client = session_module.BtpClientSession("alice", "secret")
    client.start(1)
    client.receive_frame(BTP_VECTORS["response_auth_ok"], NOW)  # answers request id 1
    assert server.state is client.state is session_module.State.OPEN
    for raw in frames:
        for session in (server, client):
            if session.state is not session_module.State.CLOSED:
                session.receive_frame(raw, NOW)


@FUZZ
@given(data=mutated() | st.binary(max_size=300))
def test_psk2_receiver_and_sender_take_any_data(data: bytes) -> None:
    receiver = pytest.importorskip("ilp.psk2_receiver")
    sender = pytest.importorskip("ilp.psk2_sender")
    packet = importlib.import_module("ilp.packet")
    data = data[: packet.MAX_DATA_LENGTH]
    prepare = packet.Prepare(1000, NOW, bytes(32), "test.sut.receivers.bob.x", data)
    receiver.open_prepare(prepare, SECRET, now=datetime(2017, 1, 1, tzinfo=UTC))
    sender.read_reply(SECRET, packet.Fulfill(bytes(32), data), prepare=prepare)
    sender.read_reply(SECRET, packet.Reject("F99", "test.sut", "", data), prepare=prepare)


@FUZZ
@given(data=mutated() | st.binary(max_size=300), amount=st.integers(0, 2**64 - 1))
def test_stream_receiver_takes_any_data(data: bytes, amount: int) -> None:
    receiver = pytest.importorskip("ilp.stream.receiver")
    stream = importlib.import_module("ilp.stream")
    packet = importlib.import_module("ilp.packet")
    data = data[: packet.MAX_DATA_LENGTH]
    prepare = packet.Prepare(amount, NOW, bytes(32), "test.sut.receivers.bob.~x", data)
    opened = receiver.open_prepare(prepare, SECRET, now=datetime(2017, 1, 1, tzinfo=UTC))
    assert isinstance(opened, receiver.Refusal)  # random bytes never decrypt
    # Plaintexts straight into the state machine, as if they had decrypted.
    try:
        request = stream.decode_stream_packet(data)
    except DecodeError:
        return
    limits = receiver.ReceiverLimits("XRP", 9, receive_max=1000)
    for fulfillable in (True, False):
        receiver.handle_request(
            receiver.new_connection(limits),
            request,
            amount=amount,
            fulfillable=fulfillable,
            limits=limits,
        )
