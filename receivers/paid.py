"""Paid HTTP APIs: HTTP-ILP (RFC 0014 draft 3, ``shared/spec/receiver/http-ilp.md``).

A client names a prepaid balance with ``Pay-Token`` (base64url of 16 random bytes, as
ilp-fetch does; any 1-128 character token is accepted). We tell it how to top the balance
up in ``Pay: interledger-psk2 <destination> <base64 shared secret> <price>``; each call
is charged ``price`` and answered with the remaining ``Pay-Balance``.

Crediting — a token's balance is never stored. It is::

    credited(token) - PaidToken.charged

where ``credited`` sums the receipts of the paid API's receiver that are attributable to
the token, by any of the three conventions of the interop README:

1. the PSK2 Payment ID is the 16 token bytes (ilp-fetch 1.0 / koa-ilp 1.0, draft 1);
2. the PSK2 application data starts with the 16 token bytes (ilp-fetch 1.1+ / koa-ilp 1.1,
   draft 2: our receipts take those bytes as the payment id);
3. the destination was issued for the token: a 402 (or 204) for a request that carried
   ``Pay-Token`` names an address tagged with ``pay_token_tag(token)`` (see
   :mod:`receivers.addresses`), whose receipts are keyed ``tag:<tag>:<packet key>``.

1 and 2 count only receipts keyed ``psk2:`` (:data:`receivers.addresses.PAYER_ID_KEY_PREFIX`):
an id the payer chose and sent encrypted, which only the payer can present. A STREAM
connection id (``stream:`` receipts) and the draft-2 id derived from the address
(``psk2-addr:``) are digests of a destination that every connector on the path reads, so
money paid to the receiver's plain pointer that way credits no token.

STREAM (RFC 0029) senders top a token up through the token's own payment pointer: an
answer to a request with ``Pay-Token`` carries ``Link: <token pointer>; rel="monetization"``
(:func:`paid_token_spsp_url`, ``/api/v1/paid/<receiver>/tokens/<tag>``), whose SPSP4
answer is a STREAM address tagged with the token's tag (and whose SPSP answer a PSK2 one).
Its packets are recorded by :mod:`receivers.stream_receiver` with the same tagged receipt
keys, so they are convention 3: the same receipts, the same sum, each packet once (the
receipt key is unique). The ``Pay`` header stays ``interledger-psk2`` (the clients that
read it speak PSK2); the URL holds the tag, never the token, so it spends nothing.

A receipt of a tagged address counts only for its tag (never also by payment id), so one
chunk is never credited to two beneficiaries; a token is mapped to a payment id only when
it is the canonical spelling of 16 bytes, so two token strings never share receipts.
Receipts are written by the hot path before the Fulfill (``book.commit``), so a request
made right after a payment sees it, whatever the Celery task ``apply_receipts`` has done.

Charging locks the token's row (``select_for_update``; SQLite serialises writers with
``BEGIN IMMEDIATE``), re-reads ``credited`` and moves ``charged`` only if the balance
covers the price: concurrent calls never overspend. A call whose handler fails (5xx,
an exception) or is throttled (429) is refunded.

Two ways to use it:

- plain Django views: ``@paid(price=100, receiver="paidapi")``;
- DRF views: ``permission_classes = [PaidEndpoint]`` on a view that mixes in
  :class:`PaidViewMixin` (which adds the headers, answers OPTIONS with 204 and refunds).

Both answer ``OPTIONS`` with 204 + ``Pay`` + ``Pay-Balance``; a call without a token, or
with an unfunded or insufficient one, with 402 + ``Pay`` + ``Pay-Balance`` and koa-ilp's
reason text; a malformed token with 400. Every answer also carries
``Link: <spsp url>; rel="monetization"`` (the token's payment pointer, or the receiver's
when the call had no token) and CORS headers.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, TypeVar, cast

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.db.models import F, Q, Sum
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.utils import timezone
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ilp.errors import DecodeError
from ilp.oer import UINT64_MAX
from ilp.psk2 import b64url_decode, b64url_encode
from ilp.stream import ReceiptSetup
from payments.models import Receipt
from receivers.addresses import (
    PAYER_ID_KEY_PREFIX,
    STREAM_IV_LENGTH,
    TOKEN_LENGTH,
    issue_address,
    issue_stream,
    issue_tagged_address,
    tag_key_prefix,
    tag_segment,
)
from receivers.errors import PointerNameTaken
from receivers.models import PaidToken, Receiver
from receivers.pointers import public_base_url, spsp_url_for
from receivers.selectors import receiver_get
from receivers.services import receiver_ensure, user_ensure
from receivers.spsp import SpspAnswer

logger = logging.getLogger(__name__)

PAY_METHOD = "interledger-psk2"
PAY_TOKEN_HEADER = "Pay-Token"
DEFAULT_RECEIVER = "paidapi"
MAX_TOKEN_LENGTH = 128
PAYMENT_ID_LENGTH = 16
_TOKEN = re.compile(r"[A-Za-z0-9_\-+/=.~]{1,128}")
_TAG_LABEL = b"ilp-http-pay-token:"
_EXPOSED = "Pay, Pay-Balance, Link"
_REFUND_STATUSES = frozenset({429})
# Where receivers.api_urls (mounted at api/v1/) serves a token's payment pointer.
TOKEN_POINTER_PATH = "/api/v1/paid/{name}/tokens/{tag}"

# koa-ilp's texts, byte for byte (vector koa_ilp_1_1_1_exchanges).
MSG_NO_TOKEN = "No valid payment token provided"
MSG_NO_FUNDS = "Your Payment Token {token} has no funds available. It needs at least {price}"
MSG_INSUFFICIENT = (
    "Your Payment Token {token} does not have sufficient funds available "
    "(has: {balance}. It needs at least: {price})"
)
MSG_BAD_TOKEN = (
    "Pay-Token must be 1 to 128 characters of base64/base64url (send base64url of 16 random bytes)"
)


# --- tokens -----------------------------------------------------------------------------------


class InvalidPayToken(ValueError):
    """A ``Pay-Token`` header we cannot key a balance on; the message says why."""


@dataclass(frozen=True, slots=True)
class PayToken:
    """A parsed ``Pay-Token``: the text (the balance key), the 16 bytes that PSK2 Payment
    IDs and application data carry when the text is their canonical base64url, and the
    tag of the addresses issued for it."""

    text: str
    payment_id: bytes | None
    tag: bytes

    @classmethod
    def parse(cls, text: str) -> PayToken:
        if not isinstance(text, str) or _TOKEN.fullmatch(text) is None:
            raise InvalidPayToken(MSG_BAD_TOKEN)
        return cls(text, _token_payment_id(text), pay_token_tag(text))


def _token_payment_id(text: str) -> bytes | None:
    try:
        raw = b64url_decode(text)
    except DecodeError:
        return None
    if len(raw) != PAYMENT_ID_LENGTH or b64url_encode(raw) != text:
        return None
    return raw


def pay_token_tag(text: str) -> bytes:
    """The 16-byte address tag of the token ``text`` (SHA-256, domain-separated)."""
    return hashlib.sha256(_TAG_LABEL + text.encode("ascii")).digest()[:16]


def parse_pay_token(header: str | None) -> PayToken | None:
    """The request's token, ``None`` when absent; :class:`InvalidPayToken` when malformed."""
    if header is None or not header.strip():
        return None
    return PayToken.parse(header.strip())


