"""Peers: model, tokens, services, PeerContext cache, management commands."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from links import peers, services
from links.models import Peer
from links.peers import InvalidPeerName, PeerContext, load_peer_context, validate_peer_name
from links.tokens import check_token, hash_token
from payments.models import LedgerAccount

pytestmark = pytest.mark.django_db


@pytest.fixture
def cache_vouched(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about one process's cache: with Redis, as if this process's watcher
    had just confirmed that no peer changed (the cross-process rules are tested in
    test_shared_caches.py)."""
    from links import shared

    monkeypatch.setattr(shared, "peer_cache_fresh", lambda: True)


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_token_hash_is_salted_and_checked() -> None:
    a, b = hash_token("secret"), hash_token("secret")
    assert a != b and "secret" not in a
    assert check_token("secret", a) and check_token("secret", b)
    assert not check_token("secreT", a)
    assert not check_token("secret", "garbage")
    assert not check_token("secret", "md5$00$00")


@pytest.mark.parametrize("name", ["a", "alice", "a-b_c~d", "0x"])
def test_valid_names(name: str) -> None:
    assert validate_peer_name(name) == name


@pytest.mark.parametrize("name", ["", "Alice", "-a", "a.b", "a b", "receivers", "peer", "x" * 65])
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidPeerName):
        validate_peer_name(name)


def test_peer_create_makes_account_and_hashes_token(make_peer: Callable[..., Any]) -> None:
    saved = make_peer("alice", token="alicetoken", min_balance=-1000, max_balance=5000)
    peer = Peer.objects.get(name="alice")
    assert saved.created and saved.token == "alicetoken"
    assert "alicetoken" not in peer.token_hash
    account = LedgerAccount.objects.get(code="peer:alice")
    assert peer.account_id == account.pk
    assert account.kind == "peer"
    assert account.min_balance == Decimal(-1000) and account.max_balance == Decimal(5000)
    # children exchange no routes by default, peers and parents do
    assert not peer.send_routes and not peer.receive_routes
    assert make_peer("bob", relation="peer").peer.send_routes


def test_peer_create_generates_token(make_peer: Callable[..., Any]) -> None:
    saved = make_peer("alice")
    assert saved.token and len(saved.token) >= 40
    assert services.peer_authenticate("alice", saved.token) is not None


def test_duplicate_and_bad_input(make_peer: Callable[..., Any]) -> None:
    make_peer("alice")
    with pytest.raises(services.PeerExists):
        make_peer("alice")
    with pytest.raises(services.PeerError):
        make_peer("bob", link="btp-client", url="http://nope")
    with pytest.raises(services.PeerError):
        make_peer("carol", relation="friend")


def test_authenticate(make_peer: Callable[..., Any]) -> None:
    make_peer("alice", token="alicetoken")
    ctx = services.peer_authenticate("alice", "alicetoken")
    assert isinstance(ctx, PeerContext)
    assert ctx.name == "alice" and ctx.relation == "child"
    assert ctx.account_code == "peer:alice"
    assert ctx.address == "test.local.alice"
    assert ctx.max_packet_amount == 10**12
    assert services.peer_authenticate("alice", "wrong") is None
    assert services.peer_authenticate("nobody", "alicetoken") is None
    # cached success still honours a disabled peer after invalidation
    services.peer_update(name="alice", enabled=False)
    peers.invalidate_peer("alice")
    assert services.peer_authenticate("alice", "alicetoken") is None


def test_authenticate_http_by_token(make_peer: Callable[..., Any], cache_vouched: None) -> None:
    make_peer("oer", link="http-sync", token="oertoken")
    make_peer("oer2", link="http-sync", token="other")
    make_peer("btpy", token="oertoken")  # same token on a BTP peer: not an HTTP peer
    ctx = services.peer_authenticate_http("oertoken", "harness")
    assert ctx is not None and ctx.name == "oer"
    assert services.cached_http_peer("oertoken") == "oer"
    assert services.peer_authenticate_http("nope") is None
    assert services.peer_authenticate_http("") is None


def test_load_peer_context_caches_and_invalidates(
    make_peer: Callable[..., Any], django_assert_num_queries: Any, cache_vouched: None
) -> None:
    make_peer("alice", relation="peer", ilp_address="g.alice")
    ctx = load_peer_context("alice")
    assert ctx is not None and ctx.address == "g.alice" and ctx.relation == "peer"
    with django_assert_num_queries(0):
        assert load_peer_context("alice") == ctx
    services.peer_update(name="alice", max_packet_amount=5)
    peers.invalidate_peer("alice")  # on_commit does it outside the test transaction
    assert load_peer_context("alice").max_packet_amount == 5  # type: ignore[union-attr]
    assert load_peer_context("nobody") is None


