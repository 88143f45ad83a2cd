"""Money we send: outgoing SPSP/PSK2 payments, their chunks, and circular payments.

Written only by :mod:`payments.sending`; read through
:mod:`payments.sending.selectors`. Amounts are :class:`~payments.models.MoneyField`
integers in the **source account's** units, except ``amount_delivered`` /
``OutgoingChunk.delivered`` and a destination-fixed ``amount``, which are in the
receiver's units (what its PSK2 answers report). See ``docs/ARCHITECTURE.md``
("payments: sending") for the state machine, the money flow and the resume rules.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from payments.models import LedgerAccount, MoneyField

__all__ = ["CircularPayment", "OutgoingChunk", "OutgoingPayment"]


class OutgoingPayment(models.Model):
    """One payment to a payment pointer (or SPSP URL), sent as STREAM packets (RFC 0029)
    when the receiver's SPSP answer is SPSP4, else as PSK2 draft-1 chunks (``protocol``).

    ``status``: ``pending`` (created, money reserved for a source-fixed amount) →
    ``quoting`` (SPSP query and rate probe) → ``sending`` (chunks) → ``completed`` or
    ``failed``. The row also holds the chunk planner's state (``chunk_size``,
    ``next_sequence``, the totals), so a runner that died can be resumed by another one.

    Reservation: ``amount_reserved`` source units are kept free on the source account for
    this payment while it is active (a DB-level hold, checked under a row lock of the
    account: see :func:`payments.sending.outgoing_payment_create`); ``amount_debited`` is
    what the ledger has already been charged for it (fulfilled chunks, and chunks whose
    outcome could not be known). Once the payment is over, ``amount_reserved`` is set to
    ``amount_debited``: the rest is released.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        QUOTING = "quoting", "Quoting"
        SENDING = "sending", "Sending"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"

    class Mode(models.TextChoices):
        SOURCE = "source", "Fixed source amount"
        DESTINATION = "destination", "Fixed destination amount"

    class Protocol(models.TextChoices):
        PSK2 = "psk2", "PSK2 (SPSP)"
        STREAM = "stream", "STREAM (SPSP4)"

    ACTIVE = (Status.PENDING, Status.QUOTING, Status.SENDING)

    idempotency_key = models.CharField(max_length=255, unique=True)
    source_account = models.ForeignKey(
        LedgerAccount, on_delete=models.PROTECT, related_name="outgoing_payments"
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="outgoing_payments",
    )
    receiver = models.CharField(max_length=500, help_text="payment pointer or SPSP URL")
    spsp_url = models.CharField(max_length=500, blank=True, default="")
    destination_address = models.CharField(max_length=1023, blank=True, default="")
    # The PSK2 shared secret while the payment is active (needed to resume); wiped at the end.
    shared_secret = models.CharField(max_length=64, blank=True, default="", editable=False)
    payment_id = models.CharField(max_length=32, help_text="PSK2 Payment ID, hex")
    protocol = models.CharField(
        max_length=8,
        choices=Protocol.choices,
        blank=True,
        default="",
        help_text="empty: the receiver's SPSP answer chooses (set by the quote)",
    )
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.SOURCE)
    amount = MoneyField(help_text="source units (source mode) or destination units")
    max_source_amount = MoneyField(null=True, blank=True)
    via_peer = models.CharField(
        max_length=64, blank=True, default="", help_text="outgoing link; empty: the switch"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    quote_source_amount = MoneyField(null=True, blank=True)
    quote_destination_amount = MoneyField(null=True, blank=True)
    amount_reserved = MoneyField(default=0)
    amount_debited = MoneyField(default=0)
    amount_sent = MoneyField(default=0)
    amount_delivered = MoneyField(default=0)
    amount_in_doubt = MoneyField(default=0)
    chunks_fulfilled = models.PositiveIntegerField(default=0)
    chunks_rejected = models.PositiveIntegerField(default=0)
    chunk_size = models.PositiveBigIntegerField(default=0)
    next_sequence = models.PositiveIntegerField(default=0)
    totals_trusted = models.BooleanField(
        default=False, help_text="the receiver's running totals matched what we sent"
    )
    last_error = models.TextField(blank=True, default="")
    lease_owner = models.CharField(max_length=64, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="payments_outgoing_amount"),
            models.CheckConstraint(
                condition=Q(amount_reserved__gte=0) & Q(amount_debited__gte=0),
                name="payments_outgoing_reserved",
            ),
        ]
        indexes = [
            models.Index(fields=["source_account", "status"], name="payments_outgoing_active"),
            models.Index(fields=["status", "lease_until"], name="payments_outgoing_resume"),
        ]

    def __str__(self) -> str:
        return f"{self.receiver} {self.amount} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def group_name(self) -> str:
        """The channel-layer group of this payment's progress events."""
        return f"payments.outgoing.{self.pk}"


