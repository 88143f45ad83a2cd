"""A URLconf with one view that fails, for the error-page tests."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("it went boom")


urlpatterns = [path("boom/", boom)]
