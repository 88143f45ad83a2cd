"""The user's REST API (``receivers.apis``), included by ``interledger_site.api`` at
``api/v1/`` (next to ``receivers.api_urls``, the paid demo API)."""

from __future__ import annotations

from django.urls import path

from receivers import apis

app_name = "receivers_core_api"

urlpatterns = [
    path("receivers/", apis.ReceiverListView.as_view(), name="receiver-list"),
    path("receivers/<str:name>/", apis.ReceiverDetailView.as_view(), name="receiver-detail"),
    path(
        "incoming-payments/", apis.IncomingPaymentListView.as_view(), name="incoming-payment-list"
    ),
    path(
        "incoming-payments/<int:pk>/",
        apis.IncomingPaymentDetailView.as_view(),
        name="incoming-payment-detail",
    ),
    path("webhooks/", apis.WebhookListView.as_view(), name="webhook-list"),
    path("webhooks/<int:pk>/", apis.WebhookDetailView.as_view(), name="webhook-detail"),
    path("paid-tokens/", apis.PaidTokenListView.as_view(), name="paid-token-list"),
]
