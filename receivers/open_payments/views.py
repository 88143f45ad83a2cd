"""Open Payments endpoints (plain Django views, JSON in and out).

- ``GET /<name>`` with ``Accept: application/json``: the wallet address
  (:func:`wallet_address_response`, called from the pointer view's negotiation);
- ``POST /auth``: GNAP grant requests, non-interactive ``incoming-payment`` access only;
  ``POST|DELETE /auth/continue/<id>``; ``POST|DELETE /auth/token/<id>`` (rotate, revoke);
- ``POST|GET /payments/incoming-payments``, ``GET /payments/incoming-payments/<id>``
  (public without ``Authorization``), ``POST /payments/incoming-payments/<id>/complete``.

Every grant, continuation and token request, and every resource request with a token, must
carry a valid RFC 9421 signature by the client's key (:mod:`.signatures`). See
``docs/OPEN_PAYMENTS.md``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from channels.db import database_sync_to_async
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.csrf import csrf_exempt

from ilp.oer import UINT64_MAX
from ilp.psk2 import b64url_encode
from receivers.addresses import open_stream, tagged_prefix
from receivers.models import MonetizedPage, Receiver
from receivers.open_payments import jwks, selectors, services
from receivers.open_payments.errors import (
    Forbidden,
    InvalidClient,
    InvalidToken,
    NotFound,
    OpenPaymentsError,
)
from receivers.open_payments.models import AccessToken, Grant, IncomingPaymentResource
from receivers.open_payments.signatures import is_signed, verify_request_once
from receivers.pointers import public_base_url
from receivers.selectors import receiver_get

INCOMING_ACTIONS: Final = frozenset({"create", "read", "read-all", "complete", "list", "list-all"})
MAX_ACCESS_ITEMS: Final = 3
MAX_BODY: Final = 64 * 1024
MAX_PAGE: Final = 100
DEFAULT_PAGE: Final = 10
AUTH_PATH: Final = "/auth"
_T = TypeVar("_T")
RESOURCE_PATH: Final = "/payments"


# --- URLs and shapes --------------------------------------------------------------------------


def auth_server_url(base: str) -> str:
    return f"{base}{AUTH_PATH}"


def resource_server_url(base: str) -> str:
    return f"{base}{RESOURCE_PATH}"


def incoming_payment_url(payment: IncomingPaymentResource, base: str) -> str:
    return f"{resource_server_url(base)}/incoming-payments/{payment.id}"


def _amount(value: int, receiver: Receiver) -> dict[str, Any]:
    account = receiver.account
    return {"value": str(value), "assetCode": account.asset_code, "assetScale": account.asset_scale}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _payment_json(
    payment: IncomingPaymentResource, base: str, now: datetime, *, methods: bool
) -> dict[str, Any]:
    receiver = payment.receiver
    state = selectors.incoming_payment_state(payment=payment, now=now)
    body: dict[str, Any] = {
        "id": incoming_payment_url(payment, base),
        "walletAddress": selectors.wallet_address_of(payment).url(base),
        "completed": state.completed,
    }
    if payment.incoming_amount is not None:
        body["incomingAmount"] = _amount(int(payment.incoming_amount), receiver)
    body["receivedAmount"] = _amount(state.received, receiver)
    if payment.expires_at is not None:
        body["expiresAt"] = _iso(payment.expires_at)
    if payment.metadata is not None:
        body["metadata"] = payment.metadata
    body["createdAt"] = _iso(payment.created_at)
    if methods:
        body["methods"] = [] if state.completed or state.expired else [_ilp_method(payment)]
    return body


def _ilp_method(payment: IncomingPaymentResource) -> dict[str, str]:
    prefix = tagged_prefix(payment.receiver.name, payment.id.bytes)
    opened = open_stream(payment.ilp_address, prefix)
    if opened is None:  # the node address or receiver secret changed since it was issued
        raise OpenPaymentsError(
            "this incoming payment's credentials are no longer valid", code="internal", status=500
        )
    return {
        "type": "ilp",
        "ilpAddress": payment.ilp_address,
        "sharedSecret": b64url_encode(opened.shared_secret),
    }


def wallet_address_response(
    request: HttpRequest,
    receiver: Receiver,
    *,
    page: MonetizedPage | None = None,
    visitor: bytes | None = None,
) -> HttpResponse:
    """``GET /<name>`` as ``application/json``: the pointer's Open Payments wallet address;
    with ``page`` and ``visitor``, the page's wallet address for that visitor
    (``/pages/<slug>/spsp/<visitor id>``: same servers, paid to the page's pointer)."""
    base = public_base_url(request)
    account = receiver.account
    wallet = selectors.WalletAddress(receiver, page, visitor)
    name = receiver.description or receiver.name
    body = {
        "id": wallet.url(base),
        "publicName": name if page is None else (page.title[:100] or name),
        "assetCode": account.asset_code,
        "assetScale": account.asset_scale,
        "authServer": auth_server_url(base),
        "resourceServer": resource_server_url(base),
    }
    response = JsonResponse(body)
    response["Cache-Control"] = "max-age=60"
    response["Access-Control-Allow-Origin"] = "*"
    response["Vary"] = "Accept"
    return response


@csrf_exempt
def wallet_address_keys(request: HttpRequest, name: str) -> HttpResponse:
    """``GET /<name>/jwks.json``: the keys bound to the wallet address. Our pointers sign
    nothing (they only receive), so the set is empty; unknown names are 404."""
    if request.method == "OPTIONS":
        return _preflight()
    if request.method not in ("GET", "HEAD"):
        return error_response(
            OpenPaymentsError("GET only", code="method_not_allowed", status=405), request
        )
    if receiver_get(name=name) is None:
        return error_response(NotFound(f"no wallet address named '{name[:80]}'"), request)
    response = _json({"keys": []})
    response["Cache-Control"] = "max-age=300"
    return response


def _json(body: Any, status: int = 200) -> HttpResponse:
    response = JsonResponse(body, status=status, safe=False)
    response["Cache-Control"] = "no-store"
    response["Access-Control-Allow-Origin"] = "*"
    return response


def error_response(exc: OpenPaymentsError, request: HttpRequest) -> HttpResponse:
    response = _json(
        {"error": {"code": exc.code, "description": exc.description}}, status=exc.http_status
    )
    if exc.http_status == 401:
        response["WWW-Authenticate"] = f'GNAP as_uri="{auth_server_url(public_base_url(request))}"'
    return response


def _handled(
    view: Callable[..., Coroutine[Any, Any, HttpResponse]],
) -> Callable[..., Coroutine[Any, Any, HttpResponse]]:
    """An async view (a JWKS fetch must never hold the thread Django runs sync views on)
    with CORS preflight and :class:`OpenPaymentsError` mapped to its answer."""

    @functools.wraps(view)
    async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method == "OPTIONS":
            return _preflight()
        try:
            return await view(request, *args, **kwargs)
        except OpenPaymentsError as exc:
            return error_response(exc, request)

    return csrf_exempt(wrapper)


def _db(function: Callable[..., _T]) -> Callable[..., Awaitable[_T]]:
    return database_sync_to_async(function)  # type: ignore[no-any-return]


def _preflight() -> HttpResponse:
    response = HttpResponse(status=204)
    response["Access-Control-Allow-Origin"] = "*"
    response["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
    response["Access-Control-Allow-Headers"] = (
        "Accept, Authorization, Content-Type, Content-Digest, Signature, Signature-Input"
    )
    response["Access-Control-Max-Age"] = "86400"
    return response


def _method(request: HttpRequest, *allowed: str) -> None:
    if request.method not in allowed:
        raise OpenPaymentsError(
            f"{request.method} is not allowed here ({', '.join(allowed)})",
            code="method_not_allowed",
            status=405,
        )


def _body(request: HttpRequest) -> dict[str, Any]:
    if len(request.body) > MAX_BODY:
        raise OpenPaymentsError("the request body is too large")
    if not request.body:
        return {}
    try:
        body = json.loads(request.body)
    except ValueError:
        raise OpenPaymentsError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise OpenPaymentsError("the request body must be a JSON object")
    return body


def _bearer(request: HttpRequest) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme != "GNAP" or not value.strip():
        raise InvalidToken("Authorization must be 'GNAP <access token>'")
    return value.strip()


# --- clients and their keys -------------------------------------------------------------------


def _thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint of an OKP key."""
    canonical = json.dumps(
        {"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"]}, separators=(",", ":")
    )
    return b64url_encode(hashlib.sha256(canonical.encode()).digest())


def _client(value: Any) -> tuple[str, dict[str, Any] | None]:
    """``(client id, inline JWK)`` from a grant request's ``client`` (its three forms)."""
    if isinstance(value, dict) and set(value) == {"walletAddress"}:
        value = value["walletAddress"]
    if isinstance(value, str):
        if not value.startswith(("https://", "http://")) or len(value) > 500:
            raise InvalidClient("client must be the client's wallet address URL", status=400)
        return value, None
    if isinstance(value, dict) and set(value) == {"jwk"} and isinstance(value["jwk"], dict):
        jwk = value["jwk"]
        jwks.ed25519_key(jwk)
        return f"jwk:{_thumbprint(jwk)}", dict(jwk)
    raise InvalidClient("client must be a wallet address URL, {walletAddress} or {jwk}", status=400)


async def _key_lookup(
    request: HttpRequest, client: str, client_jwk: dict[str, Any] | None
) -> Callable[[str], Ed25519PublicKey]:
    """``keyid -> key`` of the client: its inline JWK, or its JWKS (fetched, cached).
    Unsigned requests are refused before anything is fetched."""
    if not is_signed(request):
        raise InvalidClient("the request is not signed (Signature and Signature-Input)")
    if client_jwk is not None:
        jwk = client_jwk

        def inline(key_id: str) -> Ed25519PublicKey:
            kid = jwk.get("kid")
            if kid is not None and kid != key_id:
                raise InvalidClient(f"the request is signed with key {key_id[:80]!r}, not {kid!r}")
            return jwks.ed25519_key(jwk)

        return inline
    keys = await jwks.client_keys(client)
    return lambda key_id: jwks.key_by_id(keys, key_id)


async def _verify_for_grant(request: HttpRequest, grant: Grant) -> None:
    await verify_request_once(request, await _key_lookup(request, grant.client, grant.client_jwk))


# --- the authorization server ----------------------------------------------------------------


def _access(items: Any, base: str) -> tuple[list[dict[str, Any]], list[str], Receiver | None]:
    """Validated ``access_token.access``: the items as granted, the union of their
    actions, the wallet address they are bound to (``None``: any of ours)."""
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_ACCESS_ITEMS:
        raise OpenPaymentsError(f"access_token.access must list 1 to {MAX_ACCESS_ITEMS} items")
    granted: list[dict[str, Any]] = []
    actions: set[str] = set()
    identifiers: set[str] = set()
    for item in items:
        if not isinstance(item, dict):
            raise OpenPaymentsError("each access item must be an object")
        kind = item.get("type")
        if kind != "incoming-payment":
            raise OpenPaymentsError(
                f"this authorization server grants incoming-payment access only, not {str(kind)[:40]!r}"
            )
        wanted = item.get("actions")
        if (
            not isinstance(wanted, list)
            or not wanted
            or len(set(map(str, wanted))) != len(wanted)
            or not set(wanted) <= INCOMING_ACTIONS
        ):
            raise OpenPaymentsError(
                f"incoming-payment actions must be distinct, from {sorted(INCOMING_ACTIONS)}"
            )
        extra = set(item) - {"type", "actions", "identifier"}
        if extra:
            raise OpenPaymentsError(f"unknown access fields: {sorted(extra)}")
        entry: dict[str, Any] = {"type": "incoming-payment", "actions": list(wanted)}
        identifier = item.get("identifier")
        if identifier is not None:
            if not isinstance(identifier, str):
                raise OpenPaymentsError("identifier must be a wallet address URL")
            identifiers.add(identifier)
            entry["identifier"] = identifier
        actions.update(wanted)
        granted.append(entry)
    receiver: Receiver | None = None
    if len(identifiers) > 1:
        raise OpenPaymentsError("one grant covers one wallet address")
    if identifiers:
        (identifier,) = identifiers
        receiver = selectors.receiver_for_wallet_address(url=identifier, base_url=base)
        if receiver is None:
            raise OpenPaymentsError(f"{identifier[:200]} is not a wallet address of this server")
    return granted, sorted(actions), receiver


def _token_json(
    token: AccessToken, value: str, access: Any, base: str, now: datetime
) -> dict[str, Any]:
    return {
        "value": value,
        "manage": f"{auth_server_url(base)}/token/{token.id}",
        "expires_in": max(int((token.expires_at - now).total_seconds()), 0),
        "access": access,
    }


@_handled
async def grant_request(request: HttpRequest) -> HttpResponse:
    """``POST /auth``: a non-interactive incoming-payment grant (``interact`` ignored)."""
    _method(request, "POST")
    base = public_base_url(request)
    body = _body(request)
    if "client" not in body:
        raise InvalidClient("client is required", status=400)
    client, client_jwk = _client(body["client"])
    await verify_request_once(request, await _key_lookup(request, client, client_jwk))
    if "subject" in body:
        raise OpenPaymentsError("subject information is not served here")
    access_token = body.get("access_token")
    if not isinstance(access_token, dict):
        raise OpenPaymentsError("access_token.access is required")

    def grant() -> dict[str, Any]:
        access, actions, receiver = _access(access_token.get("access"), base)
        now = timezone.now()
        issued = services.grant_create(
            receiver=receiver,
            client=client,
            client_jwk=client_jwk,
            actions=actions,
            access=access,
            now=now,
        )
        return {
            "access_token": _token_json(issued.token, issued.token_value, access, base, now),
            "continue": {
                "access_token": {"value": issued.continue_value},
                "uri": f"{auth_server_url(base)}/continue/{issued.grant.id}",
            },
        }

    return _json(await _db(grant)())


@_handled
async def grant_continue(request: HttpRequest, grant_id: str) -> HttpResponse:
    """``DELETE /auth/continue/<id>``: cancel the grant (and its tokens). ``POST``: these
    grants are granted at once, there is nothing to continue."""
    _method(request, "POST", "DELETE")
    value = _bearer(request)
    grant = await _db(selectors.grant_get)(grant_id=grant_id)
    if grant is None or value is None or grant.revoked_at is not None:
        raise InvalidToken("unknown or cancelled continuation", code="invalid_continuation")
    if selectors.token_hash(value) != grant.continue_token_hash:
        raise InvalidToken("wrong continuation access token", code="invalid_continuation")
    await _verify_for_grant(request, grant)
    if request.method == "POST":
        raise OpenPaymentsError(
            "this grant was granted at once; there is nothing to continue", status=404
        )
    await _db(services.grant_revoke)(grant=grant, now=timezone.now())
    return HttpResponse(status=204)


@_handled
async def token_manage(request: HttpRequest, token_id: str) -> HttpResponse:
    """``POST /auth/token/<id>``: rotate; ``DELETE``: revoke. Authorized by the token itself."""
    _method(request, "POST", "DELETE")
    now = timezone.now()
    value = _bearer(request)
    token = await _db(selectors.access_token_by_id)(token_id=token_id)
    if token is None or value is None or selectors.token_hash(value) != token.token_hash:
        raise InvalidToken("unknown access token")
    if token.revoked_at is not None or token.grant.revoked_at is not None:
        raise InvalidToken("the access token was revoked")
    await _verify_for_grant(request, token.grant)
    if request.method == "DELETE":
        await _db(services.token_revoke)(token=token, now=now)
        return HttpResponse(status=204)
    new, new_value = await _db(services.token_rotate)(token=token, now=now)
    base = public_base_url(request)
    return _json({"access_token": _token_json(new, new_value, token.grant.access, base, now)})


# --- the resource server ---------------------------------------------------------------------


async def _authorize(
    request: HttpRequest, *, any_of: frozenset[str], receiver_id: int | None, now: datetime
) -> Grant:
    """The grant behind the request's token, after its signature and scope are checked."""
    value = _bearer(request)
    if value is None:
        raise InvalidToken("an access token is required (Authorization: GNAP <token>)")
    token = await _db(selectors.access_token_get)(value=value)
    if token is None:
        raise InvalidToken("unknown access token")
    grant = token.grant
    if token.revoked_at is not None or grant.revoked_at is not None:
        raise InvalidToken("the access token was revoked")
    if token.expires_at <= now:
        raise InvalidToken("the access token expired")
    await _verify_for_grant(request, grant)
    if not any_of & set(grant.actions):
        raise Forbidden(f"the grant does not allow this (needs one of {sorted(any_of)})")
    if (
        receiver_id is not None
        and grant.receiver_id is not None
        and grant.receiver_id != receiver_id
    ):
        raise Forbidden("the grant is for another wallet address")
    return grant


def _uint(value: Any, what: str) -> int:
    if not isinstance(value, str) or not value.isdigit() or len(value) > 20:
        raise OpenPaymentsError(f"{what} must be a string of digits")
    number = int(value)
    if not 0 < number <= UINT64_MAX:
        raise OpenPaymentsError(f"{what} must be between 1 and 2^64-1")
    return number


def _wallet(url: Any, base: str) -> selectors.WalletAddress | None:
    if not isinstance(url, str):
        return None
    return selectors.wallet_address_resolve(url=url, base_url=base)


async def _create(request: HttpRequest, base: str, now: datetime) -> HttpResponse:
    body = _body(request)
    url = body.get("walletAddress")
    wallet = await _db(_wallet)(url, base)
    # The token and signature first: an unauthorized caller learns nothing from the body.
    grant = await _authorize(
        request,
        any_of=frozenset({"create"}),
        receiver_id=None if wallet is None else wallet.receiver.id,
        now=now,
    )
    if not isinstance(url, str):
        raise OpenPaymentsError("walletAddress is required")
    if wallet is None:
        raise NotFound(f"{url[:200]} is not a wallet address of this server")
    receiver = wallet.receiver
    extra = set(body) - {"walletAddress", "incomingAmount", "expiresAt", "metadata"}
    if extra:
        raise OpenPaymentsError(f"unknown fields: {sorted(extra)}")
    incoming_amount = None
    amount = body.get("incomingAmount")
    if amount is not None:
        if not isinstance(amount, dict):
            raise OpenPaymentsError("incomingAmount must be {value, assetCode, assetScale}")
        account = receiver.account
        if (
            amount.get("assetCode") != account.asset_code
            or amount.get("assetScale") != account.asset_scale
        ):
            raise OpenPaymentsError(
                f"incomingAmount must be in the wallet address's asset "
                f"({account.asset_code}, scale {account.asset_scale})"
            )
        incoming_amount = _uint(amount.get("value"), "incomingAmount.value")
    expires_at = None
    if body.get("expiresAt") is not None:
        raw = body["expiresAt"]
        expires_at = parse_datetime(raw) if isinstance(raw, str) else None
        if expires_at is None or expires_at.tzinfo is None:
            raise OpenPaymentsError("expiresAt must be an RFC 3339 date-time with a zone")
        if expires_at <= now:
            raise OpenPaymentsError("expiresAt is in the past")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise OpenPaymentsError("metadata must be an object")

    def create() -> dict[str, Any]:
        payment = services.incoming_payment_create(
            wallet=wallet,
            client=grant.client,
            incoming_amount=incoming_amount,
            expires_at=expires_at,
            metadata=metadata,
            now=now,
        )
        return _payment_json(payment, base, now, methods=True)

    return _json(await _db(create)(), status=201)


async def _list(request: HttpRequest, base: str, now: datetime) -> HttpResponse:
    url = request.GET.get("wallet-address")
    wallet = await _db(_wallet)(url, base)
    grant = await _authorize(
        request,
        any_of=frozenset({"list", "list-all", "read-all"}),
        receiver_id=None if wallet is None else wallet.receiver.id,
        now=now,
    )
    if url is None:
        raise OpenPaymentsError("the wallet-address query parameter is required")
    if wallet is None:
        raise NotFound(f"{url[:200]} is not a wallet address of this server")
    everyone = bool({"list-all", "read-all"} & set(grant.actions))
    try:
        first = int(request.GET.get("first", DEFAULT_PAGE))
    except ValueError:
        raise OpenPaymentsError("first must be a number") from None
    if not 1 <= first <= MAX_PAGE:
        raise OpenPaymentsError(f"first must be 1 to {MAX_PAGE}")
    cursor = request.GET.get("cursor")

    def page() -> dict[str, Any]:
        rows, more = selectors.incoming_payment_page(
            wallet=wallet,
            client=None if everyone else grant.client,
            after=cursor,
            first=first,
        )
        pagination: dict[str, Any] = {"hasPreviousPage": cursor is not None, "hasNextPage": more}
        if rows:
            pagination["startCursor"] = str(rows[0].id)
            pagination["endCursor"] = str(rows[-1].id)
        result = [_payment_json(p, base, now, methods=False) for p in rows]
        return {"pagination": pagination, "result": result}

    return _json(await _db(page)())


@_handled
async def incoming_payments(request: HttpRequest) -> HttpResponse:
    """``POST``: create (``create``); ``GET ?wallet-address=``: list (``list``: the
    client's own; ``list-all``/``read-all``: all)."""
    _method(request, "GET", "POST")
    base = public_base_url(request)
    now = timezone.now()
    if request.method == "POST":
        return await _create(request, base, now)
    return await _list(request, base, now)


async def _payment_or_404(payment_id: str) -> IncomingPaymentResource:
    payment = await _db(selectors.incoming_payment_get)(payment_id=payment_id)
    if payment is None:
        raise NotFound("no such incoming payment")
    return payment


@_handled
async def incoming_payment(request: HttpRequest, payment_id: str) -> HttpResponse:
    """``GET``: without ``Authorization`` the public view (``authServer``,
    ``receivedAmount``); with a token (``read`` for the client's own, ``read-all``) the full
    incoming payment with its ``methods``."""
    _method(request, "GET")
    base = public_base_url(request)
    now = timezone.now()
    payment = await _payment_or_404(payment_id)
    if "Authorization" not in request.headers:

        def public() -> dict[str, Any]:
            state = selectors.incoming_payment_state(payment=payment, now=now)
            return {
                "authServer": auth_server_url(base),
                "receivedAmount": _amount(state.received, payment.receiver),
            }

        return _json(await _db(public)())
    grant = await _authorize(
        request, any_of=frozenset({"read", "read-all"}), receiver_id=payment.receiver_id, now=now
    )
    if "read-all" not in grant.actions and payment.client != grant.client:
        raise Forbidden("the grant reads only its own client's incoming payments")
    return _json(await _db(_payment_json)(payment, base, now, methods=True))


@_handled
async def incoming_payment_complete(request: HttpRequest, payment_id: str) -> HttpResponse:
    """``POST .../complete`` (``complete``): no more money is taken for it."""
    _method(request, "POST")
    base = public_base_url(request)
    now = timezone.now()
    payment = await _payment_or_404(payment_id)
    await _authorize(
        request, any_of=frozenset({"complete"}), receiver_id=payment.receiver_id, now=now
    )
    if payment.expires_at is not None and payment.expires_at <= now:
        raise OpenPaymentsError("the incoming payment expired")

    def complete() -> dict[str, Any]:
        done = services.incoming_payment_complete(payment=payment, now=now)
        return _payment_json(done, base, now, methods=False)

    return _json(await _db(complete)())
