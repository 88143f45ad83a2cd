"""The signed-in user's pages next to ``/me/``: webhooks, API token, paid-API tokens.

Writes go through ``receivers.services`` (webhooks, with the ownership rule) and
:mod:`dashboard.services` (the API token); reads through the selectors scoped to the user
(``receivers.selectors``, :mod:`dashboard.selectors`).
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_http_methods, require_POST

from dashboard.forms import WebhookCreateForm
from dashboard.selectors import monetized_page_list_for_user
from dashboard.services import api_token_get, api_token_regenerate
from payments.errors import WebhookError
from receivers.errors import ReceiverError
from receivers.paid import InvalidPayToken, PayToken, paid_token_balance
from receivers.pointers import public_base_url
from receivers.selectors import (
    paid_token_list_for_user,
    receiver_list_for_user,
    webhook_list_for_user,
)
from receivers.services import (
    webhook_create_for_user,
    webhook_delete_for_user,
    webhook_update_for_user,
)

# (label, URL name) of the user's pages; names another app has not shipped yet are skipped.
_ME_PAGES = (
    ("Pointers", "receivers:me"),
    ("Webhooks", "dashboard_me:webhooks"),
    ("API token", "dashboard_me:api-token"),
    ("Paid-API tokens", "dashboard_me:paid-tokens"),
    ("Pages", "receivers:pages:mine"),
    ("Shop", "receivers:shop:mine"),
)


def me_nav(request: HttpRequest) -> list[dict[str, Any]]:
    items = []
    for label, name in _ME_PAGES:
        try:
            url = reverse(name)
        except NoReverseMatch:
            continue
        items.append({"label": label, "url": url, "current": request.path == url})
    return items


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def webhooks(request: HttpRequest) -> HttpResponse:
    """``/me/webhooks/``: my webhooks, and a form to add one to one of my pointers."""
    user: Any = request.user
    names = list(receiver_list_for_user(user=user).values_list("name", flat=True))
    form = WebhookCreateForm(request.POST or None, receiver_names=names)
    if request.method == "POST" and form.is_valid():
        try:
            hook = webhook_create_for_user(
                user=user, receiver_name=form.cleaned_data["receiver"], url=form.cleaned_data["url"]
            )
        except (WebhookError, ReceiverError) as exc:
            form.add_error("url", exc.message)
        else:
            messages.success(
                request, f"Webhook added: payments to {hook.account.code} go to {hook.url}."
            )
            return HttpResponseRedirect(reverse("dashboard_me:webhooks"))
    status = 400 if request.method == "POST" else 200
    return render(
        request,
        "dashboard/me_webhooks.html",
        {
            "webhooks": webhook_list_for_user(user=user),
            "form": form,
            "has_receivers": bool(names),
            "me_nav": me_nav(request),
        },
        status=status,
    )


@login_required
@require_POST
def webhook_toggle(request: HttpRequest, webhook_id: int) -> HttpResponse:
    user: Any = request.user
    enable = request.POST.get("enabled") == "1"
    try:
        hook = webhook_update_for_user(user=user, webhook_id=webhook_id, enabled=enable)
    except WebhookError as exc:
        return _not_found(request, exc.message)
    messages.success(request, f"Webhook {hook.url} {'enabled' if hook.enabled else 'disabled'}.")
    return HttpResponseRedirect(reverse("dashboard_me:webhooks"))


@login_required
@require_POST
def webhook_delete(request: HttpRequest, webhook_id: int) -> HttpResponse:
    user: Any = request.user
    try:
        webhook_delete_for_user(user=user, webhook_id=webhook_id)
    except WebhookError as exc:
        return _not_found(request, exc.message)
    messages.success(request, "Webhook deleted.")
    return HttpResponseRedirect(reverse("dashboard_me:webhooks"))


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def api_token(request: HttpRequest) -> HttpResponse:
    """``/me/api-token/``: my REST API token; POST makes a new one (the old one stops)."""
    user: Any = request.user
    if request.method == "POST":
        api_token_regenerate(user=user)
        messages.success(request, "New API token created. The previous one no longer works.")
        return HttpResponseRedirect(reverse("dashboard_me:api-token"))
    return render(
        request,
        "dashboard/me_api_token.html",
        {
            "token": api_token_get(user=user),
            "base_url": public_base_url(request),
            "me_nav": me_nav(request),
        },
    )


@login_required
@require_http_methods(["GET", "HEAD"])
def paid_tokens(request: HttpRequest) -> HttpResponse:
    """``/me/paid-tokens/``: the pay tokens my paid APIs have charged, with balances."""
    user: Any = request.user
    rows = []
    for token in paid_token_list_for_user(user=user)[:200]:
        try:
            balance: int | None = paid_token_balance(
                receiver=token.receiver, token=PayToken.parse(token.token)
            )
        except InvalidPayToken:
            balance = None
        rows.append({"token": token, "balance": balance})
    return render(
        request,
        "dashboard/me_paid_tokens.html",
        {
            "rows": rows,
            "pages": monetized_page_list_for_user(user=user),
            "me_nav": me_nav(request),
        },
    )


def _not_found(request: HttpRequest, reason: str) -> HttpResponse:
    return render(request, "receivers/not_found.html", {"reason": reason}, status=404)
