"""Routes of monetized pages (namespace ``receivers:pages``), included by
:mod:`receivers.urls` before the pointer catch-all."""

from __future__ import annotations

from django.urls import path

from receivers import pages_views

app_name = "pages"

urlpatterns = [
    path("pages/<slug:slug>/", pages_views.page_detail, name="detail"),
    path("pages/<slug:slug>/spsp/<str:visitor>", pages_views.page_spsp, name="spsp"),
    path("pages/<slug:slug>/status", pages_views.PageStatusView.as_view(), name="status"),
    path("me/pages/", pages_views.my_pages, name="mine"),
    path("me/pages/<slug:slug>/", pages_views.my_page_edit, name="edit"),
]