def test_peer_remove_keeps_account(make_peer: Callable[..., Any]) -> None:
    make_peer("alice")
    assert services.peer_remove(name="alice")
    assert not Peer.objects.filter(name="alice").exists()
    assert LedgerAccount.objects.filter(code="peer:alice").exists()
    assert not services.peer_remove(name="alice")
    make_peer("alice")  # re-adding reuses the account


def test_add_peer_prints_btp_url_and_is_idempotent() -> None:
    out = run(
        "add_peer",
        "alice",
        "--relation",
        "child",
        "--link",
        "btp-server",
        "--token",
        "alicetoken",
        "--min-balance",
        "-100",
        "--max-packet-amount",
        "1000",
        "--send-routes",
    )
    assert "btp+ws://alice:alicetoken@127.0.0.1:8000/btp" in out
    peer = Peer.objects.get(name="alice")
    assert peer.send_routes and peer.max_packet_amount == 1000
    assert peer.account.min_balance == -100
    out = run(
        "add_peer", "alice", "--relation", "child", "--link", "btp-server", "--no-send-routes"
    )
    assert "updated" in out
    peer.refresh_from_db()
    assert not peer.send_routes and peer.max_packet_amount == 1000
    assert services.peer_authenticate("alice", "alicetoken") is not None  # token kept
    run("add_peer", "alice", "--relation", "child", "--link", "btp-server", "--token", "new")
    peers.invalidate_peer("alice")
    assert services.peer_authenticate("alice", "new") is not None
    assert services.peer_authenticate("alice", "alicetoken") is None


def test_add_peer_generates_token_and_other_links() -> None:
    out = run("add_peer", "bob", "--relation", "peer", "--link", "btp-server")
    line = next(x for x in out.splitlines() if x.startswith("btp+ws://"))
    token = line.split("bob:", 1)[1].split("@", 1)[0]
    assert services.peer_authenticate("bob", token) is not None
    out = run(
        "add_peer",
        "up",
        "--relation",
        "parent",
        "--link",
        "btp-client",
        "--url",
        "btp+ws://me:secret@127.0.0.1:7000/btp",
        "--idempotent",
    )
    assert "secret" not in out and "me:***@127.0.0.1:7000" in out
    assert Peer.objects.get(name="up").idempotent
    out = run("add_peer", "oer", "--relation", "peer", "--link", "http-sync", "--token", "t")
    assert "/ilp" in out and "token: t" in out


def test_add_peer_errors() -> None:
    with pytest.raises(CommandError):
        run("add_peer", "Bad!", "--relation", "child", "--link", "btp-server")
    with pytest.raises(CommandError):
        run("add_peer", "receivers", "--relation", "child", "--link", "btp-server")
    with pytest.raises(CommandError):
        run("add_peer", "x", "--relation", "child", "--link", "btp-client")  # no url


def test_list_and_remove_peer(make_peer: Callable[..., Any]) -> None:
    make_peer("alice")
    make_peer("bob", relation="peer", link="http-sync")
    out = run("list_peers")
    lines = out.strip().splitlines()
    assert lines[0].split()[:5] == ["NAME", "RELATION", "LINK", "ENABLED", "BALANCE"]
    assert lines[1].split()[:6] == ["alice", "child", "btp-server", "yes", "0", "down"]
    assert lines[2].startswith("bob")
    assert "removed" in run("remove_peer", "alice")
    with pytest.raises(CommandError):
        run("remove_peer", "alice")
    assert "alice" not in run("list_peers")


