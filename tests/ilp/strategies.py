"""Hypothesis strategies for the ``ilp`` value types."""

from __future__ import annotations

import string
from datetime import UTC, datetime

from hypothesis import strategies as st

from ilp.address import MAX_ADDRESS_LENGTH, SCHEMES
from ilp.packet import MAX_DATA_LENGTH, ErrorCode, Fulfill, IlpPacket, Prepare, Reject

SEGMENT_CHARS = string.ascii_letters + string.digits + "_~-"

segments = st.text(alphabet=SEGMENT_CHARS, min_size=1, max_size=24)


@st.composite
def addresses(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(sorted(SCHEMES)))
    if draw(st.integers(0, 20)) == 0:  # now and then, the longest legal address
        return (scheme + "." + "x" * MAX_ADDRESS_LENGTH)[:MAX_ADDRESS_LENGTH]
    address = scheme + "." + ".".join(draw(st.lists(segments, min_size=1, max_size=6)))
    return address[:MAX_ADDRESS_LENGTH].rstrip(".")


def wire_times() -> st.SearchStrategy[datetime]:
    """Aware UTC datetimes with whole milliseconds: what an ILP timestamp can hold."""
    return st.datetimes(
        min_value=datetime(1, 1, 1),  # noqa: DTZ001 (hypothesis bounds are naive)
        max_value=datetime(9999, 12, 31, 23, 59, 59, 999000),  # noqa: DTZ001
        timezones=st.just(UTC),
    ).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))


def payloads() -> st.SearchStrategy[bytes]:
    """Mostly short data, sometimes around the length-prefix boundaries and the maximum."""
    sizes = st.sampled_from([127, 128, 255, 256, 32766, MAX_DATA_LENGTH])
    return st.binary(max_size=300) | sizes.map(
        lambda n: bytes(range(256)) * (n // 256) + bytes(n % 256)
    )


amounts = st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 2**53 + 1, 2**63, 2**64 - 1])


def prepares() -> st.SearchStrategy[Prepare]:
    return st.builds(
        Prepare,
        amount=amounts,
        expires_at=wire_times(),
        execution_condition=st.binary(min_size=32, max_size=32),
        destination=addresses(),
        data=payloads(),
    )


def fulfills() -> st.SearchStrategy[Fulfill]:
    return st.builds(Fulfill, fulfillment=st.binary(min_size=32, max_size=32), data=payloads())


codes = st.sampled_from([c.value for c in ErrorCode]) | st.text(
    alphabet=st.characters(max_codepoint=0x7F), min_size=3, max_size=3
)


def rejects() -> st.SearchStrategy[Reject]:
    return st.builds(
        Reject,
        code=codes,
        triggered_by=st.just("") | addresses(),
        message=st.text(st.characters(exclude_categories=["Cs"]), max_size=300),
        data=payloads(),
    )


def packets() -> st.SearchStrategy[IlpPacket]:
    return prepares() | fulfills() | rejects()
