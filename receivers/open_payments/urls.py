from __future__ import annotations

from django.urls import path

from receivers.open_payments import views

# Before the pointers' catch-all; "auth" and "payments" are reserved pointer names.
urlpatterns = [
    path("<str:name>/jwks.json", views.wallet_address_keys, name="op-wallet-keys"),
    path("auth", views.grant_request, name="op-grant"),
    path("auth/continue/<str:grant_id>", views.grant_continue, name="op-continue"),
    path("auth/token/<str:token_id>", views.token_manage, name="op-token"),
    path("payments/incoming-payments", views.incoming_payments, name="op-incoming-payments"),
    path(
        "payments/incoming-payments/<str:payment_id>",
        views.incoming_payment,
        name="op-incoming-payment",
    ),
    path(
        "payments/incoming-payments/<str:payment_id>/complete",
        views.incoming_payment_complete,
        name="op-incoming-payment-complete",
    ),
]