def new_pay_token() -> str:
    """A fresh token the way ilp-fetch makes one: base64url of 16 random bytes."""
    return b64url_encode(secrets.token_bytes(PAYMENT_ID_LENGTH))


@dataclass(frozen=True, slots=True)
class PayHeader:
    """A parsed ``Pay`` header (what clients do: split on single spaces)."""

    destination: str
    shared_secret: bytes
    price: int | None


_PAY = re.compile(r"^interledger-psk2 (\S+) (\S+)(?: (\d+))?$")


def parse_pay(header: str | None) -> PayHeader:
    """``Pay: interledger-psk2 <destination> <secret> [<price>]``; ``ValueError`` otherwise.
    The secret is read leniently (either base64 alphabet, padding optional)."""
    match = _PAY.match((header or "").strip())
    if match is None:
        raise ValueError(f"not an interledger-psk2 Pay header: {header!r}")
    try:
        secret = b64url_decode(match[2])
    except DecodeError as exc:
        raise ValueError(f"the Pay secret is not base64: {exc}") from None
    price = match[3]
    return PayHeader(match[1], secret, int(price) if price else None)


# --- selectors ----------------------------------------------------------------------------------


def paid_receiver_get_or_create(name: str) -> Receiver:
    """The receiver a paid API is paid to, created on first use (user ``name``, who has no
    usable password until an admin sets one), like ``add_pointer name``."""
    for attempt in range(3):
        receiver = receiver_get(name=name)
        if receiver is not None:
            return receiver
        try:
            user, _ = user_ensure(username=name)
            receiver, _ = receiver_ensure(user=user, name=name, description="Paid API")
            return receiver
        except (IntegrityError, PointerNameTaken):
            if attempt == 2:
                raise
            # A concurrent first call is creating the user or the receiver: read again.
    raise AssertionError("unreachable")


