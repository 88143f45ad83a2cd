"""Date arithmetic on a peer's times saturates (issue 10): a valid Prepare that expires at
the far end of the ILP timestamp range is answered, remembered and replayed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from ilp.btp import BtpType, auth_message, encode_btp, encode_ilp_frame
from ilp.btp_session import BtpServerSession, IlpRequest, ResponderMemory, SendFrame, Verdict
from ilp.oer import parse_ilp_timestamp
from ilp.packet import Fulfill, Prepare, encode_packet
from ilp.times import TIME_MAX, TIME_MIN, saturating_add

NOW = datetime(2026, 11, 25, 21, 22, 22, 111000, tzinfo=UTC)
LAST = parse_ilp_timestamp(b"99991231235959999")  # the latest ILP timestamp
FIRST = parse_ilp_timestamp(b"00010101000000000")


def test_saturating_add_stops_at_the_ends() -> None:
    assert saturating_add(LAST, timedelta(seconds=60)) == TIME_MAX
    assert saturating_add(FIRST, -timedelta(seconds=60)) == TIME_MIN
    assert saturating_add(NOW, timedelta(seconds=60)) == NOW + timedelta(seconds=60)
    assert saturating_add(LAST, -timedelta(seconds=1)) == LAST - timedelta(seconds=1)
    assert saturating_add(TIME_MAX, timedelta(0)) == TIME_MAX


@given(
    st.datetimes(timezones=st.just(UTC)),
    st.timedeltas(min_value=timedelta(days=-(10**6)), max_value=timedelta(days=10**6)),
)
def test_saturating_add_never_raises_and_is_exact_in_range(
    moment: datetime, delta: timedelta
) -> None:
    result = saturating_add(moment, delta)
    assert TIME_MIN <= result <= TIME_MAX
    try:
        exact = moment + delta
    except OverflowError:
        assert result == (TIME_MAX if delta > timedelta(0) else TIME_MIN)
    else:
        assert result == exact


def test_memory_completes_a_reply_with_the_last_deadline() -> None:
    memory = ResponderMemory()
    assert memory.admit("alice", 1, b"frame", NOW).verdict is Verdict.NEW
    memory.complete("alice", 1, b"reply", NOW, deadline=LAST)
    record = memory.get("alice", 1)
    assert record is not None and record.reply == b"reply"
    assert record.keep_until > NOW + timedelta(seconds=120)
    admission = memory.admit("alice", 1, b"frame", NOW + timedelta(hours=1))
    assert (admission.verdict, admission.reply) == (Verdict.REPLAY, b"reply")


def test_idempotent_server_answers_a_prepare_expiring_at_the_last_millisecond() -> None:
    srv = BtpServerSession(memory=ResponderMemory())
    srv.receive_frame(encode_btp(auth_message(1, "alice", "s", idempotent=True)), NOW)
    srv.accept_auth(NOW)
    assert srv.idempotent
    prepare = Prepare(10, LAST, bytes(32), "test.local.bob", b"")
    frame = encode_ilp_frame(BtpType.MESSAGE, 9, encode_packet(prepare))
    assert srv.receive_frame(frame, NOW) == [IlpRequest(9, encode_packet(prepare))]
    fulfill = encode_packet(Fulfill(bytes(32), b""))
    reply = srv.respond_ilp(9, fulfill, NOW, deadline=prepare.expires_at)
    assert reply == encode_ilp_frame(BtpType.RESPONSE, 9, fulfill)
    # the repeat is replayed from the memory, byte for byte
    assert srv.receive_frame(frame, NOW + timedelta(minutes=5)) == [SendFrame(reply)]
