from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from receivers.models import Receiver

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_add_pointer_creates_user_receiver_and_account() -> None:
    out = run("add_pointer", "bob")
    assert "pointer:   $pay.example.org/bob" in out
    assert "spsp url:  https://pay.example.org/bob" in out
    receiver = Receiver.objects.select_related("account", "user").get(name="bob")
    assert receiver.user.username == "bob"
    assert not receiver.user.has_usable_password()
    assert receiver.account.code == "receiver:bob"
    # Idempotent for the same user.
    assert run("add_pointer", "bob") == out
    assert Receiver.objects.count() == 1


def test_add_pointer_for_a_named_user(settings: object) -> None:
    settings.ILP_PUBLIC_URL = ""  # type: ignore[attr-defined]
    out = run("add_pointer", "shop-till", "--user", "carol", "--description", "Till")
    assert "$127.0.0.1:8000/shop-till" in out
    assert "http://127.0.0.1:8000/shop-till" in out
    receiver = Receiver.objects.get(name="shop-till")
    assert receiver.user.username == "carol"
    assert receiver.description == "Till"


def test_add_pointer_refuses_bad_or_foreign_names() -> None:
    with pytest.raises(CommandError, match="reserved"):
        run("add_pointer", "admin")
    with pytest.raises(CommandError, match="lowercase"):
        run("add_pointer", "Bob")
    run("add_pointer", "bob")
    with pytest.raises(CommandError, match="another user"):
        run("add_pointer", "bob", "--user", "mallory")


def test_setup_demo_is_idempotent() -> None:
    out = run("setup_demo")
    assert "$pay.example.org/demo" in out
    user = User.objects.get(username="demo")
    assert user.is_superuser and user.is_staff and user.check_password("demo")
    assert Receiver.objects.get(name="demo").user == user
    user.set_password("changed")
    user.save()
    run("setup_demo")
    assert User.objects.filter(username="demo").count() == 1
    assert Receiver.objects.filter(name="demo").count() == 1
    user.refresh_from_db()
    assert user.check_password("changed")  # an existing user keeps its password
