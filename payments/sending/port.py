"""The way out: the port through which sending reaches a link.

``payments`` never imports ``links`` (import direction ``ilp`` ← ``payments`` ←
``receivers`` ← ``links``). It owns this port instead: a :class:`Sender` is an open way out
for Prepares, a :data:`SenderOpener` opens one for a :class:`Route`. ``links`` implements
it (``links.sender_link.open_sender``) and wires it at start-up
(``links.apps.LinksConfig.ready`` calls :func:`wire_sender_opener`); tests put their own
in front with :func:`set_sender_opener`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from django.conf import settings

from ilp.packet import Prepare, Reject, Reply

__all__ = [
    "SWITCH_SOURCE_NAME",
    "Route",
    "Sender",
    "SenderOpener",
    "send_safely",
    "sender_opener",
    "set_sender_opener",
    "wire_sender_opener",
]

log = logging.getLogger(__name__)

# The name the switch sees for Prepares this node originates (not a valid peer name, so
# no peer can ever be mistaken for it).
SWITCH_SOURCE_NAME = "_outgoing"


@dataclass(frozen=True, slots=True)
class Route:
    """Where a payment's Prepares go: ``via_peer``'s link, or ("") this process's switch
    with ``source_account`` (in ``asset_code``/``asset_scale``) as a local source."""

    source_account: str
    asset_code: str
    asset_scale: int
    via_peer: str = ""


class Sender(Protocol):
    """An open way out for Prepares (what the wired :data:`SenderOpener` yields).

    ``peer_account`` is the via peer's ledger account (the sender side books the chunk
    on it), ``None`` when the switch books the money itself. ``source_keys(prepare)`` are
    the posting keys under which the switch records the source debit of ``prepare``
    (``()`` for a via peer). ``send`` never raises: failures come back as Rejects.
    """

    @property
    def peer_account(self) -> str | None: ...
    @property
    def max_packet_amount(self) -> int: ...
    @property
    def asset(self) -> tuple[str, int]: ...
    def source_keys(self, prepare: Prepare) -> tuple[str, ...]: ...
    async def send(self, prepare: Prepare) -> Reply: ...


SenderOpener = Callable[[Route], AbstractAsyncContextManager[Sender]]

_wired: SenderOpener | None = None
_override: SenderOpener | None = None


def wire_sender_opener(opener: SenderOpener) -> None:
    """Install the node's opener (``links`` does, when its app is ready)."""
    global _wired
    _wired = opener


def set_sender_opener(opener: SenderOpener | None) -> None:
    """Use ``opener`` instead of the wired one (tests, other transports); ``None`` goes
    back to the wired one."""
    global _override
    _override = opener


def sender_opener() -> SenderOpener:
    """The opener in use: a test's, else the one ``links`` wired at start-up."""
    opener = _override or _wired
    if opener is None:
        raise RuntimeError(
            "no sender opener is wired: 'links' must be in INSTALLED_APPS (its AppConfig "
            "wires links.sender_link.open_sender)"
        )
    return opener


async def send_safely(sender: Sender, prepare: Prepare) -> Reply:
    """``sender.send``, with an exception (a broken :class:`Sender`) turned into T01."""
    try:
        return await sender.send(prepare)
    except Exception as exc:  # a Sender must not raise; be safe anyway
        log.exception("payments: the sender failed")
        return Reject("T01", str(settings.ILP_ADDRESS), f"failed to send packet: {exc!r}"[:500])
