"""ASGI entry point: HTTP to Django, WebSocket ``/btp`` to the BTP consumer.

BTP peers send no ``Origin`` header, so the ``/btp`` route must not sit behind
``AllowedHostsOriginValidator``; the dashboard socket does.

Building the application is where a serving process starts its runtime (Daphne has no
ASGI lifespan): the links supervisor (``interledger_site.routing``) and the recovery
sweeps (``payments.recovery.autostart``: unapplied receipts, due webhook deliveries,
stuck outgoing payments, at start-up and periodically). Both are scheduled on the
server's loop and run only once it serves, and only in a serving process.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "interledger_site.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from interledger_site.routing import websocket_urlpatterns  # noqa: E402
from payments.recovery import autostart as start_recovery  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Static files (admin, API docs) straight from the apps: Daphne has no static server
        # of its own, and a node should be usable without a front proxy.
        "http": ASGIStaticFilesHandler(django_asgi_app),
        "websocket": URLRouter(websocket_urlpatterns),
    }
)

start_recovery()
