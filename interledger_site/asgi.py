"""ASGI entry point: HTTP to Django, WebSocket ``/btp`` to the BTP consumer.

BTP peers send no ``Origin`` header, so the ``/btp`` route must not sit behind
``AllowedHostsOriginValidator``; the dashboard socket does.

The application is built with its runtime (``interledger_site.runtime``): under Daphne
(no ASGI lifespan) the runtime starts when Twisted's reactor runs and stops before it
shuts down (:func:`~interledger_site.runtime.attach_to_reactor`); other servers start and
stop it through the ASGI lifespan scope. Importing this module starts nothing.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "interledger_site.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from interledger_site.routing import websocket_urlpatterns  # noqa: E402
from interledger_site.runtime import (  # noqa: E402
    RuntimeApplication,
    attach_to_reactor,
    serving_runtime,
)

application = RuntimeApplication(
    ProtocolTypeRouter(
        {
            # Static files (admin, API docs) straight from the apps: Daphne has no static
            # server of its own, and a node should be usable without a front proxy.
            "http": ASGIStaticFilesHandler(django_asgi_app),
            "websocket": URLRouter(websocket_urlpatterns),
        }
    ),
    serving_runtime,
)

attach_to_reactor(application)
