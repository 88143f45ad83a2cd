"""Routes of receivers. Included last at "" by the site's urls: ``/<name>`` catches every
top-level path no other app claimed, so it must stay after everything else."""

from __future__ import annotations

from django.urls import include, path

from receivers import views

app_name = "receivers"

urlpatterns = [
    path("", views.home, name="home"),
    path("me/", views.me, name="me"),
    path("me/pointers/<str:name>/", views.pointer_detail, name="pointer-detail"),
    path(".well-known/pay", views.well_known_pay, name="well-known-pay"),
    # Selling on the web: monetized pages and shop orders (before the catch-all).
    path("", include("receivers.pages_urls")),
    path("", include("receivers.shop_urls")),
    path("<str:name>", views.pointer, name="pointer"),
    path("<str:name>/", views.pointer_with_slash, name="pointer-slash"),
]
