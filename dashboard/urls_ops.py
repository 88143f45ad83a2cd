"""Staff pages; include as ``path("ops/", include("dashboard.urls_ops"))`` (next to
``links.urls_admin``, which owns ``ops/routing/``)."""

from __future__ import annotations

from django.urls import path

from dashboard import views_ops

app_name = "dashboard"

urlpatterns = [
    path("", views_ops.overview, name="overview"),
    path("peers/", views_ops.peers, name="peers"),
    path("receivers/", views_ops.receivers, name="receivers"),
    path("payments/", views_ops.payments, name="payments"),
    path("snapshot.json", views_ops.snapshot_json, name="snapshot"),
]
