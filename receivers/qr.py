"""QR codes of payment pointers, as inline SVG (segno)."""

from __future__ import annotations

import segno
from django.utils.safestring import SafeString, mark_safe


def qr_svg(text: str, *, title: str | None = None) -> SafeString:
    """An ``<svg>`` element (no fixed size, it scales with CSS) encoding ``text``.

    segno escapes the title itself; the rest of the markup is its own.
    """
    code = segno.make(text, error="m", micro=False)
    svg = code.svg_inline(
        scale=4,
        border=2,
        omitsize=True,
        dark="#1d2330",
        light="#ffffff",
        svgclass="qr-code",
        title=title if title is not None else text,
    )
    return mark_safe(svg)
