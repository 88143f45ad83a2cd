"""The routing table: which link a destination goes to (connector.md §2, ccp.md §6.3).

A pure in-memory data structure (no Django, no I/O, no clock), read once per packet
by the switch and changed only off the hot path: when peers are (re)loaded and when
CCP updates arrive.

* Candidates per exact prefix come from three origins. **local**: this node's own
  address and ``<node>.receivers`` (next hop :data:`LOCAL_HOP`, served in-process).
  **configured**: built from ``Peer`` rows (each child's address, a known peer or
  parent address, and the *default route* to the parent). **ccp**: learned from
  route updates, one candidate per advertising peer.
* The best candidate per prefix wins by (origin local > configured > ccp), then
  relation (child > peer > parent, ccp.md §6.1), then the shorter path, then the
  smaller peer name — ilp-connector 21.3.0's ``getBestPeerForPrefix``.
* :meth:`RoutingTable.lookup` is the longest *segment-aware* prefix match: ``test.a``
  covers ``test.a`` and ``test.a.b`` but not ``test.ab`` (connector.md §2.1). It costs
  one dict probe per segment of the destination.
* The default route has the empty prefix :data:`DEFAULT_PREFIX` and matches anything
  nothing longer matches, except ``peer.``/``self.``/``local.`` destinations, which are
  never sent to a parent (ilp-packet.md §4, connector.md §7). ilp-connector uses the
  global prefix (``g``/``test``) instead; a catch-all gives the same answers for every
  address of our own scheme and lets ``test1.``/``private.`` traffic reach the parent too.

Listeners registered with :meth:`RoutingTable.subscribe` are told which prefixes
changed their best route, so CCP can log and advertise the change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from receivers.addresses import LOCAL_PREFIX_SEGMENT

LOCAL_HOP = ""
DEFAULT_PREFIX = ""
# Destinations the default route never takes (they are local by definition).
NO_DEFAULT_SCHEMES = frozenset({"peer", "self", "local"})


class RouteOrigin(StrEnum):
    LOCAL = "local"
    CONFIGURED = "configured"
    CCP = "ccp"


# ccp.md §6.1: parent 0 < peer 1 < child 2 < local 3; higher wins.
RELATION_PRIORITY: dict[str, int] = {"parent": 0, "peer": 1, "child": 2, "local": 3}
_ORIGIN_PRIORITY: dict[RouteOrigin, int] = {
    RouteOrigin.LOCAL: 2,
    RouteOrigin.CONFIGURED: 1,
    RouteOrigin.CCP: 0,
}


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One route: packets for ``prefix`` (and below it) go to ``next_hop``.

    ``relation`` is the next hop's relation (``"local"`` for :data:`LOCAL_HOP`).
    ``path`` is the connector path as learned (empty for local and configured
    routes); ``auth`` the 32-byte CCP auth value as received (empty otherwise).
    ``epoch`` is, for a learned route, the speaker's ``toEpochIndex`` of the update
    that carried it (0 otherwise) — what the admin page shows as "learned at".
    """

    prefix: str
    next_hop: str
    origin: RouteOrigin
    relation: str
    path: tuple[str, ...] = ()
    auth: bytes = b""
    epoch: int = 0

    @property
    def is_local(self) -> bool:
        return self.next_hop == LOCAL_HOP

    @property
    def is_default(self) -> bool:
        return self.prefix == DEFAULT_PREFIX


def _rank(entry: RouteEntry) -> tuple[int, int, int, str]:
    """Sort key: the smallest key is the best route (ccp.md §6.3)."""
    return (
        -_ORIGIN_PRIORITY[entry.origin],
        -RELATION_PRIORITY.get(entry.relation, 0),
        len(entry.path),
        entry.next_hop,
    )


