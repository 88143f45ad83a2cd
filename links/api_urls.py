"""Staff API of peers and routes (``links.apis``), included by ``interledger_site.api``
at ``api/v1/``."""

from __future__ import annotations

from django.urls import path

from links import apis

app_name = "links_api"

urlpatterns = [
    path("peers/", apis.PeerListView.as_view(), name="peer-list"),
    path("peers/<str:name>/", apis.PeerDetailView.as_view(), name="peer-detail"),
    path("routes/", apis.RouteListView.as_view(), name="route-list"),
]
