"""ilp.stream.sender against ilp.stream.receiver: the rate probe and the payment state
machine talk to the receiver's pure state machine through a simulated path (an exchange
rate that floors, a packet limit that answers F08, injected Rejects)."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ilp.packet import Fulfill, Prepare, Reject, Reply, amount_too_large_data
from ilp.stream import (
    ConnectionCloseFrame,
    ConnectionMaxDataFrame,
    ConnectionMaxStreamIdFrame,
    ConnectionNewAddressFrame,
    ErrorCode,
    ReceiptSetup,
    StreamMoneyFrame,
    StreamPacket,
    StreamPacketType,
    decrypt_packet,
    encrypt_packet,
)
from ilp.stream.receiver import (
    Accept,
    ConnectionState,
    ReceiverLimits,
    Refusal,
    handle_request,
    new_connection,
    open_prepare,
    receipt_frame,
    settle,
)
from ilp.stream.sender import (
    MAX_PROBE_AMOUNT,
    Progress,
    RateProbe,
    StreamConnection,
    StreamPayment,
    f08_limit,
)

SECRET = bytes(range(32))
DEST = "test.far.receivers.carol.~token"
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
EXPIRES = NOW + timedelta(seconds=30)
_ivs = itertools.count()


def iv() -> bytes:
    return next(_ivs).to_bytes(12, "big")


def random32() -> bytes:
    return hashlib.sha256(iv()).digest()


@dataclass
class Receiver:
    """ilp.stream.receiver driven the way the node's hot path drives it."""

    limits: ReceiverLimits = field(default_factory=lambda: ReceiverLimits("XRP", 9))
    state: ConnectionState | None = None
    received: int = 0
    sequences: list[int] = field(default_factory=list)
    fulfilled_sequences: list[int] = field(default_factory=list)

    def answer(self, prepare: Prepare) -> Reply:
        opened = open_prepare(prepare, SECRET, now=NOW)
        if isinstance(opened, Refusal):
            return opened.to_reject("test.far")
        self.sequences.append(opened.sequence)
        state = self.state or new_connection(self.limits)
        decision = handle_request(
            state,
            opened.request,
            amount=prepare.amount,
            fulfillable=opened.condition_matches,
            limits=self.limits,
        )
        if isinstance(decision, Accept):
            self.state = settle(decision.state, decision)
            self.received += decision.amount
            self.fulfilled_sequences.append(opened.sequence)
            return opened.fulfill(decision.frames, iv=iv())
        self.state = decision.state
        return opened.reject(decision.frames, iv=iv(), triggered_by="test.far")


@dataclass
class Path:
    """Connectors between us and the receiver: ``rate`` (floored), ``max_packet`` (F08 with
    its data), ``injected`` Rejects by send number (1-based), ``max_liquidity`` (T04)."""

    receiver: Receiver
    rate: Fraction = Fraction(1)
    max_packet: int | None = None
    max_liquidity: int | None = None
    injected: dict[int, Reject] = field(default_factory=dict)
    sent: list[Prepare] = field(default_factory=list)

    def send(self, prepare: Prepare) -> Reply:
        self.sent.append(prepare)
        injected = self.injected.get(len(self.sent))
        if injected is not None:
            return injected
        if self.max_packet is not None and prepare.amount > self.max_packet:
            data = amount_too_large_data(prepare.amount, self.max_packet)
            return Reject("F08", "test.hop", "too large", data)
        if self.max_liquidity is not None and prepare.amount > self.max_liquidity:
            return Reject("T04", "test.hop", "insufficient liquidity")
        arrived = int(prepare.amount * self.rate)
        forwarded = Prepare(
            arrived, prepare.expires_at, prepare.execution_condition, prepare.destination,
            prepare.data,
        )  # fmt: skip
        return self.receiver.answer(forwarded)


def connection() -> StreamConnection:
    return StreamConnection(SECRET, DEST)


def run_probe(probe: RateProbe, send: Callable[[Prepare], Reply]) -> Progress:
    outcome = Progress.CONTINUE
    while (
        prepare := probe.next_probe(expires_at=EXPIRES, iv=iv(), condition=random32())
    ) is not None:
        outcome = probe.on_reply(prepare, send(prepare))
    return outcome


