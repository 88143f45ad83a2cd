from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from pytest_django.fixtures import Settings as SettingsWrapper

from payments.ledger import reset_book
from receivers.directory import get_directory
from receivers.models import Receiver
from receivers.services import receiver_create
from tests.payments.conftest import _close_thread_connections  # noqa: F401 (session fixture)

# 32 bytes, fixed, so that tests can derive what the node derives.
RECEIVER_SECRET_HEX = "292ba2e94ae81fdcb9181fdc24ae1cfb7edb15462676a8813d1f916c8f085f0b"


@pytest.fixture(autouse=True)
def _node_identity(settings: SettingsWrapper) -> None:
    settings.ILP_ADDRESS = "test.node"
    settings.ILP_RECEIVER_SECRET = RECEIVER_SECRET_HEX
    settings.ILP_ASSET_CODE = "XRP"
    settings.ILP_ASSET_SCALE = 9
    settings.ILP_PUBLIC_URL = "https://pay.example.org"
    # Users are made in most tests; the real hasher costs most of a second each.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_process_state() -> Iterator[None]:
    """Each test starts like a fresh process: no book, no cached receivers."""
    reset_book()
    get_directory().invalidate()
    yield
    reset_book()
    get_directory().invalidate()


@pytest.fixture
def alice_user(django_user_model: type[User]) -> User:
    return django_user_model.objects.create_user(username="alice", password="alice-password")


@pytest.fixture
def bob(alice_user: User) -> Receiver:
    return receiver_create(user=alice_user, name="bob", description="Bob's tips")
