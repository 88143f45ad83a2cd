"""Staff pages of the links app; include as ``path("ops/", include("links.urls_admin"))``."""

from __future__ import annotations

from django.urls import path

from links import admin_views

app_name = "links_ops"

urlpatterns = [
    path("routing/", admin_views.routing_table, name="routing-table"),
]
