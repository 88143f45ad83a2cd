"""``python manage.py pay POINTER AMOUNT [--from ACCOUNT] [--via PEER] [--destination-amount]
[--protocol stream|psk2]``

Creates an outgoing payment (``payments.sending.outgoing_payment_create``) and runs it:
in this process when Celery is eager (the embedded default), else by queueing
``payments.send_outgoing_payment`` and following its progress in the database. Prints
one line per chunk and a summary; exits 1 when the payment fails.

``--from`` takes a ledger account code (``receiver:alice``, ``node:operator``) or a
receiver name (``alice``); the default is the node's own ``node:operator`` (created on
demand). ``--via PEER`` sends through that peer's link; without it the Prepares go into
this node's switch (our own receivers, or whatever the routing table says). The receiver's
SPSP answer chooses the protocol (STREAM when it offers SPSP4, else PSK2) unless
``--protocol`` insists on one.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from interledger_site.celery import app as celery_app
from payments.errors import PaymentsError
from payments.ledger import ensure_account, reset_book
from payments.models_outgoing import OutgoingPayment
from payments.sending import (
    OPERATOR_ACCOUNT,
    RunOptions,
    outgoing_payment_create,
    outgoing_payment_run_sync,
    payment_summary,
)
from payments.sending.selectors import outgoing_payment_get


def account_code(value: str) -> str:
    """``alice`` → ``receiver:alice``; codes with a kind prefix are kept."""
    return value if ":" in value else f"receiver:{value}"


def progress_line(payment: OutgoingPayment) -> str:
    s = payment_summary(payment)
    line = (
        f"[{s['status']}] sent {s['amount_sent']} delivered {s['amount_delivered']} "
        f"chunks {s['chunks_fulfilled']} ok / {s['chunks_rejected']} rejected"
    )
    if s["protocol"]:
        line += f" over {s['protocol'].upper()}"
    if s["quote_destination_amount"] is not None and payment.status == "sending":
        line += f" (quoted {s['quote_source_amount']} -> {s['quote_destination_amount']})"
    return line


class Command(BaseCommand):
    help = (
        "Pay a payment pointer (SPSP4 + STREAM, or SPSP + PSK2) from one of this node's accounts."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("receiver", help="payment pointer ($host/path) or SPSP URL")
        parser.add_argument("amount", type=int, help="source units (or destination units)")
        parser.add_argument(
            "--from",
            dest="source",
            default=OPERATOR_ACCOUNT,
            help=f"account code or receiver name to pay from (default {OPERATOR_ACCOUNT})",
        )
        parser.add_argument("--via", default="", help="send through this peer's link")
        parser.add_argument(
            "--destination-amount",
            action="store_true",
            help="AMOUNT is what the receiver must get (fixed destination amount)",
        )
        parser.add_argument(
            "--max-source", type=int, help="with --destination-amount: most to spend"
        )
        parser.add_argument(
            "--protocol",
            choices=("stream", "psk2"),
            default="",
            help="insist on STREAM or PSK2 (default: what the receiver's SPSP answer offers)",
        )
        parser.add_argument("--key", help="idempotency key (a repeated key pays once)")
        parser.add_argument(
            "--no-wait", action="store_true", help="queue it and return (non-eager Celery)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        source = account_code(options["source"])
        if source == OPERATOR_ACCOUNT:
            ensure_account(OPERATOR_ACCOUNT, kind="node")
        try:
            payment = outgoing_payment_create(
                source_account_code=source,
                receiver=options["receiver"],
                amount=options["amount"],
                mode="destination" if options["destination_amount"] else "source",
                via_peer=options["via"],
                max_source_amount=options["max_source"],
                idempotency_key=options["key"],
                protocol=options["protocol"],
                start=False,
            )
        except PaymentsError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"outgoing payment {payment.pk} to {payment.spsp_url}")
        eager = bool(celery_app.conf.task_always_eager)
        try:
            if eager:
                final = outgoing_payment_run_sync(
                    payment_id=payment.pk,
                    options=RunOptions(on_progress=lambda p: self.stdout.write(progress_line(p))),
                )
                final = outgoing_payment_get(payment_id=payment.pk) if final is None else final
            else:
                from payments.sending.tasks import send_outgoing_payment

                send_outgoing_payment.delay(payment_id=payment.pk)
                if options["no_wait"]:
                    self.stdout.write("queued")
                    return
                final = self._follow(payment.pk)
        finally:
            reset_book()
        if final is None:
            raise CommandError("the payment disappeared")
        self.stdout.write(progress_line(final))
        if final.status != OutgoingPayment.Status.COMPLETED:
            raise CommandError(f"payment {final.pk} {final.status}: {final.last_error}")

    def _follow(self, payment_id: int) -> OutgoingPayment | None:
        last = ""
        while True:
            payment = outgoing_payment_get(payment_id=payment_id)
            if payment is None:
                return None
            line = progress_line(payment)
            if line != last:
                self.stdout.write(line)
                last = line
            if not payment.is_active:
                return payment
            time.sleep(0.5)
