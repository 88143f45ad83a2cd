"""User-scoped writes of the people's side that belong to no lower app: one's API token.

Webhooks on one's own receivers are written by ``receivers.services`` (the ownership
rule) through ``payments.services`` (the rows).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import transaction
from rest_framework.authtoken.models import Token

if TYPE_CHECKING:
    from django.contrib.auth.models import User


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