def paid_token_credited(*, receiver: Receiver, token: PayToken) -> int:
    """Everything ``receiver`` received for ``token`` (see the module docstring). One query
    on indexed columns: ``(account, payment_id)`` and the unique ``key``."""
    attributable = Q(key__startswith=tag_key_prefix(token.tag))
    if token.payment_id is not None:
        # Only untagged PSK2 receipts whose payment id the payer chose (never a STREAM
        # connection id or an id derived from the address: anyone on the path reads those).
        attributable |= Q(payment_id=token.payment_id.hex()) & Q(
            key__startswith=PAYER_ID_KEY_PREFIX
        )
    total = (
        Receipt.objects.filter(account_id=receiver.account_id)
        .filter(attributable)
        .aggregate(total=Sum("amount"))["total"]
    )
    return int(total or 0)


def paid_token_balance(*, receiver: Receiver, token: PayToken) -> int:
    """What ``token`` may still spend at ``receiver`` (credited minus charged)."""
    charged = (
        PaidToken.objects.filter(receiver=receiver, token=token.text)
        .values_list("charged", flat=True)
        .first()
    )
    return paid_token_credited(receiver=receiver, token=token) - int(charged or 0)


# --- services ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Charge:
    """The outcome of :func:`paid_token_charge`: ``ok`` when charged; ``balance`` is what
    is left after the charge (``ok``) or what there is (not ``ok``)."""

    ok: bool
    balance: int


def _check_price(price: int) -> int:
    if not isinstance(price, int) or isinstance(price, bool) or not 0 <= price <= UINT64_MAX:
        raise ValueError(f"a price is an integer in 0..2**64-1, not {price!r}")
    return price


def paid_token_charge(*, receiver: Receiver, token: PayToken, price: int) -> Charge:
    """Charge ``price`` to ``token`` if its balance covers it, atomically.

    Takes the token's row lock (``SELECT ... FOR UPDATE``; the row is created, under the
    unique constraint, the first time a charge can succeed) and reads ``credited`` with the
    lock held, so concurrent calls of one token are serialised and never overspend. Not
    idempotent: every successful call charges once more. A token that cannot pay leaves
    no row behind.
    """
    _check_price(price)
    with transaction.atomic():
        row = _lock_token(receiver, token)
        credited = paid_token_credited(receiver=receiver, token=token)
        if row is None:
            if credited < price:
                return Charge(False, credited)
            row = _create_token_row(receiver, token)
            credited = paid_token_credited(receiver=receiver, token=token)
        balance = credited - int(row.charged)
        if balance < price:
            return Charge(False, balance)
        PaidToken.objects.filter(pk=row.pk).update(
            charged=F("charged") + price, calls=F("calls") + 1, last_used_at=timezone.now()
        )
        return Charge(True, balance - price)


def _lock_token(receiver: Receiver, token: PayToken) -> PaidToken | None:
    return PaidToken.objects.select_for_update().filter(receiver=receiver, token=token.text).first()


