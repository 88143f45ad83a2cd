"""The site's ASGI application with the receivers' WebSocket routes mounted, for the live
node of these tests (``interledger_site.routing`` may not include them yet)."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "interledger_site.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from interledger_site.routing import websocket_urlpatterns as site_routes  # noqa: E402
from receivers.routing import websocket_urlpatterns as receivers_routes  # noqa: E402

_mounted = {str(route.pattern) for route in site_routes}
routes = [*site_routes, *(r for r in receivers_routes if str(r.pattern) not in _mounted)]

application = ProtocolTypeRouter({"http": django_asgi_app, "websocket": URLRouter(routes)})
