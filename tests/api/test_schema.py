"""The OpenAPI schema: served, valid OpenAPI 3, and our endpoints documented without
a single drf-spectacular warning or error."""

from __future__ import annotations

from typing import Any

import pytest
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

OUR_FILES = (
    "interledger_site/api.py",
    "links/apis.py",
    "payments/apis.py",
    "receivers/apis.py",
)
OUR_PATHS = tuple(
    f"'/api/v1/{p}"
    for p in (
        "'",
        "auth/",
        "receivers/",
        "incoming-payments/",
        "webhooks/",
        "paid-tokens/",
        "peers/",
        "routes/",
        "ledger/",
    )
)


def ours(message: str) -> bool:
    """A generator message about one of our views (source file) or paths (collisions)."""
    return any(f in message for f in OUR_FILES) or any(p in message for p in OUR_PATHS)


def test_ours_recognises_our_messages() -> None:
    assert ours("/x/links/apis.py:10: Warning [PeerListView]: could not resolve")
    assert ours("Warning: operationId \"x\" has collisions [('/api/v1/peers/', 'get')]")
    assert not ours("/x/receivers/shop_views.py:1: Error [OrderStatusView]: unable to guess")
    assert not ours("collisions [('/api/v1/shop/orders', 'get')]")


def test_schema_is_served_and_valid() -> None:
    response = APIClient().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    schema: dict[str, Any] = response.json()
    validate_schema(schema)  # type: ignore[no-untyped-call]  # raises unless OpenAPI
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    for path, method in [
        ("/api/v1/", "get"),
        ("/api/v1/auth/token/", "post"),
        ("/api/v1/receivers/", "post"),
        ("/api/v1/receivers/{name}/", "patch"),
        ("/api/v1/incoming-payments/", "get"),
        ("/api/v1/webhooks/{id}/", "delete"),
        ("/api/v1/paid-tokens/", "get"),
        ("/api/v1/peers/", "post"),
        ("/api/v1/routes/", "get"),
        ("/api/v1/ledger/postings/", "get"),
    ]:
        operation = paths[path][method]
        assert operation["summary"], (path, method)
    listing = paths["/api/v1/incoming-payments/"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {"receiver", "since", "until", "page"}
    assert "404" in paths["/api/v1/receivers/{name}/"]["get"]["responses"]
    error = schema["components"]["schemas"]["Error"]
    assert set(error["properties"]) == {"error", "detail"}
    assert schema["components"]["securitySchemes"]["tokenAuth"]["type"] == "apiKey"


def test_our_endpoints_generate_without_warnings() -> None:
    GENERATOR_STATS.reset()
    with GENERATOR_STATS.silence():
        SchemaGenerator().get_schema(request=None, public=True)  # type: ignore[no-untyped-call]
    problems = [m for m in [*GENERATOR_STATS._warn_cache, *GENERATOR_STATS._error_cache] if ours(m)]
    GENERATOR_STATS.reset()
    assert problems == []
