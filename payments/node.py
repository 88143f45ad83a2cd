"""The node runtime this code runs under, for modules below the composition root.

``interledger_site.runtime`` builds and owns the node's runtime objects (switch, ledger
book, link registry and ownership, supervisor, recovery sweeps). The layers below it
(``payments``, ``receivers``, ``links``) must not import it, so they reach the current
runtime through :func:`runtime`, which calls the provider named by
``settings.ILP_RUNTIME_PROVIDER`` (default ``interledger_site.runtime.current``), looked
up once by dotted path (sending's port is wired instead: :mod:`payments.sending.port`).
Accessors such as
``links.switch.get_switch`` are thin delegates to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

DEFAULT_PROVIDER = "interledger_site.runtime.current"

_provider: Callable[[], Any] | None = None


def runtime() -> Any:
    """The current ``NodeRuntime`` (typed ``Any``: its class lives above this layer)."""
    global _provider
    if _provider is None:
        from django.conf import settings
        from django.utils.module_loading import import_string

        _provider = import_string(getattr(settings, "ILP_RUNTIME_PROVIDER", DEFAULT_PROVIDER))
    return _provider()
