"""Money rows: accounts, postings, receipts, incoming payments, webhooks.

Every amount is an integer number of the account's smallest unit, stored as
``DecimalField(max_digits=21, decimal_places=0)`` (an ILP UInt64 does not fit a signed
``BigIntegerField``); Python code handles it as ``int``, never ``float``.

Write only through :mod:`payments.services` and :mod:`payments.ledger`. Postings and
receipts are append-only; every foreign key that touches money is ``PROTECT``. On
Postgres the foreign keys of postings, receipts and incoming payments are kept by cheaper
guards instead of constraints (migration 0008 says how): the ledger's SQL checks the
accounts once per batch, and triggers refuse deleting a referenced row.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import models
from django.db.models import Q
from django.utils import timezone

MONEY_DIGITS = 21


class WholeNumberField(models.DecimalField):  # type: ignore[type-arg]
    """A ``numeric(DIGITS, 0)`` column read back exactly: Django's SQLite backend runs its
    DecimalField converter (a 15-digit float context that silently rounds anything from
    10**15 up) only for the internal type ``DecimalField``, so each subclass names its own."""

    DIGITS = 21

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["max_digits"] = self.DIGITS
        kwargs["decimal_places"] = 0
        super().__init__(*args, **kwargs)

    def deconstruct(self) -> Any:
        name, path, args, kwargs = super().deconstruct()
        kwargs.pop("max_digits", None)
        kwargs.pop("decimal_places", None)
        return name, path, args, kwargs

    def get_internal_type(self) -> str:
        return type(self).__name__

    def db_type(self, connection: Any) -> str | None:
        return str(
            connection.data_types["DecimalField"]
            % {"max_digits": self.max_digits, "decimal_places": self.decimal_places}
        )

    def rel_db_type(self, connection: Any) -> str | None:
        return self.db_type(connection)

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Decimal | None:
        if value is None or isinstance(value, Decimal):
            return value
        if isinstance(value, int):
            return Decimal(value)
        return Decimal(str(value))


class MoneyField(WholeNumberField):
    """An integer amount in the smallest unit: ``numeric(21, 0)``, fits any UInt64 and its negation.

    Exact on SQLite up to 2**63 - 1 (its integers); the writer refuses larger balances
    there. On Postgres the column is the same ``numeric(21, 0)`` a DecimalField would have.
    """

    DIGITS = MONEY_DIGITS


class LedgerAccount(models.Model):
    """One balance. **Positive balance = we owe the account holder.**

    ``min_balance`` is how far the holder may owe us (negative or zero; ``None`` =
    unbounded), ``max_balance`` how much we may owe them (``None`` = unbounded).
    ``balance`` is only ever changed by ``balance = balance + delta`` together with
    ``version = version + 1`` in the transaction that inserts the matching postings, so
    ``balance == SUM(postings.amount)`` at every commit (``check_ledger`` verifies it).
    """

    class Kind(models.TextChoices):
        PEER = "peer", "Peer"
        RECEIVER = "receiver", "Receiver"
        NODE = "node", "Node (fees, FX, operator adjustments)"
        SETTLEMENT = "settlement", "Settlement"

    code = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    asset_code = models.CharField(max_length=16)
    asset_scale = models.PositiveSmallIntegerField()
    balance = MoneyField(default=0)
    min_balance = MoneyField(null=True, blank=True)
    max_balance = MoneyField(null=True, blank=True)
    # Bumped with every balance change: lets in-memory books apply refreshes in order.
    version = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("code",)
        constraints = [
            models.CheckConstraint(
                condition=Q(min_balance__isnull=True)
                | Q(max_balance__isnull=True)
                | Q(min_balance__lte=models.F("max_balance")),
                name="payments_account_min_le_max",
            ),
            models.CheckConstraint(
                condition=Q(asset_scale__lte=255), name="payments_account_scale_u8"
            ),
            models.CheckConstraint(condition=Q(version__gte=0), name="payments_account_version"),
        ]
        indexes = [models.Index(fields=["kind", "code"], name="payments_account_kind")]

    def __str__(self) -> str:
        return self.code


class Posting(models.Model):
    """One append-only change of one account's balance, idempotent on ``key``.

    Keys are ``"<packet key>:<role>"`` (or ``"receipts:<first receipt id>"`` for an
    account's receipts applied together, ``"adjust:<key>"``...): a key that is already
    present is never applied again.
    """

    # No index of its own: ``payments_posting_account`` (account, id) serves the foreign key
    # and every lookup by account; one index fewer to write per posting.
    account = models.ForeignKey(
        LedgerAccount, on_delete=models.PROTECT, related_name="postings", db_index=False
    )
    amount = MoneyField()
    key = models.CharField(max_length=255)  # unique: see Meta (no extra LIKE index on Postgres)
    memo = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-id",)
        constraints = [
            models.UniqueConstraint(fields=["key"], name="payments_posting_key_uniq"),
            models.CheckConstraint(condition=~Q(amount=0), name="payments_posting_nonzero"),
        ]
        # Few indexes: every one costs on the hot insert path.
        indexes = [models.Index(fields=["account", "id"], name="payments_posting_account")]

    def __str__(self) -> str:
        return f"{self.key} {self.amount}"


class IncomingPayment(models.Model):
    """The sum of the receipts of one PSK2 payment id on one account.

    Built by ``services.apply_receipts`` (task ``payments.apply_receipts``); ``payment_id``
    is the lowercase hex of the PSK2 payment id bytes.
    """

    # No index of its own: the unique (account, payment_id) serves the foreign key.
    account = models.ForeignKey(
        LedgerAccount, on_delete=models.PROTECT, related_name="incoming_payments", db_index=False
    )
    payment_id = models.CharField(max_length=64)
    total = MoneyField(default=0)
    chunks = models.PositiveIntegerField(default=0)
    first_at = models.DateTimeField()
    last_at = models.DateTimeField()

    class Meta:
        ordering = ("-last_at", "-id")
        constraints = [
            models.UniqueConstraint(
                fields=["account", "payment_id"], name="payments_incoming_account_payment"
            ),
            models.CheckConstraint(condition=Q(total__gte=0), name="payments_incoming_total"),
        ]
        indexes = [models.Index(fields=["account", "-last_at"], name="payments_incoming_recent")]

    def __str__(self) -> str:
        return f"{self.account.code} {self.payment_id}"


class Receipt(models.Model):
    """One fulfilled PSK2 chunk for ``account`` (the receiving account), idempotent on ``key``.

    Written by the hot path together with the source posting and its
    :class:`PendingReceipt`; ``applied_at`` is set (and ``incoming_payment`` linked) once
    ``apply_receipts`` has credited the account with it. Until then its amount is in flight
    between the source posting and the receiver's posting.
    """

    # No index of its own: ``payments_receipt_payment`` (account, payment_id) serves it.
    account = models.ForeignKey(
        LedgerAccount, on_delete=models.PROTECT, related_name="receipts", db_index=False
    )
    payment_id = models.CharField(max_length=64)
    sequence = models.PositiveBigIntegerField()
    amount = MoneyField()
    key = models.CharField(max_length=255)  # unique: see Meta
    created_at = models.DateTimeField(default=timezone.now)
    applied_at = models.DateTimeField(null=True, blank=True)
    # The constraint stays, the index goes: every receipt row is written twice on the hot
    # path (inserted, then linked), and nothing looks receipts up by their payment but
    # ``check_ledger``'s full aggregate. The one lookup it would serve, the PROTECT check
    # of deleting an incoming payment (never done: they are kept like the receipts),
    # scans the table instead.
    incoming_payment = models.ForeignKey(
        IncomingPayment,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="receipts",
        db_index=False,
    )

    class Meta:
        ordering = ("-id",)
        constraints = [
            models.UniqueConstraint(fields=["key"], name="payments_receipt_key_uniq"),
            models.CheckConstraint(condition=Q(amount__gte=0), name="payments_receipt_amount"),
        ]
        indexes = [
            models.Index(fields=["account", "payment_id"], name="payments_receipt_payment"),
            # Prefix lookups of tagged receipts (``key__startswith="tag:<hex>:"``). The
            # opclass makes LIKE 'prefix%' an index range scan on Postgres whatever the
            # collation; Django leaves opclasses out on SQLite (a plain partial index
            # there). The planner uses a partial index only when the query repeats its
            # condition: filter with ``key__startswith="tag:"`` as well.
            models.Index(
                fields=["key"],
                name="payments_receipt_tag_key",
                opclasses=["varchar_pattern_ops"],
                condition=Q(key__startswith="tag:"),
            ),
        ]

    def __str__(self) -> str:
        return self.key


class PendingReceipt(models.Model):
    """A receipt not yet applied: the receipt applier's queue, kept in the database.

    Inserted with its receipt (the same statement: ``payments.ledger.sql``) and deleted by
    the apply that sets the receipt's ``applied_at`` (the same transaction:
    ``payments.services.apply_receipts``), so a receipt has a row here exactly while its
    ``applied_at`` is null (``check_ledger`` checks it). The sweep and the pending totals
    read this table, which holds only what is in flight.

    A table of its own rather than an index on ``applied_at IS NULL``: an index that
    names ``applied_at`` makes every apply's ``UPDATE`` of a receipt a new row version
    with an entry in each of the receipt's indexes. Without one, and with room left on
    the receipt's page (``fillfactor``, migration 0009), that update stays on its page
    and touches no index (a HOT update).
    """

    # No database constraint: its check would lock each new receipt row (FOR KEY SHARE)
    # from a row trigger in the writer's statement, on the hot path. Receipts are never
    # deleted, and only the ledger's SQL writes this table, with the receipt's own id.
    receipt = models.OneToOneField(
        Receipt,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="pending",
        db_constraint=False,
    )

    def __str__(self) -> str:
        return f"pending {self.receipt_id}"


class Webhook(models.Model):
    """An HTTPS endpoint told about incoming payments on ``account`` (HMAC-SHA256 signed)."""

    account = models.ForeignKey(LedgerAccount, on_delete=models.PROTECT, related_name="webhooks")
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=128)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("id",)
        indexes = [models.Index(fields=["account", "enabled"], name="payments_webhook_account")]

    def __str__(self) -> str:
        return self.url


class WebhookDelivery(models.Model):
    """One notification to one webhook, idempotent on ``key``; retried with backoff."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    webhook = models.ForeignKey(Webhook, on_delete=models.PROTECT, related_name="deliveries")
    key = models.CharField(max_length=255, unique=True)
    event = models.CharField(max_length=64)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-id",)
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="payments_delivery_due"),
        ]

    def __str__(self) -> str:
        return f"{self.event} {self.key}"


from payments.models_outgoing import *  # noqa: E402,F403
