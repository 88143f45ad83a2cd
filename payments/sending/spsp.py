"""The sender's side of SPSP: payment pointer → URL → ``destination_account`` + secret.

Pointer resolution follows payment-pointers.md: ``$host/path`` → ``https://host/path``,
``$host`` (or ``$host/``) → ``https://host/.well-known/pay``; no userinfo, query,
fragment or (for real hosts) port; ASCII only. One deliberate exception for development
nodes: a loopback host (``127.0.0.1``, ``localhost``, ``[::1]``) may carry a port and
resolves to **http** (``$127.0.0.1:8000/alice`` → ``http://127.0.0.1:8000/alice``). Raw
``https://`` SPSP URLs are accepted too (and ``http://`` for loopback hosts only).

The query is ``GET`` with an ``Accept`` naming the protocols the sender will speak
(spsp.md §1, RFC 0009 SPSP4): ``application/spsp4+json, application/spsp+json`` lets the
receiver choose, and the ``Content-Type`` of its answer says what it chose:
``application/spsp4+json`` is STREAM (RFC 0029), anything else PSK2 as before (servers of
the PSK2 era answer ``application/spsp+json``, some plain ``application/json``). Asking for
one protocol only sends only its media type and refuses an answer of the other; a receiver
that answers the offer of both with 406 is asked once more for PSK2 alone. With
``receipts`` (RFC 0039) the query carries ``Receipt-Nonce`` and ``Receipt-Secret``, so that a
STREAM receiver's Fulfills carry receipts of its running total. The answer
must be 200 with a JSON object carrying an ILP address in ``destination_account`` and a
32-byte ``shared_secret`` (base64, either alphabet, padding optional). ``balance``
(``maximum``/``current`` integer strings < 2**64) and ``asset_info`` are read when present.
Redirects are followed only to the same scheme (at most 3).

The query goes out through :mod:`payments.outbound` (the pointer is the user's choice): its
host, and the host of every redirect, must resolve to public addresses only, checked at
connect time, unless ``ILP_ALLOW_PRIVATE_URLS`` (a loopback development pointer needs it;
a refused address is an :class:`SpspError` naming it); the whole query ends within
:data:`SPSP_TIMEOUT_S` and reads at most :data:`MAX_BODY` of answer.

The grammar is the one :mod:`receivers.pointers` parses (payments cannot import
receivers); this one differs only in accepting loopback ports.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import httpx

from ilp.address import is_valid_address
from ilp.errors import DecodeError
from ilp.oer import UINT64_MAX
from ilp.psk2 import b64url_decode
from ilp.stream import ReceiptSetup
from payments import outbound
from payments.sending.errors import SpspError

__all__ = [
    "PROTOCOL_PSK2",
    "PROTOCOL_STREAM",
    "SPSP4_MEDIA_TYPE",
    "SPSP_MEDIA_TYPE",
    "SpspDetails",
    "query_spsp",
    "resolve_receiver",
]

SPSP_MEDIA_TYPE = "application/spsp+json"
SPSP4_MEDIA_TYPE = "application/spsp4+json"
PROTOCOL_PSK2 = "psk2"
PROTOCOL_STREAM = "stream"
_ACCEPT: dict[str | None, str] = {
    None: f"{SPSP4_MEDIA_TYPE}, {SPSP_MEDIA_TYPE};q=0.9",
    PROTOCOL_STREAM: SPSP4_MEDIA_TYPE,
    PROTOCOL_PSK2: SPSP_MEDIA_TYPE,
}
WELL_KNOWN_PATH = "/.well-known/pay"
SHARED_SECRET_LENGTH = 32
SPSP_TIMEOUT_S = 15.0
MAX_BODY = outbound.MAX_RESPONSE_BYTES
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})

_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = r"!$&'()*+,;="
_PCT = r"%[0-9A-Fa-f]{2}"
_PCHAR = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:@]|{_PCT})"
_HOST = rf"(?:\[[0-9A-Fa-f:.]+\]|(?:[{_UNRESERVED}{_SUB_DELIMS}]|{_PCT})+)"
_POINTER = re.compile(rf"\$(?P<host>{_HOST})(?::(?P<port>[0-9]{{1,5}}))?(?P<path>(?:/{_PCHAR}*)*)")


def _is_loopback(host: str) -> bool:
    return host.lower() in LOOPBACK_HOSTS


def resolve_receiver(receiver: str) -> str:
    """The SPSP URL of a payment pointer or raw SPSP URL; :class:`SpspError` if neither."""
    text = receiver.strip()
    if not text or not text.isascii():
        raise SpspError("a payment pointer or SPSP URL is ASCII and not empty")
    if text.startswith("$"):
        match = _POINTER.fullmatch(text)
        if match is None:
            raise SpspError(f"not a payment pointer: {text!r} (no userinfo, query or fragment)")
        host, port, path = match["host"], match["port"], match["path"]
        loopback = _is_loopback(host)
        if port is not None and not loopback:
            raise SpspError("a payment pointer has no port (only loopback development hosts)")
        if path in ("", "/"):
            path = WELL_KNOWN_PATH
        scheme = "http" if loopback else "https"
        return f"{scheme}://{host}{f':{port}' if port else ''}{path}"
    parts = urlsplit(text)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise SpspError("neither a payment pointer ($host/path) nor an https:// SPSP URL")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise SpspError("SPSP is queried over https (http only for loopback hosts)")
    if parts.username or parts.password:
        raise SpspError("an SPSP URL carries no userinfo")
    if parts.path in ("", "/"):
        return f"{parts.scheme}://{parts.netloc}{WELL_KNOWN_PATH}"
    return text


@dataclass(frozen=True, slots=True)
class SpspDetails:
    """A validated SPSP answer; ``protocol`` is what the receiver chose (``psk2`` or
    ``stream``, from the answer's ``Content-Type``)."""

    destination_account: str
    shared_secret: bytes
    balance_maximum: int | None = None
    balance_current: int | None = None
    asset_code: str | None = None
    asset_scale: int | None = None
    protocol: str = PROTOCOL_PSK2

    @property
    def remaining(self) -> int | None:
        """``maximum - current`` when the receiver is an invoice (spsp.md §2.2)."""
        if self.balance_maximum is None:
            return None
        return max(self.balance_maximum - (self.balance_current or 0), 0)


def _uint64(value: Any, what: str) -> int:
    if not isinstance(value, str) or not value.isdigit():
        raise SpspError(f"{what} must be an integer string")
    number = int(value)
    if number > UINT64_MAX:
        raise SpspError(f"{what} does not fit a UInt64")
    return number


def parse_spsp(body: Any) -> SpspDetails:
    """Validate a decoded SPSP JSON body (spsp.md §2)."""
    if not isinstance(body, dict):
        raise SpspError("the SPSP answer is not a JSON object")
    destination = body.get("destination_account")
    if not isinstance(destination, str) or not is_valid_address(destination):
        raise SpspError("the SPSP answer has no valid destination_account")
    secret_text = body.get("shared_secret")
    if not isinstance(secret_text, str):
        raise SpspError("the SPSP answer has no shared_secret")
    try:
        secret = b64url_decode(secret_text)
    except DecodeError:
        raise SpspError("the SPSP shared_secret is not base64") from None
    if len(secret) != SHARED_SECRET_LENGTH:
        raise SpspError(f"the SPSP shared_secret is {len(secret)} bytes, not 32")
    maximum = current = None
    balance = body.get("balance")
    if isinstance(balance, dict):
        maximum = _uint64(balance.get("maximum"), "balance.maximum")
        current = _uint64(balance.get("current", "0"), "balance.current")
    asset_code: str | None = None
    asset_scale: int | None = None
    asset = body.get("asset_info")
    if isinstance(asset, dict):
        code, scale = asset.get("code"), asset.get("scale")
        if isinstance(code, str) and isinstance(scale, int) and 0 <= scale <= 255:
            asset_code, asset_scale = code, scale
    return SpspDetails(destination, secret, maximum, current, asset_code, asset_scale)


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


async def query_spsp(
    url: str,
    *,
    protocol: str | None = None,
    receipts: ReceiptSetup | None = None,
    client: httpx.AsyncClient | None = None,
) -> SpspDetails:
    """``GET url`` asking for ``protocol`` (``None``: STREAM or PSK2, the receiver's
    choice; ``"stream"``; ``"psk2"``) and validate the answer (see the module docstring)."""
    if protocol not in _ACCEPT:
        raise SpspError(f"unknown protocol {protocol!r} (psk2 or stream)")
    headers = {"Accept": _ACCEPT[protocol]}
    if receipts is not None:
        headers["Receipt-Nonce"] = base64.b64encode(receipts.nonce).decode()
        headers["Receipt-Secret"] = base64.b64encode(receipts.secret).decode()
    own = client is None
    http = client or outbound.async_client(total_timeout=SPSP_TIMEOUT_S)
    try:
        current = url
        asked_again = False
        for _ in range(5):
            try:
                response = await http.get(current, headers=headers)
            except httpx.HTTPError as exc:
                if outbound.refused(exc):
                    raise SpspError(f"SPSP query to {current} refused: {exc}") from None
                if isinstance(exc, outbound.ResponseTooLarge):
                    raise SpspError("the SPSP answer is too large") from None
                raise SpspError(f"SPSP query to {current} failed: {exc!r}") from None
            if response.status_code == 406 and protocol is None and not asked_again:
                # It cannot weigh the offer (a PSK2-only endpoint refusing any mention of
                # SPSP4): ask for what it has.
                protocol, asked_again = PROTOCOL_PSK2, True
                headers["Accept"] = _ACCEPT[protocol]
                continue
            if response.is_redirect and "location" in response.headers:
                target = str(response.url.join(response.headers["location"]))
                if urlsplit(target).scheme != urlsplit(current).scheme:
                    raise SpspError("the SPSP endpoint redirected to another scheme")
                current = target
                continue
            break
        else:
            raise SpspError("too many SPSP redirects")
        if response.status_code == 406 and protocol is not None:
            raise SpspError(f"the receiver does not offer {protocol.upper()} (HTTP 406)")
        if response.status_code != 200:
            raise SpspError(f"the SPSP endpoint answered HTTP {response.status_code}")
        if len(response.content) > MAX_BODY:
            raise SpspError("the SPSP answer is too large")
        try:
            body = response.json()
        except ValueError:
            raise SpspError("the SPSP answer is not JSON") from None
        chosen = (
            PROTOCOL_STREAM
            if _media_type(response.headers.get("content-type", "")) == SPSP4_MEDIA_TYPE
            else PROTOCOL_PSK2
        )
        if protocol is not None and chosen != protocol:
            raise SpspError(f"asked for {protocol.upper()}, the receiver answered {chosen.upper()}")
        return replace(parse_spsp(body), protocol=chosen)
    finally:
        if own:
            await http.aclose()
