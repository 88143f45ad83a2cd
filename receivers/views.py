"""Views of receivers: SPSP endpoints, the pointer pages and the user's pages. Thin: they
negotiate, call a selector or a service, and render."""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponsePermanentRedirect,
    HttpResponseRedirect,
)
from django.shortcuts import render
from django.urls import Resolver404, resolve
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from receivers.addresses import (
    STREAM_IV_LENGTH,
    TOKEN_LENGTH,
    issue_address,
    issue_stream,
    receivers_prefix,
)
from receivers.errors import ReceiverError
from receivers.forms import ReceiverCreateForm, ReceiverUpdateForm
from receivers.models import Receiver
from receivers.names import name_problem
from receivers.open_payments.views import wallet_address_response
from receivers.pointers import (
    WELL_KNOWN_PATH,
    pointer_for,
    public_base_url,
    site_pointer,
    spsp_url_for,
)
from receivers.qr import qr_svg
from receivers.selectors import (
    receiver_default,
    receiver_get,
    receiver_get_for_user,
    receiver_incoming_payments,
    receiver_list,
    receiver_list_for_user,
    receiver_pending_total,
)
from receivers.services import receiver_create, receiver_update
from receivers.spsp import (
    Representation,
    SpspAnswer,
    negotiate,
    not_acceptable,
    preflight,
    receipt_setup_from_headers,
    receiver_not_found,
    spsp4_response,
    spsp_error,
    spsp_response,
)

_SPSP_METHODS = ("GET", "HEAD", "OPTIONS")


# --- SPSP endpoints (/<name> and /.well-known/pay) ----------------------------------------


@csrf_exempt  # never changes state; a POST gets a clear 405 rather than a CSRF 403
def pointer(request: HttpRequest, name: str) -> HttpResponse:
    """``GET /<name>``: SPSP4 (STREAM) for ``application/spsp4+json``, SPSP (PSK2) for
    ``application/spsp+json``, the pointer's page for HTML."""
    early = _method_check(request)
    if early is not None:
        return early
    representation = negotiate(request.headers.get("Accept"))
    receiver = receiver_get(name=name)
    if receiver is None:
        redirect = _slash_redirect(request)
        if redirect is not None:
            return redirect
        problem = name_problem(name)
        if problem is not None:
            reason = f"'{name[:80]}' cannot be a payment pointer: {problem}"
        else:
            reason = f"no payment pointer named '{name}' on this node"
        return _not_found(request, representation, reason)
    return _answer(request, receiver, representation, path=request.path)


@csrf_exempt
def well_known_pay(request: HttpRequest) -> HttpResponse:
    """``GET /.well-known/pay``: the bare ``$host`` pointer, answered by the site's default
    receiver (see :func:`receivers.selectors.receiver_default`)."""
    early = _method_check(request)
    if early is not None:
        return early
    representation = negotiate(request.headers.get("Accept"))
    receiver = receiver_default()
    if receiver is None:
        return _not_found(request, representation, "this node has no payment pointer yet")
    return _answer(request, receiver, representation, path=WELL_KNOWN_PATH)


@csrf_exempt
def pointer_with_slash(request: HttpRequest, name: str) -> HttpResponse:
    """``/<name>/``: pointers never end in a slash; send lenient clients to ``/<name>``."""
    early = _method_check(request)
    if early is not None:
        return early
    if receiver_get(name=name) is not None:
        query = request.META.get("QUERY_STRING", "")
        return HttpResponsePermanentRedirect(f"/{name}" + (f"?{query}" if query else ""))
    representation = negotiate(request.headers.get("Accept"))
    return _not_found(
        request, representation, f"no payment pointer named '{name[:80]}' on this node"
    )


pointer_with_slash.is_pointer_catch_all = True  # type: ignore[attr-defined]


def _method_check(request: HttpRequest) -> HttpResponse | None:
    if request.method == "OPTIONS":
        return preflight()
    if request.method not in _SPSP_METHODS:
        return HttpResponseNotAllowed(_SPSP_METHODS)
    return None


def _slash_redirect(request: HttpRequest) -> HttpResponse | None:
    """``/admin`` → ``/admin/`` when another route owns the slashed path. Our catch-all
    matches every ``/<segment>``, so Django's ``APPEND_SLASH`` never gets the chance."""
    if not settings.APPEND_SLASH or request.method not in ("GET", "HEAD"):
        return None
    try:
        match = resolve(request.path_info + "/")
    except Resolver404:
        return None
    if getattr(match.func, "is_pointer_catch_all", False):
        return None
    return HttpResponsePermanentRedirect(request.get_full_path(force_append_slash=True))


def _answer(
    request: HttpRequest, receiver: Receiver, representation: Representation, *, path: str
) -> HttpResponse:
    if representation is Representation.SPSP:
        # A fresh token per query: each answer has its own address and shared secret.
        issued = issue_address(receiver.name, secrets.token_bytes(TOKEN_LENGTH))
        answer = SpspAnswer(
            destination_account=issued.destination,
            shared_secret=issued.shared_secret,
            asset_code=receiver.account.asset_code,
            asset_scale=receiver.account.asset_scale,
            receiver_name=receiver.name,
        )
        return spsp_response(answer)
    if representation is Representation.STREAM:
        return _stream_answer(request, receiver)
    if representation is Representation.WALLET_ADDRESS:
        return wallet_address_response(request, receiver)
    if representation is Representation.HTML:
        response = render(
            request, "receivers/pointer.html", _pointer_context(request, receiver, path)
        )
        response["Vary"] = "Accept"
        return response
    return not_acceptable(representation)


