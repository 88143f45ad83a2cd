"""Writes of Open Payments rows. Each call owns its transaction."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from django.db import transaction

from receivers.addresses import STREAM_IV_LENGTH, issue_stream
from receivers.models import Receiver
from receivers.open_payments import limits
from receivers.open_payments.models import AccessToken, Grant, IncomingPaymentResource
from receivers.open_payments.selectors import WalletAddress, token_hash

ACCESS_TOKEN_TTL: Final = timedelta(minutes=10)


def _new_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class IssuedGrant:
    """A new grant with the bearer values (shown once; only their digests are stored)."""

    grant: Grant
    token: AccessToken
    token_value: str
    continue_value: str


def grant_create(
    *,
    receiver: Receiver | None,
    client: str,
    client_jwk: dict[str, Any] | None,
    actions: list[str],
    access: list[dict[str, Any]],
    now: datetime,
) -> IssuedGrant:
    """A granted (non-interactive) incoming-payment grant with one access token."""
    token_value, continue_value = _new_token(), _new_token()
    with transaction.atomic():
        grant = Grant.objects.create(
            receiver=receiver,
            client=client,
            client_jwk=client_jwk,
            actions=actions,
            access=access,
            continue_token_hash=token_hash(continue_value),
            created_at=now,
        )
        token = AccessToken.objects.create(
            grant=grant,
            token_hash=token_hash(token_value),
            expires_at=now + ACCESS_TOKEN_TTL,
            created_at=now,
        )
    return IssuedGrant(grant, token, token_value, continue_value)


def grant_revoke(*, grant: Grant, now: datetime) -> None:
    """Cancel ``grant`` and every token of it (idempotent)."""
    with transaction.atomic():
        Grant.objects.filter(id=grant.id, revoked_at__isnull=True).update(revoked_at=now)
        AccessToken.objects.filter(grant=grant, revoked_at__isnull=True).update(revoked_at=now)


def token_rotate(*, token: AccessToken, now: datetime) -> tuple[AccessToken, str]:
    """A new token for ``token``'s grant; ``token`` stops working."""
    value = _new_token()
    with transaction.atomic():
        AccessToken.objects.filter(id=token.id).update(revoked_at=now)
        new = AccessToken.objects.create(
            grant=token.grant,
            token_hash=token_hash(value),
            expires_at=now + ACCESS_TOKEN_TTL,
            created_at=now,
        )
    return new, value


def token_revoke(*, token: AccessToken, now: datetime) -> None:
    AccessToken.objects.filter(id=token.id, revoked_at__isnull=True).update(revoked_at=now)


def incoming_payment_create(
    *,
    wallet: WalletAddress,
    client: str,
    incoming_amount: int | None,
    expires_at: datetime | None,
    metadata: dict[str, Any] | None,
    now: datetime,
) -> IncomingPaymentResource:
    """A new incoming payment on ``wallet`` with its own STREAM credentials: an address
    tagged with the payment's id (so what is paid over it counts toward it) and its derived
    secret. On a page visitor's wallet address it also counts for that visitor."""
    receiver = wallet.receiver
    payment = IncomingPaymentResource(
        receiver=receiver,
        page=wallet.page,
        visitor=wallet.visitor,
        client=client,
        incoming_amount=incoming_amount,
        expires_at=expires_at,
        metadata=metadata,
        created_at=now,
        updated_at=now,
    )
    issued = issue_stream(
        receiver.name, secrets.token_bytes(STREAM_IV_LENGTH), tag=payment.id.bytes
    )
    payment.ilp_address = issued.destination
    payment.save(force_insert=True)
    return payment


def incoming_payment_complete(
    *, payment: IncomingPaymentResource, now: datetime
) -> IncomingPaymentResource:
    """Mark ``payment`` completed: no more money is taken over its credentials."""
    IncomingPaymentResource.objects.filter(id=payment.id, completed_at__isnull=True).update(
        completed_at=now, updated_at=now
    )
    limits.cache.forget(payment.id.bytes)
    payment.refresh_from_db()
    return payment
