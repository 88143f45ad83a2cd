"""Staff ledger API (``payments.apis``), included by ``interledger_site.api`` at ``api/v1/``."""

from __future__ import annotations

from django.urls import path

from payments import apis

app_name = "payments_api"

urlpatterns = [
    path("ledger/accounts/", apis.LedgerAccountListView.as_view(), name="account-list"),
    path(
        "ledger/accounts/<str:code>/",
        apis.LedgerAccountDetailView.as_view(),
        name="account-detail",
    ),
    path(
        "ledger/accounts/<str:code>/incoming-payments/",
        apis.AccountIncomingPaymentListView.as_view(),
        name="account-incoming-payments",
    ),
    path("ledger/postings/", apis.PostingListView.as_view(), name="posting-list"),
    path("ledger/webhooks/", apis.WebhookCreateView.as_view(), name="webhook-create"),
]
