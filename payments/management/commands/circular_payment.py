"""``python manage.py circular_payment --out PEER --amount N [--from ACCOUNT]``

Sends ``N`` from the node's account out through ``PEER`` to ``<node>.circular.<token>``
and waits for it to come back through whichever peer routes that address to us (set up:
docs/ARCHITECTURE.md, "Circular payments"). Prints what came back, the loop's cost and
the round-trip time; exits 1 when it did not complete. Runs in this process when Celery
is eager (the embedded default), else queues ``payments.send_circular_payment`` and waits.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from interledger_site.celery import app as celery_app
from payments.errors import PaymentsError
from payments.ledger import reset_book
from payments.models_outgoing import CircularPayment
from payments.sending import OPERATOR_ACCOUNT
from payments.sending.circular import circular_payment_create, circular_payment_run_sync
from payments.sending.selectors import circular_payment_get


class Command(BaseCommand):
    help = "Send a circular payment out through a peer and measure its cost and round trip."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--out", required=True, help="peer to send it out through")
        parser.add_argument("--amount", type=int, required=True, help="source units")
        parser.add_argument(
            "--from", dest="source", default=OPERATOR_ACCOUNT, help="account that pays"
        )
        parser.add_argument("--expiry", type=float, default=30.0, help="seconds (default 30)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            circular = circular_payment_create(
                out_peer=options["out"],
                amount=options["amount"],
                source_account_code=options["source"],
                start=False,
            )
        except PaymentsError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"circular payment {circular.pk} to {circular.destination}")
        try:
            if celery_app.conf.task_always_eager:
                circular_payment_run_sync(
                    circular_id=circular.pk, expiry=timedelta(seconds=options["expiry"])
                )
            else:
                from payments.sending.tasks import send_circular_payment

                send_circular_payment.delay(circular_id=circular.pk)
                deadline = time.monotonic() + options["expiry"] + 10
                while time.monotonic() < deadline:
                    current = circular_payment_get(circular_id=circular.pk)
                    if current is None or current.status in (
                        CircularPayment.Status.COMPLETED,
                        CircularPayment.Status.FAILED,
                    ):
                        break
                    time.sleep(0.3)
        finally:
            reset_book()
        final = circular_payment_get(circular_id=circular.pk)
        if final is None:
            raise CommandError("the circular payment disappeared")
        if final.status != CircularPayment.Status.COMPLETED:
            detail = f"{final.code} {final.last_error}".strip()
            raise CommandError(f"circular payment {final.pk} {final.status}: {detail}")
        rtt = f"{final.rtt_ms:.1f} ms" if final.rtt_ms is not None else "unknown"
        self.stdout.write(
            f"completed: out {final.amount_out} via {final.out_peer}, in {final.amount_in} "
            f"via {final.in_peer}; cost {final.cost}; round trip {rtt}"
        )
