"""``python manage.py pay_api URL [--token T] [--via PEER] [--from ACCOUNT] [--max-price N]``

Calls a paid HTTP API (HTTP-ILP draft 3) the way ilp-fetch does: the request with a
``Pay-Token``; on 402, an outgoing payment of what is still owed through this node's one
sender (:func:`receivers.paid_client.http_ilp_call`: to the token's payment pointer when the
402 names one, STREAM or PSK2, else PSK2 to the ``Pay`` header's destination); then the
request again. Prints the final body on stdout and a summary on stderr; exits 1 unless
the final answer is 2xx.

The money leaves from ``--from`` (default the node's own ``node:operator``) like any
outgoing payment, and the payment runs where ``manage.py pay``'s does: in the serving
node, through its own links (:mod:`payments.sending.handoff`: no second connection to a
parent, ``--via`` or not); on the Celery worker when there is one (Redis, not eager);
in this process only when no node is serving this database (said on stderr). Without
``--via`` the Prepares go into that process's switch (our own receivers, or the routing
table: the parent); with it, through that peer's link.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from interledger_site.celery import app as celery_app
from payments.errors import PaymentsError
from payments.ledger import receiver_account, reset_book
from payments.models_outgoing import OutgoingPayment
from payments.sending import OPERATOR_ACCOUNT, RunOptions
from payments.sending.handoff import (
    NodeConnection,
    NodeGone,
    NodeNotAnswering,
    RunStopped,
    follow,
    serving_node,
)
from payments.sending.runner import in_thread
from receivers.paid import InvalidPayToken, PayToken
from receivers.paid_client import PaymentRunner, http_ilp_call


def account_code(value: str) -> str:
    """``alice`` → ``receiver:alice``; codes with a kind prefix are kept."""
    return value if ":" in value else receiver_account(value)


class Command(BaseCommand):
    help = "Call a paid HTTP-ILP API, paying what its 402 asks, and print the answer."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "url", help="the paid resource, e.g. http://127.0.0.1:8000/api/v1/demo/paid"
        )
        parser.add_argument(
            "--token", help="Pay-Token to use (default: base64url of 16 random bytes)"
        )
        parser.add_argument(
            "--via", default="", help="send through this peer's link (default: the switch)"
        )
        parser.add_argument(
            "--from",
            dest="source",
            default=OPERATOR_ACCOUNT,
            help=f"account (or receiver name) to pay from (default {OPERATOR_ACCOUNT})",
        )
        parser.add_argument(
            "--max-price",
            type=int,
            help="most source units to spend (default: twice the price asked)",
        )
        parser.add_argument("--method", default="GET", help="HTTP method (default GET)")

    def handle(self, *args: Any, **options: Any) -> None:
        token: str | None = options["token"]
        if token is not None:
            try:
                PayToken.parse(token)
            except InvalidPayToken as exc:
                raise CommandError(str(exc)) from exc
        eager = bool(celery_app.conf.task_always_eager)
        try:
            node = serving_node(self.stderr.write) if eager else None
        except NodeNotAnswering as exc:
            raise CommandError(f"{exc}; nothing was sent") from exc
        run: PaymentRunner | None = None
        if node is not None:
            run = in_node(node)
        elif not eager:
            run = by_worker
        try:
            result = asyncio.run(
                http_ilp_call(
                    options["url"],
                    token=token,
                    method=options["method"].upper(),
                    max_price=options["max_price"],
                    source_account=account_code(options["source"]),
                    via_peer=options["via"],
                    run=run,
                )
            )
        except PaymentsError as exc:
            raise CommandError(exc.message) from exc
        except (NodeGone, NodeNotAnswering, RunStopped) as exc:
            raise CommandError(
                f"the serving node did not finish the payment ({exc}); it stays in the "
                "database and the node resumes it when it serves again"
            ) from exc
        finally:
            if node is not None:
                node.close()
            reset_book()
        paid = result.paid
        summary = [f"HTTP {result.status}", f"Pay-Token {result.token}"]
        if paid is not None:
            summary.append(
                f"paid {paid.delivered} (sent {paid.sent} in {paid.chunks} chunk"
                f"{'s' if paid.chunks != 1 else ''} over {paid.protocol.upper()}, "
                f"outgoing payment {paid.payment_id})"
            )
        if result.balance is not None:
            summary.append(f"Pay-Balance {result.balance}")
        self.stderr.write("; ".join(summary))
        sys.stdout.flush()
        self.stdout.write(result.body.decode("utf-8", "replace"))
        if not 200 <= result.status < 300:
            raise CommandError(f"the API answered HTTP {result.status}")


def in_node(node: NodeConnection) -> PaymentRunner:
    """Run the payment in the serving node and wait for it (one per connection)."""

    def run(payment_id: int) -> OutgoingPayment | None:
        node.start_run(payment_id)
        return follow(payment_id, node=node)

    async def runner(payment_id: int, options: RunOptions | None) -> OutgoingPayment | None:
        return await in_thread(run)(payment_id)

    return runner


async def by_worker(payment_id: int, options: RunOptions | None) -> OutgoingPayment | None:
    """Queue the payment to the Celery worker and wait for it to end."""

    def run() -> OutgoingPayment | None:
        from payments.sending.tasks import send_outgoing_payment

        send_outgoing_payment.delay(payment_id=payment_id)
        return follow(payment_id)

    return await in_thread(run)()
