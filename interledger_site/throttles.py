"""Throttles on the ways in: the API token endpoint (DRF throttles) and failed logins
(django-axes, for every ``authenticate()`` with a request). All counts live in the cache,
which is Redis when ``REDIS_URL`` is set, so every process sees the same counts.

A throttled caller gets 429 with the reason and ``Retry-After``.
"""

from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import APIView


class _SettingRate(SimpleRateThrottle):
    """A rate from a setting of ours, read when the throttle is made (not at import)."""

    rate_setting = ""

    def get_rate(self) -> str | None:
        rate = getattr(settings, self.rate_setting, None)
        return str(rate) if rate else None


class TokenAddressThrottle(_SettingRate):
    """Token requests per client address (``ILP_TOKEN_RATE_PER_ADDRESS``)."""

    scope = "auth_token"
    rate_setting = "ILP_TOKEN_RATE_PER_ADDRESS"

    def get_cache_key(self, request: Request, view: APIView) -> str | None:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class TokenUsernameThrottle(_SettingRate):
    """Token requests per username asked for, from any address
    (``ILP_TOKEN_RATE_PER_USERNAME``): guessing one user's password from many addresses is
    throttled too."""

    scope = "auth_token_username"
    rate_setting = "ILP_TOKEN_RATE_PER_USERNAME"

    def get_cache_key(self, request: Request, view: APIView) -> str | None:
        data: Any = request.data
        username = data.get("username") if hasattr(data, "get") else None
        if not isinstance(username, str) or not username:
            return None
        return self.cache_format % {"scope": self.scope, "ident": username.lower()[:150]}


def cooloff_seconds() -> int:
    cooloff = settings.AXES_COOLOFF_TIME
    return int(cooloff.total_seconds()) if cooloff else 0


def lockout_message() -> str:
    minutes = math.ceil(cooloff_seconds() / 60)
    return (
        f"too many failed logins from this address or for this user: try again in {minutes} minutes"
    )


def login_lockout_response(request: HttpRequest, *args: Any) -> HttpResponse:
    """django-axes' answer to a locked-out login (``AXES_LOCKOUT_CALLABLE``): 429, the
    reason, ``Retry-After``. (Axes passes the refused response and the credentials; both
    are ignored, whatever their order.)"""
    response = HttpResponse(
        f"429 Too Many Requests: {lockout_message()}.\n",
        status=429,
        content_type="text/plain; charset=utf-8",
    )
    response["Retry-After"] = str(cooloff_seconds())
    return response
