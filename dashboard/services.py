"""User-scoped writes of the people's side: webhooks on one's own receivers, one's API
token. Every function takes the acting ``user`` and refuses what is not theirs (the
pages and the REST API both go through here, so the ownership rule lives in one place).

Webhooks are created by ``payments.services.webhook_create``. Changing and deleting
one has no ``payments`` service yet: :func:`webhook_update_for_user` and
:func:`webhook_delete_for_user` do it here, marked PROVISIONAL, until ``payments``
provides ``webhook_update`` / ``webhook_delete`` (then they only delegate).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.core.exceptions import ValidationError
from django.db import transaction
from rest_framework.authtoken.models import Token

from dashboard.errors import InvalidWebhook, WebhookNotFound
from payments import outbound
from payments.models import Webhook, WebhookDelivery
from payments.services import webhook_create
from receivers.errors import ReceiverNotFound
from receivers.selectors import receiver_get_for_user

if TYPE_CHECKING:
    from django.contrib.auth.models import User

WEBHOOK_SCHEMES = ("https://", "http://")


# --- API token ----------------------------------------------------------------------------------


def api_token_get(*, user: User) -> Token | None:
    return Token.objects.filter(user=user).first()


@transaction.atomic
def api_token_regenerate(*, user: User) -> Token:
    """A new API token for ``user``; the previous one (if any) stops working at once."""
    Token.objects.filter(user=user).delete()
    return Token.objects.create(user=user)


def api_token_get_or_create(*, user: User) -> Token:
    token, _ = Token.objects.get_or_create(user=user)
    return token


# --- webhooks ------------------------------------------------------------------------------------


def _check_url(url: str) -> str:
    url = (url or "").strip()
    if not url.startswith(WEBHOOK_SCHEMES):
        raise InvalidWebhook("a webhook url must start with https:// or http://")
    problem = outbound.url_problem(url)  # the rule deliveries follow, told now
    if problem is not None:
        raise InvalidWebhook(f"webhook url refused: {problem}")
    return url


def webhook_create_for_user(*, user: User, receiver_name: str, url: str) -> Webhook:
    """A webhook told about the incoming payments of ``user``'s receiver ``receiver_name``.

    Raises ``ReceiverNotFound`` (not theirs or absent: the same answer, so names of other
    users' receivers do not leak) or :class:`InvalidWebhook`.
    """
    receiver = receiver_get_for_user(user=user, name=receiver_name)
    if receiver is None:
        raise ReceiverNotFound(f"you have no payment pointer named '{receiver_name}'")
    try:
        return webhook_create(account_code=receiver.account.code, url=_check_url(url))
    except ValidationError as exc:
        raise InvalidWebhook("; ".join(exc.messages)) from None


def _locked_webhook(*, user: User, webhook_id: int) -> Webhook:
    webhook = (
        Webhook.objects.select_for_update()
        .filter(pk=webhook_id, account__receiver__user=user)
        .first()
    )
    if webhook is None:
        raise WebhookNotFound(f"you have no webhook {webhook_id}")
    return webhook


@transaction.atomic
def webhook_update_for_user(
    *, user: User, webhook_id: int, url: str | None = None, enabled: bool | None = None
) -> Webhook:
    """Change the url and/or switch the webhook on or off (``None`` = keep). PROVISIONAL
    (see the module docstring). Pending deliveries of a disabled webhook fail on their
    next attempt (``payments.services.webhook_deliver``)."""
    webhook = _locked_webhook(user=user, webhook_id=webhook_id)
    fields = []
    if url is not None:
        webhook.url = _check_url(url)
        fields.append("url")
    if enabled is not None:
        webhook.enabled = enabled
        fields.append("enabled")
    if fields:
        try:
            webhook.full_clean()
        except ValidationError as exc:
            raise InvalidWebhook("; ".join(exc.messages)) from None
        webhook.save(update_fields=fields)
    return webhook


@transaction.atomic
def webhook_delete_for_user(*, user: User, webhook_id: int) -> None:
    """Delete the webhook and its delivery log. PROVISIONAL (see the module docstring).

    Deliveries are notifications, not money; they go with the webhook (its foreign key
    is ``PROTECT`` so that nothing else deletes them by accident). The webhook row is
    locked first; a delivery attempt running at that moment finds its row gone and sends
    nothing more.
    """
    webhook = _locked_webhook(user=user, webhook_id=webhook_id)
    WebhookDelivery.objects.filter(webhook=webhook).delete()
    webhook.delete()
