"""What every transport needs at the edge: the switch, our address, edge Rejects.

``current_switch()`` is the one place transports get the packet switch from, so tests
can put a double in with :func:`override_switch` (restored with ``override_switch(None)``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from django.conf import settings

from ilp.packet import Prepare, Reject, Reply
from links.peers import PeerContext

log = logging.getLogger(__name__)


class Switch(Protocol):
    async def handle_prepare(self, source: PeerContext, prepare: Prepare) -> Reply: ...

    def link_up(self, source: PeerContext) -> None: ...

    def link_down(self, peer_name: str) -> None: ...


_override: Switch | None = None


def override_switch(switch: Switch | None) -> None:
    global _override
    _override = switch


def current_switch() -> Switch:
    if _override is not None:
        return _override
    global _get_switch
    if _get_switch is None:  # imported on first use (links.switch imports the ledger)
        from links.switch import get_switch

        _get_switch = get_switch
    return _get_switch()


_get_switch: Callable[[], Switch] | None = None


def our_address() -> str:
    return str(settings.ILP_ADDRESS)


def reject(code: str, message: str, data: bytes = b"") -> Reject:
    """A Reject triggered by this node (message cut to ILP's 8191-byte limit)."""
    return Reject(code, our_address(), message[:8191], data)


async def handle_prepare(source: PeerContext, prepare: Prepare) -> Reply:
    """``switch.handle_prepare`` that never raises (a crash becomes T00)."""
    try:
        return await current_switch().handle_prepare(source, prepare)
    except Exception:
        log.exception("switch failed on a Prepare from %s", source.name)
        return reject("T00", "internal error")


def link_up(source: PeerContext) -> None:
    try:
        current_switch().link_up(source)
    except Exception:
        log.exception("link_up(%s) failed", source.name)


def link_down(peer_name: str) -> None:
    try:
        current_switch().link_down(peer_name)
    except Exception:
        log.exception("link_down(%s) failed", peer_name)
