"""Throttles on the ways in: the API token endpoint (DRF throttles) and failed logins on
the login page, the admin's and the token endpoint (django-axes). Counts live in the cache.

Each test uses its own client address and usernames, so counts left in a shared cache (Redis
keeps them across runs) never meet another test's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import Client
from pytest_django.fixtures import Settings as SettingsWrapper
from rest_framework.test import APIClient

from tests.conftest import requires_redis

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "a long and unguessable password"


def fresh_address() -> str:
    """A client address no other test (or earlier run) used: 2001:db8::/32 is for docs."""
    return "2001:db8::" + ":".join(uuid.uuid4().hex[i : i + 4] for i in range(0, 16, 4))


@pytest.fixture
def user(django_user_model: type[User]) -> User:
    return django_user_model.objects.create_user(
        username=f"u{uuid.uuid4().hex[:12]}", password=PASSWORD
    )


@pytest.fixture
def axes_on(settings: SettingsWrapper) -> SettingsWrapper:
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = 3
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return settings


# --- the token endpoint: DRF throttles -----------------------------------------------------------


def token(api: APIClient, address: str, username: str, password: str) -> object:
    return api.post(
        "/api/v1/auth/token/",
        {"username": username, "password": password},
        format="json",
        REMOTE_ADDR=address,
    )


def test_token_requests_per_address_are_throttled(settings: SettingsWrapper, user: User) -> None:
    settings.ILP_TOKEN_RATE_PER_ADDRESS = "3/min"
    api, address = APIClient(), fresh_address()
    for _ in range(3):
        assert token(api, address, user.username, PASSWORD).status_code == 200
    refused = token(api, address, user.username, PASSWORD)
    assert refused.status_code == 429
    body = refused.json()
    assert body["error"] == "throttled" and "available in" in body["detail"]
    assert 0 < int(refused["Retry-After"]) <= 60
    # Another address is served.
    assert token(api, fresh_address(), user.username, PASSWORD).status_code == 200


def test_token_requests_per_username_are_throttled_from_any_address(
    settings: SettingsWrapper, user: User
) -> None:
    settings.ILP_TOKEN_RATE_PER_USERNAME = "2/hour"
    api = APIClient()
    assert token(api, fresh_address(), user.username, "wrong").status_code == 400
    assert token(api, fresh_address(), user.username.upper(), "wrong").status_code == 400
    refused = token(api, fresh_address(), user.username, PASSWORD)
    assert refused.status_code == 429 and refused.json()["error"] == "throttled"
    # Other usernames are not affected (a name of this run's own: the throttle's counts live
    # in the cache, Redis on the production shape, which outlives a test run).
    other = f"someone-else-{uuid.uuid4().hex[:12]}"
    assert token(api, fresh_address(), other, "x").status_code == 400


# --- failed logins: django-axes ------------------------------------------------------------------


def test_the_login_page_locks_out_after_repeated_failures(
    axes_on: SettingsWrapper, user: User
) -> None:
    client = Client(REMOTE_ADDR=fresh_address())
    statuses = [
        client.post(
            "/accounts/login/", {"username": user.username, "password": "wrong"}
        ).status_code
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]
    # Now even the right password is refused, with the reason and when to come back.
    locked = client.post("/accounts/login/", {"username": user.username, "password": PASSWORD})
    assert locked.status_code == 429
    assert "too many failed logins" in locked.content.decode()
    assert int(locked["Retry-After"]) == 15 * 60
    assert "_auth_user_id" not in client.session
    # The user, from an address with no failures, is locked too (per-username count) ...
    other = Client(REMOTE_ADDR=fresh_address())
    assert (
        other.post(
            "/accounts/login/", {"username": user.username, "password": PASSWORD}
        ).status_code
        == 429
    )
    # ... while someone else from a clean address logs in.
    someone = User.objects.create_user(username=f"u{uuid.uuid4().hex[:12]}", password=PASSWORD)
    ok = Client(REMOTE_ADDR=fresh_address())
    response = ok.post("/accounts/login/", {"username": someone.username, "password": PASSWORD})
    assert response.status_code == 302


def test_one_address_guessing_many_users_is_locked_out(axes_on: SettingsWrapper) -> None:
    client = Client(REMOTE_ADDR=fresh_address())
    statuses = [
        client.post(
            "/admin/login/", {"username": f"guess{i}-{uuid.uuid4().hex[:6]}", "password": "x"}
        ).status_code
        for i in range(4)
    ]
    assert statuses[-1] == 429 and statuses[0] == 200


def test_the_token_endpoint_answers_429_for_a_locked_out_user(
    axes_on: SettingsWrapper, user: User
) -> None:
    api = APIClient()
    for _ in range(3):
        token(api, fresh_address(), user.username, "wrong")
    locked = token(api, fresh_address(), user.username, PASSWORD)
    assert locked.status_code == 429
    body = locked.json()
    assert body["error"] == "throttled" and "too many failed logins" in body["detail"]
    assert int(locked["Retry-After"]) == 15 * 60


def test_a_success_before_the_limit_resets_the_count(axes_on: SettingsWrapper, user: User) -> None:
    client = Client(REMOTE_ADDR=fresh_address())
    for _ in range(2):
        client.post("/accounts/login/", {"username": user.username, "password": "wrong"})
    assert (
        client.post(
            "/accounts/login/", {"username": user.username, "password": PASSWORD}
        ).status_code
        == 302
    )
    client.logout()
    for _ in range(2):
        assert (
            client.post(
                "/accounts/login/", {"username": user.username, "password": "wrong"}
            ).status_code
            == 200
        )


@requires_redis
@pytest.mark.redis
def test_the_lockout_is_shared_by_every_process_through_redis(
    axes_on: SettingsWrapper, user: User
) -> None:
    address = fresh_address()
    client = Client(REMOTE_ADDR=address)
    for _ in range(3):
        client.post("/accounts/login/", {"username": user.username, "password": "wrong"})
    # Another process with the same REDIS_URL refuses the same address.
    code = (
        "from django.test import RequestFactory; from django.conf import settings; "
        "from axes.handlers.proxy import AxesProxyHandler; "
        "settings.AXES_FAILURE_LIMIT = 3; "
        f"r = RequestFactory().post('/accounts/login/', REMOTE_ADDR={address!r}); "
        "import json; print(json.dumps(AxesProxyHandler.is_allowed(r, {'username': 'nobody'})))"
    )
    env = dict(os.environ)
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) is False
