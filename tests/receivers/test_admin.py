from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from receivers.models import Receiver

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_(client: Client, django_user_model: type[User]) -> Client:
    admin = django_user_model.objects.create_superuser(username="root", password="x", email="")
    client.force_login(admin)
    return client


def test_admin_adds_a_pointer_with_its_account(admin_client_: Client) -> None:
    owner = User.objects.create_user(username="dana")
    response = admin_client_.post(
        "/admin/receivers/receiver/add/",
        {"user": owner.pk, "name": "dana", "description": "Dana's jar"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    receiver = Receiver.objects.select_related("account").get(name="dana")
    assert receiver.account.code == "receiver:dana"
    assert receiver.user == owner


def test_admin_refuses_bad_names(admin_client_: Client) -> None:
    owner = User.objects.create_user(username="dana")
    for name in ("Dana", "admin", "me"):
        response = admin_client_.post(
            "/admin/receivers/receiver/add/", {"user": owner.pk, "name": name}
        )
        assert response.status_code == 200  # the form again, with the error
        assert Receiver.objects.count() == 0


def test_admin_edits_only_the_description(admin_client_: Client, bob: Receiver) -> None:
    response = admin_client_.post(
        f"/admin/receivers/receiver/{bob.pk}/change/",
        {"name": "renamed", "description": "changed"},
    )
    assert response.status_code == 302
    bob.refresh_from_db()
    assert (bob.name, bob.description) == ("bob", "changed")
    assert admin_client_.get("/admin/receivers/receiver/").status_code == 200
