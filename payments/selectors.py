"""Read-only queries of the ledger (no writes, no locks)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

from django.db.models import Count, QuerySet, Sum
from django.utils import timezone

from payments.models import IncomingPayment, LedgerAccount, PendingReceipt, Posting, Receipt


def account_get(*, code: str) -> LedgerAccount | None:
    return LedgerAccount.objects.filter(code=code).first()


def account_list(*, kind: str | None = None) -> QuerySet[LedgerAccount]:
    qs = LedgerAccount.objects.all().order_by("code")
    return qs.filter(kind=kind) if kind else qs


def posting_list(*, account_code: str, limit: int = 100) -> list[Posting]:
    """The most recent postings of one account, newest first."""
    return list(Posting.objects.filter(account__code=account_code).order_by("-id")[:limit])


def posting_memos(*, keys: list[str]) -> dict[str, str]:
    """``key → memo`` of the postings among ``keys`` that are in the ledger (a key is
    there once it was committed: the way to learn, after a restart, what was booked)."""
    return dict(Posting.objects.filter(key__in=keys).values_list("key", "memo"))


def incoming_payment_get(*, account_code: str, payment_id: bytes) -> IncomingPayment | None:
    return IncomingPayment.objects.filter(
        account__code=account_code, payment_id=payment_id.hex()
    ).first()


def incoming_payment_list(*, account_code: str, limit: int = 50) -> list[IncomingPayment]:
    """The most recently updated incoming payments of one account."""
    return list(
        IncomingPayment.objects.filter(account__code=account_code).order_by("-last_at", "-id")[
            :limit
        ]
    )


def payment_total_db(*, account_code: str, payment_id: bytes) -> int:
    """Sum of the receipts (applied or not) of one PSK2 payment id on one account."""
    total = Receipt.objects.filter(
        account__code=account_code, payment_id=payment_id.hex()
    ).aggregate(total=Sum("amount"))["total"]
    return int(total or 0)


def unapplied_receipts_total(*, account_code: str) -> int:
    """Received on the account but not yet credited by ``apply_receipts``."""
    total = PendingReceipt.objects.filter(receipt__account__code=account_code).aggregate(
        total=Sum("receipt__amount")
    )["total"]
    return int(total or 0)


def pending_receipt_ids(*, older_than: timedelta, limit: int) -> list[int]:
    """Ids of the receipts unapplied for at least ``older_than``, oldest first (read from
    the queue, ``PendingReceipt``: only what is in flight)."""
    cutoff = timezone.now() - older_than
    return list(
        PendingReceipt.objects.filter(receipt__created_at__lte=cutoff)
        .order_by("receipt_id")
        .values_list("receipt_id", flat=True)[:limit]
    )


# --- the ledger check ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountCheck:
    code: str
    asset: str
    stored: int
    computed: int

    @property
    def difference(self) -> int:
        return self.stored - self.computed

    @property
    def ok(self) -> bool:
        return self.stored == self.computed


@dataclass(frozen=True, slots=True)
class AssetCheck:
    """Postings plus receipts not yet applied must sum to zero per asset (double entry)."""

    asset: str
    postings: int
    unapplied_receipts: int

    @property
    def total(self) -> int:
        return self.postings + self.unapplied_receipts

    @property
    def ok(self) -> bool:
        return self.total == 0


@dataclass(frozen=True, slots=True)
class PaymentCheck:
    account_code: str
    payment_id: str
    stored_total: int
    receipts_total: int
    stored_chunks: int
    receipts_count: int

    @property
    def ok(self) -> bool:
        return (self.stored_total, self.stored_chunks) == (self.receipts_total, self.receipts_count)


@dataclass(slots=True)
class LedgerReport:
    accounts: list[AccountCheck] = field(default_factory=list)
    assets: list[AssetCheck] = field(default_factory=list)
    payments: list[PaymentCheck] = field(default_factory=list)  # mismatches only
    # Receipts unapplied without a pending row (never swept) or applied with one (the
    # first QUEUE_SAMPLE of each).
    unqueued: list[int] = field(default_factory=list)
    queued_applied: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            all(a.ok for a in self.accounts)
            and all(a.ok for a in self.assets)
            and all(p.ok for p in self.payments)
            and not self.unqueued
            and not self.queued_applied
        )


QUEUE_SAMPLE = 100


def ledger_report() -> LedgerReport:
    """Recompute every balance from the postings and check the double entry.

    A consistent snapshot needs the whole check in one transaction at REPEATABLE READ or
    stricter, or a quiet ledger; ``check_ledger`` runs it in one transaction.
    """
    sums = {
        row["account_id"]: int(row["total"] or 0)
        for row in Posting.objects.values("account_id").annotate(total=Sum("amount")).order_by()
    }
    unapplied = {
        row["account_id"]: int(row["total"] or 0)
        for row in Receipt.objects.filter(applied_at__isnull=True)
        .values("account_id")
        .annotate(total=Sum("amount"))
        .order_by()
    }
    report = LedgerReport()
    per_asset_postings: dict[str, int] = defaultdict(int)
    per_asset_receipts: dict[str, int] = defaultdict(int)
    for account in LedgerAccount.objects.order_by("code").only(
        "id", "code", "asset_code", "asset_scale", "balance"
    ):
        asset = f"{account.asset_code}/{account.asset_scale}"
        computed = sums.get(account.pk, 0)
        report.accounts.append(AccountCheck(account.code, asset, int(account.balance), computed))
        per_asset_postings[asset] += computed
        per_asset_receipts[asset] += unapplied.get(account.pk, 0)
    for asset in sorted(per_asset_postings):
        report.assets.append(
            AssetCheck(asset, per_asset_postings[asset], per_asset_receipts[asset])
        )
    applied = {
        row["incoming_payment_id"]: (int(row["total"] or 0), int(row["n"]))
        for row in Receipt.objects.filter(incoming_payment__isnull=False)
        .values("incoming_payment_id")
        .annotate(total=Sum("amount"), n=Count("id"))
        .order_by()
    }
    for payment in IncomingPayment.objects.select_related("account").order_by("id"):
        total, count = applied.get(payment.pk, (0, 0))
        check = PaymentCheck(
            payment.account.code,
            payment.payment_id,
            int(payment.total),
            total,
            payment.chunks,
            count,
        )
        if not check.ok:
            report.payments.append(check)
    report.unqueued = list(
        Receipt.objects.filter(applied_at__isnull=True, pending__isnull=True)
        .order_by("id")
        .values_list("id", flat=True)[:QUEUE_SAMPLE]
    )
    report.queued_applied = list(
        PendingReceipt.objects.filter(receipt__applied_at__isnull=False)
        .order_by("receipt_id")
        .values_list("receipt_id", flat=True)[:QUEUE_SAMPLE]
    )
    return report