def _stream_answer(request: HttpRequest, receiver: Receiver) -> HttpResponse:
    """SPSP4: a fresh STREAM address and secret per query; receipts (RFC 0039) when a
    verifier sent ``Receipt-Nonce``/``Receipt-Secret``."""
    try:
        receipt = receipt_setup_from_headers(request.headers)
    except ValueError as exc:
        return spsp_error(400, str(exc), error_id="InvalidReceiptError", message=str(exc))
    issued = issue_stream(receiver.name, secrets.token_bytes(STREAM_IV_LENGTH), receipt=receipt)
    return spsp4_response(
        SpspAnswer(
            destination_account=issued.destination,
            shared_secret=issued.shared_secret,
            asset_code=receiver.account.asset_code,
            asset_scale=receiver.account.asset_scale,
            receiver_name=receiver.name,
            receipts_enabled=issued.receipts_enabled,
        )
    )


def _not_found(request: HttpRequest, representation: Representation, reason: str) -> HttpResponse:
    if representation is Representation.HTML:
        response = render(request, "receivers/not_found.html", {"reason": reason}, status=404)
        response["Vary"] = "Accept"
        return response
    return receiver_not_found(reason)


def _pointer_context(request: HttpRequest, receiver: Receiver, path: str) -> dict[str, Any]:
    base_url = public_base_url(request)
    if path == WELL_KNOWN_PATH:
        shown_pointer = site_pointer(base_url=base_url)
        spsp_url = f"{base_url}{WELL_KNOWN_PATH}"
    else:
        shown_pointer = pointer_for(receiver.name, base_url=base_url)
        spsp_url = spsp_url_for(receiver.name, base_url=base_url)
    return {
        "receiver": receiver,
        "pointer": shown_pointer,
        "spsp_url": spsp_url,
        "qr": qr_svg(shown_pointer, title=f"Payment pointer {shown_pointer}"),
        "asset_code": receiver.account.asset_code,
        "asset_scale": receiver.account.asset_scale,
    }


# --- public pages ---------------------------------------------------------------------------


@require_http_methods(["GET", "HEAD"])
def home(request: HttpRequest) -> HttpResponse:
    """``/``: what this node is, and the pointers it hosts."""
    base_url = public_base_url(request)
    receivers = [
        {"receiver": r, "pointer": pointer_for(r.name, base_url=base_url)} for r in receiver_list()
    ]
    default = receiver_default()
    return render(
        request,
        "receivers/home.html",
        {
            "ilp_address": settings.ILP_ADDRESS,
            "receivers_prefix": receivers_prefix(),
            "asset_code": settings.ILP_ASSET_CODE,
            "asset_scale": settings.ILP_ASSET_SCALE,
            "base_url": base_url,
            "receivers": receivers,
            "default_receiver": default,
            "site_pointer": site_pointer(base_url=base_url),
        },
    )


# --- the user's pages -------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def me(request: HttpRequest) -> HttpResponse:
    """``/me/``: my pointers with their balances, and a form to add one."""
    form = ReceiverCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            receiver = receiver_create(
                user=request.user,  # type: ignore[arg-type]
                name=form.cleaned_data["name"],
                description=form.cleaned_data["description"],
            )
        except ReceiverError as exc:
            form.add_error("name", exc.message)
        else:
            messages.success(request, f"Payment pointer '{receiver.name}' created.")
            return HttpResponseRedirect(receiver.get_absolute_url())
    base_url = public_base_url(request)
    rows = [
        {
            "receiver": r,
            "pointer": pointer_for(r.name, base_url=base_url),
            "pending": receiver_pending_total(receiver=r),
        }
        for r in receiver_list_for_user(user=request.user)  # type: ignore[arg-type]
    ]
    status = 400 if request.method == "POST" else 200
    return render(request, "receivers/me.html", {"rows": rows, "form": form}, status=status)


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def pointer_detail(request: HttpRequest, name: str) -> HttpResponse:
    """``/me/pointers/<name>/``: one of my pointers, its payments and how to use it."""
    receiver = receiver_get_for_user(user=request.user, name=name)  # type: ignore[arg-type]
    if receiver is None:
        return render(
            request,
            "receivers/not_found.html",
            {"reason": f"you have no payment pointer named '{name}'"},
            status=404,
        )
    form = ReceiverUpdateForm(request.POST or None, initial={"description": receiver.description})
    if request.method == "POST" and form.is_valid():
        receiver_update(receiver=receiver, description=form.cleaned_data["description"])
        messages.success(request, "Saved.")
        return HttpResponseRedirect(receiver.get_absolute_url())
    context = _pointer_context(request, receiver, path=f"/{receiver.name}")
    context.update(
        {
            "form": form,
            "payments": receiver_incoming_payments(receiver=receiver),
            "pending": receiver_pending_total(receiver=receiver),
        }
    )
    status = 400 if request.method == "POST" else 200
    return render(request, "receivers/pointer_detail.html", context, status=status)
