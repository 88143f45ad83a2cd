"""Open Payments rows: GNAP grants, their access tokens, and incoming payments.

Tokens are stored as SHA-256 (hex) of the bearer value: they are 32 random bytes, so a
plain digest is enough, and a database read does not hand out a usable token. A grant is
bound to the client that asked for it (its wallet address URL, or the JWK it sent inline)
and, when the request named one, to one wallet address (``receiver``; ``None`` = any
pointer of this node, as Rafiki treats an incoming-payment grant without ``identifier``).

An :class:`IncomingPaymentResource` is an Open Payments incoming payment: its id (a UUID)
is also the 16-byte STREAM address tag of its credentials, so money paid over them is
found by that tag (``receivers.selectors.tag_received_total``) and limited by
:mod:`receivers.open_payments.limits` on the packet path.

One created on a web-monetized page's per-visitor wallet address
(``/pages/<slug>/spsp/<visitor id>``, what the page's ``<link rel="monetization">``
names) also carries that ``page`` and ``visitor``: its receipts are keyed under the
visitor's tag first (``tag:<visitor>:tag:<payment id>:<packet key>``), so they count
toward that visitor's progress on the page as well as toward the payment.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone

from payments.models import MoneyField
from receivers.models import MonetizedPage, Receiver


class Grant(models.Model):
    """One non-interactive GNAP grant (incoming-payment access only)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    receiver = models.ForeignKey(
        Receiver, on_delete=models.PROTECT, null=True, blank=True, related_name="op_grants"
    )
    # The client's wallet address URL, or "jwk:<thumbprint>" for an inline key.
    client = models.CharField(max_length=500)
    client_jwk = models.JSONField(null=True, blank=True)
    actions = models.JSONField()  # the granted incoming-payment actions
    access = models.JSONField()  # the access array as answered
    continue_token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"grant {self.id} for {self.client}"


class AccessToken(models.Model):
    """An access token of a grant; ``id`` names its ``manage`` URL."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    grant = models.ForeignKey(Grant, on_delete=models.CASCADE, related_name="tokens")
    token_hash = models.CharField(max_length=64, unique=True)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"token {self.id}"


class IncomingPaymentResource(models.Model):
    """An Open Payments incoming payment on one pointer, with its STREAM credentials."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    receiver = models.ForeignKey(
        Receiver, on_delete=models.PROTECT, related_name="op_incoming_payments"
    )
    client = models.CharField(max_length=500)  # who created it ("read" sees only its own)
    incoming_amount = MoneyField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    metadata = models.JSONField(null=True, blank=True)
    # Created on a page visitor's wallet address: what it receives counts for that visitor.
    page = models.ForeignKey(
        MonetizedPage,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="op_incoming_payments",
    )
    visitor = models.BinaryField(max_length=16, null=True, blank=True)
    # The STREAM destination issued for it (tagged with ``id``); its secret is derived.
    ilp_address = models.CharField(max_length=1023)
    completed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-created_at", "id")
        constraints = [
            models.CheckConstraint(
                condition=Q(incoming_amount__isnull=True) | Q(incoming_amount__gt=0),
                name="open_payments_incoming_amount_positive",
            ),
            models.CheckConstraint(
                condition=Q(page__isnull=True, visitor__isnull=True)
                | Q(page__isnull=False, visitor__isnull=False),
                name="open_payments_page_visitor_together",
            ),
        ]
        indexes = [
            models.Index(fields=["receiver", "-created_at"], name="open_payments_ip_recent"),
        ]

    def __str__(self) -> str:
        return f"incoming payment {self.id}"
