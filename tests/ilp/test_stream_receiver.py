"""``ilp.stream.addresses`` and ``ilp.stream.receiver``: stateless addresses and the
receiver's decisions, driven by Prepares built with the real codec."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ilp.packet import Fulfill, Prepare, Reject
from ilp.stream import (
    ConnectionAssetDetailsFrame,
    ConnectionCloseFrame,
    ConnectionMaxStreamIdFrame,
    ConnectionNewAddressFrame,
    ErrorCode,
    Frame,
    ReceiptSetup,
    StreamCloseFrame,
    StreamDataFrame,
    StreamMaxMoneyFrame,
    StreamMoneyFrame,
    StreamPacket,
    StreamPacketType,
    condition_for_data,
    connection_id,
    decrypt_packet,
    encrypt_packet,
    issue_stream_address,
    open_stream_address,
    verify_receipt,
)
from ilp.stream.receiver import (
    Accept,
    ConnectionState,
    Opened,
    ReceiverLimits,
    Refusal,
    Refuse,
    RefuseReason,
    cancel,
    handle_request,
    new_connection,
    open_prepare,
    read_data,
    receipt_frame,
    settle,
)

RECEIVER_SECRET = bytes(range(32))
PREFIX = "test.node.receivers.alice"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(seconds=30)
LIMITS = ReceiverLimits("XRP", 9)


# --- addresses ---------------------------------------------------------------------------------


def test_an_issued_address_opens_to_the_same_secret() -> None:
    issued = issue_stream_address(RECEIVER_SECRET, PREFIX, bytes(12))
    assert issued.destination.startswith(PREFIX + ".~") and not issued.receipts_enabled
    opened = open_stream_address(RECEIVER_SECRET, issued.destination, PREFIX)
    assert opened is not None
    assert opened.shared_secret == issued.shared_secret and len(issued.shared_secret) == 32
    assert opened.receipt is None
    assert opened.connection_id == connection_id(issued.destination)


def test_receipt_details_travel_encrypted_in_the_address() -> None:
    setup = ReceiptSetup(b"n" * 16, b"s" * 32)
    issued = issue_stream_address(RECEIVER_SECRET, PREFIX, b"\x01" * 12, receipt=setup)
    assert issued.receipts_enabled
    assert b"s" * 8 not in issued.destination.encode()
    opened = open_stream_address(RECEIVER_SECRET, issued.destination, PREFIX)
    assert opened is not None and opened.receipt == setup


def test_fresh_ivs_give_fresh_addresses_and_secrets() -> None:
    a = issue_stream_address(RECEIVER_SECRET, PREFIX, bytes(12))
    b = issue_stream_address(RECEIVER_SECRET, PREFIX, b"\x01" + bytes(11))
    assert a.destination != b.destination and a.shared_secret != b.shared_secret


def test_addresses_do_not_open_elsewhere() -> None:
    issued = issue_stream_address(RECEIVER_SECRET, PREFIX, bytes(12))
    token = issued.destination[len(PREFIX) :]
    other_prefix = "test.node.receivers.bob"
    assert open_stream_address(RECEIVER_SECRET, other_prefix + token, other_prefix) is None
    assert open_stream_address(bytes(32), issued.destination, PREFIX) is None
    flipped = issued.destination[:-1] + ("A" if issued.destination[-1] != "A" else "B")
    assert open_stream_address(RECEIVER_SECRET, flipped, PREFIX) is None
    psk2_like = PREFIX + ".AAAAAAAAAAAAAAAAAAAAAAAA"
    assert open_stream_address(RECEIVER_SECRET, psk2_like, PREFIX) is None
    assert open_stream_address(RECEIVER_SECRET, PREFIX + "._" + token, PREFIX) is None


@given(segment=st.text(st.sampled_from("~_-abcAZ09"), max_size=120))
def test_any_segment_opens_or_is_none(segment: str) -> None:
    assert open_stream_address(RECEIVER_SECRET, f"{PREFIX}.{segment}", PREFIX) is None


# --- helpers -------------------------------------------------------------------------------------

SECRET = b"k" * 32
DESTINATION = PREFIX + ".~x"


def prepare(
    amount: int,
    frames: tuple[Frame, ...],
    *,
    sequence: int = 1,
    minimum: int = 0,
    fulfillable: bool = True,
    kind: StreamPacketType = StreamPacketType.PREPARE,
) -> Prepare:
    data = encrypt_packet(SECRET, StreamPacket(sequence, kind, minimum, frames), b"\x07" * 12)
    condition = condition_for_data(SECRET, data) if fulfillable else b"\x99" * 32
    return Prepare(amount, LATER, condition, DESTINATION, data)


def opened(p: Prepare) -> Opened:
    result = open_prepare(p, SECRET, now=NOW)
    assert isinstance(result, Opened)
    return result


def decide(state: ConnectionState, p: Prepare, limits: ReceiverLimits = LIMITS) -> Accept | Refuse:
    o = opened(p)
    return handle_request(
        state, o.request, amount=p.amount, fulfillable=o.condition_matches, limits=limits
    )


# --- step 1 --------------------------------------------------------------------------------------


def test_open_refusals() -> None:
    good = prepare(10, ())
    expired = Prepare(10, NOW, good.execution_condition, DESTINATION, good.data)
    assert open_prepare(expired, SECRET, now=NOW) == Refusal(
        "R00", "Prepare expired", RefuseReason.EXPIRED
    )
    refusal = open_prepare(good, None, now=NOW)
    assert isinstance(refusal, Refusal) and refusal.code == "F06"
    refusal = open_prepare(good, b"z" * 32, now=NOW)
    assert isinstance(refusal, Refusal) and refusal.reason is RefuseReason.UNREADABLE
    reply_type = prepare(10, (), kind=StreamPacketType.FULFILL)
    refusal = open_prepare(reply_type, SECRET, now=NOW)
    assert isinstance(refusal, Refusal) and refusal.reason is RefuseReason.NOT_A_REQUEST
    assert refusal.to_reject("test.node").data == b""


# --- step 2 --------------------------------------------------------------------------------------


def test_a_money_packet_is_accepted_and_the_reply_is_authentic() -> None:
    p = prepare(1000, (StreamMoneyFrame(1, 1),), sequence=5, minimum=990)
    decision = decide(new_connection(LIMITS), p)
    assert isinstance(decision, Accept)
    assert decision.credits == ((1, 1000),) and decision.state.streams[1].pending == 1000
    fulfill = opened(p).fulfill(decision.frames, iv=bytes(12))
    assert isinstance(fulfill, Fulfill)
    reply = decrypt_packet(SECRET, fulfill.data)
    assert (reply.sequence, reply.packet_type, reply.prepare_amount) == (
        5,
        StreamPacketType.FULFILL,
        1000,
    )
    state = settle(decision.state, decision)
    assert state.streams[1].received == 1000 and state.streams[1].pending == 0
    assert state.received == 1000


def test_a_failed_record_gives_the_hold_back() -> None:
    decision = decide(new_connection(LIMITS), prepare(7, (StreamMoneyFrame(1, 1),)))
    assert isinstance(decision, Accept)
    state = cancel(decision.state, decision)
    assert state.streams[1].received == 0 and state.streams[1].pending == 0


def test_rate_probe_is_f99_with_the_amount_that_arrived_and_credits_nothing() -> None:
    p = prepare(10**12, (), fulfillable=False)
    decision = decide(new_connection(LIMITS), p)
    assert isinstance(decision, Refuse) and decision.reason is RefuseReason.UNFULFILLABLE
    reject = opened(p).reject(decision.frames, iv=bytes(12), triggered_by="test.node")
    assert isinstance(reject, Reject) and (reject.code, reject.message) == ("F99", "")
    reply = decrypt_packet(SECRET, reject.data)
    assert (reply.packet_type, reply.prepare_amount) == (StreamPacketType.REJECT, 10**12)
    assert decision.state.received == 0


def test_new_address_gets_the_asset_details_even_when_refused() -> None:
    p = prepare(0, (ConnectionNewAddressFrame(""),), fulfillable=False)
    decision = decide(new_connection(LIMITS), p)
    assert isinstance(decision, Refuse)
    assert ConnectionAssetDetailsFrame("XRP", 9) in decision.frames
    assert decision.state.remote_address == ""


def test_below_the_minimum_is_refused() -> None:
    decision = decide(new_connection(LIMITS), prepare(99, (StreamMoneyFrame(1, 1),), minimum=100))
    assert isinstance(decision, Refuse) and decision.reason is RefuseReason.AMOUNT_TOO_LOW


def test_exactly_the_minimum_is_accepted() -> None:
    decision = decide(new_connection(LIMITS), prepare(100, (StreamMoneyFrame(1, 1),), minimum=100))
    assert isinstance(decision, Accept)


def test_zero_amount_fulfillable_packets_are_accepted() -> None:
    decision = decide(new_connection(LIMITS), prepare(0, (StreamMoneyFrame(1, 1),)))
    assert isinstance(decision, Accept) and decision.credits == ((1, 0),)


def test_the_sender_closing_is_echoed_and_later_packets_refused() -> None:
    decision = decide(
        new_connection(LIMITS), prepare(0, (ConnectionCloseFrame(1, ""),), fulfillable=False)
    )
    assert isinstance(decision, Refuse)
    assert decision.frames[-1] == ConnectionCloseFrame(ErrorCode.NO_ERROR, "")
    assert decision.state.closed
    again = decide(decision.state, prepare(5, (StreamMoneyFrame(1, 1),)))
    assert isinstance(again, Refuse) and again.reason is RefuseReason.CONNECTION_CLOSED


def test_a_stream_close_that_crosses_the_connection_close_is_fulfilled() -> None:
    # ilp-protocol-stream 2.7 sends both at once; an F99 (worse: one with a ConnectionClose)
    # to the StreamClose sets its send loop resending it for ever.
    opened = decide(new_connection(LIMITS), prepare(1000, (StreamMoneyFrame(1, 1),)))
    assert isinstance(opened, Accept)
    state = settle(opened.state, opened)
    closing = decide(state, prepare(0, (ConnectionCloseFrame(1, ""),), fulfillable=False))
    assert isinstance(closing, Refuse) and closing.state.closed
    late = decide(closing.state, prepare(0, (StreamCloseFrame(1, ErrorCode.NO_ERROR, ""),)))
    assert isinstance(late, Accept) and late.amount == 0 and late.credits == ()
    assert not any(isinstance(f, ConnectionCloseFrame) for f in late.frames)
    assert late.state.closed and late.state.streams[1].closed
    # Money, data, or an unfulfillable packet after the close are still refused.
    for amount, frames, fulfillable in (
        (5, (StreamMoneyFrame(1, 1),), True),
        (0, (StreamMoneyFrame(1, 1),), True),
        (0, (StreamCloseFrame(1, ErrorCode.NO_ERROR, ""),), False),
        (7, (), True),
    ):
        refused = decide(late.state, prepare(amount, frames, fulfillable=fulfillable))
        assert isinstance(refused, Refuse), (amount, frames, fulfillable)
        assert refused.reason is RefuseReason.CONNECTION_CLOSED


def test_even_streams_violate_the_protocol() -> None:
    decision = decide(new_connection(LIMITS), prepare(5, (StreamMoneyFrame(2, 1),)))
    assert isinstance(decision, Refuse) and decision.reason is RefuseReason.PROTOCOL_VIOLATION
    close = decision.frames[-1]
    assert isinstance(close, ConnectionCloseFrame)
    assert close.error_code == ErrorCode.PROTOCOL_VIOLATION


def test_stream_ids_above_the_max_are_refused_and_closing_raises_it() -> None:
    decision = decide(new_connection(LIMITS), prepare(5, (StreamMoneyFrame(21, 1),)))
    assert isinstance(decision, Refuse)
    state = new_connection(LIMITS)
    opened_one = decide(state, prepare(1, (StreamMoneyFrame(1, 1),)))
    assert isinstance(opened_one, Accept)
    state = settle(opened_one.state, opened_one)
    closing = decide(state, prepare(0, (StreamCloseFrame(1, 1, ""),)))
    assert isinstance(closing, Accept)
    assert ConnectionMaxStreamIdFrame(22) in closing.frames
    late = decide(closing.state, prepare(3, (StreamMoneyFrame(1, 1),)))
    assert isinstance(late, Refuse) and late.reason is RefuseReason.STREAM_CLOSED
    assert decide(closing.state, prepare(3, (StreamMoneyFrame(21, 1),))).__class__ is Accept


def test_shares_split_with_the_remainder_to_the_lowest_stream() -> None:
    frames = (StreamMoneyFrame(5, 1), StreamMoneyFrame(3, 1), StreamMoneyFrame(1, 1))
    decision = decide(new_connection(LIMITS), prepare(100, frames))
    assert isinstance(decision, Accept)
    assert decision.credits == ((1, 34), (3, 33), (5, 33))
    assert sum(c for _, c in decision.credits) == 100


def test_receive_max_is_enforced_across_pending_packets() -> None:
    limits = ReceiverLimits("XRP", 9, receive_max=100)
    first = decide(new_connection(limits), prepare(60, (StreamMoneyFrame(1, 1),)), limits)
    assert isinstance(first, Accept)
    assert StreamMaxMoneyFrame(1, 100, 60) in first.frames
    # Not yet recorded: the pending 60 still counts.
    second = decide(first.state, prepare(50, (StreamMoneyFrame(1, 1),)), limits)
    assert isinstance(second, Refuse) and second.reason is RefuseReason.RECEIVE_MAX
    assert StreamMaxMoneyFrame(1, 100, 60) in second.frames
    third = decide(first.state, prepare(40, (StreamMoneyFrame(1, 1),)), limits)
    assert isinstance(third, Accept)


def test_money_without_a_stream_is_taken_by_the_connection() -> None:
    decision = decide(new_connection(LIMITS), prepare(10, ()))
    assert isinstance(decision, Accept) and decision.credits == () and decision.amount == 10


def test_data_is_reassembled_and_bounded() -> None:
    limits = ReceiverLimits("XRP", 9, max_buffered_data=10)
    state = new_connection(limits)
    late = decide(state, prepare(0, (StreamDataFrame(1, 3, b"def"),)), limits)
    assert isinstance(late, Accept)
    early = decide(late.state, prepare(0, (StreamDataFrame(1, 0, b"abc"),)), limits)
    assert isinstance(early, Accept)
    data, state = read_data(early.state, 1)
    assert data == b"abcdef"
    resent = decide(state, prepare(0, (StreamDataFrame(1, 0, b"abc"),)), limits)
    assert isinstance(resent, Accept) and read_data(resent.state, 1)[0] == b""
    too_much = decide(state, prepare(0, (StreamDataFrame(1, 6, b"x" * 11),)), limits)
    assert isinstance(too_much, Refuse) and too_much.reason is RefuseReason.FLOW_CONTROL


def test_data_of_a_refused_packet_is_not_kept() -> None:
    decision = decide(
        new_connection(LIMITS), prepare(0, (StreamDataFrame(1, 0, b"abc"),), fulfillable=False)
    )
    assert isinstance(decision, Refuse)
    assert read_data(decision.state, 1)[0] == b""


def test_receipt_frames_verify() -> None:
    setup = ReceiptSetup(b"n" * 16, b"s" * 32)
    frame = receipt_frame(setup, 12345)
    assert frame.stream_id == 1
    receipt = verify_receipt(frame.receipt, setup.secret)
    assert receipt.total_received == 12345 and receipt.nonce == setup.nonce


@pytest.mark.parametrize("sequence", [2**31 + 1, 2**40])
def test_too_many_packets_close_the_connection(sequence: int) -> None:
    decision = decide(new_connection(LIMITS), prepare(1, (), sequence=sequence))
    assert isinstance(decision, Refuse) and decision.reason is RefuseReason.PROTOCOL_VIOLATION