def _create_token_row(receiver: Receiver, token: PayToken) -> PaidToken:
    """Insert the token's row (or find the one a concurrent charge inserted) and lock it."""
    try:
        with transaction.atomic():
            PaidToken.objects.create(
                receiver=receiver,
                token=token.text,
                payment_id=token.payment_id.hex() if token.payment_id else "",
                tag=token.tag.hex(),
            )
    except IntegrityError:
        pass  # a concurrent first charge made it; the lock below waits for that one
    row = _lock_token(receiver, token)
    assert row is not None
    return row


def paid_token_refund(*, receiver: Receiver, token: PayToken, price: int) -> bool:
    """Give back one charge of ``price`` (the call it paid for failed). A conditional
    update: never takes ``charged`` below zero. ``True`` if something was refunded."""
    _check_price(price)
    if price == 0:
        return False
    updated = PaidToken.objects.filter(
        receiver=receiver, token=token.text, charged__gte=price, calls__gte=1
    ).update(charged=F("charged") - price, calls=F("calls") - 1)
    return updated == 1


# --- the HTTP side ------------------------------------------------------------------------------


@dataclass(slots=True)
class PaidState:
    """What one request to a paid endpoint came to; the handler can read it (like koa-ilp's
    ``ctx.state``): ``token``, ``price``, ``balance`` (after this call's charge), ``paid``."""

    receiver: Receiver
    price: int
    token: PayToken | None
    balance: int = 0
    paid: bool = False
    refunded: bool = False
    reason: str = ""
    _headers: dict[str, str] | None = field(default=None, repr=False)

    def refund(self) -> None:
        """Undo this call's charge, once."""
        if self.paid and not self.refunded and self.token is not None:
            if paid_token_refund(receiver=self.receiver, token=self.token, price=self.price):
                self.balance += self.price
            self.refunded = True

    def headers(self, request: HttpRequest) -> dict[str, str]:
        """``Pay``, ``Pay-Balance``, ``Link`` and the CORS/cache headers of the answer."""
        pay = pay_header(self.receiver, self.token, self.price)
        base_url = public_base_url(request)
        if self.token is None:
            spsp = spsp_url_for(self.receiver.name, base_url=base_url)
        else:
            spsp = paid_token_spsp_url(self.receiver.name, self.token.tag, base_url=base_url)
        return {
            "Pay": pay,
            "Pay-Balance": str(self.balance),
            "Link": f'<{spsp}>; rel="monetization"',
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Expose-Headers": _EXPOSED,
            "Cache-Control": "private, no-store",
        }


def pay_header(receiver: Receiver, token: PayToken | None, price: int) -> str:
    """``interledger-psk2 <destination> <secret, standard base64 with padding> <price>``.

    A fresh address per answer (as koa-ilp); tagged for ``token`` when there is one, so a
    payment to it credits the token whatever Payment ID or data the sender uses.
    """
    random_part = secrets.token_bytes(TOKEN_LENGTH)
    issued = (
        issue_address(receiver.name, random_part)
        if token is None
        else issue_tagged_address(receiver.name, token.tag, random_part)
    )
    secret = base64.b64encode(issued.shared_secret).decode("ascii")
    return f"{PAY_METHOD} {issued.destination} {secret} {price}"


def paid_token_spsp_url(receiver_name: str, tag: bytes, *, base_url: str) -> str:
    """The SPSP URL of the token whose tag is ``tag`` at ``receiver_name``: the payment
    pointer STREAM (and PSK2) senders pay to top that token up (``receivers_api:
    paid-token-spsp``; spelled out, not reversed, so that a paid view served under another
    URLconf still names the site's route)."""
    return f"{base_url}{TOKEN_POINTER_PATH.format(name=receiver_name, tag=tag_segment(tag))}"


def paid_token_spsp_answer(
    *, receiver: Receiver, tag: bytes, stream: bool, receipt: ReceiptSetup | None = None
) -> SpspAnswer:
    """A fresh SPSP answer whose address is tagged ``tag``: STREAM credentials (with RFC
    0039 receipts when ``receipt``) when ``stream``, else PSK2 ones. Every packet paid to
    it is a receipt keyed ``tag:<tag>:…``, which :func:`paid_token_credited` counts."""
    if stream:
        issued_stream = issue_stream(
            receiver.name, secrets.token_bytes(STREAM_IV_LENGTH), tag=tag, receipt=receipt
        )
        destination, secret = issued_stream.destination, issued_stream.shared_secret
        receipts_enabled = issued_stream.receipts_enabled
    else:
        issued = issue_tagged_address(receiver.name, tag, secrets.token_bytes(TOKEN_LENGTH))
        destination, secret, receipts_enabled = issued.destination, issued.shared_secret, False
    return SpspAnswer(
        destination_account=destination,
        shared_secret=secret,
        asset_code=receiver.account.asset_code,
        asset_scale=receiver.account.asset_scale,
        receiver_name=receiver.description or receiver.name,
        receipts_enabled=receipts_enabled,
    )


