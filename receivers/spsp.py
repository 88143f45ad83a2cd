"""SPSP for PSK2 (RFC 0009 draft 4/5, ``shared/spec/receiver/spsp.md``) and SPSP4 for
STREAM (RFC 0009 draft 12, ``docs/STREAM.md`` section 6): negotiation, the response bodies
and the HTTP responses, kept apart from the views.

Negotiation on ``Accept`` (a parsed version of the reference servers' substring test):

- ``application/spsp4+json`` listed with a higher q than ``application/spsp+json`` (or
  alone) → SPSP4, STREAM credentials (``@interledger/pay``, ilp-protocol-stream clients,
  Web Monetization wallets);
- else ``application/spsp+json`` listed (q > 0) → the SPSP JSON for PSK2, also next to an
  equal ``application/spsp4+json`` (ilp-protocol-spsp 2.2 sends both and takes either);
- else ``application/json`` listed (q > 0, at least as high as ``text/html`` and
  ``application/xhtml+xml``) → the Open Payments wallet address
  (:mod:`receivers.open_payments`; ``@interledger/pay``'s ``application/json,
  application/spsp4+json`` still gets SPSP4 above);
- else HTML acceptable (no ``Accept``, ``text/html``, ``application/xhtml+xml``,
  ``text/*``, ``*/*``) → the pointer's web page;
- else → 406.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from django.http import HttpResponse

from ilp.errors import DecodeError, EncodeError
from ilp.psk2 import b64url_decode
from ilp.stream import ReceiptSetup

SPSP_MEDIA_TYPE = "application/spsp+json"
SPSP4_MEDIA_TYPE = "application/spsp4+json"
_HTML_RANGES = frozenset({"text/html", "application/xhtml+xml", "text/*", "*/*"})

# How long a sender may reuse one answer (spsp.md §2). Every answer carries a fresh,
# never-expiring secret, so this only bounds how often a sender asks again. "private":
# a shared cache must not hand one client's secret to another.
CACHE_CONTROL = "max-age=60, private"
# Invoices and other answers whose ``balance`` moves must be fetched every time.
CACHE_CONTROL_WITH_BALANCE = "no-cache, private"


class Representation(Enum):
    SPSP = "spsp"
    STREAM = "stream"
    WALLET_ADDRESS = "wallet_address"
    HTML = "html"
    NONE = "none"


def _media_ranges(accept: str) -> dict[str, float]:
    ranges: dict[str, float] = {}
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if not media:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        media = media.lower()
        ranges[media] = max(q, ranges.get(media, 0.0))
    return ranges


def negotiate(accept: str | None) -> Representation:
    """Which answer an ``Accept`` header asks for (see the module docstring)."""
    if accept is None or not accept.strip():
        return Representation.HTML
    ranges = _media_ranges(accept)
    psk2, stream = ranges.get(SPSP_MEDIA_TYPE, 0.0), ranges.get(SPSP4_MEDIA_TYPE, 0.0)
    if stream > 0 and stream > psk2:
        return Representation.STREAM
    if psk2 > 0:
        return Representation.SPSP
    wallet = ranges.get("application/json", 0.0)
    if wallet > 0 and wallet >= max(
        ranges.get("text/html", 0.0), ranges.get("application/xhtml+xml", 0.0)
    ):
        return Representation.WALLET_ADDRESS
    if any(ranges.get(media, 0.0) > 0 for media in _HTML_RANGES):
        return Representation.HTML
    return Representation.NONE


@dataclass(frozen=True, slots=True)
class SpspBalance:
    """``balance`` of an invoice-like receiver: ``maximum`` is what the sender should
    deliver in total, ``current`` what has arrived. Plain pointers have none."""

    maximum: int
    current: int


@dataclass(frozen=True, slots=True)
class SpspAnswer:
    """What one SPSP query returns (spsp.md §2)."""

    destination_account: str
    shared_secret: bytes
    asset_code: str
    asset_scale: int
    receiver_name: str
    image_url: str | None = None
    balance: SpspBalance | None = None
    receipts_enabled: bool = False

    def __post_init__(self) -> None:
        if len(self.shared_secret) != 32:
            raise ValueError("an SPSP shared secret is exactly 32 bytes")

    def to_json(self) -> dict[str, Any]:
        receiver_info: dict[str, str] = {"name": self.receiver_name}
        if self.image_url:
            receiver_info["image_url"] = self.image_url
        body: dict[str, Any] = {
            "destination_account": self.destination_account,
            # Standard alphabet with padding (44 characters), as the reference servers.
            "shared_secret": base64.b64encode(self.shared_secret).decode("ascii"),
        }
        if self.balance is not None:
            # Integer strings: UInt64 does not survive a JSON number.
            body["balance"] = {
                "maximum": str(self.balance.maximum),
                "current": str(self.balance.current),
            }
        body["asset_info"] = {"code": self.asset_code, "scale": self.asset_scale}
        # ilp-protocol-spsp 2.0.0 reads the pre-draft-4 name and drops asset_info.
        body["ledger_info"] = {"currency_code": self.asset_code, "currency_scale": self.asset_scale}
        body["receiver_info"] = receiver_info
        return body

    def to_spsp4_json(self) -> dict[str, Any]:
        """The SPSP4 body: RFC 0009 draft 12's fields, then the informative extras (clients
        ignore fields they do not know)."""
        body: dict[str, Any] = {
            "destination_account": self.destination_account,
            "shared_secret": base64.b64encode(self.shared_secret).decode("ascii"),
        }
        if self.receipts_enabled:
            body["receipts_enabled"] = True
        if self.balance is not None:
            # An invoice (a shop order): what to deliver in all, as in the PSK2 answer.
            body["balance"] = {
                "maximum": str(self.balance.maximum),
                "current": str(self.balance.current),
            }
        body["asset_info"] = {"code": self.asset_code, "scale": self.asset_scale}
        receiver_info: dict[str, str] = {"name": self.receiver_name}
        if self.image_url:
            receiver_info["image_url"] = self.image_url
        body["receiver_info"] = receiver_info
        return body


def _cors(response: HttpResponse) -> HttpResponse:
    response["Access-Control-Allow-Origin"] = "*"
    response["Vary"] = "Accept"
    return response


def spsp_response(answer: SpspAnswer) -> HttpResponse:
    """200 ``application/spsp+json`` with Cache-Control and CORS."""
    response = HttpResponse(
        json.dumps(answer.to_json(), separators=(",", ":")), content_type=SPSP_MEDIA_TYPE
    )
    response["Cache-Control"] = (
        CACHE_CONTROL if answer.balance is None else CACHE_CONTROL_WITH_BALANCE
    )
    return _cors(response)


def spsp4_response(answer: SpspAnswer) -> HttpResponse:
    """200 ``application/spsp4+json`` (STREAM credentials) with Cache-Control and CORS."""
    response = HttpResponse(
        json.dumps(answer.to_spsp4_json(), separators=(",", ":")), content_type=SPSP4_MEDIA_TYPE
    )
    response["Cache-Control"] = (
        CACHE_CONTROL if answer.balance is None else CACHE_CONTROL_WITH_BALANCE
    )
    return _cors(response)


def receipt_setup_from_headers(headers: Mapping[str, str]) -> ReceiptSetup | None:
    """RFC 0039 / RFC 0009: ``Receipt-Nonce`` (16 bytes) and ``Receipt-Secret`` (32 bytes),
    base64 (either alphabet), set by a receipt verifier proxying the query. ``None`` when
    neither is there; :class:`ValueError` with the reason when they are incomplete or bad."""
    nonce, secret = headers.get("Receipt-Nonce"), headers.get("Receipt-Secret")
    if nonce is None and secret is None:
        return None
    if nonce is None or secret is None:
        raise ValueError("Receipt-Nonce and Receipt-Secret go together")
    try:
        return ReceiptSetup(b64url_decode(nonce.strip()), b64url_decode(secret.strip()))
    except (DecodeError, EncodeError) as exc:
        raise ValueError(
            f"Receipt-Nonce must be 16 and Receipt-Secret 32 bytes of base64 ({exc})"
        ) from None


def spsp_error(status: int, error: str, *, error_id: str, message: str) -> HttpResponse:
    """A JSON error a SPSP client can read: ``{"error", "id", "message"}``.

    ``id``/``message`` follow the RFC's example (``InvalidReceiverError``); ``error`` is
    our human-readable reason. The body never looks like an SPSP answer.
    """
    body = {"error": error, "id": error_id, "message": message}
    response = HttpResponse(json.dumps(body), status=status, content_type="application/json")
    response["Cache-Control"] = "no-cache"
    return _cors(response)


def receiver_not_found(reason: str) -> HttpResponse:
    return spsp_error(404, reason, error_id="InvalidReceiverError", message="Invalid receiver ID")


def not_acceptable(representation: Representation) -> HttpResponse:
    if representation is Representation.STREAM:
        reason = (
            "application/spsp4+json is SPSP over STREAM, which this URL does not serve; "
            "it speaks SPSP for PSK2: ask for application/spsp+json"
        )
    else:
        reason = (
            "this URL serves application/spsp4+json (SPSP for STREAM), "
            "application/spsp+json (SPSP for PSK2), application/json (an Open Payments "
            "wallet address) or text/html"
        )
    return spsp_error(406, reason, error_id="NotAcceptableError", message=reason)


def preflight() -> HttpResponse:
    """``OPTIONS``: CORS preflight for in-browser senders (they may add headers such as
    ``Web-Monetization-Id``)."""
    response = HttpResponse(status=204)
    response["Access-Control-Allow-Methods"] = "GET, HEAD, OPTIONS"
    response["Access-Control-Allow-Headers"] = (
        "Accept, Web-Monetization-Id, Receipt-Nonce, Receipt-Secret"
    )
    response["Access-Control-Max-Age"] = "86400"
    response["Allow"] = "GET, HEAD, OPTIONS"
    return _cors(response)
