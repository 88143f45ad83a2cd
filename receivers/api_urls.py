"""JSON API of receivers (DRF), included by the site at ``api/v1/``."""

from __future__ import annotations

from django.urls import path

from receivers import paid_views, shop_views

app_name = "receivers_api"

urlpatterns = [
    path("demo/paid", paid_views.DemoPaidView.as_view(), name="demo-paid"),
    path("paid/<str:name>/tokens/<str:tag>", paid_views.paid_token_spsp, name="paid-token-spsp"),
    path("shop/orders", shop_views.OrderListCreateApi.as_view(), name="shop-orders"),
    path("shop/orders/<uuid:order_id>", shop_views.OrderDetailApi.as_view(), name="shop-order"),
]
