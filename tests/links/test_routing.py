"""links.routing: longest segment-aware prefix match, candidate priority, static routes."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from ilp.address import is_prefix_of
from links.routing import (
    DEFAULT_PREFIX,
    LOCAL_HOP,
    NO_DEFAULT_SCHEMES,
    RouteEntry,
    RouteOrigin,
    RoutingTable,
    static_routes,
)


@dataclass(frozen=True)
class P:
    name: str
    relation: str
    address: str = ""


def learned(prefix: str, peer: str, relation: str = "peer", path: int = 1) -> RouteEntry:
    return RouteEntry(
        prefix, peer, RouteOrigin.CCP, relation, path=tuple(f"test.h{i}" for i in range(path))
    )


def configured(prefix: str, peer: str, relation: str = "child") -> RouteEntry:
    return RouteEntry(prefix, peer, RouteOrigin.CONFIGURED, relation)


# --- lookup ---------------------------------------------------------------------------


def test_exact_and_longest_prefix_segment_aware() -> None:
    t = RoutingTable()
    t.set_static(
        [
            configured("test.a", "a"),
            configured("test.a.b", "ab"),
            configured("test.ab", "x"),
        ]
    )
    assert t.lookup("test.a").next_hop == "a"  # type: ignore[union-attr]
    assert t.lookup("test.a.c").next_hop == "a"  # type: ignore[union-attr]
    assert t.lookup("test.a.b").next_hop == "ab"  # type: ignore[union-attr]
    assert t.lookup("test.a.b.c.d").next_hop == "ab"  # type: ignore[union-attr]
    assert t.lookup("test.ab.c").next_hop == "x"  # type: ignore[union-attr]
    assert t.lookup("test.abc") is None
    assert t.lookup("test.b") is None


def test_default_route_catches_all_but_local_schemes() -> None:
    t = RoutingTable()
    t.set_static([configured(DEFAULT_PREFIX, "mom", "parent"), configured("test.a", "a")])
    assert t.lookup("test.a.x").next_hop == "a"  # type: ignore[union-attr]
    assert t.lookup("test.zz").next_hop == "mom"  # type: ignore[union-attr]
    assert t.lookup("g.anything").next_hop == "mom"  # type: ignore[union-attr]
    for scheme in NO_DEFAULT_SCHEMES:
        assert t.lookup(f"{scheme}.x") is None


SEGMENTS = st.sampled_from(["a", "b", "ab", "c", "a-b", "x~"])
PREFIXES = st.lists(SEGMENTS, min_size=1, max_size=4).map(lambda s: "test." + ".".join(s))


def brute_force(prefixes: dict[str, str], default: str | None, destination: str) -> str | None:
    matches = [p for p in prefixes if is_prefix_of(p, destination)]
    if matches:
        return prefixes[max(matches, key=len)]
    if default is not None and destination.partition(".")[0] not in NO_DEFAULT_SCHEMES:
        return default
    return None


@settings(max_examples=300, deadline=None)
@given(
    routes=st.dictionaries(PREFIXES, st.sampled_from(["p1", "p2", "p3"]), max_size=12),
    default=st.none() | st.just("mom"),
    destinations=st.lists(
        PREFIXES | st.sampled_from(["peer.config", "self.a", "local.b", "g.a"]), max_size=10
    ),
)
def test_lookup_matches_brute_force(
    routes: dict[str, str], default: str | None, destinations: list[str]
) -> None:
    t = RoutingTable()
    static = [configured(p, hop) for p, hop in routes.items()]
    if default is not None:
        static.append(configured(DEFAULT_PREFIX, default, "parent"))
    t.set_static(static)
    for d in destinations:
        got = t.lookup(d)
        assert (got.next_hop if got else None) == brute_force(routes, default, d)


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["add", "withdraw", "drop"]),
            st.sampled_from(["p1", "p2"]),
            PREFIXES,
        ),
        max_size=25,
    ),
    destinations=st.lists(PREFIXES, min_size=1, max_size=8),
)
def test_learned_routes_match_brute_force(
    ops: list[tuple[str, str, str]], destinations: list[str]
) -> None:
    """Random CCP adds/withdrawals/drops: lookups equal a model of per-peer route sets."""
    t = RoutingTable()
    model: dict[str, set[str]] = {"p1": set(), "p2": set()}
    for op, peer, prefix in ops:
        if op == "add":
            t.update_learned(peer, add=[learned(prefix, peer)])
            model[peer].add(prefix)
        elif op == "withdraw":
            t.update_learned(peer, withdraw=[prefix])
            model[peer].discard(prefix)
        else:
            t.drop_learned(peer)
            model[peer].clear()
    # both peers have the same relation and path length: the smaller name wins a tie
    flat: dict[str, str] = {}
    for peer in ("p2", "p1"):
        for prefix in model[peer]:
            flat[prefix] = peer
    for d in destinations:
        got = t.lookup(d)
        assert (got.next_hop if got else None) == brute_force(flat, None, d)
    assert {e.prefix for e in t.entries()} == set(flat)


# --- priority ------------------------------------------------------------------------


def test_priority_origin_then_relation_then_path_then_name() -> None:
    t = RoutingTable()
    t.update_learned("zed", add=[learned("test.x", "zed", "peer", path=1)])
    t.update_learned("amy", add=[learned("test.x", "amy", "peer", path=1)])
    assert t.lookup("test.x").next_hop == "amy"  # type: ignore[union-attr]
    t.update_learned("bob", add=[learned("test.x", "bob", "peer", path=0)])
    assert t.lookup("test.x").next_hop == "bob"  # type: ignore[union-attr]  # shorter path
    t.update_learned("kid", add=[learned("test.x", "kid", "child", path=3)])
    assert t.lookup("test.x").next_hop == "kid"  # type: ignore[union-attr]  # child > peer
    t.set_static([configured("test.x", "conf", "parent")])
    assert t.lookup("test.x").next_hop == "conf"  # type: ignore[union-attr]  # configured > ccp
    t.set_static([])
    assert t.lookup("test.x").next_hop == "kid"  # type: ignore[union-attr]  # learned kept


def test_listeners_hear_only_real_changes() -> None:
    t = RoutingTable()
    heard: list[list[str]] = []
    t.subscribe(heard.append)
    t.update_learned("p", add=[learned("test.x", "p")])
    t.update_learned("p", add=[learned("test.x", "p")])  # same route again: no change
    t.update_learned("q", add=[learned("test.x", "q")])  # worse (name): best unchanged
    t.update_learned("p", withdraw=["test.x"])  # q takes over
    t.drop_learned("q")
    assert heard == [["test.x"], ["test.x"], ["test.x"]]
    assert len(t) == 0


def test_learned_route_must_come_from_its_peer() -> None:
    t = RoutingTable()
    try:
        t.update_learned("p", add=[learned("test.x", "q")])
    except ValueError:
        pass
    else:  # pragma: no cover
        raise AssertionError("accepted a route whose next hop is another peer")


# --- static routes -------------------------------------------------------------------


def test_static_routes_from_peers() -> None:
    routes = static_routes(
        "test.node",
        [
            P("kid", "child", "test.node.kid"),
            P("bare", "child"),
            P("mom", "parent", "test.up"),
            P("dad", "parent"),
            P("pal", "peer"),
            P("evil", "peer", "test.node"),  # may not take over our own address
        ],
    )
    by_prefix = {r.prefix: r for r in routes}
    assert by_prefix["test.node"].next_hop == LOCAL_HOP
    assert by_prefix["test.node.receivers"].next_hop == LOCAL_HOP
    assert by_prefix["test.node.kid"].next_hop == "kid"
    assert by_prefix["test.node.bare"].next_hop == "bare"
    assert by_prefix["test.up"].next_hop == "mom"
    assert by_prefix[DEFAULT_PREFIX].next_hop == "dad"  # first parent by name
    assert by_prefix[DEFAULT_PREFIX].relation == "parent"
    assert len(routes) == 6

    t = RoutingTable()
    t.set_static(routes)
    assert t.lookup("test.node").next_hop == LOCAL_HOP  # type: ignore[union-attr]
    assert t.lookup("test.node.receivers.demo.tok").next_hop == LOCAL_HOP  # type: ignore[union-attr]
    assert t.lookup("test.node.kid.sub").next_hop == "kid"  # type: ignore[union-attr]
    assert t.lookup("test.elsewhere").next_hop == "dad"  # type: ignore[union-attr]


def test_no_default_route_without_parent() -> None:
    t = RoutingTable()
    t.set_static(static_routes("test.node", [P("kid", "child")]))
    assert t.lookup("test.elsewhere") is None
    assert t.get(DEFAULT_PREFIX) is None