def run_payment(pay: StreamPayment, send: Callable[[Prepare], Reply], limit: int = 10_000) -> None:
    for _ in range(limit):
        prepare = pay.next_packet(expires_at=EXPIRES, iv=iv())
        if prepare is None:
            return
        pay.on_reply(prepare, send(prepare))
    raise AssertionError("the payment did not end")


# --- the rate probe -------------------------------------------------------------------------


def test_probe_finds_rate_packet_limit_and_asset() -> None:
    receiver = Receiver()
    path = Path(receiver, rate=Fraction(1, 2), max_packet=700)
    probe = RateProbe(connection(), amount=5_000)
    assert run_probe(probe, path.send) is Progress.DONE
    assert probe.result is not None
    assert (probe.result.source_amount, probe.result.delivered) == (700, 350)
    assert probe.result.max_packet == 700 and probe.result.asset == ("XRP", 9)
    # No money moved; the first probe asked for the asset and set the connection's limits.
    assert receiver.received == 0 and receiver.fulfilled_sequences == []
    first = decrypt_packet(SECRET, path.sent[0].data)
    assert first.packet_type is StreamPacketType.PREPARE and first.sequence == 1
    assert first.frames == (
        ConnectionNewAddressFrame(""),
        ConnectionMaxStreamIdFrame(1),
        ConnectionMaxDataFrame(0),
    )
    assert [p.amount for p in path.sent] == [5_000, 700]
    assert probe.sequence == 3  # sequences 1 and 2 are used


def test_probe_steps_down_on_liquidity_up_on_r01_and_waits_on_other_t() -> None:
    path = Path(Receiver(), max_liquidity=50_000, injected={2: Reject("T01", "test.hop", "")})
    probe = RateProbe(connection(), amount=MAX_PROBE_AMOUNT * 10)
    waits: list[int] = []
    while (
        prepare := probe.next_probe(expires_at=EXPIRES, iv=iv(), condition=random32())
    ) is not None:
        probe.on_reply(prepare, path.send(prepare))
        waits.append(probe.wait_ms)
    assert probe.result is not None and waits[:3] == [0, 100, 0]
    amounts = [p.amount for p in path.sent]
    assert amounts[0] == MAX_PROBE_AMOUNT  # never more than pay's largest probe
    assert amounts[1] == amounts[2] == 10**11  # T01: the same again (after a wait)
    assert amounts[-1] == 10_000 and probe.result is not None and probe.result.delivered == 10_000
    grown = Path(Receiver(), injected={1: Reject("R01", "test.hop", "")})
    up = RateProbe(connection(), amount=10, limit=1_000)
    assert run_probe(up, grown.send) is Progress.DONE
    assert [p.amount for p in grown.sent] == [10, 100]


def test_probe_failures_are_clear() -> None:
    assert run_probe(probe := RateProbe(connection(), amount=5, limit=5), Path(Receiver(), rate=Fraction(1, 10)).send) is Progress.FAILED  # fmt: skip
    assert "nothing arrives at the receiver" in probe.failure
    unreachable = Path(Receiver(), injected={1: Reject("F02", "test.hop", "no route")} | {2: Reject("F02", "test.hop", "no route")})  # fmt: skip
    probe = RateProbe(connection(), amount=1_000)
    assert run_probe(probe, unreachable.send) is Progress.FAILED
    assert probe.failure == "the rate probe was rejected: F02 no route"
    wrong = RateProbe(StreamConnection(bytes(32), DEST), amount=1_000)
    assert run_probe(wrong, Path(Receiver()).send) is Progress.FAILED
    assert "F06" in wrong.failure


def test_probe_retries_once_without_the_asset_request() -> None:
    """interledger-rs refuses an empty ConnectionNewAddress: the second probe leaves it out."""
    receiver = Receiver()

    def picky(prepare: Prepare) -> Reply:
        frames = decrypt_packet(SECRET, prepare.data).frames
        if ConnectionNewAddressFrame("") in frames:
            return Reject("F01", "test.far", "invalid frame")
        return receiver.answer(prepare)

    probe = RateProbe(connection(), amount=1_000)
    assert run_probe(probe, picky) is Progress.DONE
    assert probe.result is not None and probe.result.asset is None


