"""The site's routes plus one that no reserved word covers (for the route-conflict test)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import include, path


def _page(request: HttpRequest) -> HttpResponse:
    return HttpResponse("a new page")


urlpatterns = [
    path("newpage/", _page),
    path("", include("interledger_site.urls")),
]
