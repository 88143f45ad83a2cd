"""WebSocket route of the dashboard, for ``interledger_site.routing`` to include::

    from dashboard.routing import websocket_urlpatterns as dashboard_websockets

A browser-only socket: ``Origin`` must be one of ``ALLOWED_HOSTS`` and the Django session
must be a staff user's (checked by :class:`dashboard.consumers.OpsConsumer`).
"""

from __future__ import annotations

from channels.auth import AuthMiddlewareStack
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import path

from dashboard.consumers import OpsConsumer

websocket_urlpatterns = [
    path("ws/ops/", AllowedHostsOriginValidator(AuthMiddlewareStack(OpsConsumer.as_asgi()))),
]