def _same_route(a: RouteEntry | None, b: RouteEntry | None) -> bool:
    """Whether ``a`` and ``b`` route and advertise the same way (ignoring ``epoch``)."""
    if a is None or b is None:
        return a is b
    return (
        a.next_hop == b.next_hop
        and a.origin == b.origin
        and a.relation == b.relation
        and a.path == b.path
        and a.auth == b.auth
    )


ChangeListener = Callable[[list[str]], None]


class PeerLike(Protocol):
    """What :func:`static_routes` reads from a ``links.peers.PeerContext``."""

    @property
    def name(self) -> str: ...
    @property
    def relation(self) -> str: ...
    @property
    def address(self) -> str: ...


# Candidate source keys: "static" for local/configured routes, "ccp:<peer>" for learned.
_STATIC = "static"


def _learned_key(peer: str) -> str:
    return f"ccp:{peer}"


class RoutingTable:
    """Best route per prefix, with longest-prefix lookup. Not thread-safe: use it from
    the event loop (or one thread) only."""

    def __init__(self) -> None:
        # prefix -> {source key -> candidate}
        self._candidates: dict[str, dict[str, RouteEntry]] = {}
        # prefix -> best candidate: the table lookups read
        self._best: dict[str, RouteEntry] = {}
        self._listeners: list[ChangeListener] = []

    # --- reading (hot path) -----------------------------------------------------------

    def lookup(self, destination: str) -> RouteEntry | None:
        """The route for ``destination``: the longest matching prefix, else the default."""
        best = self._best
        entry = best.get(destination)
        if entry is not None:
            return entry
        end = destination.rfind(".")
        while end > 0:
            entry = best.get(destination[:end])
            if entry is not None:
                return entry
            end = destination.rfind(".", 0, end)
        entry = best.get(DEFAULT_PREFIX)
        if entry is not None and destination.partition(".")[0] not in NO_DEFAULT_SCHEMES:
            return entry
        return None

    def get(self, prefix: str) -> RouteEntry | None:
        """The best route for exactly ``prefix``."""
        return self._best.get(prefix)

    def entries(self) -> list[RouteEntry]:
        """Every best route, sorted by prefix (the default route first).

        Works on a copy, so another thread (a sync admin view) may call it safely.
        """
        best = self._best.copy()
        return [best[p] for p in sorted(best)]

    def learned_from(self, peer: str) -> dict[str, RouteEntry]:
        """The candidates learned from ``peer`` by CCP (best or not), by prefix."""
        key = _learned_key(peer)
        return {p: c[key] for p, c in self._candidates.items() if key in c}

    def __len__(self) -> int:
        return len(self._best)

    # --- changing (off the hot path) --------------------------------------------------

    def subscribe(self, listener: ChangeListener) -> None:
        """Call ``listener(prefixes)`` after every change of best routes."""
        self._listeners.append(listener)

    def set_static(self, routes: Iterable[RouteEntry]) -> list[str]:
        """Replace every local and configured route with ``routes``.

        Learned routes are kept. Returns the prefixes whose best route changed.
        """
        wanted: dict[str, RouteEntry] = {}
        for route in routes:
            if route.origin is RouteOrigin.CCP:
                raise ValueError("set_static takes local and configured routes only")
            old = wanted.get(route.prefix)
            if old is None or _rank(route) < _rank(old):
                wanted[route.prefix] = route
        touched = {p for p, c in self._candidates.items() if _STATIC in c} | set(wanted)
        for prefix in touched:
            cands = self._candidates.setdefault(prefix, {})
            if prefix in wanted:
                cands[_STATIC] = wanted[prefix]
            else:
                cands.pop(_STATIC, None)
        return self._reselect(touched)

    def update_learned(
        self, peer: str, *, add: Iterable[RouteEntry] = (), withdraw: Iterable[str] = ()
    ) -> list[str]:
        """Apply a CCP update from ``peer``: withdrawals first, then new routes.

        Every added entry must have ``origin=ccp`` and ``next_hop=peer``. Returns the
        prefixes whose best route changed.
        """
        key = _learned_key(peer)
        touched: set[str] = set()
        for prefix in withdraw:
            cands = self._candidates.get(prefix)
            if cands is not None and cands.pop(key, None) is not None:
                touched.add(prefix)
        for route in add:
            if route.origin is not RouteOrigin.CCP or route.next_hop != peer:
                raise ValueError("a learned route must come from the peer that advertised it")
            self._candidates.setdefault(route.prefix, {})[key] = route
            touched.add(route.prefix)
        return self._reselect(touched)

    def replace_learned(self, peer: str, routes: Iterable[RouteEntry]) -> list[str]:
        """Make ``routes`` the exact set of candidates learned from ``peer``.

        How a process adopts the routes another process learned (:mod:`links.shared`).
        Returns the prefixes whose best route changed.
        """
        key = _learned_key(peer)
        wanted: dict[str, RouteEntry] = {}
        for route in routes:
            if route.origin is not RouteOrigin.CCP or route.next_hop != peer:
                raise ValueError("a learned route must come from the peer that advertised it")
            wanted[route.prefix] = route
        touched: set[str] = set()
        for prefix, cands in self._candidates.items():
            if key in cands and prefix not in wanted:
                del cands[key]
                touched.add(prefix)
        for prefix, route in wanted.items():
            cands = self._candidates.setdefault(prefix, {})
            if cands.get(key) != route:
                cands[key] = route
                touched.add(prefix)
        return self._reselect(touched)

    def drop_learned(self, peer: str) -> list[str]:
        """Forget every route learned from ``peer`` (link down, table reset, hold-down)."""
        key = _learned_key(peer)
        touched = [p for p, c in self._candidates.items() if c.pop(key, None) is not None]
        return self._reselect(touched)

    def _reselect(self, prefixes: Iterable[str]) -> list[str]:
        changed: list[str] = []
        for prefix in prefixes:
            cands = self._candidates.get(prefix)
            new = min(cands.values(), key=_rank) if cands else None
            if not cands:
                self._candidates.pop(prefix, None)
            old = self._best.get(prefix)
            if new is None:
                if old is not None:
                    del self._best[prefix]
                    changed.append(prefix)
                continue
            self._best[prefix] = new
            if not _same_route(old, new):
                changed.append(prefix)
        if changed:
            changed.sort()
            for listener in self._listeners:
                listener(changed)
        return changed


