"""Safe defaults of the settings: DEBUG off, ``check --deploy`` clean with the README's
production variables, error pages that never show the database or Redis URL."""

from __future__ import annotations

import os
import re
import secrets
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client
from pytest_django.fixtures import Settings as SettingsWrapper

ROOT = Path(__file__).resolve().parents[2]

# Variables of the process environment that would change what the settings module does.
_ENV_PREFIXES = ("DJANGO_", "ILP_", "DATABASE_URL", "REDIS_URL", "CELERY_")


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIXES)}
    env["ILP_VAR_DIR"] = str(tmp_path / "var")
    env.update(extra)
    return env


def readme_production_variables() -> dict[str, str]:
    """The ``export`` lines of the README's "Running it for real" block, as a dict."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Running it for real", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    variables: dict[str, str] = {}
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            for word in words[1:]:
                key, _, value = word.partition("=")
                variables[key] = value
    return variables


def _manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_readme_names_the_production_variables() -> None:
    variables = readme_production_variables()
    assert variables["DJANGO_DEBUG"] == "0"
    assert variables["ILP_PUBLIC_URL"].startswith("https://")
    assert {"DATABASE_URL", "REDIS_URL", "DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS"} <= set(
        variables
    )


@pytest.mark.slow
def test_check_deploy_is_clean_with_the_readme_production_variables(tmp_path: Path) -> None:
    variables = readme_production_variables()
    # The README writes "..." for the secret: any long random one an operator would make.
    variables["DJANGO_SECRET_KEY"] = secrets.token_urlsafe(50)
    result = _manage(
        _clean_env(tmp_path, **variables), "check", "--deploy", "--fail-level", "WARNING"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout + result.stderr


@pytest.mark.slow
def test_check_deploy_without_https_names_what_is_missing(tmp_path: Path) -> None:
    variables = readme_production_variables()
    variables["DJANGO_SECRET_KEY"] = secrets.token_urlsafe(50)
    variables["ILP_PUBLIC_URL"] = "http://node.example"
    result = _manage(
        _clean_env(tmp_path, **variables), "check", "--deploy", "--fail-level", "WARNING"
    )
    assert result.returncode != 0
    for code in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert code in result.stderr + result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "False False None 0 False"),
        ({"DJANGO_DEBUG": "1"}, "True True None 0 False"),
        (
            {"ILP_PUBLIC_URL": "https://node.example"},
            "False False ('HTTP_X_FORWARDED_PROTO', 'https') 31536000 True",
        ),
        (
            {"DJANGO_SECURE": "1", "DJANGO_SECURE_PROXY_SSL_HEADER": "0"},
            "False False None 31536000 True",
        ),
        (
            {"ILP_PUBLIC_URL": "https://node.example", "DJANGO_SECURE": "0"},
            "False False None 0 False",
        ),
    ],
)
def test_what_the_environment_turns_on(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    code = (
        "from django.conf import settings as s; print(s.DEBUG, s.ILP_ALLOW_PRIVATE_URLS, "
        "getattr(s, 'SECURE_PROXY_SSL_HEADER', None), s.SECURE_HSTS_SECONDS, s.SESSION_COOKIE_SECURE)"
    )
    result = _manage(_clean_env(tmp_path, **env), "shell", "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == expected


# --- error pages ---------------------------------------------------------------------------------

SECRET_DB = "postgres://ilp:db-sekrit-4711@db.internal/ilp"
SECRET_REDIS = "redis://:redis-sekrit-4711@cache.internal:6379/0"


@pytest.fixture
def boom_site(settings: SettingsWrapper) -> SettingsWrapper:
    settings.ROOT_URLCONF = "tests.site.urls_boom"
    settings.DATABASE_URL = SECRET_DB
    settings.REDIS_URL = SECRET_REDIS
    settings.CELERY_BROKER_URL = SECRET_REDIS
    settings.CACHE_SHAPED = {"default": {"LOCATION": SECRET_REDIS}}
    settings.CHANNELS_SHAPED = {"default": {"CONFIG": {"hosts": [SECRET_REDIS]}}}
    return settings


def _boom(client: Client) -> str:
    client.raise_request_exception = False
    response = client.get("/boom/")
    assert response.status_code == 500
    return response.content.decode()


def test_a_500_without_debug_shows_nothing_of_the_settings(
    boom_site: SettingsWrapper, client: Client
) -> None:
    boom_site.DEBUG = False
    page = _boom(client)
    assert "sekrit" not in page
    assert "Traceback" not in page


def test_even_the_debug_500_page_hides_the_database_and_redis_urls(
    boom_site: SettingsWrapper, client: Client
) -> None:
    boom_site.DEBUG = True
    page = _boom(client)
    assert "it went boom" in page  # the debug page it is
    assert "DATABASE_URL" in page and "REDIS_URL" in page
    assert not re.search("sekrit", page), "a credential-bearing URL is on the debug page"
