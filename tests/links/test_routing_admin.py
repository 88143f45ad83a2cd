"""The staff routing-table page (links.admin_views), before and after the switch runs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from django.test import Client, override_settings
from django.urls import include, path

from links.routing import RouteEntry, RouteOrigin
from links.services import peer_create
from links.switch import get_switch, reset_switch

# This module doubles as the URLconf: the project's URLs plus the page under test.
urlpatterns = [
    path("ops/", include("links.urls_admin")),
    path("", include("interledger_site.urls")),
]

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]


@pytest.fixture(autouse=True)
def fresh_switch() -> Iterator[None]:
    reset_switch()
    yield
    reset_switch()


@pytest.fixture
def staff(django_user_model: type[User]) -> Client:
    client = Client()
    client.force_login(django_user_model.objects.create_user(username="op", is_staff=True))
    return client


def test_anonymous_and_non_staff_are_sent_to_login(django_user_model: type[User]) -> None:
    response = Client().get("/ops/routing/")
    assert response.status_code == 302 and "login" in response["Location"]
    client = Client()
    client.force_login(django_user_model.objects.create_user(username="u"))
    assert client.get("/ops/routing/").status_code == 302


@override_settings(ILP_ADDRESS="test.node")
def test_before_the_switch_runs_shows_the_starting_routes(staff: Client) -> None:
    peer_create(name="kid", relation="child", link="btp-server", token="k" * 20)
    peer_create(
        name="mom", relation="parent", link="btp-client", url="btp+ws://us:t@127.0.0.1:1/btp"
    )
    page = staff.get("/ops/routing/").content.decode()
    assert "test.node.kid" in page and "test.node.receivers" in page
    assert "(default route)" in page and "mom" in page
    assert "No packet has reached this process yet" in page


def test_live_switch_shows_learned_routes(staff: Client) -> None:
    switch = get_switch()
    switch.routing.update_learned(
        "bob",
        add=[
            RouteEntry(
                "test.bob", "bob", RouteOrigin.CCP, "peer", ("test.bob", "test.far"), bytes(32), 7
            )
        ],
    )
    page = staff.get("/ops/routing/").content.decode()
    assert "Live view" in page
    assert "test.bob → test.far" in page and "ccp" in page
    assert switch.ccp.routing_table_id.hex() in page
