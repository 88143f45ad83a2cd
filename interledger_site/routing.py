"""WebSocket routes, one place."""

from __future__ import annotations

from django.urls import path

from links.consumers import BtpConsumer

websocket_urlpatterns = [
    path("btp", BtpConsumer.as_asgi()),
]
