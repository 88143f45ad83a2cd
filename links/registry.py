"""The map of live links of a runtime, and how other processes reach them.

``register(peer_name, link)`` / ``unregister(peer_name, link)`` / ``get(peer_name)``
work on the current runtime's :class:`LinkRegistry` (``interledger_site.runtime``).
A peer may have several live connections at once (a BTP client reconnecting before
the old socket is noticed dead): the most recently registered one is used, and the
peer counts as down only when its last link is gone (``unregister`` returns ``True``
then, and the transport calls ``get_switch().link_down``).

Across processes (Redis channel layer): a BTP link that registers makes its process the
peer's owner (:mod:`links.ownership`: a server-side link takes the lease, a client-side
one holds the lease its supervisor acquired before dialling); ``get`` returns the local
link, else a :class:`~links.ownership.RemoteLink` that sends to the owner's own channel.
With the in-memory channel layer there is one process: ``get`` is the local link or
``None``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ilp.packet import Prepare, Reply
from links.ownership import LinkOwnership, RemoteLink, expired, our_address, unreachable

__all__ = [
    "LinkRegistry",
    "OutgoingLink",
    "RemoteLink",
    "current",
    "expired",
    "get",
    "links_of",
    "live_peers",
    "local",
    "our_address",
    "register",
    "unreachable",
    "unregister",
]


@runtime_checkable
class OutgoingLink(Protocol):
    """Something the switch can send a Prepare through. Never raises: every failure
    (disconnect, timeout, garbage reply) comes back as a Reject."""

    async def send_prepare(self, prepare: Prepare) -> Reply: ...


def _claims(link: object) -> str | None:
    """How a link claims its peer: BTP server links take ownership (the peer chose this
    process), client links keep the lease their supervisor took; others (HTTP-OER:
    stateless, every process has its own) claim nothing."""
    role = getattr(link, "role", None)
    return role if role in ("server", "client") else None


class LinkRegistry:
    """One runtime's live links (see the module docstring)."""

    def __init__(self, ownership: LinkOwnership | None = None) -> None:
        self._links: dict[str, list[OutgoingLink]] = {}
        self.ownership = ownership or LinkOwnership(None, self.local, lease_s=15.0)

    def register(self, peer_name: str, link: OutgoingLink) -> None:
        stack = self._links.setdefault(peer_name, [])
        if link in stack:
            stack.remove(link)
        stack.append(link)
        role = _claims(link)
        if role is not None:
            self.ownership.claim_soon(peer_name, take=role == "server")

    def unregister(self, peer_name: str, link: OutgoingLink | None = None) -> bool:
        """Remove ``link`` (every link of the peer when ``None``); ``True`` if none is left."""
        stack = self._links.get(peer_name)
        if not stack:
            return False
        if link is None:
            stack.clear()
        elif link in stack:
            stack.remove(link)
        else:
            return False
        if stack:
            return False
        del self._links[peer_name]
        if _claims(link) == "server":
            # A client link's lease stays with its supervisor (it redials); a server
            # peer that left may reconnect anywhere.
            self.ownership.release_soon(peer_name)
        return True

    def get(self, peer_name: str) -> OutgoingLink | None:
        """The live link of ``peer_name`` here, else a :class:`RemoteLink` to its owner
        (several processes), else ``None``."""
        stack = self._links.get(peer_name)
        if stack:
            return stack[-1]
        if self.ownership.shared:
            return RemoteLink(peer_name, self.ownership)
        return None

    def local(self, peer_name: str) -> OutgoingLink | None:
        stack = self._links.get(peer_name)
        return stack[-1] if stack else None

    def links_of(self, peer_name: str) -> tuple[OutgoingLink, ...]:
        return tuple(self._links.get(peer_name, ()))

    def live_peers(self) -> list[str]:
        return sorted(self._links)

    def clear(self) -> None:
        self._links.clear()


def current() -> LinkRegistry:
    """The current runtime's registry."""
    from payments.node import runtime

    registry: LinkRegistry = runtime().registry
    return registry


def register(peer_name: str, link: OutgoingLink) -> None:
    current().register(peer_name, link)


def unregister(peer_name: str, link: OutgoingLink | None = None) -> bool:
    return current().unregister(peer_name, link)


def get(peer_name: str) -> OutgoingLink | None:
    return current().get(peer_name)


def local(peer_name: str) -> OutgoingLink | None:
    return current().local(peer_name)


def links_of(peer_name: str) -> tuple[OutgoingLink, ...]:
    return current().links_of(peer_name)


def live_peers() -> list[str]:
    return current().live_peers()