def _reason(token: PayToken | None, balance: int, price: int) -> str:
    if token is None:
        return MSG_NO_TOKEN
    if balance <= 0:
        return MSG_NO_FUNDS.format(token=token.text, price=price)
    return MSG_INSUFFICIENT.format(token=token.text, balance=balance, price=price)


def paid_evaluate(
    *, receiver: Receiver, price: int, token: PayToken | None, charge: bool
) -> PaidState:
    """The state of one call: charged when ``charge`` and the balance covers ``price``;
    otherwise the balance and the 402 reason. ``price`` 0 is always paid (koa-ilp)."""
    state = PaidState(receiver=receiver, price=_check_price(price), token=token)
    if token is None:
        state.reason = MSG_NO_TOKEN
        state.paid = price == 0 and charge
        return state
    if charge and price > 0:
        outcome = paid_token_charge(receiver=receiver, token=token, price=price)
        state.paid, state.balance = outcome.ok, outcome.balance
    else:
        state.balance = paid_token_balance(receiver=receiver, token=token)
        state.paid = charge
    if not state.paid:
        state.reason = _reason(token, state.balance, price)
    return state


def resolve_price(price: int | Callable[[HttpRequest], int] | None, request: HttpRequest) -> int:
    """A fixed price, a function of the request, or ``settings.ILP_PAID_API_PRICE``."""
    if price is None:
        value: int = settings.ILP_PAID_API_PRICE
    elif callable(price):
        value = price(request)
    else:
        value = price
    return _check_price(value)


def _with_headers(response: HttpResponseBase, headers: dict[str, str]) -> HttpResponseBase:
    for name, value in headers.items():
        response[name] = value
    return response


def _preflight_headers(request: HttpRequest) -> dict[str, str]:
    asked = request.headers.get("Access-Control-Request-Method", "")
    methods = asked.upper() if asked.isalpha() else "GET, HEAD, POST, PUT, PATCH, DELETE"
    return {
        "Access-Control-Allow-Methods": f"{methods}, OPTIONS",
        "Access-Control-Allow-Headers": "Pay-Token, Content-Type, Authorization",
        "Access-Control-Max-Age": "600",
    }


def _text(status_code: int, body: str) -> HttpResponse:
    return HttpResponse(body, status=status_code, content_type="text/plain; charset=utf-8")


# --- plain Django views: @paid ------------------------------------------------------------------

ViewFunc = TypeVar("ViewFunc", bound=Callable[..., HttpResponseBase])


def paid(
    price: int | Callable[[HttpRequest], int] | None = None, *, receiver: str = DEFAULT_RECEIVER
) -> Callable[[ViewFunc], ViewFunc]:
    """Charge each call of a (synchronous) Django view ``price`` (default
    ``settings.ILP_PAID_API_PRICE``), paid to the receiver ``receiver``.

    ``OPTIONS`` → 204 with the headers, without calling the view; no token, or one that
    cannot pay → 402 ``text/plain`` with koa-ilp's reason; malformed token → 400; else the
    view runs with ``request.paid`` (a :class:`PaidState`) and its response gets the
    headers. A view that raises or answers 5xx/429 is refunded.
    """

    def decorator(view: ViewFunc) -> ViewFunc:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            cost = resolve_price(price, request)
            try:
                token = parse_pay_token(request.headers.get(PAY_TOKEN_HEADER))
            except InvalidPayToken as exc:
                return _text(400, str(exc))
            target = paid_receiver_get_or_create(receiver)
            if request.method == "OPTIONS":
                state = paid_evaluate(receiver=target, price=cost, token=token, charge=False)
                response = HttpResponse(status=204)
                _with_headers(response, _preflight_headers(request))
                return _with_headers(response, state.headers(request))
            if cost == 0:
                return view(request, *args, **kwargs)
            state = paid_evaluate(receiver=target, price=cost, token=token, charge=True)
            if not state.paid:
                return _with_headers(_text(402, state.reason), state.headers(request))
            request.paid = state  # type: ignore[attr-defined]
            try:
                result = view(request, *args, **kwargs)
            except BaseException:
                state.refund()
                raise
            if result.status_code >= 500 or result.status_code in _REFUND_STATUSES:
                state.refund()
            return _with_headers(result, state.headers(request))

        return cast(ViewFunc, wrapped)

    return decorator


