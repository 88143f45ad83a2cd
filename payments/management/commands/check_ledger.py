"""``python manage.py check_ledger``: recompute balances from postings; exit 1 on any difference."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction

from payments.selectors import LedgerReport, ledger_report


class Command(BaseCommand):
    help = (
        "Recompute every account balance from its postings, compare with the stored balance, "
        "and check that postings plus unapplied receipts sum to zero per asset. Exit 1 on any "
        "difference."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--differences-only", action="store_true", help="print only accounts that differ"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            if connection.vendor == "postgresql":  # one snapshot for every query of the check
                with connection.cursor() as cursor:
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            report = ledger_report()
        self._print(report, differences_only=options["differences_only"])
        if not report.ok:
            raise CommandError("ledger check FAILED", returncode=1)
        self.stdout.write(self.style.SUCCESS("ledger check OK"))

    def _print(self, report: LedgerReport, *, differences_only: bool) -> None:
        rows = [a for a in report.accounts if not (differences_only and a.ok)]
        width = max([len("account"), *(len(a.code) for a in rows)])
        head = f"{'account':<{width}}  {'asset':<10} {'stored':>22} {'computed':>22} {'diff':>22}  status"
        self.stdout.write(head)
        self.stdout.write("-" * len(head))
        for a in rows:
            status = "ok" if a.ok else "MISMATCH"
            line = (
                f"{a.code:<{width}}  {a.asset:<10} {a.stored:>22} {a.computed:>22} "
                f"{a.difference:>22}  {status}"
            )
            self.stdout.write(line if a.ok else self.style.ERROR(line))
        self.stdout.write("")
        self.stdout.write(
            f"{'asset':<10} {'postings':>22} {'unapplied receipts':>22} {'sum':>22}  status"
        )
        for s in report.assets:
            line = (
                f"{s.asset:<10} {s.postings:>22} {s.unapplied_receipts:>22} {s.total:>22}  "
                f"{'ok' if s.ok else 'UNBALANCED'}"
            )
            self.stdout.write(line if s.ok else self.style.ERROR(line))
        for p in report.payments:
            self.stdout.write(
                self.style.ERROR(
                    f"incoming payment {p.account_code} {p.payment_id}: total {p.stored_total} "
                    f"chunks {p.stored_chunks}, receipts say {p.receipts_total} / {p.receipts_count}"
                )
            )
        if report.unqueued:
            self.stdout.write(
                self.style.ERROR(f"unapplied receipts without a pending row: {report.unqueued}")
            )
        if report.queued_applied:
            self.stdout.write(
                self.style.ERROR(f"applied receipts with a pending row: {report.queued_applied}")
            )