def test_admin_pages(make_peer: Callable[..., Any], admin_client: Any) -> None:
    make_peer("alice", token="alicetoken")
    response = admin_client.get("/admin/links/peer/")
    assert response.status_code == 200
    assert b"alice" in response.content
    peer = Peer.objects.get(name="alice")
    response = admin_client.get(f"/admin/links/peer/{peer.pk}/change/")
    assert response.status_code == 200
    assert b"alicetoken" not in response.content
    response = admin_client.post(
        "/admin/links/peer/add/",
        {
            "name": "bob",
            "relation": "peer",
            "link": "btp-server",
            "url": "",
            "outgoing_token": "",
            "ilp_address": "",
            "max_packet_amount": "1000",
            "send_routes": "on",
            "enabled": "on",
            "new_token": "bobtoken",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    assert services.peer_authenticate("bob", "bobtoken") is not None
    assert LedgerAccount.objects.filter(code="peer:bob").exists()


def _admin_form(**changes: str) -> dict[str, str]:
    form = {
        "name": "bob",
        "relation": "peer",
        "link": "http-sync",
        "url": "https://bob.example",
        "outgoing_token": "",
        "ilp_address": "",
        "max_packet_amount": "1000",
        "send_routes": "on",
        "enabled": "on",
        "new_token": "bobtoken",
    }
    form.update(changes)
    return form


def test_admin_sets_limits_and_http_profile(
    make_peer: Callable[..., Any], admin_client: Any
) -> None:
    """The admin's peer form sets what add_peer sets (links.limits, http_profile)."""
    response = admin_client.post(
        "/admin/links/peer/add/",
        _admin_form(
            http_profile="rafiki",
            packets_per_second="40",
            burst="80",
            throughput_per_second="5000",
            max_in_flight="9",
            replay_quota="0",
            max_routes="12",
        ),
    )
    assert response.status_code == 302, response.content[:2000]
    bob = Peer.objects.get(name="bob")
    assert bob.http_profile == "rafiki"
    assert peers.limits_of(bob) == peers.PeerLimits(40, 80, 5000, 9, 0, 12)
    # The change page shows them; an empty limit keeps it, an empty throughput is unbounded.
    page = admin_client.get(f"/admin/links/peer/{bob.pk}/change/").content.decode()
    assert 'name="packets_per_second"' in page and 'value="rafiki" selected' in page
    form = _admin_form(http_profile="", burst="", max_routes="13", throughput_per_second="")
    del form["name"]
    response = admin_client.post(f"/admin/links/peer/{bob.pk}/change/", form)
    assert response.status_code == 302, response.content[:2000]
    bob.refresh_from_db()
    assert bob.http_profile == "rafiki"
    assert peers.limits_of(bob) == peers.PeerLimits(40, 80, None, 9, 0, 13)
    # a new peer with nothing given gets the defaults
    response = admin_client.post("/admin/links/peer/add/", _admin_form(name="carl"))
    assert response.status_code == 302
    carl = Peer.objects.get(name="carl")
    assert peers.limits_of(carl) == peers.PeerLimits()
    assert carl.http_profile == "interledger"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("packets_per_second", "0"),
        ("burst", "-3"),
        ("max_in_flight", "0"),
        ("replay_quota", "-1"),
        ("throughput_per_second", "0"),
        ("throughput_per_second", str(2**64)),
        ("max_routes", "lots"),
        ("http_profile", "grpc"),
    ],
)
def test_admin_refuses_bad_limits_with_a_reason(admin_client: Any, field: str, value: str) -> None:
    response = admin_client.post("/admin/links/peer/add/", _admin_form(**{field: value}))
    assert response.status_code == 200  # the form again, with the error on the field
    errors = response.context["adminform"].form.errors
    assert field in errors and errors[field][0]
    assert not Peer.objects.filter(name="bob").exists()


@pytest.mark.parametrize("amount", [1_234_567_890_123_456_789, 2**63, 2**64 - 1])
def test_uint64_settings_are_stored_exactly(make_peer: Callable[..., Any], amount: int) -> None:
    # SQLite rounded these through a float (15 digits) before the fields were UInt64Field.
    make_peer("whale", max_packet_amount=amount)
    services.peer_set_limits(name="whale", changes={"throughput_per_second": amount})
    peer = Peer.objects.get(name="whale")
    assert int(peer.max_packet_amount) == amount
    assert int(peer.throughput_per_second or 0) == amount
    assert (
        Peer.objects.filter(name="whale").values_list("max_packet_amount", flat=True)[0] == amount
    )


@pytest.mark.parametrize("field", ["packets_per_second", "burst", "max_in_flight", "max_routes"])
def test_count_limits_above_the_column_are_refused_with_a_reason(
    make_peer: Callable[..., Any], field: str
) -> None:
    # Postgres's integer column ends at 2**31 - 1: the save failed with a DataError before.
    make_peer("counted")
    with pytest.raises(services.PeerError, match=f"{field} must be an integer from"):
        services.peer_set_limits(name="counted", changes={field: 2**31})
    services.peer_set_limits(name="counted", changes={field: 2**31 - 1})
    assert getattr(Peer.objects.get(name="counted"), field) == 2**31 - 1
