from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

VECTORS = Path(__file__).resolve().parent / "vectors"  # copied from ../shared/vectors

# Tests post webhooks and callbacks to 127.0.0.1 (and so do the nodes they start as
# subprocesses): private addresses are allowed here, refused by default (DEBUG off). The
# guard's own tests turn it off again.
os.environ.setdefault("ILP_ALLOW_PRIVATE_URLS", "1")


def pytest_configure(config: pytest.Config) -> None:
    from django.conf import settings

    # pytest-django loaded the settings before this file: set the flag there too.
    settings.ILP_ALLOW_PRIVATE_URLS = True
    # Login throttles keep counts in the cache, which outlives a test (and, on Redis, a
    # run): off here; tests/site/test_throttles.py turns them on with its own clients.
    settings.AXES_ENABLED = False  # also: Client.login() passes no request, axes needs one
    settings.ILP_TOKEN_RATE_PER_ADDRESS = None
    settings.ILP_TOKEN_RATE_PER_USERNAME = None


def load_vectors(name: str) -> dict[str, Any]:
    """A vector file from ``../shared/vectors`` (``receiver/psk2.json`` for the receiver ones)."""
    path = Path(os.environ.get("ILP_VECTORS_DIR", VECTORS)) / name
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def on_postgres() -> bool:
    return os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))


def on_redis() -> bool:
    return bool(os.environ.get("REDIS_URL"))


requires_postgres = pytest.mark.skipif(
    not on_postgres(), reason="needs PostgreSQL (runs in the Postgres+Redis pass of .ci/run)"
)
requires_redis = pytest.mark.skipif(
    not on_redis(), reason="needs Redis (runs in the Postgres+Redis pass of .ci/run)"
)


@pytest.fixture(autouse=True)
def node_runtime() -> Any:
    """A fresh node runtime per test (``interledger_site.runtime``), the process's for the
    test: its own switch, link registry and ownership; nothing started. Tests that need
    the links supervisor or the sweeps start them (or build runtimes of their own)."""
    from interledger_site.runtime import NodeRuntime, install

    runtime = NodeRuntime(name="test")
    previous = install(runtime)
    yield runtime
    install(previous)
    runtime.close()


@pytest.fixture(autouse=True)
def _eager_celery_by_default() -> Any:
    """Tasks run in-process in tests on both passes; a test that wants a real worker says so.

    The Redis pass would otherwise queue tasks for a worker no test starts, and a test that
    checks what a task produced would wait for nothing.
    """
    from interledger_site.celery import app as celery_app

    before = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = before
