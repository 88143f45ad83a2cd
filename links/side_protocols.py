"""Hooks for ledger-specific BTP side protocols (settlement claims and the like).

node-roles.md: every protocol other than ``ilp`` on a link is ledger-specific. A
settlement module registers a handler for its protocol name::

    from links import side_protocols

    async def on_claim(peer: PeerContext, packet: BtpMessage | BtpTransfer) -> Entries:
        ...verify and record the claim...
        return ()  # protocolData of the Response

    side_protocols.register("claim", on_claim)

Dispatch (done by ``links.btp_link``): a Message without an ``ilp`` entry, or a
Transfer, goes to the handler of its **primary** (first) entry's name. With no handler
the Message is answered with an empty Response (btp.md §5) and a Transfer with Error F00
``NotAcceptedError`` (:data:`TRANSFER_REFUSED`): RFC 23 reads a Response to a Transfer
as "the balance was updated", and without a settlement module nothing is credited (the
Transfer hook, :func:`register_transfer`, is the place for a settlement engine). A handler raising :class:`SideProtocolError` makes the
link answer a BTP Error with its code; any other exception becomes Error ``T00``. A
handler runs in its own task and should not block: use ``database_sync_to_async`` for
database work.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeAlias

from ilp.btp import BtpMessage, BtpTransfer, ProtocolData
from links.peers import PeerContext

log = logging.getLogger(__name__)

Entries: TypeAlias = tuple[ProtocolData, ...]
Handler: TypeAlias = Callable[[PeerContext, BtpMessage | BtpTransfer], Awaitable[Entries]]


class SideProtocolError(Exception):
    """Refuse a side-protocol request with a BTP Error (``code`` per btp.md §1.3)."""

    def __init__(self, code: str, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.name = name


_handlers: dict[str, Handler] = {}
_transfer_handler: Handler | None = None


def register(name: str, handler: Handler) -> None:
    """Handle Messages (and Transfers) whose primary protocol is ``name``."""
    if name in ("ilp", "auth"):
        raise ValueError(f"{name!r} is handled by the link itself")
    _handlers[name] = handler


def unregister(name: str) -> None:
    _handlers.pop(name, None)


def register_transfer(handler: Handler | None) -> None:
    """Handle every Transfer whose primary protocol has no handler of its own."""
    global _transfer_handler
    _transfer_handler = handler


def handler_for(packet: BtpMessage | BtpTransfer) -> Handler | None:
    primary = packet.protocol_data[0].protocol_name if packet.protocol_data else None
    if primary is not None and primary in _handlers:
        return _handlers[primary]
    if isinstance(packet, BtpTransfer):
        return _transfer_handler or _refuse_transfer
    return None


TRANSFER_REFUSED = "no settlement module handles transfers on this node: nothing was credited"


async def _refuse_transfer(peer: PeerContext, packet: BtpMessage | BtpTransfer) -> Entries:
    amount = packet.amount if isinstance(packet, BtpTransfer) else 0
    names = [e.protocol_name for e in packet.protocol_data]
    log.info(
        "BTP Transfer from %s refused: amount %d, protocols %s (no settlement module)",
        peer.name,
        amount,
        names,
    )
    raise SideProtocolError("F00", TRANSFER_REFUSED, "NotAcceptedError")