# --- DRF views: PaidEndpoint + PaidViewMixin -----------------------------------------------------


class PaymentRequired(APIException):
    status_code = status.HTTP_402_PAYMENT_REQUIRED
    default_detail = MSG_NO_TOKEN
    default_code = "payment_required"


class PaidEndpoint(BasePermission):
    """DRF permission: every call must be paid (HTTP-ILP).

    The price is the view's ``paid_price`` (an int, or a method ``get_paid_price(request)``),
    else ``settings.ILP_PAID_API_PRICE``; the receiver is the view's ``paid_receiver``
    (default ``paidapi``, created on first use). The view must mix in
    :class:`PaidViewMixin`, which puts the headers on every answer. A method the view does
    not implement is not charged (the 405 follows).
    """

    message = MSG_NO_TOKEN

    def has_permission(self, request: Request, view: APIView) -> bool:
        if not isinstance(view, PaidViewMixin):
            raise ImproperlyConfigured(
                f"{type(view).__name__} uses PaidEndpoint: it must mix in PaidViewMixin"
            )
        method = (request.method or "").lower()
        cost = view.get_paid_price(request)
        if cost == 0:
            view.paid_state = None  # free: no headers, nothing charged (as koa-ilp)
            return True
        try:
            token = parse_pay_token(request.headers.get(PAY_TOKEN_HEADER))
        except InvalidPayToken as exc:
            raise ParseError(str(exc)) from None
        target = paid_receiver_get_or_create(view.paid_receiver)
        if method == "options" or method not in view.http_method_names or not hasattr(view, method):
            view.paid_state = paid_evaluate(receiver=target, price=cost, token=token, charge=False)
            return True
        state = paid_evaluate(receiver=target, price=cost, token=token, charge=True)
        view.paid_state = state
        if not state.paid:
            raise PaymentRequired(state.reason)
        return True


class PaidViewMixin(APIView):
    """For DRF views guarded by :class:`PaidEndpoint` (``class V(PaidViewMixin, APIView)``
    or any generic view): ``OPTIONS`` → 204; the ``Pay``, ``Pay-Balance`` and ``Link``
    headers on every answer (402 included; the 402 body is ``{"detail", "price",
    "balance"}``); a refund when the handler fails (5xx, exception) or the call is
    throttled (429). ``self.paid_state`` is the :class:`PaidState`."""

    paid_price: int | None = None
    paid_receiver: str = DEFAULT_RECEIVER
    paid_state: PaidState | None = None

    def get_paid_price(self, request: Request) -> int:
        return resolve_price(self.paid_price, request)

    def options(self, request: Request, *args: Any, **kwargs: Any) -> Response:  # type: ignore[override]
        return Response(status=status.HTTP_204_NO_CONTENT, headers=_preflight_headers(request))

    def handle_exception(self, exc: Exception) -> Response:
        state = self.paid_state
        if isinstance(exc, PaymentRequired) and state is not None:
            return Response(
                {"detail": state.reason, "price": str(state.price), "balance": str(state.balance)},
                status=status.HTTP_402_PAYMENT_REQUIRED,
            )
        if state is not None and not isinstance(exc, APIException):
            state.refund()
        return super().handle_exception(exc)

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        state = self.paid_state
        if state is not None:
            if response.status_code >= 500 or response.status_code in _REFUND_STATUSES:
                state.refund()
            _with_headers(response, state.headers(request))
        return response
