"""The staff pages under /ops/: access, what they show, search and filters."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

from links.services import peer_create
from payments.services import account_adjust
from tests.dashboard.conftest import logged_in
from tests.dashboard.factories import make_receiver, pay

pytestmark = pytest.mark.django_db(transaction=True)

OPS_PAGES = ("/ops/", "/ops/peers/", "/ops/receivers/", "/ops/payments/", "/ops/snapshot.json")


def test_only_staff_get_in(alice: User, operator: User) -> None:
    for url in OPS_PAGES:
        anonymous = Client().get(url)
        assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"], url
        user = logged_in(alice).get(url)
        assert user.status_code == 302 and "/admin/login/" in user["Location"], url
        assert logged_in(operator).get(url).status_code == 200, url
    assert logged_in(operator).post("/ops/").status_code == 405


def test_overview_shows_identity_health_peers_payments_and_chart(
    operator: User, alice: User
) -> None:
    peer_create(
        name="kid", relation="child", link="btp-server", token="k" * 20, min_balance=-4_000_000_000
    )
    account_adjust(account_code="peer:kid", amount=-3_500_000_000, key="t1", memo="test")
    tips = make_receiver(alice, "tips")
    pay(tips, 1_250_000_000, payment_id=bytes.fromhex("ab" * 16))
    page = logged_in(operator).get("/ops/").content.decode()
    # identity and health
    assert "test.node" in page and "XRP, scale 9" in page
    for check in ("Database", "Channel layer", "Celery", "Link supervisor", "Packet switch"):
        assert f'data-check="{check}"' in page
    assert f"{connection.vendor} reachable" in page
    layer = str(settings.CHANNEL_LAYERS["default"]["BACKEND"]).rsplit(".", 1)[-1]
    assert layer in page and "round trip in" in page
    if settings.CELERY_TASK_ALWAYS_EAGER:
        assert "eager (tasks run in the web process)" in page
    else:
        assert "workers via broker" in page and "@" not in page.split("workers via broker")[1][:80]
    # the peer, its balance with the scale, and a bar 87.5 % toward its limit (amber)
    assert 'data-peer="kid"' in page and "-3.5 XRP" in page
    assert 'class="bar2 warn"' in page and "width: 87.5%" in page and "min -4" in page
    # the payment, formatted with the scale, with its pointer and owner
    assert 'data-id="' in page and "1.25 XRP" in page and "abababab" in page
    assert "<svg" in page and "1.25 XRP, 1 payment" in page
    # the routing table is one click away, and the (empty) outgoing payments table is there
    assert 'href="/ops/routing/"' in page
    assert 'id="outgoing-body"' in page and "No outgoing payments yet." in page
    assert "being built" not in page
    # the live feed is wired
    assert 'data-ws="/ws/ops/"' in page and "new WebSocket" in page


def test_overview_range_switch(operator: User) -> None:
    staff = logged_in(operator)
    assert 'data-range="30d"' in staff.get("/ops/?range=30d").content.decode()
    assert 'data-range="24h"' in staff.get("/ops/?range=nonsense").content.decode()


def test_peers_page_lists_every_peer_with_details(operator: User) -> None:
    peer_create(name="kid", relation="child", link="btp-server", token="k" * 20)
    peer_create(name="old", relation="peer", link="http-sync", enabled=False)
    page = logged_in(operator).get("/ops/peers/").content.decode()
    assert 'data-mode="full"' in page
    assert 'data-peer="kid"' in page and 'data-peer="old"' in page
    assert '<span class="dot disabled">' in page and '<span class="dot down">' in page
    assert "no min" in page and "no max" in page
    # neither has a min balance: both marked as possibly owing without bound
    assert page.count('class="credit-unbounded"') == 2
    peer_create(name="paid", relation="child", link="btp-server", token="p" * 20, min_balance=0)
    page = logged_in(operator).get("/ops/peers/").content.decode()
    paid_row = page.split('data-peer="paid"')[1].split("</tr>")[0]
    assert "credit-unbounded" not in paid_row
    assert page.count('class="credit-unbounded"') == 2


def test_receivers_page_search(operator: User, alice: User, bob: User) -> None:
    tips = make_receiver(alice, "tips", "Tip jar")
    make_receiver(bob, "bobshop")
    pay(tips, 2_000_000_000)
    staff = logged_in(operator)
    page = staff.get("/ops/receivers/").content.decode()
    assert "tips" in page and "bobshop" in page and "Tip jar" in page
    assert ">2 XRP<" in page  # balance and received, formatted
    found = staff.get("/ops/receivers/", {"q": "bob"}).content.decode()
    assert "bobshop" in found and ">tips<" not in found
    owner = staff.get("/ops/receivers/", {"q": "alice"}).content.decode()
    assert ">tips<" in owner and "bobshop" not in owner
    none = staff.get("/ops/receivers/", {"q": "zzz"}).content.decode()
    assert "No pointer matches" in none


def test_payments_page_filters_and_pages(operator: User, alice: User, bob: User) -> None:
    tips = make_receiver(alice, "tips")
    bobs = make_receiver(bob, "bobs")
    pay(
        tips,
        1_000_000_000,
        payment_id=bytes.fromhex("aa" * 16),
        at=datetime(2024, 3, 1, tzinfo=UTC),
    )
    pay(bobs, 3_000_000_000, payment_id=bytes.fromhex("bb" * 16))
    staff = logged_in(operator)

    def ids(**query: str) -> list[str]:
        page = staff.get("/ops/payments/", query).content.decode()
        return [pid for pid in ("aaaa", "bbbb") if pid in page]

    assert ids() == ["aaaa", "bbbb"]
    assert ids(receiver="tips") == ["aaaa"]
    assert ids(q="bbbb") == ["bbbb"]
    assert ids(q="bob") == ["bbbb"]
    assert ids(date_from="2024-02-29", date_to="2024-03-01") == ["aaaa"]
    assert ids(date_from="2024-03-02") == ["bbbb"]
    bad = staff.get("/ops/payments/", {"date_from": "2024-03-02", "date_to": "2024-03-01"})
    assert bad.status_code == 400 and "must not be after" in bad.content.decode()
    assert staff.get("/ops/payments/", {"date_from": "March"}).status_code == 400
    page = staff.get("/ops/payments/").content.decode()
    assert "3 XRP" in page and "2 payments" in page


def test_payments_page_paginates(
    operator: User, alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dashboard import views_ops

    tips = make_receiver(alice, "tips")
    for _ in range(3):
        pay(tips, 1)
    monkeypatch.setattr(views_ops, "PAGE_SIZE", 2)
    staff = logged_in(operator)
    first = staff.get("/ops/payments/", {"receiver": "tips"}).content.decode()
    assert "page 1 of 2" in first and "receiver=tips&amp;page=2" in first
    second = staff.get("/ops/payments/", {"receiver": "tips", "page": "2"}).content.decode()
    assert "page 2 of 2" in second


def test_snapshot_json_shape(operator: User, alice: User) -> None:
    peer_create(name="kid", relation="child", link="btp-server", token="k" * 20)
    pay(make_receiver(alice, "tips"), 7)
    snap = logged_in(operator).get("/ops/snapshot.json").json()
    assert snap["type"] == "snapshot" and snap["range"] == "24h"
    assert set(snap["traffic"]) == {
        "live",
        "packets_per_second",
        "packets_in",
        "fulfilled",
        "rejected",
    }
    assert snap["traffic"]["live"] is False
    assert [p["name"] for p in snap["peers"]] == ["kid"] and snap["peers"][0]["status"] == "down"
    assert snap["peers"][0]["unbounded_credit"] is True
    assert [(r["receiver"], r["owner"], r["amount_units"]) for r in snap["recent"]] == [
        ("tips", "alice", "7")
    ]
    assert snap["totals"]["payments_24h"] == 1 and snap["totals"]["receivers"] == 1
    assert snap["chart"]["svg"].startswith("<svg") and len(snap["chart"]["key"]) == 16
    assert snap["outgoing"] == []
    assert {c["name"] for c in snap["health"]} >= {"Database", "Channel layer"}


def test_admin_index_links_the_dashboard(operator: User) -> None:
    operator.is_superuser = True
    operator.save()
    page = logged_in(operator).get("/admin/").content.decode()
    assert 'href="/ops/"' in page and "Operator dashboard" in page
