"""Template filters for ILP amounts (integers in the asset's smallest unit)."""

from __future__ import annotations

from decimal import Decimal

from django import template

register = template.Library()


def format_amount(amount: int | Decimal, scale: int) -> str:
    """``amount`` units at ``scale`` as a plain decimal: 1234500000 at scale 9 → ``1.2345``."""
    value = Decimal(int(amount)).scaleb(-int(scale))
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


@register.filter
def asset_amount(amount: int | Decimal | None, scale: int) -> str:
    """``{{ amount|asset_amount:scale }}``; empty for ``None``."""
    if amount is None:
        return ""
    return format_amount(amount, scale)
