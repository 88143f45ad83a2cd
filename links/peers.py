"""The peer as the hot path sees it: an immutable, cached :class:`PeerContext`.

Transports load the context once (at BTP auth, or per HTTP request from the cache)
and hand it to the switch; no database query happens per packet.

Cache rules: contexts are cached per process for :data:`CONTEXT_TTL_S` seconds and
dropped at once by the services that change a peer (:func:`peer_changed`, after commit).
Embedded (one process) that is all. With Redis, :func:`peer_changed` also tells every
other process (:mod:`links.shared`): a process uses its cache only while its watcher has
confirmed within the last 0.8 s that nothing changed, so a peer removed, disabled or
given a new token is refused by every process within 0.8 s of the commit.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from channels.db import database_sync_to_async
from django.conf import settings

from links.limits import DEFAULT_LIMITS, PeerLimits
from payments.ledger import peer_account

if TYPE_CHECKING:
    from links.models import Peer

PEER_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_~-]*")
MAX_PEER_NAME_LENGTH = 64
# Names that would collide with address segments or URLs the node uses itself.
RESERVED_PEER_NAMES = frozenset(
    {
        "receivers",
        "peer",
        "self",
        "local",
        "config",
        "balance",
        "route",
        "echo",
        "ilp",
        "btp",
        "admin",
        "api",
        "accounts",
        "static",
        "well-known",
        "node",
    }
)
CONTEXT_TTL_S = 10.0


class InvalidPeerName(ValueError):
    pass


def validate_peer_name(name: str) -> str:
    if not isinstance(name, str) or len(name) > MAX_PEER_NAME_LENGTH:
        raise InvalidPeerName(f"peer name must be at most {MAX_PEER_NAME_LENGTH} characters")
    if not PEER_NAME_RE.fullmatch(name):
        raise InvalidPeerName(f"invalid peer name {name!r}: use [a-z0-9][a-z0-9_~-]*")
    if name in RESERVED_PEER_NAMES:
        raise InvalidPeerName(f"peer name {name!r} is reserved")
    return name


@dataclass(frozen=True, slots=True)
class PeerContext:
    """What the switch needs to know about the source or next hop of a packet.

    ``address`` is the peer's ILP address: ``<node>.<name>`` for a child, the
    configured ``Peer.ilp_address`` otherwise (may be empty when unknown).
    ``link`` and ``idempotent`` are additive extensions for the transports; ``limits``
    the peer's abuse limits (:mod:`links.limits`; the defaults for a built-in source).
    """

    name: str
    relation: str
    account_code: str
    address: str
    asset_code: str
    asset_scale: int
    max_packet_amount: int
    send_routes: bool
    receive_routes: bool
    link: str = ""
    idempotent: bool = False
    limits: PeerLimits = DEFAULT_LIMITS


def child_address(name: str) -> str:
    return f"{settings.ILP_ADDRESS}.{name}"


def limits_of(peer: Peer) -> PeerLimits:
    """The limits stored on a ``Peer`` row."""
    tput = peer.throughput_per_second
    return PeerLimits(
        packets_per_second=int(peer.packets_per_second),
        burst=int(peer.burst),
        throughput_per_second=None if tput is None else int(tput),
        max_in_flight=int(peer.max_in_flight),
        replay_quota=int(peer.replay_quota),
        max_routes=int(peer.max_routes),
    )


def context_from_peer(peer: Peer) -> PeerContext:
    address = peer.ilp_address or (child_address(peer.name) if peer.relation == "child" else "")
    return PeerContext(
        name=peer.name,
        relation=peer.relation,
        account_code=peer_account(peer.name),
        address=address,
        asset_code=peer.asset_code,
        asset_scale=int(peer.asset_scale),
        max_packet_amount=int(peer.max_packet_amount),
        send_routes=peer.send_routes,
        receive_routes=peer.receive_routes,
        link=peer.link,
        idempotent=peer.idempotent,
        limits=limits_of(peer),
    )


_cache: dict[str, tuple[float, PeerContext | None]] = {}
# Bumped by every invalidation: a load that started before one does not fill the cache
# (it may have read the row as it was before the change).
_generation = 0


def invalidate_local(name: str | None = None) -> None:
    """Forget, in this process, the cached context of ``name`` (every peer when ``None``)
    and the token checks that depend on it."""
    global _generation
    _generation += 1
    if name is None:
        _cache.clear()
    else:
        _cache.pop(name, None)
    # Token verification results depend on the same rows.
    from links import services

    services.forget_verified_tokens(name)


def invalidate_peer(name: str | None = None) -> None:
    """Forget the cached context of ``name`` here (e.g. to dial with fresh settings)."""
    invalidate_local(name)


def peer_changed(name: str | None = None) -> None:
    """A peer row changed (call after commit): every process forgets what it cached."""
    invalidate_local(name)
    from links import shared

    shared.announce_peer_change()


def cache_usable() -> bool:
    """Whether cached peer answers may be used now (always, embedded; see the module doc)."""
    from links import shared

    return shared.peer_cache_fresh()


def cache_generation() -> int:
    return _generation


def cached_peer_context(name: str) -> tuple[bool, PeerContext | None]:
    """``(found, context)`` from the cache alone (no I/O; safe on the event loop)."""
    hit = _cache.get(name)
    if hit is None or hit[0] < time.monotonic() or not cache_usable():
        return False, None
    return True, hit[1]


def store_peer_context(
    name: str, ctx: PeerContext | None, *, generation: int | None = None
) -> None:
    """Cache ``ctx``; ``generation`` is :func:`cache_generation` from before it was read
    (an invalidation since then means it may be stale: not cached)."""
    if generation is not None and generation != _generation:
        return
    _cache[name] = (time.monotonic() + CONTEXT_TTL_S, ctx)


def load_peer_context(name: str) -> PeerContext | None:
    """The context of an enabled peer, or ``None`` (sync: one query on a cache miss)."""
    found, ctx = cached_peer_context(name)
    if found:
        return ctx
    from links.selectors import peer_get_enabled

    generation = _generation
    peer = peer_get_enabled(name=name)
    ctx = context_from_peer(peer) if peer is not None else None
    store_peer_context(name, ctx, generation=generation)
    return ctx


async def aload_peer_context(name: str) -> PeerContext | None:
    """Async twin of :func:`load_peer_context`: no thread hop on a cache hit."""
    found, ctx = cached_peer_context(name)
    if found:
        return ctx
    loaded: PeerContext | None = await database_sync_to_async(load_peer_context)(name)
    return loaded