# --- the payment ------------------------------------------------------------------------------


def paid(**kwargs: object) -> tuple[StreamPayment, Path]:
    receiver = Receiver()
    path = Path(receiver, **kwargs)  # type: ignore[arg-type]
    probe = RateProbe(connection(), amount=10_000)
    assert run_probe(probe, path.send) is Progress.DONE
    assert probe.result is not None
    rate = Fraction(probe.result.delivered, probe.result.source_amount)
    pay = StreamPayment(
        connection(),
        source_amount=10_000,
        rate=rate,
        min_rate=rate * Fraction(99, 100),
        chunk_size=probe.result.source_amount,
        max_packet=probe.result.max_packet,
        sequence=probe.sequence,
    )
    run_payment(pay, path.send)
    return pay, path


def test_source_amount_is_paid_in_packets_within_the_limit() -> None:
    pay, path = paid(rate=Fraction(9, 10), max_packet=1_500)
    assert pay.done and not pay.failure
    assert pay.amount_sent == 10_000
    receiver = path.receiver
    assert pay.amount_delivered == receiver.received  # what the receiver credited
    assert receiver.received == sum(int(p.amount * Fraction(9, 10)) for p in path.sent[2:])
    money = path.sent[2:]
    assert max(p.amount for p in money) <= 1_500
    sequences = [decrypt_packet(SECRET, p.data).sequence for p in path.sent]
    assert sequences == list(range(1, len(sequences) + 1))  # one each, never reused
    for prepare in money:
        packet = decrypt_packet(SECRET, prepare.data)
        assert packet.prepare_amount == int(prepare.amount * Fraction(9, 10) * Fraction(99, 100))
        assert StreamMoneyFrame(1, 1) in packet.frames


def test_destination_amount_stops_once_delivered() -> None:
    receiver = Receiver()
    path = Path(receiver, rate=Fraction(1, 3))
    pay = StreamPayment(
        connection(),
        destination_amount=1_000,
        rate=Fraction(1, 3),
        min_rate=Fraction(1, 4),
        chunk_size=700,
    )
    run_payment(pay, path.send)
    assert pay.done and receiver.received == pay.amount_delivered
    assert 1_000 <= pay.amount_delivered <= 1_001
    # Each packet may lose a unit to the floor on the way (3 source units at this rate).
    assert pay.amount_sent <= 3_000 + 3 * pay.chunks_fulfilled


def test_transient_errors_halve_and_wait_and_f08_shrinks() -> None:
    receiver = Receiver()
    path = Path(
        receiver,
        injected={
            2: Reject("T04", "test.hop", ""),
            3: Reject("F08", "test.hop", "", amount_too_large_data(500, 200)),
        },
    )
    pay = StreamPayment(connection(), source_amount=3_000, chunk_size=1_000)
    waits: list[int] = []
    for _ in range(100):
        prepare = pay.next_packet(expires_at=EXPIRES, iv=iv())
        if prepare is None:
            break
        pay.on_reply(prepare, path.send(prepare))
        waits.append(pay.wait_ms)
    assert pay.done and receiver.received == 3_000 == pay.amount_sent
    # 1000 passes and grows; 1100 meets T04 (halved, 100 ms); 550 meets F08 500/200.
    assert [p.amount for p in path.sent[:4]] == [1_000, 1_100, 550, 220]
    assert waits[:3] == [0, 100, 0] and pay.max_packet == 220
    assert max(p.amount for p in path.sent[3:]) == 220
    assert pay.chunks_rejected == 2


def test_rate_drop_after_the_quote_ends_the_payment() -> None:
    receiver = Receiver()
    path = Path(receiver, rate=Fraction(1, 2))
    pay = StreamPayment(
        connection(), source_amount=5_000, rate=Fraction(1), min_rate=Fraction(99, 100)
    )
    run_payment(pay, path.send)
    assert pay.failure.startswith("F99 4 times in a row (the rate fell below the minimum")
    assert receiver.received == 0 and pay.amount_sent == 0 and len(path.sent) == 4


