"""The fault script's driver (``make faults`` → ``scripts/faults.sh``).

``load``   A BTP child peer paying a pointer with PSK2 (single-chunk payments, draft 1),
           ``--concurrency`` at a time, until ``--count`` are done or the node goes away
           (it is killed mid-load). Every Fulfill it holds (fulfillment checked against
           the condition) is appended to ``--fulfills`` as one JSON line, at once.
           Speaks BTP and PSK2 with the node's own ``ilp`` package only (no Django).
``check``  After the restart (Django, on the node's database): within ``--deadline``
           seconds of ``--ready-at`` (when the restarted node first answered) every
           receipt is applied, with no new payment; every Fulfill in ``--fulfills`` is a
           receipt of the pointer's account; the peer's balance is minus their sum; and
           ``check_ledger``'s report is clean. Exit 1 otherwise.

Both print one summary line that ``faults.sh`` shows.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@dataclass
class LoadResult:
    sent: int = 0
    fulfilled: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    unanswered: int = 0
    closed_by_node: bool = False


async def load(args: argparse.Namespace) -> LoadResult:
    import httpx
    import websockets

    from ilp.btp import (
        ILP,
        BtpError,
        BtpMessage,
        BtpResponse,
        auth_message,
        decode_btp,
        encode_btp,
        find_entry,
        ilp_message,
    )
    from ilp.conditions import fulfillment_matches
    from ilp.oer import UINT64_MAX
    from ilp.packet import Fulfill, decode_reply, encode_prepare
    from ilp.psk2_sender import build_chunk

    base = f"http://127.0.0.1:{args.port}"
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(
            f"{base}/{args.pointer}", headers={"Accept": "application/spsp+json"}
        )
        response.raise_for_status()
        spsp = response.json()
    destination = str(spsp["destination_account"])
    secret = base64.b64decode(spsp["shared_secret"])

    result = LoadResult()
    closing = False
    waiters: dict[int, asyncio.Future[bytes | None]] = {}
    out = open(args.fulfills, "a", buffering=1)  # noqa: SIM115  (one line per Fulfill, flushed at once)
    url = f"ws://127.0.0.1:{args.port}/btp"
    async with websockets.connect(url, max_size=None, open_timeout=10) as ws:
        await ws.send(encode_btp(auth_message(1, args.peer, args.token)))
        reply = decode_btp(await asyncio.wait_for(ws.recv(), 10))
        if not isinstance(reply, BtpResponse):
            raise SystemExit(f"BTP auth refused: {reply}")

        async def reader() -> None:
            try:
                async for raw in ws:
                    frame = decode_btp(raw if isinstance(raw, bytes) else raw.encode())
                    waiter = waiters.pop(frame.request_id, None)
                    if isinstance(frame, BtpResponse) and waiter is not None:
                        entry = find_entry(frame, ILP)
                        waiter.set_result(entry.data if entry is not None else None)
                    elif isinstance(frame, BtpError) and waiter is not None:
                        waiter.set_result(None)
                    elif isinstance(frame, BtpMessage):
                        # Nothing is asked of a plain child here; answer so nothing waits.
                        await ws.send(encode_btp(BtpResponse(frame.request_id)))
            except websockets.ConnectionClosed:
                pass
            finally:
                result.closed_by_node = not closing
                for waiter in waiters.values():
                    if not waiter.done():
                        waiter.set_result(None)
                waiters.clear()

        reading = asyncio.create_task(reader())
        next_id = 2
        loop = asyncio.get_running_loop()

        async def pay_one() -> None:
            nonlocal next_id
            request_id = next_id
            next_id += 1
            payment_id = secrets.token_bytes(16)
            prepare = build_chunk(
                secret,
                destination,
                payment_id=payment_id,
                sequence=0,
                payment_amount=UINT64_MAX,
                chunk_amount=0,
                source_amount=args.amount,
                expires_at=datetime.now(UTC) + timedelta(seconds=30),
                iv=os.urandom(12),
                last=True,
            )
            waiter: asyncio.Future[bytes | None] = loop.create_future()
            waiters[request_id] = waiter
            result.sent += 1
            try:
                await ws.send(encode_btp(ilp_message(request_id, encode_prepare(prepare))))
            except websockets.ConnectionClosed:
                waiters.pop(request_id, None)
                result.unanswered += 1
                return
            raw = await waiter
            if raw is None:
                result.unanswered += 1
                return
            packet = decode_reply(raw)
            if isinstance(packet, Fulfill):
                if not fulfillment_matches(packet.fulfillment, prepare.execution_condition):
                    raise SystemExit("a Fulfill whose fulfillment does not match")
                result.fulfilled += 1
                line = {
                    "payment_id": payment_id.hex(),
                    "sequence": 0,
                    "amount": args.amount,
                }
                out.write(json.dumps(line) + "\n")
            else:
                result.rejected[packet.code] = result.rejected.get(packet.code, 0) + 1

        async def worker() -> None:
            while not result.closed_by_node and (args.count == 0 or result.sent < args.count):
                await pay_one()

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        if not result.closed_by_node:
            closing = True
            await ws.close()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
    out.close()
    return result


def check(args: argparse.Namespace) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "interledger_site.settings")
    import django

    django.setup()
    from django.db.models import Sum

    from payments.ledger import peer_account, receiver_account
    from payments.models import LedgerAccount, Receipt
    from payments.selectors import ledger_report

    problems: list[str] = []
    # Django is set up before the node restarts: the clock starts when it answers.
    ready = Path(args.ready_file)
    while not ready.exists() or not ready.read_text().strip():
        time.sleep(0.01)
    ready_at = float(ready.read_text())
    deadline = ready_at + args.deadline
    unapplied = Receipt.objects.filter(applied_at__isnull=True).count()
    first_look = (time.time() - ready_at, unapplied)
    while unapplied and time.time() < deadline:
        time.sleep(0.05)
        unapplied = Receipt.objects.filter(applied_at__isnull=True).count()
    applied_after = time.time() - ready_at
    if unapplied:
        problems.append(f"{unapplied} receipts still unapplied {args.deadline:.0f} s after restart")

    held = [json.loads(line) for line in Path(args.fulfills).read_text().splitlines() if line]
    receiver = LedgerAccount.objects.get(code=receiver_account(args.pointer))
    recorded = {
        (pid, int(seq))
        for pid, seq in Receipt.objects.filter(account=receiver).values_list(
            "payment_id", "sequence"
        )
    }
    missing = [f for f in held if (f["payment_id"], f["sequence"]) not in recorded]
    if missing:
        problems.append(f"{len(missing)} Fulfills the sender holds are not in the ledger")
    total = int(Receipt.objects.filter(account=receiver).aggregate(s=Sum("amount"))["s"] or 0)
    peer = int(LedgerAccount.objects.get(code=peer_account(args.peer)).balance)
    if peer != -total:
        problems.append(
            f"{peer_account(args.peer)} balance {peer} is not minus the receipts ({total})"
        )
    if int(receiver.balance) != total:
        problems.append(f"receiver balance {int(receiver.balance)} != receipts {total}")
    report = ledger_report()
    if not report.ok:
        problems.append("ledger report not clean")
    print(
        f"check: {len(held)} Fulfills held, {len(recorded)} receipts recorded "
        f"({len(recorded) - len(held) + len(missing)} committed but not delivered before the "
        f"kill), {len(missing)} missing; unapplied: {first_look[1]} at +{first_look[0]:.2f} s, "
        f"{unapplied} at +{applied_after:.2f} s after the node answered; receipts total {total}"
        + (f"; PROBLEMS: {'; '.join(problems)}" if problems else "; OK")
    )
    return 1 if problems else 0


def unapplied(_args: argparse.Namespace) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "interledger_site.settings")
    import django

    django.setup()
    from payments.models import Receipt

    count = Receipt.objects.filter(applied_at__isnull=True).count()
    total = Receipt.objects.count()
    note = "" if count else " (this kill left nothing for the recovery to apply)"
    print(f"after the kill: {total} receipts, {count} unapplied{note}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("load", "check", "unapplied"):
        p = sub.add_parser(name)
        p.add_argument("--port", type=int, default=8775)
        p.add_argument("--peer", default="alice")
        p.add_argument("--token", default="alicetoken")
        p.add_argument("--pointer", default="bob")
        p.add_argument("--fulfills", default=".faults/fulfills.jsonl")
        if name == "load":
            p.add_argument("--amount", type=int, default=10)
            p.add_argument("--concurrency", type=int, default=20)
            p.add_argument("--count", type=int, default=0, help="0 = until the node goes away")
        if name == "check":
            p.add_argument(
                "--ready-file", required=True, help="the node's ready time (epoch s) appears here"
            )
            p.add_argument("--deadline", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.command == "load":
        started = time.monotonic()
        result = asyncio.run(load(args))
        took = time.monotonic() - started
        print(
            f"load: sent {result.sent}, fulfilled {result.fulfilled}, rejected "
            f"{result.rejected or 0}, unanswered {result.unanswered} in {took:.1f} s"
            + (" (the node went away)" if result.closed_by_node else "")
        )
        if args.count and result.fulfilled != args.count:
            return 1
        return 0
    if args.command == "check":
        return check(args)
    return unapplied(args)


if __name__ == "__main__":
    sys.exit(main())
