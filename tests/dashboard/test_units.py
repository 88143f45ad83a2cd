"""Pure parts of the dashboard: the balance bar, the volume series and its SVG."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import User

from dashboard.charts import volume_svg
from dashboard.selectors import Bucket, balance_bar, volume_series
from tests.dashboard.factories import make_receiver, pay


@pytest.mark.parametrize(
    ("balance", "lo", "hi", "left", "right", "unbounded", "warn"),
    [
        (0, -100, 100, 0.0, 0.0, False, False),
        (-50, -100, 100, 50.0, 0.0, False, False),
        (-90, -100, 100, 90.0, 0.0, False, True),
        (-150, -100, 100, 100.0, 0.0, False, True),  # past the limit: full, not more
        (25, -100, 100, 0.0, 25.0, False, False),
        (10, -100, 0, 0.0, 100.0, False, True),  # no credit at all on that side
        (-1, None, 100, 100.0, 0.0, True, False),
        (5, -100, None, 0.0, 100.0, True, False),
    ],
)
def test_balance_bar(
    balance: int,
    lo: int | None,
    hi: int | None,
    left: float,
    right: float,
    unbounded: bool,
    warn: bool,
) -> None:
    bar = balance_bar(balance, lo, hi)
    assert (bar.owed_to_us_pct, bar.owed_by_us_pct, bar.unbounded, bar.warn) == (
        left,
        right,
        unbounded,
        warn,
    )


@pytest.mark.django_db(transaction=True)
def test_volume_series_buckets_by_hour_and_day(alice: User) -> None:
    tips = make_receiver(alice, "tips")
    now = datetime.now(UTC)
    pay(tips, 1_500_000_000)
    pay(tips, 500_000_000)
    hourly = volume_series(range_="24h", now=now)
    assert len(hourly) == 24
    assert hourly[-1].start == now.replace(minute=0, second=0, microsecond=0)
    assert (hourly[-1].amount, hourly[-1].payments) == (2_000_000_000, 2)
    assert all(b.amount == 0 for b in hourly[:-1])
    assert hourly[1].start - hourly[0].start == timedelta(hours=1)
    daily = volume_series(range_="30d", now=now)
    assert len(daily) == 30 and daily[-1].amount == 2_000_000_000
    # a payment outside the window is not counted
    later = volume_series(range_="24h", now=now + timedelta(days=2))
    assert sum(b.amount for b in later) == 0


def test_volume_svg_draws_a_bar_per_bucket_and_escapes() -> None:
    start = datetime(2024, 5, 1, tzinfo=UTC)
    series = [
        Bucket(start + timedelta(hours=i), amount, 1 if amount else 0)
        for i, amount in enumerate([0, 2_000_000_000, 500_000_000])
    ]
    svg = volume_svg(series, range_="24h", scale=9, code="<X&Y>")
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<rect") == 3 and svg.count('class="bar empty"') == 1
    assert "2024-05-01 01:00 UTC: 2 &lt;X&amp;Y&gt;, 1 payment" in svg
    assert "<X&Y>" not in svg
    assert ">2<" in svg  # the top gridline is the maximum, formatted with the scale
    assert "2.5 &lt;X&amp;Y&gt; in 2 payment(s)" in svg  # the accessible summary
