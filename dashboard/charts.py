"""Inline SVG bar chart of received volume (no JavaScript, no CDN).

The same markup is served in the page and pushed over the dashboard socket when the
series changes, so there is one renderer. Every text is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from dashboard.selectors import Bucket, Range
from receivers.templatetags.ilp_format import format_amount

WIDTH = 1000
HEIGHT = 240
PAD_LEFT = 64
PAD_RIGHT = 12
PAD_TOP = 26
PAD_BOTTOM = 34


def _label(bucket: Bucket, range_: Range) -> str:
    return bucket.start.strftime("%H:%M" if range_ == "24h" else "%m-%d")


def _title(bucket: Bucket, range_: Range, scale: int, code: str) -> str:
    when = bucket.start.strftime("%Y-%m-%d %H:00" if range_ == "24h" else "%Y-%m-%d")
    payments = f"{bucket.payments} payment" + ("" if bucket.payments == 1 else "s")
    return f"{when} UTC: {format_amount(bucket.amount, scale)} {code}, {payments}"


def volume_svg(series: Sequence[Bucket], *, range_: Range, scale: int, code: str) -> str:
    """A bar per bucket (height = amount), gridlines at 0, ½ and the maximum."""
    n = max(len(series), 1)
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    top = max((b.amount for b in series), default=0)
    slot = plot_w / n
    bar_w = max(1.0, slot * 0.72)
    total = sum(b.amount for b in series)
    payments = sum(b.payments for b in series)
    span = "the last 24 hours" if range_ == "24h" else "the last 30 days"
    summary = (
        f"Received per {'hour' if range_ == '24h' else 'day'} over {span}: "
        f"{format_amount(total, scale)} {code} in {payments} payment(s)"
    )
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(summary)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(summary)}</title>",
    ]
    for frac in (0.0, 0.5, 1.0):
        y = PAD_TOP + plot_h * (1 - frac)
        value = int(top * frac)
        parts.append(
            f'<line class="grid" x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        parts.append(
            f'<text class="axis" x="{PAD_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(format_amount(value, scale))}</text>"
        )
    every = 3 if range_ == "24h" else 5
    for i, bucket in enumerate(series):
        x = PAD_LEFT + i * slot + (slot - bar_w) / 2
        h = 0.0 if top == 0 else plot_h * bucket.amount / top
        if bucket.amount and h < 2:
            h = 2.0  # a payment is never invisible
        y = PAD_TOP + plot_h - h
        cls = "bar" if bucket.amount else "bar empty"
        parts.append(
            f'<rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{max(h, 0.0):.1f}">'
            f"<title>{escape(_title(bucket, range_, scale, code))}</title></rect>"
        )
        if i % every == 0 or i == len(series) - 1:
            parts.append(
                f'<text class="axis" x="{x + bar_w / 2:.1f}" y="{HEIGHT - PAD_BOTTOM + 16}" '
                f'text-anchor="middle">{escape(_label(bucket, range_))}</text>'
            )
    parts.append(
        f'<text class="axis unit" x="{PAD_LEFT - 6}" y="11" text-anchor="end">{escape(code)}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)
