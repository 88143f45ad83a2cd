"""``/healthz`` and ``/readyz``: alive without I/O; ready only when the database, Redis (when
configured), the channel layer and this process's ledger writer all answer."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from django.test import AsyncClient
from pytest_django.fixtures import Settings as SettingsWrapper
from pytest_django.plugin import DjangoDbBlocker

from interledger_site import health
from payments.ledger import get_book, reset_book
from tests.conftest import on_redis
from tests.payments.conftest import _close_thread_connections  # noqa: F401 (session fixture)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_book() -> Iterator[None]:
    reset_book()
    yield
    reset_book()


def body(response: object) -> dict[str, object]:
    data: dict[str, object] = json.loads(response.content)  # type: ignore[attr-defined]
    return data


def by_name(data: dict[str, object]) -> dict[str, dict[str, str]]:
    checks = data["checks"]
    assert isinstance(checks, list)
    return {c["name"]: c for c in checks}


async def test_healthz_answers_without_io(
    django_db_blocker: DjangoDbBlocker, settings: SettingsWrapper
) -> None:
    get_book().close()  # what /readyz would report does not matter here
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    with django_db_blocker.block():  # any database access in any thread would raise
        response = await AsyncClient().get("/healthz")
    assert response.status_code == 200
    assert body(response) == {"status": "ok"}


async def test_healthz_refuses_post() -> None:
    response = await AsyncClient().post("/healthz")
    assert response.status_code == 405


async def test_readyz_ready() -> None:
    response = await AsyncClient().get("/readyz")
    assert response.status_code == 200, response.content
    data = body(response)
    assert data["status"] == "ready"
    assert "reason" not in data
    checks = by_name(data)
    assert checks["Database"]["level"] == "ok"
    assert checks["Ledger writer"]["level"] == "ok"
    if on_redis():
        assert checks["Redis"]["level"] == "ok"
        assert checks["Channel layer"]["level"] == "ok"
    else:
        assert "Redis" not in checks


async def test_readyz_not_ready_when_the_ledger_writer_is_stuck(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(health, "CHECK_TIMEOUT_S", 0.2)
    release = threading.Event()
    blocker = get_book().executor_submit(release.wait, 30)
    try:
        response = await AsyncClient().get("/readyz")
    finally:
        release.set()
        blocker.result(timeout=30)
    assert response.status_code == 503
    data = body(response)
    assert data["status"] == "not ready"
    assert data["reason"] == "Ledger writer: busy for more than 0.2 s"
    assert by_name(data)["Database"]["level"] == "ok"
    # Ready again once the writer is free.
    assert (await AsyncClient().get("/readyz")).status_code == 200


async def test_readyz_not_ready_when_the_ledger_is_closed() -> None:
    get_book().close()
    response = await AsyncClient().get("/readyz")
    assert response.status_code == 503
    assert body(response)["reason"] == "Ledger writer: closed"


async def test_readyz_not_ready_when_redis_is_unreachable(
    settings: SettingsWrapper, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "CHECK_TIMEOUT_S", 1.0)
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    response = await AsyncClient().get("/readyz")
    assert response.status_code == 503
    data = body(response)
    assert str(data["reason"]).startswith("Redis: unreachable")
    assert by_name(data)["Redis"]["level"] == "error"


async def test_readyz_not_ready_when_the_database_refuses(
    django_db_blocker: DjangoDbBlocker,
) -> None:
    with django_db_blocker.block():  # every connection attempt raises, as a database down would
        response = await AsyncClient().get("/readyz")
    assert response.status_code == 503
    data = body(response)
    assert str(data["reason"]).startswith("Database: ")
    assert by_name(data)["Ledger writer"]["level"] == "ok"
