"""Read-only queries about peers (sync; call through ``database_sync_to_async``)."""

from __future__ import annotations

from django.db.models import QuerySet

from links.models import LinkKind, Peer


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
