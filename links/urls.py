"""Routes of links: the ILP-over-HTTP endpoints (plain views, fixed media types)."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, path

from links import http_oer

urlpatterns: list[URLPattern | URLResolver] = [
    path("ilp", http_oer.ilp_endpoint, name="ilp"),
    path("ilp/<str:request_id>", http_oer.ilp_request, name="ilp-request"),
]
