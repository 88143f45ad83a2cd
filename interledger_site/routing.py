"""WebSocket routes, one place.

``/btp`` is the BTP/2.0 endpoint; it must not sit behind ``AllowedHostsOriginValidator``
(BTP clients send no ``Origin``). Importing this module (which the ASGI application
does) also schedules the links supervisor on Daphne's loop when this process is a
serving one (see ``links.supervisor.autostart``): Daphne has no ASGI lifespan, and the
BTP client links must come up without waiting for a request.
"""

from __future__ import annotations

from django.urls import path

from dashboard.routing import websocket_urlpatterns as dashboard_websockets
from links.consumers import BtpConsumer
from links.supervisor import autostart
from receivers.routing import websocket_urlpatterns as receivers_websockets

websocket_urlpatterns = [
    path("btp", BtpConsumer.as_asgi()),
    *dashboard_websockets,  # ws/ops/: staff browsers (Origin and session checked)
    *receivers_websockets,  # ws/pages/<slug>/<visitor>: monetized page visitors
]

autostart()
