"""Webhook URLs are checked when saved (pages and API): public addresses only, with the
reason in the answer (payments.outbound decides)."""

from __future__ import annotations

import re
import socket
from typing import Any

import pytest
from django.contrib.auth.models import User
from pytest_django.fixtures import Settings as SettingsWrapper
from rest_framework.test import APIClient

from payments import outbound
from payments.models import Webhook
from tests.dashboard.conftest import logged_in
from tests.dashboard.factories import make_receiver

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def strict(settings: SettingsWrapper, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.ILP_ALLOW_PRIVATE_URLS = False
    answers = {"hooks.example": "93.184.215.14", "inside.example": "10.2.3.4"}

    def dns(host: str, port: int) -> list[tuple[Any, ...]]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port))]

    monkeypatch.setattr(outbound, "_getaddrinfo", dns)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8080/hook", "127.0.0.1 is a loopback address"),
        ("http://169.254.169.254/latest", "link-local"),
        ("https://inside.example/hook", "10.2.3.4 is a private address"),
    ],
)
def test_the_page_says_why_a_url_is_refused(alice: User, url: str, reason: str) -> None:
    make_receiver(alice, "tips")
    page = logged_in(alice).post("/me/webhooks/", {"receiver": "tips", "url": url})
    assert page.status_code == 400
    assert "webhook url refused" in page.content.decode() and reason in page.content.decode()
    assert not Webhook.objects.exists()


def test_a_public_url_is_saved(alice: User) -> None:
    make_receiver(alice, "tips")
    page = logged_in(alice).post(
        "/me/webhooks/", {"receiver": "tips", "url": "https://hooks.example/ilp"}
    )
    assert page.status_code == 302
    assert Webhook.objects.get().url == "https://hooks.example/ilp"


def test_the_api_answers_400_on_create_and_on_update(alice: User) -> None:
    make_receiver(alice, "tips")
    api = APIClient()
    api.force_authenticate(alice)
    refused = api.post(
        "/api/v1/webhooks/", {"receiver": "tips", "url": "http://10.0.0.1/h"}, format="json"
    )
    assert refused.status_code == 400
    assert "10.0.0.1 is a private address" in str(refused.json()["detail"])
    created = api.post(
        "/api/v1/webhooks/", {"receiver": "tips", "url": "https://hooks.example/h"}, format="json"
    )
    assert created.status_code == 201
    moved = api.patch(
        f"/api/v1/webhooks/{created.json()['id']}/", {"url": "http://[::1]/h"}, format="json"
    )
    assert moved.status_code == 400 and "loopback" in str(moved.json()["detail"])
    assert Webhook.objects.get().url == "https://hooks.example/h"


def test_the_staff_api_and_the_service_refuse_too() -> None:
    from payments.errors import WebhookError
    from payments.services import webhook_create

    with pytest.raises(WebhookError, match=re.escape("cannot resolve nowhere.example")):
        webhook_create(account_code="receiver:x", url="https://nowhere.example/h")
