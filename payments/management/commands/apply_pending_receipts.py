"""``python manage.py apply_pending_receipts``: credit receipts whose task was lost."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from payments.services import apply_pending_receipts


class Command(BaseCommand):
    help = "Apply receipts left unapplied for longer than --older-than seconds (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", type=float, default=30.0)

    def handle(self, *args: Any, **options: Any) -> None:
        n = apply_pending_receipts(older_than=timedelta(seconds=options["older_than"]))
        self.stdout.write(f"applied {n} receipts")
