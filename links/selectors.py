"""Read-only queries about peers (sync; call through ``database_sync_to_async``)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from django.db.models import QuerySet

from links.models import LinkKind, Peer

PeerStatus = Literal["connected", "down", "ready", "idle", "disabled"]
HTTP_LINKS = frozenset({"http-sync", "http-async"})


def peer_get(*, name: str) -> Peer | None:
    return Peer.objects.select_related("account").filter(name=name).first()


def peer_get_enabled(*, name: str) -> Peer | None:
    return Peer.objects.filter(name=name, enabled=True).first()


def peer_list() -> QuerySet[Peer]:
    return Peer.objects.select_related("account").order_by("name")


def peer_credentials(*, links: tuple[str, ...]) -> list[tuple[str, str]]:
    """``(name, token_hash)`` of every enabled peer whose link kind is in ``links``."""
    return list(
        Peer.objects.filter(enabled=True, link__in=list(links)).values_list("name", "token_hash")
    )


def btp_client_peers() -> list[Peer]:
    """Enabled peers we must dial out to."""
    return list(Peer.objects.filter(enabled=True, link=LinkKind.BTP_CLIENT).order_by("name"))


def http_peers() -> list[Peer]:
    """Enabled HTTP-OER peers (sync and async)."""
    return list(
        Peer.objects.filter(
            enabled=True, link__in=[LinkKind.HTTP_SYNC, LinkKind.HTTP_ASYNC]
        ).order_by("name")
    )


def peer_status(
    *, enabled: bool, link: str, live_here: bool, connected_since: datetime | None
) -> PeerStatus:
    """``disabled``; for BTP links ``connected`` (a socket open in this process, or
    ``Peer.connected_since`` set by the process that holds it) or ``down``; for HTTP-OER
    links, which have no connection, ``ready`` (this process has an outgoing link: the
    peer has a URL and the supervisor registered it) or ``idle`` (the peer only calls us,
    or no supervisor runs here)."""
    if not enabled:
        return "disabled"
    if link in HTTP_LINKS:
        return "ready" if live_here else "idle"
    return "connected" if live_here or connected_since is not None else "down"
