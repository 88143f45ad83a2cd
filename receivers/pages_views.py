"""Views of monetized pages: the public page, its per-visitor wallet address (and SPSP
endpoint), the status endpoint (the fallback of the WebSocket), and the owner's pages
under ``/me/pages/``."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from receivers.open_payments.views import wallet_address_response
from receivers.pages import (
    PageError,
    page_create,
    page_get_for_user,
    page_get_visible,
    page_list_for_user,
    page_status,
    page_update,
    paid_html,
    parse_visitor,
    session_visitor,
    session_visitor_ensure,
    visitor_pointer,
    visitor_spsp_answer,
    visitor_spsp_url,
    visitor_stream_answer,
    visitor_text,
)
from receivers.selling_forms import PageCreateForm, PageEditForm
from receivers.spsp import (
    Representation,
    negotiate,
    not_acceptable,
    preflight,
    receiver_not_found,
    spsp4_response,
    spsp_response,
)

_SPSP_METHODS = ("GET", "HEAD", "OPTIONS")


def _not_found(request: HttpRequest, reason: str) -> HttpResponse:
    return render(request, "receivers/not_found.html", {"reason": reason}, status=404)


@require_http_methods(["GET", "HEAD"])
def page_detail(request: HttpRequest, slug: str) -> HttpResponse:
    """``/pages/<slug>/``: the public part for everyone; the paid part only once this
    session's visitor id has received the threshold (rendered by the server)."""
    page = page_get_visible(slug=slug, user=request.user)
    if page is None:
        return _not_found(request, f"no page at /pages/{slug}/")
    visitor = session_visitor_ensure(request.session, slug)
    status = page_status(page=page, visitor=visitor)
    spsp_url = visitor_spsp_url(page=page, visitor=visitor, request=request)
    visitor_id = visitor_text(visitor)
    config = {
        "spsp_url": spsp_url,
        "ws_path": f"/ws/pages/{slug}/{visitor_id}",
        "status_url": f"/pages/{slug}/status",
        "unlocked": status.unlocked,
    }
    response = render(
        request,
        "receivers/pages/detail.html",
        {
            "page": page,
            "status": status,
            "paid_html": paid_html(page) if status.unlocked else "",
            "spsp_url": spsp_url,
            # The same URL: a wallet address to Open Payments clients, SPSP to the others.
            "wallet_url": spsp_url,
            "pointer": visitor_pointer(spsp_url),
            "visitor_id": visitor_id,
            "config": config,
            "account": page.receiver.account,
        },
    )
    response["Cache-Control"] = "private, no-store"
    return response


@csrf_exempt  # never changes state
def page_spsp(request: HttpRequest, slug: str, visitor: str) -> HttpResponse:
    """``/pages/<slug>/spsp/<visitor id>``, what the page's tags point at: by content
    negotiation as on a pointer, the Open Payments wallet address of the page for this
    visitor (``application/json``: today's Web Monetization extension; the incoming
    payments created on it count for the visitor), SPSP4 or SPSP whose addresses are tagged
    with the visitor id (older senders, ``window.monetize``), or a redirect to the page."""
    if request.method == "OPTIONS":
        return preflight()
    if request.method not in _SPSP_METHODS:
        return HttpResponseNotAllowed(_SPSP_METHODS)
    representation = negotiate(request.headers.get("Accept"))
    page = page_get_visible(slug=slug)
    raw = parse_visitor(visitor)
    if page is None or raw is None:
        reason = f"no page at /pages/{slug}/" if page is None else "not a visitor id"
        return receiver_not_found(reason)
    if representation is Representation.SPSP:
        return spsp_response(visitor_spsp_answer(page=page, visitor=raw))
    if representation is Representation.STREAM:
        return spsp4_response(visitor_stream_answer(page=page, visitor=raw))
    if representation is Representation.WALLET_ADDRESS:
        return wallet_address_response(request, page.receiver, page=page, visitor=raw)
    if representation is Representation.HTML:
        return HttpResponseRedirect(page.get_absolute_url())
    return not_acceptable(representation)


class PageStatusSerializer(serializers.Serializer[Any]):
    type = serializers.CharField(default="status")
    received = serializers.CharField(help_text="base units this session paid (integer string)")
    threshold = serializers.CharField()
    unlocked = serializers.BooleanField()
    paid_html = serializers.CharField(required=False, help_text="only once unlocked")


class PageStatusView(APIView):
    """``GET /pages/<slug>/status``: this session's progress on the page; the paid part
    (``paid_html``) once unlocked. 404 for a session that never opened the page."""

    authentication_classes = [SessionAuthentication]  # the owner may preview a draft
    permission_classes = [AllowAny]

    @extend_schema(responses={200: PageStatusSerializer})
    def get(self, request: Request, slug: str) -> Response:
        page = page_get_visible(slug=slug, user=request.user)
        if page is None:
            return Response({"detail": f"no page at /pages/{slug}/"}, status=404)
        visitor = session_visitor(request.session, slug)
        if visitor is None:
            return Response({"detail": "open the page first: no visitor id here"}, status=404)
        status = page_status(page=page, visitor=visitor)
        body: dict[str, Any] = {"type": "status", **status.as_dict()}
        if status.unlocked:
            body["paid_html"] = paid_html(page)
        return Response(body, headers={"Cache-Control": "private, no-store"})


# --- the owner's pages ---------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def my_pages(request: HttpRequest) -> HttpResponse:
    """``/me/pages/``: my monetized pages, and a form for a new one."""
    user: Any = request.user
    form = PageCreateForm(request.POST or None, user=user)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            page = page_create(
                owner=user,
                receiver=data["receiver"],
                slug=data["slug"],
                title=data["title"],
                public_body=data["public_body"],
                paid_body=data["paid_body"],
                threshold=data["threshold"],
                published=data["published"],
            )
        except PageError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, f"Page /pages/{page.slug}/ created.")
            return HttpResponseRedirect(f"/me/pages/{page.slug}/")
    status = 400 if request.method == "POST" else 200
    return render(
        request,
        "receivers/pages/mine.html",
        {"pages": page_list_for_user(user=user), "form": form},
        status=status,
    )


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def my_page_edit(request: HttpRequest, slug: str) -> HttpResponse:
    """``/me/pages/<slug>/``: edit one of my pages."""
    user: Any = request.user
    page = page_get_for_user(user=user, slug=slug)
    if page is None:
        return _not_found(request, f"you have no page at /pages/{slug}/")
    initial = {
        "title": page.title,
        "public_body": page.public_body,
        "paid_body": page.paid_body,
        "threshold": int(page.threshold),
        "published": page.published,
    }
    form = PageEditForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            page_update(page=page, **form.cleaned_data)
        except PageError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, "Saved.")
            return HttpResponseRedirect(f"/me/pages/{page.slug}/")
    status = 400 if request.method == "POST" else 200
    return render(request, "receivers/pages/edit.html", {"page": page, "form": form}, status=status)
