"""Payment pointers: parsing (``$host/path``, payment-pointers.md) and the ones we issue.

Parsing follows the ABNF of the payment-pointer draft (rfcs e949d28c / RFC 0026):
``"$" host path-abempty`` with no userinfo, port, query or fragment, ASCII only. A pointer
resolves to ``https://host/path``, or ``https://host/.well-known/pay`` when the path is
empty or ``/``.

The pointers this node issues are ``$<public host>/<name>``; the public host comes from
``ILP_PUBLIC_URL`` (else the request's host, else ``http://127.0.0.1:8000``). A local
address with a port (``$127.0.0.1:8000/demo``) is not a valid pointer by the draft, which
forbids ports; it is still what a development node can offer, and the SPSP URL next to it
is always exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from django.conf import settings

if TYPE_CHECKING:
    from django.http import HttpRequest

WELL_KNOWN_PATH = "/.well-known/pay"
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"

_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = r"!$&'()*+,;="
_PCT = r"%[0-9A-Fa-f]{2}"
_REG_NAME = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}]|{_PCT})+"
_IP_LITERAL = r"\[[0-9A-Fa-f:.]+\]|\[v[0-9A-Fa-f]+\.[" + _UNRESERVED + _SUB_DELIMS + r":]+\]"
_PCHAR = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:@]|{_PCT})"
_POINTER = re.compile(rf"\$(?P<host>{_IP_LITERAL}|{_REG_NAME})(?P<path>(?:/{_PCHAR}*)*)")


class InvalidPaymentPointer(ValueError):
    """A string that is not a payment pointer; the message says why."""


@dataclass(frozen=True, slots=True)
class PaymentPointer:
    """A parsed payment pointer. ``path`` is ``""`` or starts with ``/``."""

    host: str
    path: str = ""

    def __post_init__(self) -> None:
        if _POINTER.fullmatch(str(self)) is None:
            raise InvalidPaymentPointer(f"not a payment pointer: {_problem(str(self))}")

    def __str__(self) -> str:
        return f"${self.host}{self.path}"

    @property
    def url(self) -> str:
        """The SPSP endpoint the pointer resolves to."""
        path = self.path if self.path not in ("", "/") else WELL_KNOWN_PATH
        return f"https://{self.host}{path}"


def _problem(text: str) -> str:
    host_part = text[1:].partition("/")[0]
    if not text.startswith("$"):
        return "a payment pointer starts with '$'"
    if not text.isascii():
        return "a payment pointer is ASCII only (percent-encode the path)"
    if not host_part:
        return "the host is empty"
    if "@" in host_part:
        return "userinfo ('user@') is not allowed"
    if "?" in text:
        return "a query string is not allowed"
    if "#" in text:
        return "a fragment is not allowed"
    if ":" in host_part and not host_part.startswith("["):
        return "a port is not allowed"
    return "characters outside the pointer syntax (percent-encode them)"


def parse_payment_pointer(text: str) -> PaymentPointer:
    """``text`` as a :class:`PaymentPointer`, or :class:`InvalidPaymentPointer` with the reason."""
    match = _POINTER.fullmatch(text) if text.isascii() else None
    if match is None:
        raise InvalidPaymentPointer(f"not a payment pointer: {_problem(text)}")
    return PaymentPointer(match["host"], match["path"])


def spsp_url(receiver: str) -> str:
    """The URL to query for ``receiver``: a payment pointer, or a raw ``https://`` SPSP URL."""
    if receiver.startswith("$"):
        return parse_payment_pointer(receiver).url
    parts = urlsplit(receiver)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise InvalidPaymentPointer("neither a payment pointer nor an http(s) URL")
    if parts.path in ("", "/"):
        return f"{parts.scheme}://{parts.netloc}{WELL_KNOWN_PATH}"
    return receiver


# --- the pointers this node issues -------------------------------------------------------


def public_base_url(request: HttpRequest | None = None) -> str:
    """``scheme://host[:port][/prefix]`` of this site, without a trailing slash."""
    configured: str = getattr(settings, "ILP_PUBLIC_URL", "") or ""
    if configured:
        return configured.rstrip("/")
    if request is not None:
        return f"{request.scheme}://{request.get_host()}"
    return DEFAULT_PUBLIC_URL


def pointer_for(name: str, *, base_url: str) -> str:
    """``$host/name`` for the receiver ``name`` served under ``base_url``."""
    parts = urlsplit(base_url)
    return f"${parts.netloc}{parts.path.rstrip('/')}/{name}"


def spsp_url_for(name: str, *, base_url: str) -> str:
    """The exact SPSP endpoint of ``name`` (what ``SUT_SPSP_URL`` or a raw client uses)."""
    return f"{base_url.rstrip('/')}/{name}"


def site_pointer(*, base_url: str) -> str:
    """``$host``: the pointer of ``/.well-known/pay`` (the site's default receiver)."""
    parts = urlsplit(base_url)
    return f"${parts.netloc}{parts.path.rstrip('/')}"
