"""RFC 9421 HTTP message signatures on incoming Open Payments requests (the GNAP
``httpsig`` proof), verified with ``http-message-signatures``.

What we require of every signed request (what ``@interledger/http-signature-utils``
sends, and what Rafiki checks): an Ed25519 signature with ``keyid`` and ``created``,
covering ``@method`` and ``@target-uri``, ``authorization`` when the request has one, and
``content-digest`` when it has a body, whose ``Content-Digest`` (sha-256 or sha-512) must
match the bytes received. ``@target-uri`` is rebuilt from the node's public base URL
(``ILP_PUBLIC_URL``, else the request's scheme and host), so behind a proxy the URL the
client signed is the one we check.

A signature is good once: a state-changing request (anything but ``GET``/``HEAD``) whose
signature (``keyid``, ``created`` and the signature bytes) was already accepted within its
validity window is refused (:func:`verify_request_once`), so a captured grant request,
create, complete or cancel cannot be played again. The seen signatures are kept in the
cache for the window (Redis when ``REDIS_URL`` is set, so every process sees them; else a
bounded store of this process, the only one). Reads are not checked: ``created`` is in
seconds and Ed25519 is deterministic, so a client polling an incoming payment twice within
one second sends the very same signature, and a replayed read changes nothing.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.conf import settings
from django.core.cache import BaseCache, caches
from django.core.cache.backends.locmem import LocMemCache
from django.http import HttpRequest
from http_message_signatures import (
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    InvalidSignature,
    VerifyResult,
    algorithms,
)
from http_message_signatures.exceptions import HTTPMessageSignaturesException

from receivers.open_payments.errors import InvalidClient, OpenPaymentsError
from receivers.pointers import public_base_url

MAX_SIGNATURE_AGE: Final = datetime.timedelta(minutes=5)
# How long a seen signature is remembered: its age limit plus the verifier's clock skew
# (5 s either way) and a margin.
REPLAY_WINDOW: Final = MAX_SIGNATURE_AGE + datetime.timedelta(seconds=30)
REPLAY_KEY_PREFIX: Final = "op:sig:"
# Without Redis: this process's own store (the default LocMem cache holds only 300 entries
# and is shared with django-axes). 50,000 signatures in 5.5 minutes is ~150 signed writes
# per second sustained before the oldest could be culled.
REPLAY_LOCAL_MAX: Final = 50_000
SAFE_METHODS: Final = frozenset({"GET", "HEAD"})
_local_seen = LocMemCache(
    "open-payments-signatures", {"OPTIONS": {"MAX_ENTRIES": REPLAY_LOCAL_MAX, "CULL_FREQUENCY": 10}}
)


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


def verify_request(
    request: HttpRequest, key_for: Callable[[str], Ed25519PublicKey]
) -> list[VerifyResult]:
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
        return verifier.verify(
            message,
            max_age=MAX_SIGNATURE_AGE,
            require_components=required,
            body=body if body else None,
        )
    except (InvalidSignature, HTTPMessageSignaturesException) as exc:
        if resolver.error is not None:
            raise resolver.error from None
        raise InvalidClient(f"invalid signature: {exc}") from None


def _seen_store() -> BaseCache:
    return caches["default"] if settings.REDIS_URL else _local_seen


def replay_key(request: HttpRequest, results: list[VerifyResult]) -> str:
    """What identifies the accepted signatures: each one's ``keyid`` and ``created`` and
    the signature bytes (the ``Signature`` header carries them all)."""
    digest = hashlib.sha256()
    for result in results:
        params = result.parameters
        digest.update(f"{params.get('keyid')}\n{params.get('created')}\n".encode())
    digest.update(request.headers.get("Signature", "").encode())
    return REPLAY_KEY_PREFIX + digest.hexdigest()


async def verify_request_once(
    request: HttpRequest, key_for: Callable[[str], Ed25519PublicKey]
) -> None:
    """:func:`verify_request`, then, for a state-changing request, refuse a signature
    already accepted (401 ``invalid_client``). The record is an atomic ``add``, so of two
    copies arriving at once exactly one passes, in any process sharing the cache."""
    results = verify_request(request, key_for)
    if request.method in SAFE_METHODS:
        return
    timeout = int(REPLAY_WINDOW.total_seconds())
    if not await _seen_store().aadd(replay_key(request, results), 1, timeout=timeout):
        raise InvalidClient("this signature was already used: sign each request anew")