def test_a_receiver_that_closes_or_limits_ends_the_payment() -> None:
    limited = Receiver(limits=ReceiverLimits("XRP", 9, receive_max=1_500))
    pay = StreamPayment(connection(), source_amount=5_000, chunk_size=1_000)
    run_payment(pay, Path(limited).send)
    # 1000 fits, the next 1100 does not: the receiver says it has room for 500 more.
    assert limited.received == pay.amount_delivered == 1_500
    assert pay.total_received == 1_500
    assert "takes no more (received 1500 of at most 1500)" in pay.failure

    closing = Receiver()
    pay = StreamPayment(connection(), source_amount=5_000, chunk_size=1_000)
    first = pay.next_packet(expires_at=EXPIRES, iv=iv())
    assert first is not None and pay.on_reply(first, closing.answer(first)) is Progress.CONTINUE
    close = connection().close_packet(
        sequence=99, expires_at=EXPIRES, iv=iv(), condition=random32()
    )
    reply = closing.answer(close)
    assert isinstance(reply, Reject) and reply.code == "F99"
    assert connection().read_reply(close, reply).closed == ConnectionCloseFrame(
        ErrorCode.NO_ERROR, ""
    )
    second = pay.next_packet(expires_at=EXPIRES, iv=iv())
    assert second is not None
    assert pay.on_reply(second, closing.answer(second)) is Progress.FAILED
    assert "the receiver closed the connection (NO_ERROR" in pay.failure
    assert closing.received == 1_000 == pay.amount_delivered


def test_a_fulfill_without_an_authentic_reply_is_counted_then_ends_the_payment() -> None:
    receiver = Receiver()
    pay = StreamPayment(
        connection(), source_amount=2_000, chunk_size=1_000, min_rate=Fraction(1, 2)
    )
    prepare = pay.next_packet(expires_at=EXPIRES, iv=iv())
    assert prepare is not None
    reply = receiver.answer(prepare)
    assert isinstance(reply, Fulfill)
    stripped = Fulfill(reply.fulfillment, b"")
    assert pay.on_reply(prepare, stripped) is Progress.FAILED
    assert pay.amount_sent == 1_000 and pay.amount_delivered == 500  # at least the minimum
    assert "without an authentic STREAM reply" in pay.failure
    wrong = StreamPayment(connection(), source_amount=2_000)
    prepare = wrong.next_packet(expires_at=EXPIRES, iv=iv())
    assert prepare is not None
    assert wrong.on_reply(prepare, Fulfill(bytes(32), b"")) is Progress.FAILED
    assert wrong.amount_sent == 0 and wrong.failure.startswith("invalid fulfill")


def test_replies_that_are_not_for_this_packet_are_not_authentic() -> None:
    conn = connection()
    prepare = conn.prepare(sequence=7, amount=10, frames=(), expires_at=EXPIRES, iv=iv())
    other = StreamPacket(8, StreamPacketType.REJECT, 10, ())
    reply = Reject("F99", "test.far", "", encrypt_packet(SECRET, other, iv()))
    answer = conn.read_reply(prepare, reply)
    assert not answer.authentic and "another sequence" in answer.problem
    lying = StreamPacket(7, StreamPacketType.REJECT, 10, ())
    fulfillment_reply = Receiver().answer(prepare)
    assert isinstance(fulfillment_reply, Fulfill)
    lie = Fulfill(fulfillment_reply.fulfillment, encrypt_packet(SECRET, lying, iv()))
    assert not conn.read_reply(prepare, lie).authentic
    f08 = Reject("F08", "test.hop", "", amount_too_large_data(10, 5))
    assert conn.read_reply(prepare, f08).problem == ""
    assert f08_limit(f08, 10) == (5, True)
    assert f08_limit(Reject("F08", "test.hop", ""), 10) == (5, False)


