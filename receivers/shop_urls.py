"""Routes of shop orders (namespace ``receivers:shop``), included by :mod:`receivers.urls`
before the pointer catch-all. The JSON API is in :mod:`receivers.api_urls`."""

from __future__ import annotations

from django.urls import path

from receivers import shop_views

app_name = "shop"

urlpatterns = [
    path("shop/<uuid:order_id>/", shop_views.checkout, name="checkout"),
    path("shop/<uuid:order_id>/spsp", shop_views.order_spsp, name="spsp"),
    path("shop/<uuid:order_id>/status", shop_views.OrderStatusView.as_view(), name="status"),
    path("shop/<uuid:order_id>/complete", shop_views.OrderCompleteView.as_view(), name="complete"),
    path("me/shop/", shop_views.my_shop, name="mine"),
    path("me/shop/<uuid:order_id>/cancel", shop_views.my_order_cancel, name="cancel"),
]
