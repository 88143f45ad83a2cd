"""RFC 9421 HTTP message signatures on incoming Open Payments requests (the GNAP
``httpsig`` proof), verified with ``http-message-signatures``.

What we require of every signed request (what ``@interledger/http-signature-utils``
sends, and what Rafiki checks): an Ed25519 signature with ``keyid`` and ``created``,
covering ``@method`` and ``@target-uri``, ``authorization`` when the request has one, and
``content-digest`` when it has a body, whose ``Content-Digest`` (sha-256 or sha-512) must
match the bytes received. ``@target-uri`` is rebuilt from the node's public base URL
(``ILP_PUBLIC_URL``, else the request's scheme and host), so behind a proxy the URL the
client signed is the one we check.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.http import HttpRequest
from http_message_signatures import (
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    InvalidSignature,
    algorithms,
)
from http_message_signatures.exceptions import HTTPMessageSignaturesException

from receivers.open_payments.errors import InvalidClient, OpenPaymentsError
from receivers.pointers import public_base_url

MAX_SIGNATURE_AGE: Final = datetime.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class _Message:
    method: str
    url: str
    headers: Mapping[str, str]


class _Resolver(HTTPSignatureKeyResolver):
    def __init__(self, lookup: Callable[[str], Ed25519PublicKey]) -> None:
        self._lookup = lookup
        self.error: OpenPaymentsError | None = None

    def resolve_public_key(self, key_id: str) -> Ed25519PublicKey | None:
        try:
            return self._lookup(key_id)
        except OpenPaymentsError as exc:
            self.error = exc
            return None


def target_uri(request: HttpRequest) -> str:
    """The URL the client signed (``@target-uri``)."""
    return public_base_url(request) + request.get_full_path()


def is_signed(request: HttpRequest) -> bool:
    return "Signature" in request.headers or "Signature-Input" in request.headers


def verify_request(request: HttpRequest, key_for: Callable[[str], Ed25519PublicKey]) -> None:
    """Check the request's signature; ``key_for(keyid)`` gives the client's key (or raises
    :class:`OpenPaymentsError`). Raises :class:`InvalidClient` with the reason."""
    if not is_signed(request):
        raise InvalidClient("the request is not signed (Signature and Signature-Input)")
    headers = {name: value for name, value in request.headers.items()}
    message = _Message(str(request.method), target_uri(request), headers)
    required = ["@method", "@target-uri"]
    if "Authorization" in request.headers:
        required.append("authorization")
    resolver = _Resolver(key_for)
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=resolver)
    body = request.body
    try:
        verifier.verify(
            message,
            max_age=MAX_SIGNATURE_AGE,
            require_components=required,
            body=body if body else None,
        )
    except (InvalidSignature, HTTPMessageSignaturesException) as exc:
        if resolver.error is not None:
            raise resolver.error from None
        raise InvalidClient(f"invalid signature: {exc}") from None
