"""The site's own pointer names: the node issues them, no user can take them."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from pytest_django.fixtures import Settings as SettingsWrapper
from rest_framework.test import APIClient

from receivers.errors import InvalidPointerName
from receivers.forms import ReceiverCreateForm
from receivers.models import Receiver
from receivers.names import RESERVED_NAMES, SITE_NAMES, claim_problem, name_problem
from receivers.services import receiver_create, receiver_ensure

pytestmark = pytest.mark.django_db


def test_the_names_the_site_uses_are_on_the_list() -> None:
    from receivers.management.commands.setup_demo import DEMO_POINTER
    from receivers.paid import DEFAULT_RECEIVER
    from receivers.selectors import DEFAULT_RECEIVER_NAME

    assert {DEMO_POINTER, DEFAULT_RECEIVER, DEFAULT_RECEIVER_NAME} <= SITE_NAMES
    assert {"healthz", "readyz", "metrics", ".well-known", "admin", "api"} <= RESERVED_NAMES


@pytest.mark.parametrize("name", ["demo", "paidapi", "operator", "postmaster"])
def test_a_user_cannot_take_a_site_name(alice_user: User, name: str) -> None:
    assert name_problem(name) is None  # a valid name: lookups of /demo work
    problem = claim_problem(name)
    assert problem is not None and "reserved for the site" in problem
    with pytest.raises(InvalidPointerName, match="reserved for the site"):
        receiver_create(user=alice_user, name=name)
    form = ReceiverCreateForm({"name": name})
    assert not form.is_valid()
    assert "reserved for the site" in form.errors["name"][0]
    assert not Receiver.objects.filter(name=name).exists()


def test_the_pages_form_says_why(alice_user: User, client: Client) -> None:
    client.force_login(alice_user)
    response = client.post("/me/", {"name": "paidapi", "description": ""})
    assert response.status_code == 400  # the form again, with the reason
    assert "reserved for the site" in response.content.decode()
    assert not Receiver.objects.filter(name="paidapi").exists()


@pytest.mark.parametrize(
    ("name", "reason"),
    [("demo", "reserved for the site"), ("metrics", "reserved by the site"), ("api", "reserved")],
)
def test_the_api_answers_400_with_the_reason(alice_user: User, name: str, reason: str) -> None:
    api = APIClient()
    api.force_authenticate(alice_user)
    response = api.post("/api/v1/receivers/", {"name": name}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_pointer_name" and reason in body["detail"]


def test_the_admin_cannot_hand_out_a_site_name(client: Client, django_user_model: type) -> None:
    root = django_user_model.objects.create_superuser(username="root", password="x", email="")
    client.force_login(root)
    response = client.post(
        "/admin/receivers/receiver/add/", {"user": root.pk, "name": "demo", "description": ""}
    )
    assert response.status_code == 200
    assert "reserved for the site" in response.content.decode()
    assert not Receiver.objects.filter(name="demo").exists()


def test_the_node_issues_its_own_names(client: Client) -> None:
    call_command("setup_demo", stdout=None)
    demo = Receiver.objects.get(name="demo")
    assert demo.user.username == "demo"
    # ... and the demo user logs in with demo/demo although the validators refuse it.
    assert client.login(username="demo", password="demo")
    assert client.get("/demo", HTTP_ACCEPT="application/spsp+json").status_code == 200

    from receivers.paid import paid_receiver_get_or_create

    assert paid_receiver_get_or_create("paidapi").name == "paidapi"


def test_add_pointer_is_the_operator(capsys: pytest.CaptureFixture[str]) -> None:
    call_command("add_pointer", "paidapi")
    assert Receiver.objects.filter(name="paidapi").exists()


def test_route_names_stay_out_of_reach_even_for_the_node(alice_user: User) -> None:
    with pytest.raises(InvalidPointerName, match="reserved by the site"):
        receiver_ensure(user=alice_user, name="metrics")


def test_an_operator_setting_adds_names(alice_user: User, settings: SettingsWrapper) -> None:
    settings.ILP_RESERVED_NAMES = ["billing"]
    with pytest.raises(InvalidPointerName, match="reserved for the site"):
        receiver_create(user=alice_user, name="billing")
    assert receiver_create(user=alice_user, name="billings").name == "billings"


def test_the_demo_password_fails_the_validators() -> None:
    from django.contrib.auth.password_validation import validate_password
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        validate_password("demo")
