"""JSON API of receivers (DRF), included by the site at ``api/v1/``."""

from __future__ import annotations

from django.urls import path

from receivers import paid_views

app_name = "receivers_api"

urlpatterns = [
    path("demo/paid", paid_views.DemoPaidView.as_view(), name="demo-paid"),
]
