"""``payments.services.webhook_update`` / ``webhook_delete``: the writes, scoped to accounts."""

from __future__ import annotations

import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from payments import services
from payments.errors import InvalidWebhook, WebhookNotFound
from payments.models import Webhook, WebhookDelivery
from tests.payments.conftest import PEER_B, RECEIVER, make_accounts

pytestmark = pytest.mark.django_db

URL = "https://hooks.example.com/in"


@pytest.fixture
def hook() -> Webhook:
    make_accounts()
    return services.webhook_create(account_code=RECEIVER, url=URL)


def test_update_changes_url_and_switch(hook: Webhook) -> None:
    changed = services.webhook_update(
        webhook_id=hook.pk, url="  https://hooks.example.com/new ", enabled=False
    )
    hook.refresh_from_db()
    assert (hook.url, hook.enabled) == ("https://hooks.example.com/new", False)
    assert changed.pk == hook.pk


def test_a_webhook_outside_the_given_accounts_is_not_found(hook: Webhook) -> None:
    with pytest.raises(WebhookNotFound, match="you have no webhook"):
        services.webhook_update(webhook_id=hook.pk, enabled=False, account_codes=[PEER_B])
    with pytest.raises(WebhookNotFound):
        services.webhook_delete(webhook_id=hook.pk, account_codes=[])
    hook.refresh_from_db()
    assert hook.enabled
    services.webhook_update(webhook_id=hook.pk, enabled=False, account_codes=[RECEIVER])
    hook.refresh_from_db()
    assert not hook.enabled


def test_a_refused_url_changes_nothing(hook: Webhook, settings: SettingsWrapper) -> None:
    settings.ILP_ALLOW_PRIVATE_URLS = False
    with pytest.raises(InvalidWebhook, match="must start with"):
        services.webhook_update(webhook_id=hook.pk, url="ftp://x.example.com/")
    with pytest.raises(InvalidWebhook, match="refused"):
        services.webhook_update(webhook_id=hook.pk, url="http://127.0.0.1:9/")
    hook.refresh_from_db()
    assert hook.url == URL


def test_delete_takes_the_delivery_log_with_it(hook: Webhook) -> None:
    WebhookDelivery.objects.create(webhook=hook, key="e1", event="incoming_payment", payload={})
    services.webhook_delete(webhook_id=hook.pk, account_codes=[RECEIVER])
    assert not Webhook.objects.exists() and not WebhookDelivery.objects.exists()
    with pytest.raises(WebhookNotFound, match="there is no webhook"):
        services.webhook_delete(webhook_id=hook.pk)
