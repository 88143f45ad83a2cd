"""``probe_rate`` against a path simulated around the real PSK2 receiver code: a rate, a
maximum packet size (F08 with its data), rounding to nothing (R01) and transient trouble."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest
from django.utils import timezone

from ilp.packet import Prepare, Reject, Reply, amount_too_large_data
from ilp.psk2_receiver import Refuse, decide, issue
from payments.sending import probe_rate
from payments.sending.errors import SendFailed

RECEIVER_SECRET = bytes(range(32))


@dataclass
class Path:
    """Delivers ``floor(amount * num / den)`` to a real PSK2 receiver, refuses packets over
    ``max_packet`` (F08 + data), and answers ``troubles`` first."""

    num: int = 1
    den: int = 1
    max_packet: int = 2**64 - 1
    troubles: list[str] = field(default_factory=list)
    seen: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        issued = issue(RECEIVER_SECRET, "test.far.receivers.bob", os.urandom(18))
        self.destination, self.secret = issued.destination, issued.shared_secret

    async def send(self, prepare: Prepare) -> Reply:
        self.seen.append(prepare.amount)
        if self.troubles:
            return Reject(self.troubles.pop(0), "test.mid", "trouble")
        if prepare.amount > self.max_packet:
            data = amount_too_large_data(prepare.amount, self.max_packet)
            return Reject("F08", "test.mid", "too large", data)
        arrived = prepare.amount * self.num // self.den
        if arrived == 0:
            return Reject("R01", "test.mid", "rounded to zero")
        delivered = Prepare(
            arrived,
            prepare.expires_at,
            prepare.execution_condition,
            prepare.destination,
            prepare.data,
        )
        answer = decide(
            delivered, self.secret, now=timezone.now(), paid_so_far=0, iv=os.urandom(12)
        )
        assert isinstance(answer, Refuse)  # a quote is never fulfilled
        return answer.to_reject("test.far")


async def test_rate_and_packet_limit() -> None:
    path = Path(num=3, den=4, max_packet=700)
    probe = await probe_rate(path.send, path.secret, path.destination, amount=5_000)
    assert (probe.source_amount, probe.delivered, probe.max_packet) == (700, 525, 700)
    assert path.seen == [5_000, 700]


async def test_rounded_to_nothing_grows_then_transient_trouble_waits() -> None:
    path = Path(num=1, den=10_000, troubles=["T04", "R00"])
    probe = await probe_rate(
        path.send, path.secret, path.destination, amount=1_000, grow_until=10**6, max_wait_s=0.01
    )
    assert path.seen == [1_000, 1_000, 1_000, 10_000]
    assert (probe.source_amount, probe.delivered) == (10_000, 1)


async def test_failures() -> None:
    path = Path(num=1, den=10**9)
    with pytest.raises(SendFailed, match="nothing arrives"):
        await probe_rate(path.send, path.secret, path.destination, amount=1_000)
    unreachable = Path(troubles=["F02"])
    with pytest.raises(SendFailed, match="F02"):
        await probe_rate(unreachable.send, unreachable.secret, unreachable.destination, amount=9)
    wrong_secret = Path()
    with pytest.raises(SendFailed, match="F06"):  # the receiver cannot read it
        await probe_rate(wrong_secret.send, os.urandom(32), wrong_secret.destination, amount=9)
