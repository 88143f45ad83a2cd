"""ilp.psk2_receiver: stateless addresses and the receiver decision, against psk2.json."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ilp.address import InvalidAddress
from ilp.errors import EncodeError
from ilp.oer import UINT64_MAX
from ilp.packet import Prepare, decode_prepare, decode_reply, encode_packet
from ilp.psk2 import (
    ChunkRejection,
    ChunkRequest,
    ChunkResponse,
    Rejection,
    Response,
    b64url_encode,
    decrypt_psk2,
    encrypt,
    encrypt_psk2,
    fulfillment_for,
)
from ilp.psk2_receiver import (
    Accept,
    Opened,
    Refuse,
    RefuseReason,
    decide,
    issue,
    open_prepare,
    refuse,
    respond,
    secret_for,
)
from ilp.psk2_sender import build_chunk, build_quote, build_request, read_reply
from tests.conftest import load_vectors

VECTORS = {v["name"]: v for v in load_vectors("receiver/psk2.json")["vectors"]}
HTTP_VECTORS = {v["name"]: v for v in load_vectors("receiver/http-ilp.json")["vectors"]}
NOW = datetime(2018, 2, 1, tzinfo=UTC)
EXPIRES = NOW + timedelta(seconds=30)
ME = "test.example.receiver"
RECEIVER_SECRET = bytes.fromhex(VECTORS["draft1_packet_keys"]["inputs"]["sharedSecret"])
PREFIX = "test.example.receivers.alice"

h = bytes.fromhex


def accepted(result: Accept | Refuse) -> Accept:
    assert isinstance(result, Accept), result
    return result


def refused(result: Accept | Refuse | Opened) -> Refuse:
    assert isinstance(result, Refuse), result
    return result


def reply_hex(result: Accept | Refuse, triggered_by: str = ME) -> str:
    if isinstance(result, Accept):
        return encode_packet(result.to_fulfill()).hex()
    return encode_packet(result.to_reject(triggered_by)).hex()


# --- addresses ----------------------------------------------------------------------------


def test_issue_and_recover() -> None:
    token = bytes(range(18))
    destination, secret = issue(RECEIVER_SECRET, PREFIX, token)
    assert destination == f"{PREFIX}.{b64url_encode(token)}" == f"{PREFIX}.AAECAwQFBgcICQoLDA0ODxAR"
    assert len(secret) == 32
    assert secret_for(RECEIVER_SECRET, destination, PREFIX) == secret
    # Deterministic and tuple-like.
    assert issue(RECEIVER_SECRET, PREFIX, token) == (destination, secret)
    assert issue(RECEIVER_SECRET, PREFIX, bytes(18)).shared_secret != secret
    assert issue(bytes(32), PREFIX, token).shared_secret != secret


def test_secret_is_bound_to_the_prefix() -> None:
    token = bytes(range(18))
    alice = issue(RECEIVER_SECRET, PREFIX, token)
    bob_prefix = "test.example.receivers.bob"
    moved = alice.destination.replace(PREFIX, bob_prefix)
    bob_secret = secret_for(RECEIVER_SECRET, moved, bob_prefix)
    assert bob_secret is not None and bob_secret != alice.shared_secret
    # A chunk built for alice but redirected to bob does not decrypt there.
    prepare = build_chunk(
        alice.shared_secret,
        moved,
        payment_id=bytes(16),
        sequence=0,
        payment_amount=UINT64_MAX,
        chunk_amount=0,
        source_amount=10,
        expires_at=EXPIRES,
        iv=bytes(12),
        last=True,
    )
    assert refused(decide(prepare, bob_secret, now=NOW, paid_so_far=0, iv=bytes(12))).code == "F06"


@pytest.mark.parametrize(
    "destination",
    [
        "test.example.receivers.alic.AAECAwQFBgcICQoLDA0ODxAR",  # another receiver
        "test.example.receivers.alice",  # no token
        "test.example.receivers.aliceAAECAwQFBgcICQoLDA0ODxAR",  # not a segment boundary
        "test.example.receivers.alice.AAECAwQFBgcICQoLDA0ODxAR.x",  # extra segment
        "test.example.receivers.alice.x.AAECAwQFBgcICQoLDA0ODxAR",  # extra segment
        "test.example.receivers.alice.AAECAwQFBgcICQoLDA0ODx",  # 15 bytes: too short
        "test.example.receivers.alice." + "A" * 87,  # too long
        "test.example.receivers.alice.AAECAwQFBgcICQoLDA0ODxAR==",  # padding
        "test.example.receivers.alice.AAECAwQFBgcICQoLDA0ODxA+",  # standard alphabet
        "test.example.receivers.alice.AAECAwQFBgcICQoLDA0ODxARA",  # 25 chars: no base64
        "test.example.receivers.alice.AAECAwQFBgcICQoLDA0ODxAé",
        "",
    ],
)
def test_secret_for_refuses(destination: str) -> None:
    assert secret_for(RECEIVER_SECRET, destination, PREFIX) is None


def test_secret_for_rejects_stray_bits() -> None:
    token = bytes(range(17))  # 17 bytes: 23 characters, the last one holds 2 spare bits
    destination = issue(RECEIVER_SECRET, PREFIX, token).destination
    last = destination[-1]
    sibling = destination[:-1] + ("B" if last == "A" else chr(ord(last) + 1))
    assert base64.urlsafe_b64decode(sibling.rsplit(".", 1)[1] + "=") == token
    assert secret_for(RECEIVER_SECRET, sibling, PREFIX) is None


@given(st.binary(min_size=16, max_size=64))
def test_issue_secret_for_roundtrip(token: bytes) -> None:
    destination, secret = issue(RECEIVER_SECRET, PREFIX, token)
    assert secret_for(RECEIVER_SECRET, destination, PREFIX) == secret


@given(st.text(max_size=120))
def test_secret_for_never_raises(suffix: str) -> None:
    result = secret_for(RECEIVER_SECRET, f"{PREFIX}.{suffix}", PREFIX)
    assert result is None or len(result) == 32


def test_issue_validates() -> None:
    with pytest.raises(EncodeError):
        issue(RECEIVER_SECRET, PREFIX, bytes(15))
    with pytest.raises(EncodeError):
        issue(RECEIVER_SECRET, PREFIX, bytes(65))
    with pytest.raises(EncodeError):
        issue(bytes(31), PREFIX, bytes(18))
    with pytest.raises(TypeError):
        issue(RECEIVER_SECRET, PREFIX, "x" * 18)  # type: ignore[arg-type]
    with pytest.raises(InvalidAddress):
        issue(RECEIVER_SECRET, "not an address", bytes(18))
    with pytest.raises(InvalidAddress):
        issue(RECEIVER_SECRET, "test." + "a" * 1000, bytes(18))


# --- draft-1 vectors, byte for byte --------------------------------------------------------


def test_single_chunk_fulfilled() -> None:
    v = VECTORS["draft1_single_chunk_fulfilled"]
    i, e = v["inputs"], v["expected"]
    prepare = decode_prepare(h(e["preparePacket"]))
    result = accepted(
        decide(prepare, h(i["sharedSecret"]), now=NOW, paid_so_far=0, iv=h(i["responseIv"]))
    )
    assert reply_hex(result) == e["fulfillPacket"]
    assert result.payment_id.hex() == i["paymentId"]
    assert (result.sequence, result.amount, result.total) == (0, 1000, 1000)
    assert result.application_data == b""
    assert result.closes_payment  # a type-1 chunk
    assert isinstance(result.request, ChunkRequest) and result.request.chunk_amount == 900
    assert result.fulfillment.hex() == e["fulfillment"]


@pytest.mark.parametrize("name", ["draft1_quote_unfulfillable", "draft1_amount_too_low"])
def test_amount_too_low_and_quote(name: str) -> None:
    v = VECTORS[name]
    i, e = v["inputs"], v["expected"]
    prepare = decode_prepare(h(e["preparePacket"]))
    result = refused(
        decide(prepare, h(i["sharedSecret"]), now=NOW, paid_so_far=0, iv=h(i["responseIv"]))
    )
    assert result.reason is RefuseReason.AMOUNT_TOO_LOW
    assert reply_hex(result) == e["rejectPacket"]


def test_condition_mismatch() -> None:
    v = VECTORS["draft1_condition_mismatch"]
    i, e = v["inputs"], v["expected"]
    prepare = decode_prepare(h(i["preparePacket"]))
    result = refused(decide(prepare, h(i["sharedSecret"]), now=NOW, paid_so_far=0, iv=bytes(12)))
    assert result.reason is RefuseReason.WRONG_CONDITION
    assert reply_hex(result) == e["rejectPacket"]


def test_decrypt_failure() -> None:
    v = VECTORS["draft1_decrypt_failure"]
    i, e = v["inputs"], v["expected"]
    prepare = decode_prepare(h(i["preparePacket"]))
    result = refused(decide(prepare, h(i["sharedSecret"]), now=NOW, paid_so_far=0, iv=bytes(12)))
    assert result.reason is RefuseReason.UNREADABLE
    assert reply_hex(result) == e["rejectPacket"]


def test_not_for_this_receiver() -> None:
    v = VECTORS["draft1_wrong_receiver_id"]
    prepare = decode_prepare(h(v["inputs"]["preparePacket"]))
    assert secret_for(RECEIVER_SECRET, prepare.destination, PREFIX) is None
    result = refused(decide(prepare, None, now=NOW, paid_so_far=0, iv=bytes(12)))
    assert result.reason is RefuseReason.NOT_FOR_US
    assert reply_hex(result) == v["expected"]["rejectPacket"]


def test_application_reject() -> None:
    v = VECTORS["draft1_application_reject"]
    i, e = v["inputs"], v["expected"]
    s = h(i["sharedSecret"])
    opened = open_prepare(decode_prepare(h(e["preparePacket"])), s, now=NOW)
    assert isinstance(opened, Opened)
    assert isinstance(respond(opened, paid_so_far=0, iv=bytes(12)), Accept)
    result = refuse(opened, paid_so_far=0, iv=bytes(12), message="no thanks")
    reject = result.to_reject(ME)
    assert (reject.code, reject.message) == (e["reject"]["code"], e["reject"]["message"])
    # Deliberate difference from 0.2.1 (empty data): we attach the type-3 error (psk2.md §7.4).
    assert decrypt_psk2(s, reject.data) == ChunkRejection(h(i["paymentId"]), 0, 0, 1000)


def test_chunked_payment() -> None:
    v = VECTORS["draft1_chunked_payment"]
    i, e = v["inputs"], v["expected"]
    s = h(i["sharedSecret"])
    paid, closed = 0, False
    for chunk in e["chunks"]:
        prepare = decode_prepare(h(chunk["preparePacket"]))
        result = accepted(
            decide(prepare, s, now=NOW, paid_so_far=paid, iv=h(chunk["responseIv"]), closed=closed)
        )
        assert reply_hex(result) == chunk["responsePacket"]
        paid, closed = result.total, closed or result.closes_payment
    assert closed and paid == 1100
    after = e["afterFinish"]
    refusal = refused(
        decide(
            decode_prepare(h(after["preparePacket"])),
            s,
            now=NOW,
            paid_so_far=paid,
            iv=h(after["responseIv"]),
            closed=closed,
        )
    )
    assert refusal.reason is RefuseReason.PAYMENT_FINISHED
    assert reply_hex(refusal) == after["rejectPacket"]
    # Finished by the total alone, without the closed flag, is refused the same way.
    refusal = refused(
        decide(
            decode_prepare(h(after["preparePacket"])),
            s,
            now=NOW,
            paid_so_far=paid,
            iv=h(after["responseIv"]),
        )
    )
    assert reply_hex(refusal) == after["rejectPacket"]


def test_receiver_edge_behaviour() -> None:
    v = VECTORS["draft1_receiver_edge_behaviour"]
    s = h(v["inputs"]["sharedSecret"])
    state: dict[bytes, tuple[int, bool]] = {}
    for step in v["expected"]["steps"]:
        prepare = decode_prepare(h(step["preparePacket"]))
        # The generator's IVs were not recorded: they are the first 12 bytes of the data.
        iv = decode_reply(h(step["responsePacket"])).data[:12]
        opened = open_prepare(prepare, s, now=NOW)
        assert isinstance(opened, Opened)
        paid, closed = state.get(opened.payment_id, (0, False))
        result = respond(opened, paid_so_far=paid, iv=iv, closed=closed)
        assert reply_hex(result) == step["responsePacket"], step["label"]
        if isinstance(result, Accept):
            state[result.payment_id] = (result.total, closed or result.closes_payment)


# --- draft 2 ------------------------------------------------------------------------------


def _ivs(i: dict[str, Any]) -> bytes:
    return h(i.get("response_IV") or i["responseIv"])


def test_draft2_request_fulfilled() -> None:
    v = VECTORS["draft2_request_fulfilled"]
    i, e = v["inputs"], v["expected"]
    prepare = decode_prepare(h(e["preparePacket"]))
    result = accepted(
        decide(
            prepare,
            h(i["sharedSecret"]),
            now=NOW,
            paid_so_far=0,
            iv=_ivs(i),
            response_data=b"thanks",
        )
    )
    assert reply_hex(result) == e["responsePacket"]
    assert result.application_data.hex() == e["requestHandlerSaw"]["data"]
    # Draft 2 has no Payment ID: the 16-byte pay token stands in.
    assert result.payment_id.hex() == i["data"]
    assert (result.sequence, result.amount, result.closes_payment) == (12345, 1000, False)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("draft2_unfulfillable_quote", RefuseReason.WRONG_CONDITION),
        ("draft2_amount_too_low", RefuseReason.AMOUNT_TOO_LOW),
    ],
)
def test_draft2_unfulfillable(name: str, reason: RefuseReason) -> None:
    v = VECTORS[name]
    i, e = v["inputs"], v["expected"]
    s = h(i["sharedSecret"])
    result = refused(
        decide(decode_prepare(h(e["preparePacket"])), s, now=NOW, paid_so_far=0, iv=_ivs(i))
    )
    assert result.reason is reason
    reject = result.to_reject(ME)
    assert (reject.code, reject.message) == (e["response"]["code"], e["response"]["message"])
    # The vector's handler put "insufficient" into the error; ours has no handler data.
    fields = e["responseFields"]
    assert decrypt_psk2(s, reject.data) == Rejection(fields["requestId"], int(fields["amount"]))
    expected = decrypt_psk2(s, h(e["response"]["data"]))
    assert isinstance(expected, Rejection)
    assert encrypt_psk2(s, Rejection(expected.request_id, expected.amount), _ivs(i)) == reject.data


def test_draft2_application_reject() -> None:
    v = VECTORS["draft2_application_reject"]
    i, e = v["inputs"], v["expected"]
    opened = open_prepare(decode_prepare(h(e["preparePacket"])), h(i["sharedSecret"]), now=NOW)
    assert isinstance(opened, Opened)
    assert opened.application_data == b"hello" and opened.draft == 2
    assert opened.payment_id == bytes(16)  # data shorter than a pay token
    result = refuse(opened, paid_so_far=0, iv=_ivs(i), data=b"insufficient")
    assert reply_hex(result) == e["responsePacket"]


@pytest.mark.parametrize("case", ["amount_ok_condition_random", "amount_too_high_condition_random"])
def test_draft2_v0_3_1_behaviour(case: str) -> None:
    v = VECTORS["draft2_v0_3_1_unfulfillable_behaviour"]
    c = v["expected"][case]
    result = refused(
        decide(
            decode_prepare(h(c["preparePacket"])),
            h(v["inputs"]["sharedSecret"]),
            now=NOW,
            paid_so_far=0,
            iv=h(c["responseIv"]),
        )
    )
    assert reply_hex(result) == c["responsePacket"]


def test_draft1_packet_answered_with_running_total() -> None:
    v = VECTORS["draft2_receiver_accepts_legacy_draft1_packet"]
    i, e = v["inputs"], v["expected"]
    s = h(i["sharedSecret"])
    result = accepted(
        decide(
            decode_prepare(h(i["preparePacket"])), s, now=NOW, paid_so_far=0, iv=h(i["responseIv"])
        )
    )
    assert result.fulfillment.hex() == e["response"]["fulfillment"]
    reference = decrypt_psk2(s, h(e["response"]["data"]))
    assert isinstance(reference, ChunkResponse) and reference.payment_amount == 0
    # 0.5.0's legacy mode reports Payment Amount 0; we are a draft-1 receiver and report
    # the running total, as 0.2.1 does.
    ours = decrypt_psk2(s, result.data)
    assert ours == ChunkResponse(reference.payment_id, reference.sequence, 250, 250)


def test_draft2_packet_is_answered_in_kind() -> None:
    v = VECTORS["draft2_packet_to_draft1_receiver"]
    s = h(v["inputs"]["sharedSecret"])
    prepare = decode_prepare(h(v["inputs"]["preparePacket"]))
    # 0.2.1 refused it with F06; we speak draft 2 too.
    result = accepted(decide(prepare, s, now=NOW, paid_so_far=0, iv=bytes(12)))
    assert isinstance(decrypt_psk2(s, result.data), Response)


# --- http-ilp.json ------------------------------------------------------------------------


def test_http_ilp_draft1_exchange() -> None:
    v = HTTP_VECTORS["draft1_era_ilp_fetch_1_0_1_with_koa_ilp_1_0_0"]
    pay = v["expected"]["httpExchanges"][0]["response"]["headers"]["pay"]
    secret = base64.b64decode(pay.split(" ")[2])
    paid = 0
    for packet in v["expected"]["ilpPackets"]:
        iv = decode_reply(h(packet["responsePacket"])).data[:12]
        result = decide(
            decode_prepare(h(packet["preparePacket"])), secret, now=NOW, paid_so_far=paid, iv=iv
        )
        assert reply_hex(result, "test.example.api") == packet["responsePacket"]
        if isinstance(result, Accept):
            paid = result.total


def test_http_ilp_draft2_funding() -> None:
    v = HTTP_VECTORS["koa_ilp_1_1_1_exchanges"]
    e = v["expected"]
    case = next(c for c in e["cases"] if c["name"] == "paid_unfunded_token")
    secret = base64.b64decode(case["response"]["headers"]["Pay"].split(" ")[2])
    funding = e["fundingRequest1"]
    reply = decode_reply(h(funding["responsePacket"]))
    response = decrypt_psk2(secret, reply.data)
    assert isinstance(response, Response)
    result = accepted(
        decide(
            decode_prepare(h(funding["preparePacket"])),
            secret,
            now=NOW,
            paid_so_far=0,
            iv=reply.data[:12],
            response_data=response.data,
        )
    )
    assert reply_hex(result) == funding["responsePacket"]
    assert result.payment_id.hex() == v["inputs"]["payToken"]


# --- paths built with our own sender helpers ------------------------------------------------

ADDRESS = issue(RECEIVER_SECRET, PREFIX, bytes(range(18)))
PID = bytes(range(100, 116))


def chunk(
    *,
    sequence: int = 0,
    amount: int = 100,
    minimum: int = 0,
    total: int = UINT64_MAX,
    last: bool = False,
) -> Prepare:
    return build_chunk(
        ADDRESS.shared_secret,
        ADDRESS.destination,
        payment_id=PID,
        sequence=sequence,
        payment_amount=total,
        chunk_amount=minimum,
        source_amount=amount,
        expires_at=EXPIRES,
        iv=bytes([sequence % 256]) * 12,
        last=last,
    )


def receive(
    prepare: Prepare, paid: int = 0, closed: bool = False, now: datetime = NOW
) -> Accept | Refuse:
    secret = secret_for(RECEIVER_SECRET, prepare.destination, PREFIX)
    return decide(prepare, secret, now=now, paid_so_far=paid, iv=b"\x99" * 12, closed=closed)


def test_expired_is_r00_before_anything_else() -> None:
    prepare = chunk()
    for now in (EXPIRES, EXPIRES + timedelta(milliseconds=1)):
        result = refused(receive(prepare, now=now))
        assert (result.code, result.data, result.reason) == ("R00", b"", RefuseReason.EXPIRED)
    # Even for a foreign destination or garbage data.
    assert refused(decide(prepare, None, now=EXPIRES, paid_so_far=0, iv=bytes(12))).code == "R00"
    assert isinstance(receive(prepare, now=EXPIRES - timedelta(milliseconds=1)), Accept)


def test_accept_reports_running_total() -> None:
    result = accepted(receive(chunk(amount=100), paid=250))
    assert (result.total, result.closes_payment) == (350, False)
    answer = read_reply(ADDRESS.shared_secret, result.to_fulfill(), prepare=chunk(amount=100))
    assert answer.fulfilled and answer.problem == ""
    assert (answer.delivered, answer.total) == (100, 350)


def test_quote_gets_f99_with_arrived_amount() -> None:
    prepare = build_quote(
        ADDRESS.shared_secret,
        ADDRESS.destination,
        payment_id=PID,
        source_amount=1000,
        expires_at=EXPIRES,
        iv=bytes(12),
        condition=b"\x42" * 32,
    )
    result = refused(receive(prepare, paid=7))
    assert (result.code, result.message, result.reason) == ("F99", "", RefuseReason.AMOUNT_TOO_LOW)
    answer = read_reply(ADDRESS.shared_secret, result.to_reject(ME), prepare=prepare)
    assert answer.is_quote_answer and not answer.fulfilled
    assert (answer.delivered, answer.total, answer.code) == (1000, 7, "F99")


def test_amount_too_low() -> None:
    result = refused(receive(chunk(amount=100, minimum=101), paid=5))
    assert result.code == "F99"
    error = decrypt_psk2(ADDRESS.shared_secret, result.data)
    assert error == ChunkRejection(PID, 0, 5, 100)
    assert isinstance(receive(chunk(amount=100, minimum=100)), Accept)


def test_finished_payment() -> None:
    assert refused(receive(chunk(), paid=1, closed=True)).reason is RefuseReason.PAYMENT_FINISHED
    assert refused(receive(chunk(total=500), paid=500)).reason is RefuseReason.PAYMENT_FINISHED
    assert isinstance(receive(chunk(total=500), paid=499), Accept)
    # Payment Amount 0 still takes its first chunk (0.2.1), then is finished.
    first = accepted(receive(chunk(total=0), paid=0))
    assert first.closes_payment
    assert isinstance(receive(chunk(total=0), paid=first.total), Refuse)
    # The last chunk closes; overshooting the Payment Amount is still fulfilled.
    assert accepted(receive(chunk(last=True))).closes_payment
    assert accepted(receive(chunk(total=150, amount=100), paid=100)).total == 200


def test_wrong_condition_draft1() -> None:
    good = chunk()
    bad = Prepare(good.amount, good.expires_at, bytes(32), good.destination, good.data)
    result = refused(receive(bad))
    assert (result.code, result.data) == ("F05", b"")
    assert result.message == "condition generated does not match prepare"


def test_unreadable_data() -> None:
    good = chunk()
    for data in (b"", b"x" * 27, good.data[:-1] + bytes([good.data[-1] ^ 1]), bytes(200)):
        bad = Prepare(
            good.amount, good.expires_at, good.execution_condition, good.destination, data
        )
        result = refused(receive(bad))
        assert (result.code, result.message, result.data) == ("F06", "Unable to parse data", b"")
    # The right key around a plaintext that is no PSK2 packet.
    for plaintext in (b"", b"\x07" + bytes(40), b"\x00" + bytes(20), b"\x04\x00"):
        data = encrypt(ADDRESS.shared_secret, plaintext, bytes(12))
        bad = Prepare(1, EXPIRES, bytes(32), ADDRESS.destination, data)
        assert refused(receive(bad)).reason is RefuseReason.UNREADABLE


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (ChunkResponse(PID, 0, 0, 0), "Unexpected request type"),
        (ChunkRejection(PID, 0, 0, 0), "Unexpected request type"),
        (Response(1, 0), "Unexpected packet type"),
        (Rejection(1, 0), "Unexpected packet type"),
    ],
)
def test_response_types_in_a_request(packet: Any, message: str) -> None:
    data = encrypt_psk2(ADDRESS.shared_secret, packet, bytes(12))
    prepare = Prepare(10, EXPIRES, bytes(32), ADDRESS.destination, data)
    result = refused(receive(prepare))
    assert (result.code, result.message, result.data, result.reason) == (
        "F06",
        message,
        b"",
        RefuseReason.BAD_TYPE,
    )


def _request(minimum: int, *, condition: bytes | None = None, data: bytes = b"") -> Prepare:
    return build_request(
        ADDRESS.shared_secret,
        ADDRESS.destination,
        request_id=42,
        min_destination_amount=minimum,
        source_amount=1000,
        expires_at=EXPIRES,
        iv=bytes(12),
        data=data,
        unfulfillable_condition=condition,
    )


def test_draft2_paths() -> None:
    token = bytes(range(16))
    prepare = _request(900, data=token)
    result = accepted(receive(prepare, paid=5, now=NOW))
    assert (result.total, result.payment_id, result.sequence) == (1005, token, 42)
    answer = read_reply(ADDRESS.shared_secret, result.to_fulfill(), prepare=prepare)
    assert answer.fulfilled and answer.delivered == 1000 and answer.total is None
    # Too low: F99 + type 6 with the arrived amount.
    low = refused(receive(_request(1001)))
    assert (low.code, low.reason) == ("F99", RefuseReason.AMOUNT_TOO_LOW)
    assert decrypt_psk2(ADDRESS.shared_secret, low.data) == Rejection(42, 1000)
    # Probe: F05 + type 6 (0.5.0 probes carry amount 0).
    probe = _request(0, condition=b"\x01" * 32)
    f05 = refused(receive(probe))
    assert (f05.code, f05.message) == ("F05", "Condition generated does not match prepare")
    answer = read_reply(ADDRESS.shared_secret, f05.to_reject(ME), prepare=probe)
    assert answer.delivered == 1000 and not answer.is_quote_answer
    # Both wrong: the amount is checked first (0.3.1 order), F99.
    both = refused(receive(_request(2000, condition=b"\x01" * 32)))
    assert both.code == "F99"
    # closed / paid_so_far do not refuse a draft-2 request.
    assert isinstance(receive(_request(0), paid=10**6, closed=True), Accept)


def test_draft2_amount_exactly_at_the_minimum_is_accepted() -> None:
    """The boundary: ``min_destination_amount == amount`` is enough (draft 2, 0.3.1 ``<``)."""
    token = bytes(range(16))
    prepare = _request(1000, data=token)  # source_amount 1000 arrives as 1000
    result = accepted(receive(prepare, paid=7))
    assert (result.total, result.sequence) == (1007, 42)
    answer = read_reply(ADDRESS.shared_secret, result.to_fulfill(), prepare=prepare)
    assert answer.fulfilled and answer.delivered == 1000
    # One more is too low, refused with what arrived.
    low = refused(receive(_request(1001, data=token), paid=7))
    assert (low.code, low.reason) == ("F99", RefuseReason.AMOUNT_TOO_LOW)
    assert decrypt_psk2(ADDRESS.shared_secret, low.data) == Rejection(42, 1000)


@given(st.integers(0, 2**40), st.integers(-3, 3), st.integers(0, 2**40))
def test_draft2_minimum_boundary_properties(amount: int, delta: int, paid: int) -> None:
    """A draft-2 request is accepted iff its minimum is at most what arrived."""
    minimum = max(0, amount + delta)
    prepare = build_request(
        ADDRESS.shared_secret,
        ADDRESS.destination,
        request_id=7,
        min_destination_amount=minimum,
        source_amount=amount,
        expires_at=EXPIRES,
        iv=bytes(12),
    )
    result = receive(prepare, paid=paid)
    if minimum <= amount:
        assert isinstance(result, Accept) and result.total == paid + amount
    else:
        assert isinstance(result, Refuse) and result.reason is RefuseReason.AMOUNT_TOO_LOW
        assert decrypt_psk2(ADDRESS.shared_secret, result.data) == Rejection(7, amount)


def test_refuse_in_kind() -> None:
    opened = open_prepare(chunk(amount=70), ADDRESS.shared_secret, now=NOW)
    assert isinstance(opened, Opened)
    r = refuse(opened, paid_so_far=30, iv=bytes(12), code="F07", message="full", data=b"x")
    assert (r.code, r.message, r.reason) == ("F07", "full", RefuseReason.REFUSED)
    assert decrypt_psk2(ADDRESS.shared_secret, r.data) == ChunkRejection(PID, 0, 30, 70, b"x")


def test_totals_saturate_on_the_wire() -> None:
    result = accepted(receive(chunk(amount=100), paid=UINT64_MAX - 50))
    assert result.total == UINT64_MAX + 50
    response = decrypt_psk2(ADDRESS.shared_secret, result.data)
    assert isinstance(response, ChunkResponse) and response.payment_amount == UINT64_MAX


@pytest.mark.parametrize("paid", [-1, True, 1.0])
def test_paid_so_far_is_checked(paid: Any) -> None:
    with pytest.raises(ValueError):
        receive(chunk(), paid=paid)


def test_pure() -> None:
    prepare = chunk(amount=100)
    assert receive(prepare, paid=3) == receive(prepare, paid=3)
    opened = open_prepare(prepare, ADDRESS.shared_secret, now=NOW)
    assert isinstance(opened, Opened)
    assert "shared_secret" not in repr(opened)
    assert opened.fulfillment == fulfillment_for(ADDRESS.shared_secret, prepare.data)


@given(st.binary(max_size=200), st.integers(0, UINT64_MAX), st.binary(min_size=32, max_size=32))
def test_any_data_gives_a_decision(data: bytes, amount: int, condition: bytes) -> None:
    prepare = Prepare(amount, EXPIRES, condition, ADDRESS.destination, data)
    result = receive(prepare)
    assert isinstance(result, Refuse) and result.code == "F06"


@given(
    st.integers(0, 2**40),
    st.integers(0, 2**40),
    st.integers(0, 2**40),
    st.integers(0, 2**40),
    st.booleans(),
)
def test_decision_properties(amount: int, minimum: int, total: int, paid: int, last: bool) -> None:
    prepare = chunk(amount=amount, minimum=minimum, total=total, last=last)
    result = receive(prepare, paid=paid)
    if minimum > amount:
        assert isinstance(result, Refuse) and result.reason is RefuseReason.AMOUNT_TOO_LOW
    elif paid > 0 and paid >= total:
        assert isinstance(result, Refuse) and result.reason is RefuseReason.PAYMENT_FINISHED
    else:
        assert isinstance(result, Accept)
        assert result.total == paid + amount
        assert result.closes_payment == (last or paid + amount >= total)
    if isinstance(result, Refuse):
        error = decrypt_psk2(ADDRESS.shared_secret, result.data)
        assert error == ChunkRejection(PID, 0, paid, amount)


@pytest.mark.parametrize("name", ["draft2_request_fulfilled", "draft1_single_chunk_fulfilled"])
def test_respond_without_the_opened_keys_answers_the_same(name: str) -> None:
    """An Opened made by hand (no keys on it) gets the same answer as open_prepare's."""
    v = VECTORS[name]
    i, e = v["inputs"], v["expected"]
    prepare = decode_prepare(h(e["preparePacket"]))
    secret = h(i["sharedSecret"])
    opened = open_prepare(prepare, secret, now=NOW)
    assert isinstance(opened, Opened) and opened.keys is not None
    bare = Opened(opened.prepare, opened.request, opened.fulfillment, secret)
    assert bare == opened  # the keys are no part of its value
    iv = bytes(range(12))
    ours, theirs = respond(opened, paid_so_far=0, iv=iv), respond(bare, paid_so_far=0, iv=iv)
    assert isinstance(ours, Accept) and isinstance(theirs, Accept)
    assert ours.data == theirs.data
    with pytest.raises(TypeError):
        respond(opened, paid_so_far=0, iv=iv, response_data="text")  # type: ignore[arg-type]