class OutgoingChunk(models.Model):
    """One Prepare of an outgoing payment, written **before** it is sent.

    ``state``: ``sending`` (persisted, maybe on the wire) → ``fulfilled`` |
    ``rejected`` | ``lost`` (it was in flight when its runner died and did not arrive) |
    ``unknown`` (in flight when its runner died; whether it arrived could not be found
    out: its amount was charged to the source and booked to the node's suspense account).
    Rejected chunks keep their sequence: each attempt is a row of its own.
    """

    class State(models.TextChoices):
        SENDING = "sending", "Sending"
        FULFILLED = "fulfilled", "Fulfilled"
        REJECTED = "rejected", "Rejected"
        LOST = "lost", "Lost (not delivered)"
        UNKNOWN = "unknown", "Unknown (charged, in suspense)"

    payment = models.ForeignKey(OutgoingPayment, on_delete=models.PROTECT, related_name="chunks")
    sequence = models.PositiveIntegerField()
    amount = MoneyField(help_text="source units")
    minimum = MoneyField(default=0, help_text="PSK2 Chunk Amount: least that must arrive")
    delivered = MoneyField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.SENDING)
    expires_at = models.DateTimeField()
    condition = models.CharField(max_length=64)
    ledger_key = models.CharField(
        max_length=255, help_text="posting key of this chunk's source debit"
    )
    code = models.CharField(max_length=3, blank=True, default="")
    message = models.CharField(max_length=500, blank=True, default="")
    triggered_by = models.CharField(max_length=1023, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("payment", "sequence")
        constraints = [
            models.UniqueConstraint(
                fields=["payment", "sequence"], name="payments_outgoing_chunk_seq"
            ),
            models.CheckConstraint(condition=Q(amount__gt=0), name="payments_chunk_amount"),
        ]

    def __str__(self) -> str:
        return f"{self.payment_id}#{self.sequence} {self.amount} {self.state}"


class CircularPayment(models.Model):
    """A Prepare the node sends out through one peer to its own address
    ``<node>.circular.<token>``, which comes back in through another and is fulfilled
    here (sender.md §1). Measures the loop's cost and round-trip time.

    ``amount_out`` leaves through ``out_peer`` (charged to ``source_account``);
    ``amount_in`` is what arrived from ``in_peer`` (credited back to it). The fulfillment
    is derived from the token (:func:`payments.sending.circular.circular_fulfillment`), never
    stored.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"

    idempotency_key = models.CharField(max_length=255, unique=True)
    token = models.CharField(max_length=32, unique=True)
    source_account = models.ForeignKey(
        LedgerAccount, on_delete=models.PROTECT, related_name="circular_payments"
    )
    out_peer = models.CharField(max_length=64)
    out_account = models.CharField(max_length=200, blank=True, default="")
    in_peer = models.CharField(max_length=64, blank=True, default="")
    destination = models.CharField(max_length=1023)
    amount_out = MoneyField()
    amount_in = MoneyField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    expires_at = models.DateTimeField(null=True, blank=True)
    code = models.CharField(max_length=3, blank=True, default="")
    last_error = models.TextField(blank=True, default="")
    rtt_ms = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    arrived_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        constraints = [
            models.CheckConstraint(condition=Q(amount_out__gt=0), name="payments_circular_amount"),
        ]

    def __str__(self) -> str:
        return f"circular {self.token} via {self.out_peer} ({self.status})"

    @property
    def cost(self) -> int | None:
        """What the loop cost (amount out - amount in), once it came back."""
        if self.amount_in is None:
            return None
        return int(self.amount_out) - int(self.amount_in)
