"""The user's pages; include as ``path("me/", include("dashboard.urls_me"))`` before the
receivers catch-all (``receivers.urls`` owns ``me/`` itself and ``me/pointers/...``)."""

from __future__ import annotations

from django.urls import path

from dashboard import views_me

app_name = "dashboard_me"

urlpatterns = [
    path("webhooks/", views_me.webhooks, name="webhooks"),
    path("webhooks/<int:webhook_id>/toggle/", views_me.webhook_toggle, name="webhook-toggle"),
    path("webhooks/<int:webhook_id>/delete/", views_me.webhook_delete, name="webhook-delete"),
    path("api-token/", views_me.api_token, name="api-token"),
    path("paid-tokens/", views_me.paid_tokens, name="paid-tokens"),
]
