"""WebSocket routes of receivers, for ``interledger_site.routing`` to include::

    from receivers.routing import websocket_urlpatterns as receivers_websockets
    websocket_urlpatterns = [path("btp", BtpConsumer.as_asgi()), *receivers_websockets]

Browser sockets only: each route checks ``Origin`` against ``ALLOWED_HOSTS`` and reads
the Django session (the consumer checks that the session holds the visitor id).
"""

from __future__ import annotations

from channels.security.websocket import AllowedHostsOriginValidator
from channels.sessions import SessionMiddlewareStack
from django.urls import path

from receivers.consumers import PageConsumer

websocket_urlpatterns = [
    path(
        "ws/pages/<slug:slug>/<str:visitor>",
        AllowedHostsOriginValidator(SessionMiddlewareStack(PageConsumer.as_asgi())),
    ),
]
