"""Models of receivers: one row per payment pointer ``$host/<name>``."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from payments.models import MoneyField
from receivers.names import validate_receiver_name


class Receiver(models.Model):
    """A payment pointer hosted by this node.

    Money sent to it lands on ``account`` (a ``payments.LedgerAccount`` of kind
    ``receiver``, code ``receiver:<name>``). The name is immutable once issued: it is in
    every pointer and ILP address handed out for it. Write through
    :mod:`receivers.services`.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="receivers"
    )
    name = models.CharField(max_length=63, unique=True, validators=[validate_receiver_name])
    account = models.OneToOneField(
        "payments.LedgerAccount", on_delete=models.PROTECT, related_name="receiver"
    )
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("receivers:pointer-detail", args=[self.name])


# --- selling on the web: paid APIs, monetized pages, shop orders ----------------------------
# The money itself is in the receivers' ledger accounts (receipts, then postings); these
# rows only say whom it was for (see receivers.addresses: tagged addresses) and what was
# consumed. Write through receivers.paid / receivers.pages / receivers.shop.


class PaidToken(models.Model):
    """An HTTP-ILP pay token (``Pay-Token``) of one paid API receiver.

    Its balance is never stored: it is the receipts attributable to the token (see
    :func:`receivers.paid.paid_token_credited`) minus ``charged``. ``charged`` only moves
    with this row locked (``select_for_update``), which serialises the calls of one token.
    A row exists only once the token has been charged.
    """

    receiver = models.ForeignKey(Receiver, on_delete=models.PROTECT, related_name="paid_tokens")
    token = models.CharField(max_length=128)
    # Hex of the 16 token bytes when the token is base64url of 16 bytes (the PSK2 Payment
    # ID / application data conventions), else "".
    payment_id = models.CharField(max_length=32, blank=True, default="")
    # Hex of the 16-byte tag of the addresses issued for this token.
    tag = models.CharField(max_length=32)
    charged = MoneyField(default=0)
    calls = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-last_used_at", "-id")
        constraints = [
            models.UniqueConstraint(fields=["receiver", "token"], name="receivers_paidtoken_token"),
            models.CheckConstraint(condition=Q(charged__gte=0), name="receivers_paidtoken_charged"),
        ]

    def __str__(self) -> str:
        return f"{self.receiver.name}:{self.token[:8]}…"


class MonetizedPage(models.Model):
    """A web-monetized page ``/pages/<slug>/``: ``public_body`` for everyone, ``paid_body``
    only to a visitor session whose own receiver id has received ``threshold``."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="monetized_pages"
    )
    receiver = models.ForeignKey(Receiver, on_delete=models.PROTECT, related_name="monetized_pages")
    slug = models.SlugField(max_length=80, unique=True)
    title = models.CharField(max_length=200)
    public_body = models.TextField(blank=True)
    paid_body = models.TextField()
    threshold = MoneyField()
    published = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-updated_at", "-id")
        constraints = [
            models.CheckConstraint(
                condition=Q(threshold__gt=0), name="receivers_monetizedpage_threshold"
            ),
        ]

    def __str__(self) -> str:
        return self.slug

    def get_absolute_url(self) -> str:
        return reverse("receivers:pages:detail", args=[self.slug])


class Order(models.Model):
    """A shop's invoice: ``amount`` to pay to ``receiver`` through the order's own SPSP
    receiver id (``/shop/<id>/spsp``, addresses tagged with the id's 16 bytes).

    ``received`` is the last total read from the receipts (the receipts are the truth);
    ``status`` moves ``pending`` → ``paid`` once, by a conditional update.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PAID = "paid", "Paid"
        CANCELLED = "cancelled", "Cancelled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    receiver = models.ForeignKey(Receiver, on_delete=models.PROTECT, related_name="orders")
    amount = MoneyField()
    description = models.CharField(max_length=200)
    # The shop's own order number, free text (shown to the buyer; not unique).
    reference = models.CharField(max_length=100, blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    received = MoneyField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="receivers_order_amount"),
            models.CheckConstraint(condition=Q(received__gte=0), name="receivers_order_received"),
        ]
        indexes = [models.Index(fields=["receiver", "status"], name="receivers_order_status")]

    def __str__(self) -> str:
        return f"{self.id} {self.status}"

    def get_absolute_url(self) -> str:
        return reverse("receivers:shop:checkout", args=[self.id])
