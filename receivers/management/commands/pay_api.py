"""``python manage.py pay_api URL [--token T] [--btp btp+ws://name:token@host/btp]``

Calls a paid HTTP API (HTTP-ILP draft 3) the way ilp-fetch does: the request with a
``Pay-Token``; on 402, a PSK2 payment of the price to the destination of the ``Pay``
header (a quote, then one chunk; a chunked payment if the path's packets are too small);
then the request again. Prints the final body on stdout and a summary on stderr; exits 1
unless the final answer is 2xx.

The money goes out over ``--btp`` (a BTP account on any node, e.g. a child account of
ours or of another connector), or, without it, through this process's packet switch
from the node's own account ``node:operator`` — which reaches this node's receivers only.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from payments.ledger import reset_book
from receivers.paid import InvalidPayToken, PayToken
from receivers.sending import (
    BtpSender,
    CallResult,
    IlpSender,
    LocalSwitchSender,
    SendError,
    http_ilp_call,
)


class Command(BaseCommand):
    help = "Call a paid HTTP-ILP API, paying what its 402 asks (PSK2), and print the answer."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "url", help="the paid resource, e.g. http://127.0.0.1:8000/api/v1/demo/paid"
        )
        parser.add_argument(
            "--token", help="Pay-Token to use (default: base64url of 16 random bytes)"
        )
        parser.add_argument(
            "--btp",
            help="pay over this BTP account (btp+ws://name:token@host/btp) instead of "
            "through this node's switch as node:operator",
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
        sender: IlpSender = BtpSender(options["btp"]) if options["btp"] else LocalSwitchSender()
        try:
            result = asyncio.run(
                _run(
                    sender,
                    options["url"],
                    token=token,
                    method=options["method"].upper(),
                    max_price=options["max_price"],
                )
            )
        except SendError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            reset_book()
        paid = result.paid
        summary = [f"HTTP {result.status}", f"Pay-Token {result.token}"]
        if paid is not None:
            summary.append(
                f"paid {paid.delivered} (sent {paid.sent} in {paid.chunks} chunk"
                f"{'s' if paid.chunks != 1 else ''})"
            )
        if result.balance is not None:
            summary.append(f"Pay-Balance {result.balance}")
        self.stderr.write("; ".join(summary))
        sys.stdout.flush()
        self.stdout.write(result.body.decode("utf-8", "replace"))
        if not 200 <= result.status < 300:
            raise CommandError(f"the API answered HTTP {result.status}")


async def _run(
    sender: IlpSender, url: str, *, token: str | None, method: str, max_price: int | None
) -> CallResult:
    await sender.connect()
    try:
        return await http_ilp_call(url, sender, token=token, method=method, max_price=max_price)
    finally:
        await sender.close()
