"""``python manage.py pay POINTER AMOUNT [--from ACCOUNT] [--via PEER] [--destination-amount]
[--protocol stream|psk2] [--key KEY] [--no-wait]``

Creates an outgoing payment (``payments.sending.outgoing_payment_create``: validation,
reservation, the row) in this process, then has it run where the node's links are, and
follows its progress in the database: one line per change and a summary; exits 1 when
the payment fails.

* **A node is serving (eager Celery, the embedded default).** The serving process
  (``make run``, Daphne) holds the links: its parent's BTP connection, the children that
  dialled in. The payment is handed to it (:mod:`payments.sending.handoff`: a Unix
  socket in ``ILP_VAR_DIR``) and runs there, through its own links: no second
  connection, ``--via`` or not. If the node stops mid-payment the command says so and
  exits 1; the payment keeps its state and the node's recovery resumes it when it
  serves again (Ctrl-C only stops following: the node finishes the payment).
* **No node is serving** (no socket, or one left by a process that is gone): the command
  says so on stderr and runs the payment itself, as a node of its own: our own
  receivers, or ``--via`` a peer (a ``btp-client`` peer is dialled for the payment).
  A socket that accepts but does not answer within a few seconds (a stopped process) is
  an error, before anything is created.
* **A Celery worker** (Redis, not eager): the command queues
  ``payments.send_outgoing_payment``; the worker reaches each link through the process
  that owns it (``links.ownership.RemoteLink``).

``--from`` takes a ledger account code (``receiver:alice``, ``node:operator``) or a
receiver name (``alice``); the default is the node's own ``node:operator`` (created on
demand). ``--via PEER`` sends through that peer's link; without it the Prepares go into
the node's switch (our own receivers, or whatever the routing table says: the parent).
The receiver's SPSP answer chooses the protocol (STREAM when it offers SPSP4, else PSK2)
unless ``--protocol`` insists on one. ``--key`` makes it idempotent: running the same
command again follows (or finishes) the same payment. ``--no-wait`` returns once the
payment is queued or handed over.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from interledger_site.celery import app as celery_app
from payments.errors import PaymentsError
from payments.ledger import ensure_account, reset_book
from payments.ledger.accounts import receiver_account
from payments.models_outgoing import OutgoingPayment
from payments.sending import (
    OPERATOR_ACCOUNT,
    RunOptions,
    outgoing_payment_create,
    outgoing_payment_run_sync,
    payment_summary,
)
from payments.sending.handoff import (
    NodeConnection,
    NodeGone,
    NodeNotAnswering,
    RunStopped,
    follow,
    serving_node,
)
from payments.sending.selectors import outgoing_payment_get


def account_code(value: str) -> str:
    """``alice`` → ``receiver:alice``; codes with a kind prefix are kept."""
    return value if ":" in value else receiver_account(value)


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
        "Pay a payment pointer (SPSP4 + STREAM, or SPSP + PSK2) from one of this node's "
        "accounts, through the serving node's links."
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
            "--no-wait",
            action="store_true",
            help="return once the payment is queued (Celery) or handed to the serving node",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        source = account_code(options["source"])
        eager = bool(celery_app.conf.task_always_eager)
        # Before anything is created: a node that does not answer is an error.
        try:
            node = serving_node(self.stderr.write) if eager else None
        except NodeNotAnswering as exc:
            raise CommandError(f"{exc}; nothing was sent") from exc
        try:
            final = self._pay(source, node, eager, options)
        finally:
            if node is not None:
                node.close()
            reset_book()
        if final is None:
            return
        self.stdout.write(progress_line(final))
        if final.status != OutgoingPayment.Status.COMPLETED:
            raise CommandError(f"payment {final.pk} {final.status}: {final.last_error}")

    def _pay(
        self, source: str, node: NodeConnection | None, eager: bool, options: dict[str, Any]
    ) -> OutgoingPayment | None:
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
        if node is not None:
            return self._hand_over(node, payment.pk, wait=not options["no_wait"])
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
                return None
            final = self._follow(payment.pk)
        if final is None:
            raise CommandError("the payment disappeared")
        return final

    def _hand_over(
        self, node: NodeConnection, payment_id: int, *, wait: bool
    ) -> OutgoingPayment | None:
        left = (
            f"payment {payment_id} stays in the database: the node resumes it when it "
            "serves again (its recovery sweep), or run this command again with the same "
            "--key"
        )
        try:
            node.start_run(payment_id)
        except (NodeGone, NodeNotAnswering) as exc:
            raise CommandError(
                f"the serving node did not take the payment ({exc}); {left}"
            ) from None
        self.stdout.write(f"running in the serving {node.describe}")
        if not wait:
            self.stdout.write("handed over")
            return None
        try:
            final = self._follow(payment_id, node, left)
        except KeyboardInterrupt:
            raise CommandError(
                f"stopped following; payment {payment_id} goes on in the serving node"
            ) from None
        if final is None:
            raise CommandError("the payment disappeared")
        return final

    def _follow(
        self, payment_id: int, node: NodeConnection | None = None, left: str = ""
    ) -> OutgoingPayment | None:
        """Print the payment's progress from the database until it is over (with
        ``node``, the handed-over run's connection, woken early by its ``done``)."""
        last = ""

        def show(payment: OutgoingPayment) -> None:
            nonlocal last
            line = progress_line(payment)
            if line != last:
                self.stdout.write(line)
                last = line

        try:
            return follow(payment_id, node=node, on_progress=show)
        except NodeGone as exc:
            raise CommandError(
                f"the serving node went away during the payment ({exc}); {left}"
            ) from None
        except RunStopped as exc:
            raise CommandError(f"the node's run stopped: {exc}; {left}") from None
