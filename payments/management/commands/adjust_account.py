"""``python manage.py adjust_account CODE AMOUNT --key K``: an operator adjustment (double entry)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from payments.errors import PaymentsError
from payments.services import account_adjust


class Command(BaseCommand):
    help = (
        "Move AMOUNT (signed integer, smallest unit; positive = we owe the holder more) onto "
        "account CODE, against the node equity account of its asset (or --counter). "
        "Idempotent on --key."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("code")
        parser.add_argument("amount", type=int)
        parser.add_argument("--key", required=True, help="idempotency key of this adjustment")
        parser.add_argument("--memo", default="")
        parser.add_argument("--counter", default=None, help="counter account code")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            account_adjust(
                account_code=options["code"],
                amount=options["amount"],
                key=options["key"],
                memo=options["memo"],
                counter_account_code=options["counter"],
            )
        except (PaymentsError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"adjusted {options['code']} by {options['amount']}"))
