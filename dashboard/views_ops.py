"""Staff pages under ``/ops/``: the overview, peers, receivers and incoming payments.

Thin: read the process state and the selectors, render. The overview and the peers page
then follow ``ws/ops/`` (see :mod:`dashboard.consumers`) and update in place;
``/ops/snapshot.json`` serves the same snapshot for a script or a page without sockets.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from django.contrib.admin.views.decorators import staff_member_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET

from dashboard.forms import PaymentFilterForm, SearchForm
from dashboard.health import check_channel_layer, node_identity, sync_checks
from dashboard.selectors import RANGES, Range, incoming_payment_search, receiver_rows
from dashboard.snapshot import build_snapshot, process_state

PAGE_SIZE = 50


def _range(request: HttpRequest) -> Range:
    value = request.GET.get("range", "24h")
    return value if value in RANGES else "24h"


def _checks() -> list[Any]:
    checks = sync_checks()
    checks.insert(1, async_to_sync(check_channel_layer)())
    return checks


def _live_context(request: HttpRequest) -> dict[str, Any]:
    range_ = _range(request)
    snapshot = build_snapshot(state=process_state(), range_=range_, checks=_checks())
    return {
        "identity": node_identity(),
        "snap": snapshot,
        "range": range_,
        "ranges": RANGES,
        "ws_path": "/ws/ops/",
        "routing_url": reverse("links_ops:routing-table"),
    }


@staff_member_required
@require_GET
def overview(request: HttpRequest) -> HttpResponse:
    """``/ops/``: identity, health, traffic, peers, volume chart, latest payments."""
    return render(request, "dashboard/overview.html", _live_context(request))


@staff_member_required
@require_GET
def peers(request: HttpRequest) -> HttpResponse:
    """``/ops/peers/``: every peer with live status, balance against limits, traffic."""
    return render(request, "dashboard/peers.html", _live_context(request))


@staff_member_required
@require_GET
def snapshot_json(request: HttpRequest) -> JsonResponse:
    """``/ops/snapshot.json``: the consumer's snapshot, once (health included)."""
    snapshot = build_snapshot(state=process_state(), range_=_range(request), checks=_checks())
    return JsonResponse(snapshot)


@staff_member_required
@require_GET
def receivers(request: HttpRequest) -> HttpResponse:
    """``/ops/receivers/``: every payment pointer with owner, balance and totals."""
    form = SearchForm(request.GET or None)
    q = form.cleaned_data["q"] if form.is_valid() else ""
    return render(
        request,
        "dashboard/receivers.html",
        {"form": form, "rows": receiver_rows(q=q), "q": q},
    )


@staff_member_required
@require_GET
def payments(request: HttpRequest) -> HttpResponse:
    """``/ops/payments/``: incoming payments, searchable, by receiver and date."""
    form = PaymentFilterForm(request.GET or None)
    if form.is_bound and not form.is_valid():
        qs = incoming_payment_search().none()
        status = 400
    else:
        data = form.cleaned_data if form.is_bound else {}
        qs = incoming_payment_search(
            receiver=data.get("receiver") or "",
            q=data.get("q") or "",
            date_from=data.get("date_from"),
            date_to=data.get("date_to"),
        )
        status = 200
    page = Paginator(qs, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "dashboard/payments.html",
        {"form": form, "page": page, "query": query.urlencode(), "now": timezone.now()},
        status=status,
    )
