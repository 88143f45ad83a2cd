"""``{% monetization_tags receiver %}``: the discovery tags of a payment pointer.

Put it in a page's ``<head>``::

    {% load monetization %}
    {% monetization_tags "alice" %}

It renders ``<meta name="monetization" content="$host/alice">`` (2019-2020 providers)
and ``<link rel="monetization" href="https://host/alice">`` (W3C Community Group form,
the pointer written as a URL). The argument is a :class:`~receivers.models.Receiver` or a
pointer name; the host comes from ``ILP_PUBLIC_URL``, else the request.
"""

from __future__ import annotations

from typing import Any

from django import template

from receivers.models import Receiver
from receivers.pointers import pointer_for, public_base_url, spsp_url_for

register = template.Library()


@register.inclusion_tag("receivers/monetization_tags.html", takes_context=True)
def monetization_tags(context: template.Context, receiver: Receiver | str) -> dict[str, Any]:
    name = receiver.name if isinstance(receiver, Receiver) else str(receiver)
    base_url = public_base_url(context.get("request"))
    return {
        "pointer": pointer_for(name, base_url=base_url),
        "url": spsp_url_for(name, base_url=base_url),
    }
