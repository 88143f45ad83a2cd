from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from interledger_site import health, metrics

urlpatterns = [
    # For load balancers and Prometheus (before the pointers' catch-all /<name>).
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("ops/", include("links.urls_admin")),
    path("ops/", include("dashboard.urls_ops")),
    path("me/", include("dashboard.urls_me")),
    path("api/v1/", include("interledger_site.api")),
    path("", include("links.urls")),
    path("api/v1/", include("receivers.api_urls")),
    path("", include("receivers.open_payments.urls")),
    # Receivers last: it owns the catch-all payment pointer paths (/<name>).
    path("", include("receivers.urls")),
]
