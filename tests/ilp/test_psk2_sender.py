"""ilp.psk2_sender: the builders reproduce the reference senders' Prepares byte for byte,
read_reply reads every reply of the vectors, and ChunkedPayment pays our own receiver."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ilp.errors import EncodeError
from ilp.oer import UINT64_MAX
from ilp.packet import (
    Fulfill,
    Prepare,
    Reject,
    Reply,
    decode_prepare,
    decode_reply,
    encode_packet,
)
from ilp.psk2 import (
    QUOTE_AMOUNT,
    ChunkRejection,
    ChunkRequest,
    ChunkResponse,
    Rejection,
    Response,
    decrypt_psk2,
    encrypt_psk2,
)
from ilp.psk2_receiver import Accept, Refuse, decide, issue, secret_for
from ilp.psk2_sender import (
    PROBE_AMOUNT,
    ChunkedPayment,
    ChunkResult,
    Progress,
    build_chunk,
    build_quote,
    build_request,
    read_reply,
)
from tests.conftest import load_vectors

VECTORS = {v["name"]: v for v in load_vectors("receiver/psk2.json")["vectors"]}
HTTP_VECTORS = {v["name"]: v for v in load_vectors("receiver/http-ilp.json")["vectors"]}
NOW = datetime(2018, 2, 1, tzinfo=UTC)
EXPIRES = NOW + timedelta(seconds=30)
SECRET1 = bytes.fromhex(VECTORS["draft1_packet_keys"]["inputs"]["sharedSecret"])
DEST1 = VECTORS["draft1_single_chunk_fulfilled"]["inputs"]["destinationAccount"]

h = bytes.fromhex


def hex_of(prepare: Prepare) -> str:
    return encode_packet(prepare).hex()


# --- builders against the vectors -----------------------------------------------------------


def test_single_chunk_bytes() -> None:
    v = VECTORS["draft1_single_chunk_fulfilled"]
    i, e = v["inputs"], v["expected"]
    prepare = build_chunk(
        h(i["sharedSecret"]),
        i["destinationAccount"],
        payment_id=h(i["paymentId"]),
        sequence=0,
        payment_amount=UINT64_MAX,
        chunk_amount=int(i["minDestinationAmount"]),
        source_amount=int(i["sourceAmount"]),
        expires_at=EXPIRES,
        iv=h(i["requestIv"]),
        last=True,
    )
    assert hex_of(prepare) == e["preparePacket"]


def test_quote_bytes() -> None:
    v = VECTORS["draft1_quote_unfulfillable"]
    i, e = v["inputs"], v["expected"]
    prepare = build_quote(
        h(i["sharedSecret"]),
        i["destinationAccount"],
        payment_id=h(i["paymentId"]),
        source_amount=int(i["sourceAmount"]),
        expires_at=EXPIRES,
        iv=h(i["requestIv"]),
        condition=h(i["randomCondition"]),
    )
    assert hex_of(prepare) == e["preparePacket"]


@pytest.mark.parametrize(
    ("name", "minimum"), [("draft1_amount_too_low", 501), ("draft1_application_reject", 0)]
)
def test_single_chunk_variants(name: str, minimum: int) -> None:
    i, e = VECTORS[name]["inputs"], VECTORS[name]["expected"]
    prepare = build_chunk(
        h(i["sharedSecret"]),
        i["destinationAccount"],
        payment_id=h(i["paymentId"]),
        sequence=0,
        payment_amount=UINT64_MAX,
        chunk_amount=minimum,
        source_amount=int(i["sourceAmount"]),
        expires_at=EXPIRES,
        iv=h(i["requestIv"]),
        last=True,
    )
    assert hex_of(prepare) == e["preparePacket"]


def test_chunked_payment_bytes() -> None:
    v = VECTORS["draft1_chunked_payment"]
    i, e = v["inputs"], v["expected"]
    chunks = [*e["chunks"], {**e["afterFinish"], "sequence": 3, "type": 0, "amount": "100"}]
    for c in chunks:
        prepare = build_chunk(
            h(i["sharedSecret"]),
            i["destinationAccount"],
            payment_id=h(i["paymentId"]),
            sequence=c["sequence"],
            payment_amount=int(i["paymentAmount"]),
            chunk_amount=0,
            source_amount=int(c["amount"]),
            expires_at=EXPIRES,
            iv=h(c["requestIv"]),
            last=c["type"] == 1,
        )
        assert hex_of(prepare) == c["preparePacket"]


def test_edge_behaviour_bytes() -> None:
    v = VECTORS["draft1_receiver_edge_behaviour"]
    for step in v["expected"]["steps"]:
        raw = h(step["preparePacket"])
        prepare = build_chunk(
            SECRET1,
            v["inputs"]["destinationAccount"],
            payment_id=h(step["paymentId"]),
            sequence=step["sequence"],
            payment_amount=int(step["paymentAmount"]),
            chunk_amount=0,
            source_amount=int(step["prepareAmount"]),
            expires_at=EXPIRES,
            iv=decode_prepare(raw).data[:12],
            last=step["type"] == 1,
        )
        assert encode_packet(prepare) == raw


@pytest.mark.parametrize(
    "name",
    [
        "draft2_request_fulfilled",
        "draft2_unfulfillable_quote",
        "draft2_amount_too_low",
        "draft2_application_reject",
    ],
)
def test_request_bytes(name: str) -> None:
    i, e = VECTORS[name]["inputs"], VECTORS[name]["expected"]
    prepare = build_request(
        h(i["sharedSecret"]),
        i["destinationAccount"],
        request_id=i["requestId"],
        min_destination_amount=int(e["requestFields"]["amount"]),
        source_amount=int(i["sourceAmount"]),
        expires_at=EXPIRES,
        iv=h(i["request_IV"]),
        data=h(i.get("data", "")),
        unfulfillable_condition=h(i["unfulfillableCondition"])
        if "unfulfillableCondition" in i
        else None,
    )
    assert hex_of(prepare) == e["preparePacket"]


@pytest.mark.parametrize("case", ["amount_ok_condition_random", "amount_too_high_condition_random"])
def test_v0_3_1_probe_bytes(case: str) -> None:
    v = VECTORS["draft2_v0_3_1_unfulfillable_behaviour"]
    c = v["expected"][case]
    prepare = build_request(
        h(v["inputs"]["sharedSecret"]),
        v["inputs"]["destinationAccount"],
        request_id=99,
        min_destination_amount=int(c["requestAmountField"]),
        source_amount=1000,
        expires_at=EXPIRES,
        iv=h(c["requestIv"]),
        unfulfillable_condition=decode_prepare(h(c["preparePacket"])).execution_condition,
    )
    assert hex_of(prepare) == c["preparePacket"]


def test_http_ilp_draft1_sender_packets() -> None:
    v = HTTP_VECTORS["draft1_era_ilp_fetch_1_0_1_with_koa_ilp_1_0_0"]
    e = v["expected"]
    pay = e["httpExchanges"][0]["response"]["headers"]["pay"]
    _, address, secret_b64, price = pay.split(" ")
    secret = base64.b64decode(secret_b64)
    token = h(v["inputs"]["payToken"])
    quote_packet, pay_packet = e["ilpPackets"]
    quote = decode_prepare(h(quote_packet["preparePacket"]))
    built = build_quote(
        secret,
        address,
        payment_id=token,
        source_amount=PROBE_AMOUNT,
        expires_at=quote.expires_at,
        iv=quote.data[:12],
        condition=quote.execution_condition,
    )
    assert built == quote
    result = read_reply(secret, decode_reply(h(quote_packet["responsePacket"])), prepare=built)
    assert result.is_quote_answer and result.delivered == 1000
    paid = decode_prepare(h(pay_packet["preparePacket"]))
    built = build_chunk(
        secret,
        address,
        payment_id=token,
        sequence=1,
        payment_amount=UINT64_MAX,
        chunk_amount=int(price),
        source_amount=1000,
        expires_at=paid.expires_at,
        iv=paid.data[:12],
        last=False,
    )
    assert built == paid
    result = read_reply(secret, decode_reply(h(pay_packet["responsePacket"])), prepare=built)
    assert result.fulfilled and (result.delivered, result.total) == (1000, 1000)


# --- read_reply against the vectors --------------------------------------------------------


def test_read_single_chunk_fulfill() -> None:
    e = VECTORS["draft1_single_chunk_fulfilled"]["expected"]
    prepare = decode_prepare(h(e["preparePacket"]))
    result = read_reply(SECRET1, decode_reply(h(e["fulfillPacket"])), prepare=prepare)
    assert result.fulfilled and result.problem == "" and result.code == ""
    assert result.delivered == int(e["senderResult"]["destinationAmount"])
    assert result.total == 1000 and result.application_data == b""


@pytest.mark.parametrize(
    ("name", "delivered", "quote"),
    [("draft1_quote_unfulfillable", 1000, True), ("draft1_amount_too_low", 500, True)],
)
def test_read_f99(name: str, delivered: int, quote: bool) -> None:
    e = VECTORS[name]["expected"]
    prepare = decode_prepare(h(e["preparePacket"]))
    result = read_reply(SECRET1, decode_reply(h(e["rejectPacket"])), prepare=prepare)
    assert not result.fulfilled
    assert (result.code, result.message, result.triggered_by) == (
        "F99",
        "",
        "test.example.receiver",
    )
    assert result.delivered == delivered and result.total == 0
    assert result.is_quote_answer is quote
    assert isinstance(result.response, ChunkRejection)


def test_read_plain_rejects() -> None:
    for name in ("draft1_condition_mismatch", "draft1_decrypt_failure"):
        e = VECTORS[name]["expected"]
        result = read_reply(SECRET1, decode_reply(h(e["rejectPacket"])))
        assert result == ChunkResult(
            False, e["reject"]["code"], e["reject"]["message"], "test.example.receiver"
        )
        assert result.delivered is None and not result.is_quote_answer


@pytest.mark.parametrize(
    "name",
    [
        "draft2_request_fulfilled",
        "draft2_unfulfillable_quote",
        "draft2_amount_too_low",
        "draft2_application_reject",
    ],
)
def test_read_draft2(name: str) -> None:
    i, e = VECTORS[name]["inputs"], VECTORS[name]["expected"]
    prepare = decode_prepare(h(e["preparePacket"]))
    result = read_reply(h(i["sharedSecret"]), decode_reply(h(e["responsePacket"])), prepare=prepare)
    sender = e["senderResult"]
    assert result.fulfilled is sender["fulfilled"]
    assert result.delivered == int(sender["destinationAmount"])
    assert result.application_data.hex() == sender["data"]
    assert result.total is None and result.problem == ""
    if not result.fulfilled:
        assert (result.code, result.message) == (sender["code"], sender["message"])


def test_read_legacy_response_from_a_draft2_receiver() -> None:
    v = VECTORS["draft2_receiver_accepts_legacy_draft1_packet"]
    i, e = v["inputs"], v["expected"]
    s = h(i["sharedSecret"])
    prepare = decode_prepare(h(i["preparePacket"]))
    result = read_reply(s, decode_reply(h(e["responsePacket"])), prepare=prepare)
    assert result.fulfilled and result.delivered == 250 and result.total == 0


# --- read_reply problems ------------------------------------------------------------------

ADDRESS = issue(bytes(range(32)), "test.example.receivers.bob", bytes(range(18)))
PID = bytes(range(16))


def _chunk(sequence: int = 0, amount: int = 100) -> Prepare:
    return build_chunk(
        ADDRESS.shared_secret,
        ADDRESS.destination,
        payment_id=PID,
        sequence=sequence,
        payment_amount=UINT64_MAX,
        chunk_amount=0,
        source_amount=amount,
        expires_at=EXPIRES,
        iv=bytes(12),
        last=False,
    )


def chunk_request(prepare: Prepare) -> ChunkRequest:
    request = decrypt_psk2(ADDRESS.shared_secret, prepare.data)
    assert isinstance(request, ChunkRequest)
    return request


def _answer(prepare: Prepare, paid: int = 0) -> Accept | Refuse:
    return decide(prepare, ADDRESS.shared_secret, now=NOW, paid_so_far=paid, iv=b"\x07" * 12)


def test_read_reply_problems() -> None:
    prepare = _chunk()
    accept = _answer(prepare)
    assert isinstance(accept, Accept)
    good = accept.to_fulfill()
    assert read_reply(ADDRESS.shared_secret, good, prepare=prepare).fulfilled

    wrong = Fulfill(bytes(32), good.data)
    r = read_reply(ADDRESS.shared_secret, wrong, prepare=prepare)
    assert not r.fulfilled and "fulfillment" in r.problem
    # Without the Prepare there is nothing to check the fulfillment against.
    assert read_reply(ADDRESS.shared_secret, wrong).fulfilled

    r = read_reply(ADDRESS.shared_secret, Fulfill(good.fulfillment), prepare=prepare)
    assert r.fulfilled and r.response is None and "no PSK2 response" in r.problem

    r = read_reply(bytes(32), good)
    assert r.response is None and "not PSK2" in r.problem

    error = encrypt_psk2(ADDRESS.shared_secret, ChunkRejection(PID, 0, 0, 100), bytes(12))
    r = read_reply(ADDRESS.shared_secret, Fulfill(good.fulfillment, error), prepare=prepare)
    assert r.response is None and "type 3 in a Fulfill" in r.problem
    response = encrypt_psk2(ADDRESS.shared_secret, ChunkResponse(PID, 0, 0, 100), bytes(12))
    r = read_reply(ADDRESS.shared_secret, Reject("F99", "", "", response), prepare=prepare)
    assert r.response is None and "type 2 in a Reject" in r.problem
    request = encrypt_psk2(ADDRESS.shared_secret, Response(1, 1), bytes(12))
    r = read_reply(ADDRESS.shared_secret, Fulfill(good.fulfillment, request), prepare=prepare)
    assert r.response is None  # a draft-2 response to a draft-1 request

    # An answer for sequence 1 to the chunk with sequence 0.
    other = _answer(_chunk(sequence=1))
    assert isinstance(other, Accept)
    r = read_reply(ADDRESS.shared_secret, Fulfill(good.fulfillment, other.data), prepare=prepare)
    assert r.response is None and "another request" in r.problem
    assert read_reply(ADDRESS.shared_secret, Fulfill(good.fulfillment, other.data)).response


def test_read_draft2_request_id_mismatch() -> None:
    prepare = build_request(
        ADDRESS.shared_secret,
        ADDRESS.destination,
        request_id=5,
        min_destination_amount=0,
        source_amount=10,
        expires_at=EXPIRES,
        iv=bytes(12),
    )
    data = encrypt_psk2(ADDRESS.shared_secret, Rejection(6, 10), bytes(12))
    r = read_reply(ADDRESS.shared_secret, Reject("F99", "", "", data), prepare=prepare)
    assert r.response is None and r.code == "F99"
    data = encrypt_psk2(ADDRESS.shared_secret, Rejection(5, 10), bytes(12))
    r = read_reply(ADDRESS.shared_secret, Reject("F05", "", "", data), prepare=prepare)
    assert r.delivered == 10


def test_builders_validate() -> None:
    kwargs = dict(
        payment_id=PID,
        sequence=0,
        payment_amount=0,
        chunk_amount=0,
        source_amount=1,
        expires_at=EXPIRES,
        iv=bytes(12),
        last=True,
    )
    with pytest.raises(EncodeError):
        build_chunk(bytes(31), ADDRESS.destination, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        build_chunk("x" * 32, ADDRESS.destination, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(EncodeError):
        build_quote(
            ADDRESS.shared_secret,
            ADDRESS.destination,
            payment_id=PID,
            source_amount=1,
            expires_at=EXPIRES,
            iv=bytes(12),
            condition=bytes(31),
        )
    with pytest.raises(ValueError):
        build_chunk(ADDRESS.shared_secret, "not an address", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(EncodeError):
        read_reply(bytes(8), Reject("F99", ""))


def test_quote_plaintext() -> None:
    prepare = build_quote(
        ADDRESS.shared_secret,
        ADDRESS.destination,
        payment_id=PID,
        source_amount=PROBE_AMOUNT,
        expires_at=EXPIRES,
        iv=bytes(12),
        condition=b"\x05" * 32,
    )
    request = chunk_request(prepare)
    assert request.type == 1
    assert (prepare.amount, prepare.execution_condition) == (1000, b"\x05" * 32)
    assert request.payment_amount == request.chunk_amount == QUOTE_AMOUNT


# --- ChunkedPayment against our own receiver ------------------------------------------------

Connector = Callable[[Prepare, int], Reply | None]


class Network:
    """A path with an exchange ``rate`` into our receiver, which keeps per-payment totals."""

    def __init__(self, rate: Fraction = Fraction(1), fault: Connector | None = None) -> None:
        self.rate = rate
        self.fault = fault
        self.state: dict[bytes, tuple[int, bool]] = {}
        self.sent = 0
        self.prepares: list[Prepare] = []

    def send(self, prepare: Prepare) -> Reply:
        self.sent += 1
        self.prepares.append(prepare)
        if self.fault is not None:
            reply = self.fault(prepare, self.sent)
            if reply is not None:
                return reply
        arrived = int(prepare.amount * self.rate)
        forwarded = Prepare(
            arrived,
            prepare.expires_at,
            prepare.execution_condition,
            prepare.destination,
            prepare.data,
        )
        secret = secret_for(bytes(range(32)), forwarded.destination, "test.example.receivers.bob")
        # Every payment here uses PID, so the totals can be looked up before decrypting.
        paid, closed = self.state.get(PID, (0, False))
        result = decide(forwarded, secret, now=NOW, paid_so_far=paid, iv=bytes(12), closed=closed)
        if isinstance(result, Accept):
            self.state[result.payment_id] = (result.total, closed or result.closes_payment)
            return result.to_fulfill()
        return result.to_reject("test.example.receivers.bob")


def run(payment: ChunkedPayment, net: Network, limit: int = 200) -> Progress:
    progress = Progress.CONTINUE
    for n in range(limit):
        prepare = payment.next_chunk(expires_at=EXPIRES, iv=n.to_bytes(12, "big"))
        if prepare is None:
            return Progress.FAILED if payment.failed else Progress.DONE
        progress = payment.on_reply(net.send(prepare))
        if progress is not Progress.CONTINUE:
            return progress
    raise AssertionError("payment did not finish")


def _payment(**kwargs: object) -> ChunkedPayment:
    return ChunkedPayment(ADDRESS.shared_secret, ADDRESS.destination, PID, **kwargs)  # type: ignore[arg-type]


def test_fixed_source_amount() -> None:
    net = Network(Fraction(1, 2))
    payment = _payment(source_amount=2500)
    assert run(payment, net) is Progress.DONE
    assert [p.amount for p in net.prepares] == [1000, 1100, 400]
    assert (payment.amount_sent, payment.amount_delivered) == (2500, 1250)
    assert payment.chunks_fulfilled == 3 and payment.rate == Fraction(1, 2)
    requests = [chunk_request(p) for p in net.prepares]
    assert [r.type for r in requests] == [0, 0, 1]
    # The first chunk takes any amount; later ones guard the rate with 1% slippage.
    assert [r.chunk_amount for r in requests] == [0, 544, 198]
    assert [r.sequence for r in requests] == [0, 1, 2]
    assert payment.next_chunk(expires_at=EXPIRES, iv=bytes(12)) is None


def test_fixed_destination_amount() -> None:
    net = Network(Fraction(3, 1))
    payment = _payment(destination_amount=10_000)
    assert run(payment, net) is Progress.DONE
    assert payment.amount_delivered >= 10_000
    requests = [chunk_request(p) for p in net.prepares]
    assert all(r.payment_amount == 10_000 for r in requests)
    assert requests[-1].type == 1
    assert payment.amount_delivered - 10_000 < 3  # at most one source unit of overshoot


def test_temporary_errors_back_off() -> None:
    def busy(prepare: Prepare, n: int) -> Reply | None:
        return Reject("T04", "test.example.connector") if n <= 3 else None

    net = Network(Fraction(1), busy)
    payment = _payment(source_amount=1000)
    waits = []
    for _ in range(3):
        prepare = payment.next_chunk(expires_at=EXPIRES, iv=bytes(12))
        assert prepare is not None
        assert payment.on_reply(net.send(prepare)) is Progress.CONTINUE
        waits.append((prepare.amount, payment.wait_ms))
    assert waits == [(1000, 100), (500, 200), (250, 400)]
    assert run(payment, net) is Progress.DONE
    assert payment.amount_sent == payment.amount_delivered == 1000


def test_temporary_errors_are_capped() -> None:
    net = Network(Fraction(1), lambda p, n: Reject("T04", ""))
    payment = _payment(source_amount=1000, max_temporary_in_a_row=4, max_wait_ms=300)
    assert run(payment, net) is Progress.FAILED
    assert net.sent == 5 and payment.wait_ms == 300 and "T04" in payment.failure
    assert payment.next_chunk(expires_at=EXPIRES, iv=bytes(12)) is None


def test_f99_spin_is_capped() -> None:
    net = Network(Fraction(1))
    payment = _payment(source_amount=10_000, slippage=Fraction(0))
    prepare = payment.next_chunk(expires_at=EXPIRES, iv=bytes(12))
    assert prepare is not None and payment.on_reply(net.send(prepare)) is Progress.CONTINUE
    net.rate = Fraction(9, 10)  # the path got worse than the exact-rate guard allows
    assert run(payment, net) is Progress.FAILED
    assert "F99" in payment.failure and net.sent == 1 + 4
    assert payment.amount_sent == 1000


def test_final_error_fails() -> None:
    net = Network(Fraction(1), lambda p, n: Reject("F02", "test.example.c", "no route"))
    payment = _payment(source_amount=100)
    assert run(payment, net) is Progress.FAILED
    assert payment.failure == "Transfer rejected with final error: F02: no route"


def test_one_chunk_in_flight() -> None:
    payment = _payment(source_amount=100)
    with pytest.raises(RuntimeError):
        payment.on_reply(Reject("F99", ""))
    assert payment.next_chunk(expires_at=EXPIRES, iv=bytes(12)) is not None
    with pytest.raises(RuntimeError):
        payment.next_chunk(expires_at=EXPIRES, iv=bytes(12))


def test_bad_fulfill_fails() -> None:
    net = Network(Fraction(1), lambda p, n: Fulfill(bytes(32)))
    payment = _payment(source_amount=100)
    assert run(payment, net) is Progress.FAILED
    assert "fulfill" in payment.failure


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"source_amount": 1, "destination_amount": 1},
        {"source_amount": 1, "chunk_size": 0},
        {"source_amount": 1, "slippage": Fraction(1)},
    ],
)
def test_payment_validates(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _payment(**kwargs)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 50_000),
    st.fractions(min_value=Fraction(1, 10), max_value=10),
    st.booleans(),
)
def test_payments_always_finish(amount: int, rate: Fraction, fixed_source: bool) -> None:
    net = Network(rate)
    kwargs = {"source_amount": amount} if fixed_source else {"destination_amount": amount}
    payment = _payment(**kwargs)
    progress = run(payment, net, limit=500)
    if fixed_source:
        assert progress is Progress.DONE and payment.amount_sent == amount
    elif progress is Progress.DONE:
        assert payment.amount_delivered >= amount
    else:
        # A rate that rounds chunks to 0 delivers nothing: the F99 cap ends it.
        assert "F99" in payment.failure
