"""Site URLs of the ledger (staff API under ``/api/payments/``; the ``/api/v1/ledger/`` part
is ``payments.api_urls``, included by ``interledger_site.api``)."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, path

from payments.apis import AccountDetailApi, IncomingPaymentListApi, WebhookCreateApi

app_name = "payments"

urlpatterns: list[URLPattern | URLResolver] = [
    path("api/payments/accounts/<str:code>/", AccountDetailApi.as_view(), name="account-detail"),
    path(
        "api/payments/accounts/<str:code>/incoming-payments/",
        IncomingPaymentListApi.as_view(),
        name="incoming-payments",
    ),
    path("api/payments/webhooks/", WebhookCreateApi.as_view(), name="webhook-create"),
]
