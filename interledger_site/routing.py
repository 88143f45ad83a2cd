"""WebSocket routes, one place.

``/btp`` is the BTP/2.0 endpoint; it must not sit behind ``AllowedHostsOriginValidator``
(BTP clients send no ``Origin``). Importing this module starts nothing: the node's
runtime is started where the ASGI application is built (``interledger_site.asgi``).
"""

from __future__ import annotations

from django.urls import path

from dashboard.routing import websocket_urlpatterns as dashboard_websockets
from links.consumers import BtpConsumer
from receivers.routing import websocket_urlpatterns as receivers_websockets

websocket_urlpatterns = [
    path("btp", BtpConsumer.as_asgi()),
    *dashboard_websockets,  # ws/ops/: staff browsers (Origin and session checked)
    *receivers_websockets,  # ws/pages/<slug>/<visitor>: monetized page visitors
]