def test_a_resumed_payment_goes_on_with_fresh_sequences_and_reads_the_total() -> None:
    receiver = Receiver(limits=ReceiverLimits("XRP", 9, receive_max=2**64 - 1))
    path = Path(receiver)
    first = StreamPayment(connection(), source_amount=3_000, chunk_size=1_000)
    for _ in range(2):
        prepare = first.next_packet(expires_at=EXPIRES, iv=iv())
        assert prepare is not None
        first.on_reply(prepare, path.send(prepare))
    # The runner dies; a new one knows the counters and the next sequence (from the rows).
    total = connection().total_packet(sequence=first.sequence, expires_at=EXPIRES, iv=iv())
    answer = connection().read_reply(total, path.send(total))
    assert answer.fulfilled and answer.total_received == 2_100 == receiver.received
    assert first.amount_delivered == 2_100
    resumed = StreamPayment(
        connection(),
        source_amount=3_000,
        chunk_size=first.chunk_size,
        amount_sent=first.amount_sent,
        amount_delivered=first.amount_delivered,
        sequence=first.sequence + 1,
        chunks_fulfilled=first.chunks_fulfilled,
    )
    run_payment(resumed, path.send)
    assert resumed.done and receiver.received == 3_000 == resumed.amount_sent
    assert resumed.total_received == 3_000
    assert receiver.sequences == sorted(set(receiver.sequences))


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        StreamPayment(connection())
    with pytest.raises(ValueError, match="min_rate"):
        StreamPayment(connection(), source_amount=1, rate=Fraction(1), min_rate=Fraction(2))
    with pytest.raises(ValueError, match="32 random bytes"):
        connection().prepare(
            sequence=1, amount=1, frames=(), expires_at=EXPIRES, iv=iv(),
            unfulfillable_condition=b"short",
        )  # fmt: skip
    assert connection().setup_frames(ask_asset=False) == (
        ConnectionMaxStreamIdFrame(1),
        ConnectionMaxDataFrame(0),
    )


@settings(max_examples=60, deadline=None)
@given(
    amount=st.integers(1, 10**6),
    rate=st.fractions(Fraction(1, 100), Fraction(5)),
    max_packet=st.one_of(st.none(), st.integers(1_000, 10**6)),
    chunk=st.integers(1, 10**6),
)
def test_any_source_payment_sends_exactly_its_amount_and_the_receiver_agrees(
    amount: int, rate: Fraction, max_packet: int | None, chunk: int
) -> None:
    receiver = Receiver()
    path = Path(receiver, rate=rate, max_packet=max_packet)
    pay = StreamPayment(
        connection(), source_amount=amount, rate=rate, min_rate=rate * Fraction(99, 100),
        chunk_size=chunk,
    )  # fmt: skip
    run_payment(pay, path.send, limit=100_000)
    assert pay.done and not pay.failure
    assert pay.amount_sent == amount and pay.amount_delivered == receiver.received
    assert receiver.fulfilled_sequences == sorted(set(receiver.fulfilled_sequences))


def test_receipts_tell_the_total_when_they_verify() -> None:
    setup = ReceiptSetup(bytes(16), bytes(range(32)))
    receiver = Receiver()
    pay = StreamPayment(StreamConnection(SECRET, DEST, setup), source_amount=1_000, chunk_size=600)
    for _ in range(2):
        prepare = pay.next_packet(expires_at=EXPIRES, iv=iv())
        assert prepare is not None
        reply = receiver.answer(prepare)
        assert isinstance(reply, Fulfill)
        # The node's receiver adds a receipt of the durable total after recording.
        packet = decrypt_packet(SECRET, reply.data)
        frames = (*packet.frames, receipt_frame(setup, receiver.received))
        signed = StreamPacket(packet.sequence, packet.packet_type, packet.prepare_amount, frames)
        pay.on_reply(prepare, Fulfill(reply.fulfillment, encrypt_packet(SECRET, signed, iv())))
        assert pay.total_received == receiver.received
    assert pay.done and pay.receipt is not None
    forged = receipt_frame(ReceiptSetup(bytes(16), bytes(32)), 10**9)
    assert StreamConnection(SECRET, DEST, setup)._receipt_total((forged,)) is None
