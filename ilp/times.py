"""Saturating date arithmetic, for times a peer supplies.

An ILP timestamp may name any millisecond from 0001-01-01 to 9999-12-31T23:59:59.999Z,
and ``datetime`` raises ``OverflowError`` past either end: a grace period added to a
valid far-future expiry would crash whoever computes it. Sums that involve a peer's
time go through :func:`saturating_add`, which stops at the ends of the range instead.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = ["TIME_MAX", "TIME_MIN", "saturating_add"]

TIME_MAX: Final = datetime.max.replace(tzinfo=UTC)
TIME_MIN: Final = datetime.min.replace(tzinfo=UTC)
_ZERO: Final = timedelta(0)


def saturating_add(moment: datetime, delta: timedelta) -> datetime:
    """``moment + delta``, or :data:`TIME_MAX` / :data:`TIME_MIN` where that overflows.

    ``moment`` must be aware (the bounds are UTC).
    """
    try:
        return moment + delta
    except OverflowError:
        return TIME_MAX if delta > _ZERO else TIME_MIN
