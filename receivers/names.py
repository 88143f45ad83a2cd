"""Payment pointer names: what ``/<name>`` may be.

A name is the last segment of a path pointer (``$host/<name>``) and a segment of the
receiver's ILP address (``<node>.receivers.<name>.<token>``), so it must be valid in
both: lowercase ASCII letters and digits, ``_`` and ``-``, 1 to 63 characters, starting
with a letter or digit.

Two lists of names no user may take:

* :data:`RESERVED_NAMES`: names that would shadow a route of the site (or one it may grow).
  Nobody has them, the site included (:func:`name_problem`).
* :data:`SITE_NAMES`: pointers the site issues for itself (``demo``, which also answers the
  bare host at ``/.well-known/pay``; ``paidapi``, which the paid API's revenue goes to) and
  names that would pass for the operator's. Only the node's own code creates them
  (``receiver_ensure``: ``setup_demo``, ``add_pointer``, the paid API);
  :func:`claim_problem` refuses them to users (forms, API, admin, ``receiver_create``).
  ``ILP_RESERVED_NAMES`` (a list setting) adds more.
"""

from __future__ import annotations

import re

from django.conf import settings
from django.core.exceptions import ValidationError

NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
_NAME = re.compile(NAME_PATTERN)

# Top-level paths the site uses or keeps for itself. Pointers live at ``/<name>``, after
# every other route, so a pointer named like a route could never be reached.
RESERVED_NAMES: frozenset[str] = frozenset(
    {
        ".well-known",
        "about",
        "accounts",
        "admin",
        "api",
        "ops",
        "assets",
        "auth",
        "btp",
        "dashboard",
        "docs",
        "favicon.ico",
        "healthz",
        "help",
        "http-ilp",
        "ilp",
        "invoices",
        "links",
        "login",
        "logout",
        "me",
        "media",
        "metrics",
        "pages",
        "paid",
        "pay",
        "payments",
        "peer",
        "peers",
        "pointers",
        "readyz",
        "receivers",
        "robots.txt",
        "settings",
        "shop",
        "signup",
        "spsp",
        "static",
        "well-known",
        "wm",
        "ws",
    }
)


# Pointers the site issues for itself, and names that would pass for the operator's.
SITE_NAMES: frozenset[str] = frozenset(
    {
        "abuse",
        "administrator",
        "connector",
        "demo",
        "hostmaster",
        "node",
        "noreply",
        "operator",
        "paidapi",
        "postmaster",
        "root",
        "security",
        "staff",
        "support",
        "system",
        "webmaster",
    }
)


class InvalidReceiverName(ValidationError):
    """A name that cannot be a payment pointer; ``message`` says why."""


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a pointer name, or ``None`` when it can."""
    if not name:
        return "a pointer name cannot be empty"
    if len(name) > 63:
        return f"a pointer name has at most 63 characters (this one has {len(name)})"
    if _NAME.fullmatch(name) is None:
        if _NAME.fullmatch(name.lower()) is not None:
            return "pointer names are lowercase"
        return (
            "a pointer name uses only lowercase letters, digits, '_' and '-', "
            "and starts with a letter or a digit"
        )
    if name in RESERVED_NAMES:
        return f"'{name}' is reserved by the site"
    return None


def site_name_problem(name: str) -> str | None:
    """Why a user may not take ``name`` although the site may, or ``None``."""
    extra = getattr(settings, "ILP_RESERVED_NAMES", ())
    if name in SITE_NAMES or name in extra:
        return f"'{name}' is reserved for the site's own use"
    return None


def claim_problem(name: str) -> str | None:
    """Why a user cannot take ``name`` (bad, route-reserved or site-reserved), or ``None``."""
    return name_problem(name) or site_name_problem(name)


def is_valid_name(name: str) -> bool:
    return name_problem(name) is None


def validate_receiver_name(name: str) -> None:
    """Django validator: raises :class:`InvalidReceiverName` with the reason."""
    problem = name_problem(name)
    if problem is not None:
        raise InvalidReceiverName(problem, code="invalid_pointer_name")


def route_conflict(name: str) -> str | None:
    """Why ``/<name>`` would be shadowed by another route of the site, or ``None``.

    The reserved list covers the known routes; this catches the ones added later.
    """
    from django.urls import Resolver404, resolve

    for path in (f"/{name}", f"/{name}/"):
        try:
            match = resolve(path)
        except Resolver404:
            continue
        if match.namespace != "receivers" or match.url_name not in ("pointer", "pointer-slash"):
            return f"'/{name}' is a page of the site"
    return None
