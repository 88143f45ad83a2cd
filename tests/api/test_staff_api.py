"""The operators' REST API: peers, routes, the ledger. Staff only: a user gets 403."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from links import registry
from links.models import Peer
from links.services import peer_create
from links.switch import get_switch
from payments.ledger import ensure_account
from payments.services import account_adjust
from tests.api.conftest import client_for
from tests.dashboard.factories import make_receiver, pay

pytestmark = pytest.mark.django_db(transaction=True)

STAFF_URLS = (
    "/api/v1/peers/",
    "/api/v1/peers/kid/",
    "/api/v1/routes/",
    "/api/v1/ledger/accounts/",
    "/api/v1/ledger/accounts/peer:kid/",
    "/api/v1/ledger/postings/",
)


def test_users_and_anonymous_are_refused_everywhere(alice: User) -> None:
    peer_create(name="kid", relation="child", link="btp-server", token="k" * 20)
    user, anon = client_for(alice), APIClient()
    for url in STAFF_URLS:
        refused = user.get(url)
        assert refused.status_code == 403, url
        assert refused.json()["error"] == "permission_denied"
        assert anon.get(url).status_code == 401, url
    assert (
        user.post(
            "/api/v1/peers/", {"name": "x", "relation": "child", "link": "btp-server"}
        ).status_code
        == 403
    )
    assert user.patch("/api/v1/peers/kid/", {"enabled": False}).status_code == 403
    assert user.delete("/api/v1/peers/kid/").status_code == 403
    assert Peer.objects.get(name="kid").enabled


def test_peer_list_shows_status_balance_limits_and_traffic(as_staff: APIClient) -> None:
    peer_create(name="kid", relation="child", link="btp-server", token="k" * 20, min_balance=-1000)
    peer_create(
        name="mom",
        relation="parent",
        link="btp-client",
        url="btp+ws://us:secret-token@127.0.0.1:1/btp",
        max_balance=5000,
    )
    peer_create(name="old", relation="peer", link="http-sync", enabled=False)
    account_adjust(account_code="peer:kid", amount=-250, key="t1", memo="test")

    class Link:
        async def send_prepare(self, prepare: object) -> object:
            raise AssertionError("not used")

    link = Link()
    registry.register("mom", link)  # type: ignore[arg-type]
    try:
        listing = as_staff.get("/api/v1/peers/").json()
    finally:
        registry.unregister("mom", link)  # type: ignore[arg-type]
    rows = {p["name"]: p for p in listing["results"]}
    assert [p["name"] for p in listing["results"]] == ["kid", "mom", "old"]
    kid = rows["kid"]
    assert (kid["status"], kid["balance"], kid["min_balance"], kid["max_balance"]) == (
        "down",
        "-250",
        "-1000",
        None,
    )
    assert kid["account"] == "peer:kid" and kid["ilp_address"] == ""
    assert kid["traffic"] == {"packets_in": 0, "packets_out": 0, "fulfilled": 0, "rejected": 0}
    assert rows["mom"]["status"] == "connected" and rows["mom"]["max_balance"] == "5000"
    assert rows["mom"]["url"] == "btp+ws://***@127.0.0.1:1/btp"  # no token in the answer
    assert rows["old"]["status"] == "disabled"
    assert "token_hash" not in kid and "outgoing_token" not in kid
    only_children = as_staff.get("/api/v1/peers/", {"relation": "child"}).json()["results"]
    assert [p["name"] for p in only_children] == ["kid"]
    down = as_staff.get("/api/v1/peers/", {"status": "down"}).json()["results"]
    assert [p["name"] for p in down] == ["kid", "mom"]  # mom's link is gone again
    bad = as_staff.get("/api/v1/peers/", {"status": "sleepy"})
    assert bad.status_code == 400 and "status" in bad.json()["detail"]


def test_peer_create_returns_the_token_once_and_maps_errors(as_staff: APIClient) -> None:
    created = as_staff.post(
        "/api/v1/peers/",
        {"name": "kid", "relation": "child", "link": "btp-server", "max_balance": 1000},
        format="json",
    )
    assert created.status_code == 201
    body = created.json()
    assert len(body["token"]) >= 20 and body["max_balance"] == "1000"
    assert body["receive_routes"] is False and body["send_routes"] is False  # child defaults
    assert "token" not in as_staff.get("/api/v1/peers/kid/").json()
    exists = as_staff.post(
        "/api/v1/peers/", {"name": "kid", "relation": "child", "link": "btp-server"}, format="json"
    )
    assert exists.status_code == 409 and exists.json()["error"] == "peer_exists"
    reserved = as_staff.post(
        "/api/v1/peers/", {"name": "peer", "relation": "child", "link": "btp-server"}, format="json"
    )
    assert reserved.status_code == 400 and reserved.json()["error"] == "invalid_peer_name"
    no_url = as_staff.post(
        "/api/v1/peers/", {"name": "mom", "relation": "parent", "link": "btp-client"}, format="json"
    )
    assert no_url.status_code == 400 and no_url.json()["error"] == "peer_invalid"
    bad_kind = as_staff.post(
        "/api/v1/peers/", {"name": "x", "relation": "boss", "link": "btp-server"}, format="json"
    )
    assert bad_kind.status_code == 400 and "relation" in bad_kind.json()["detail"]


def test_peer_update_and_delete(as_staff: APIClient) -> None:
    peer_create(name="kid", relation="child", link="btp-server", token="k" * 20)
    changed = as_staff.patch(
        "/api/v1/peers/kid/", {"enabled": False, "min_balance": -5}, format="json"
    )
    assert changed.status_code == 200
    assert (changed.json()["enabled"], changed.json()["min_balance"]) == (False, "-5")
    assert (
        as_staff.patch("/api/v1/peers/nobody/", {"enabled": True}, format="json").status_code == 404
    )
    assert as_staff.delete("/api/v1/peers/kid/").status_code == 204
    missing = as_staff.get("/api/v1/peers/kid/")
    assert missing.status_code == 404 and missing.json()["error"] == "peer_not_found"
    assert as_staff.delete("/api/v1/peers/kid/").status_code == 404


def test_routes_before_and_after_the_switch_runs(as_staff: APIClient) -> None:
    peer_create(name="kid", relation="child", link="btp-server", token="k" * 20)
    peer_create(
        name="mom", relation="parent", link="btp-client", url="btp+ws://u:t@127.0.0.1:1/btp"
    )
    response = as_staff.get("/api/v1/routes/")
    assert response["X-Routes-Live"] == "0"
    routes = {r["prefix"]: r for r in response.json()["results"]}
    assert routes["test.node"]["is_local"] and routes["test.node.receivers"]["origin"] == "local"
    assert routes["test.node.kid"]["next_hop"] == "kid"
    assert routes[""]["is_default"] and routes[""]["next_hop"] == "mom"
    get_switch()
    assert as_staff.get("/api/v1/routes/")["X-Routes-Live"] == "1"


def test_ledger_accounts_and_postings(as_staff: APIClient, alice: User) -> None:
    tips = make_receiver(alice, "tips")
    pay(tips, 300)
    ensure_account("peer:kid", kind="peer", min_balance=-10)
    accounts = as_staff.get("/api/v1/ledger/accounts/", {"kind": "receiver"}).json()["results"]
    assert [(a["code"], a["balance"]) for a in accounts] == [("receiver:tips", "300")]
    by_code = as_staff.get("/api/v1/ledger/accounts/", {"code": "kid"}).json()["results"]
    assert [(a["code"], a["min_balance"], a["max_balance"]) for a in by_code] == [
        ("peer:kid", "-10", None)
    ]
    one = as_staff.get("/api/v1/ledger/accounts/receiver:tips/").json()
    assert one["kind"] == "receiver" and one["asset_code"] == "XRP"
    unknown = as_staff.get("/api/v1/ledger/accounts/peer:nobody/")
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_account"
    assert as_staff.get("/api/v1/ledger/accounts/", {"kind": "nonsense"}).status_code == 400
    postings = as_staff.get("/api/v1/ledger/postings/", {"account": "receiver:tips"}).json()
    assert [(p["account"], p["amount"]) for p in postings["results"]] == [("receiver:tips", "300")]
    payer = as_staff.get("/api/v1/ledger/postings/", {"account": "peer:test-payer"}).json()
    assert [p["amount"] for p in payer["results"]] == ["-300"]
    future = as_staff.get("/api/v1/ledger/postings/", {"since": "2999-01-01T00:00:00Z"}).json()
    assert future["count"] == 0


def test_peer_limits_and_http_profile_are_read_and_set(as_staff: APIClient) -> None:
    """What add_peer sets, the API sets: the abuse limits (links.limits) and the profile."""
    created = as_staff.post(
        "/api/v1/peers/",
        {
            "name": "raf",
            "relation": "peer",
            "link": "http-sync",
            "url": "https://rafiki.example",
            "http_profile": "rafiki",
            "packets_per_second": 50,
            "burst": 100,
            # (a string, as every amount; beyond 10**15 SQLite's DecimalField reading rounds)
            "throughput_per_second": "123456789012345",
            "max_in_flight": 7,
            "replay_quota": 0,
            "max_routes": 3,
        },
        format="json",
    )
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["http_profile"] == "rafiki"
    assert (body["packets_per_second"], body["burst"], body["max_in_flight"]) == (50, 100, 7)
    assert (body["replay_quota"], body["max_routes"]) == (0, 3)
    assert body["throughput_per_second"] == "123456789012345"
    peer = Peer.objects.get(name="raf")
    assert (peer.http_profile, peer.packets_per_second, int(peer.throughput_per_second)) == (
        "rafiki",
        50,
        123456789012345,
    )
    # PATCH: only the given ones change; null throughput is unbounded
    changed = as_staff.patch(
        "/api/v1/peers/raf/",
        {"burst": 10, "throughput_per_second": None, "http_profile": "interledger"},
        format="json",
    )
    assert changed.status_code == 200, changed.json()
    body = changed.json()
    assert (body["burst"], body["packets_per_second"], body["throughput_per_second"]) == (
        10,
        50,
        None,
    )
    assert body["http_profile"] == "interledger"
    # defaults when nothing is given
    plain = as_staff.post(
        "/api/v1/peers/", {"name": "kid", "relation": "child", "link": "btp-server"}, format="json"
    ).json()
    assert (plain["http_profile"], plain["throughput_per_second"]) == ("interledger", None)
    assert plain["packets_per_second"] == Peer._meta.get_field("packets_per_second").default


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("packets_per_second", 0),
        ("burst", -1),
        ("max_in_flight", 0),
        ("replay_quota", -1),
        ("max_routes", 2**31),
        ("throughput_per_second", 0),
        ("throughput_per_second", str(2**64)),
        ("packets_per_second", "many"),
        ("http_profile", "grpc"),
    ],
)
def test_bad_peer_limits_are_400_naming_the_field(
    as_staff: APIClient, field: str, value: object
) -> None:
    peer_create(name="kid", relation="child", link="btp-server", token="k" * 20)
    before = as_staff.get("/api/v1/peers/kid/").json()
    refused = as_staff.patch("/api/v1/peers/kid/", {field: value}, format="json")
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid" and field in refused.json()["detail"]
    assert as_staff.get("/api/v1/peers/kid/").json() == before
    created = as_staff.post(
        "/api/v1/peers/",
        {"name": "new", "relation": "child", "link": "btp-server", field: value},
        format="json",
    )
    assert created.status_code == 400 and field in created.json()["detail"]
    assert not Peer.objects.filter(name="new").exists()
