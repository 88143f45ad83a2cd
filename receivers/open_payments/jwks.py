"""The client's public keys: ``{client wallet address}/jwks.json``, fetched through the
project's outbound-HTTP guard (:mod:`payments.outbound`: public addresses only unless
``ILP_ALLOW_PRIVATE_URLS``, checked at connect, capped body, no redirects) with a short
time limit, and cached in this process with a bound and an expiry.

Only Ed25519 keys (JWK ``kty: OKP``, ``crv: Ed25519``) are usable: that is what Open
Payments clients sign with. A fetch failure is never cached (the next request tries again);
a successful answer is kept :data:`CACHE_TTL_S` seconds, so a revoked key stops working
within that time.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ilp.errors import DecodeError
from ilp.psk2 import b64url_decode
from payments import outbound
from receivers.open_payments.errors import InvalidClient

FETCH_TIMEOUT_S: Final = 3.0
CACHE_TTL_S: Final = 300.0
CACHE_MAX: Final = 256
MAX_KEYS: Final = 20

Jwk = Mapping[str, Any]


def jwks_url(client: str) -> str:
    """Where the JWKS of the client wallet address ``client`` lives."""
    return client.rstrip("/") + "/jwks.json"


def ed25519_key(jwk: Jwk) -> Ed25519PublicKey:
    """The public key of an Ed25519 JWK; :class:`InvalidClient` for anything else."""
    if not isinstance(jwk, Mapping):
        raise InvalidClient("a key must be a JSON object")
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise InvalidClient("only Ed25519 keys (kty OKP, crv Ed25519) are accepted")
    if jwk.get("alg", "EdDSA") != "EdDSA" or jwk.get("use", "sig") != "sig":
        raise InvalidClient("the key is not an EdDSA signing key")
    x = jwk.get("x")
    try:
        raw = b64url_decode(x) if isinstance(x, str) else b""
    except DecodeError:
        raw = b""
    if len(raw) != 32:
        raise InvalidClient("the key's x is not 32 bytes of base64url")
    return Ed25519PublicKey.from_public_bytes(raw)


def key_by_id(keys: Sequence[Jwk], key_id: str) -> Ed25519PublicKey:
    for jwk in keys:
        if isinstance(jwk, Mapping) and jwk.get("kid") == key_id:
            return ed25519_key(jwk)
    raise InvalidClient(f"the client has no key {key_id[:80]!r}")


class JwksCache:
    """``url -> keys`` for :data:`CACHE_TTL_S` seconds, at most :data:`CACHE_MAX` entries
    (least recently used out first). Thread-safe."""

    def __init__(
        self,
        *,
        maximum: int = CACHE_MAX,
        ttl: float = CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, tuple[Jwk, ...]]] = OrderedDict()
        self._maximum = maximum
        self._ttl = ttl
        self._clock = clock

    def get(self, url: str) -> tuple[Jwk, ...] | None:
        with self._lock:
            entry = self._entries.get(url)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._entries[url]
                return None
            self._entries.move_to_end(url)
            return entry[1]

    def put(self, url: str, keys: tuple[Jwk, ...]) -> None:
        with self._lock:
            self._entries[url] = (self._clock() + self._ttl, keys)
            self._entries.move_to_end(url)
            while len(self._entries) > self._maximum:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


cache = JwksCache()


async def _fetch(url: str) -> bytes:
    async with outbound.async_client(total_timeout=FETCH_TIMEOUT_S) as client:
        try:
            async with asyncio.timeout(FETCH_TIMEOUT_S):
                response = await client.get(url, headers={"Accept": "application/json"})
        except TimeoutError:
            raise outbound.TotalTimeout(f"no answer within {FETCH_TIMEOUT_S:g} s") from None
        if response.status_code != 200:
            raise InvalidClient(f"the client's key set answered HTTP {response.status_code}")
        return response.content


async def client_keys(client: str) -> tuple[Jwk, ...]:
    """The keys of the client wallet address ``client`` (cached); :class:`InvalidClient`
    with the reason when they cannot be had."""
    url = jwks_url(client)
    cached = cache.get(url)
    if cached is not None:
        return cached
    try:
        await outbound.acheck_url(url)
        body = await _fetch(url)
    except outbound.UrlRefused as exc:
        raise InvalidClient(f"the client's key set cannot be fetched: {exc.message}") from None
    except httpx.HTTPError as exc:
        raise InvalidClient(f"the client's key set cannot be fetched: {exc}") from None
    try:
        document = json.loads(body)
    except ValueError:
        raise InvalidClient("the client's key set is not JSON") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or len(keys) > MAX_KEYS:
        raise InvalidClient("the client's key set has no keys array (or too many keys)")
    result = tuple(k for k in keys if isinstance(k, dict))
    cache.put(url, result)
    return result