def static_routes(
    node_address: str,
    peers: Iterable[PeerLike],
) -> list[RouteEntry]:
    """The local and configured routes of a node with these (enabled) peers.

    * the node's own address and ``<node>.receivers``: served locally;
    * every child: its address (``<node>.<name>`` unless configured otherwise);
    * every peer or parent whose ILP address is known: that address;
    * the default route: the first parent by name, when there is one (21.3.0's
      ``defaultRoute: "auto"`` takes the first parent account too).
    """
    routes = [
        RouteEntry(node_address, LOCAL_HOP, RouteOrigin.LOCAL, "local"),
        RouteEntry(receivers_prefix(node_address), LOCAL_HOP, RouteOrigin.LOCAL, "local"),
    ]
    local = {r.prefix for r in routes}
    parents: list[str] = []
    for peer in sorted(peers, key=lambda p: p.name):
        address = peer.address or (
            f"{node_address}.{peer.name}" if peer.relation == "child" else ""
        )
        # A peer can never take over the node's own address (served locally).
        if address and address != node_address and address not in local:
            routes.append(RouteEntry(address, peer.name, RouteOrigin.CONFIGURED, peer.relation))
        if peer.relation == "parent":
            parents.append(peer.name)
    if parents:
        routes.append(RouteEntry(DEFAULT_PREFIX, parents[0], RouteOrigin.CONFIGURED, "parent"))
    return routes


def receivers_prefix(node_address: str) -> str:
    """``<node>.receivers``: the local PSK2 receivers live below it."""
    return f"{node_address}.{LOCAL_PREFIX_SEGMENT}"
