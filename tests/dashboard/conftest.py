from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from django.test import Client
from pytest_django.fixtures import Settings as SettingsWrapper

from links.switch import reset_switch
from payments.ledger import reset_book
from receivers.directory import get_directory
from tests.dashboard.factories import RECEIVER_SECRET_HEX, make_user


@pytest.fixture(autouse=True)
def _node(settings: SettingsWrapper) -> Iterator[None]:
    settings.ILP_ADDRESS = "test.node"
    settings.ILP_ASSET_CODE = "XRP"
    settings.ILP_ASSET_SCALE = 9
    settings.ILP_RECEIVER_SECRET = RECEIVER_SECRET_HEX
    settings.ILP_PUBLIC_URL = "https://pay.example.org"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    reset_book()
    reset_switch()
    get_directory().invalidate()
    yield
    reset_book()
    reset_switch()
    get_directory().invalidate()


@pytest.fixture
def alice(db: None) -> User:
    return make_user("alice")


@pytest.fixture
def bob(db: None) -> User:
    return make_user("bob")


@pytest.fixture
def operator(db: None) -> User:
    return make_user("op", staff=True)


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client
