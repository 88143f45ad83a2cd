"""Multi-process checks on the real cluster shape (``scripts/cluster.sh``).

``credit``  A tight credit limit under concurrent load from every Daphne process: starts a
            cluster of its own (``--daphnes``, a fresh Postgres database ``<DATABASE_URL's
            name>_credit``, a fresh ``ILP_ADDRESS`` so its Redis keys are its own), adds an
            ``http-sync`` child ``oer`` with ``--min-balance`` and a pointer, then pays
            ``--count`` PSK2 payments of ``--amount`` from ``oer`` to the pointer, round
            robin over every Daphne's own port, ``--concurrency`` in flight (more than the
            room holds). Passes when the peer's final balance never went below its limit
            (balances only fall in this load, so the final one is the lowest), at least
            ``--usable`` of the room was used, every Fulfill is one posting (balance =
            -fulfilled x amount) and ``check_ledger`` is clean. ``--no-shared`` runs the
            cluster with ``ILP_SHARED_CREDIT=0`` (each process's own book: the leak).

Needs ``DATABASE_URL`` (PostgreSQL) and ``REDIS_URL``; run it under ``flock
/tmp/interop.lock`` when other cluster runs may overlap. Prints one JSON line, exits 1 on
failure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PY = str(ROOT / ".venv" / "bin" / "python")
if not os.path.exists(PY):
    PY = sys.executable


def _free_run(n: int) -> int:
    for _ in range(50):
        base = random.randint(20000, 60000)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free ports")


@dataclass
class Load:
    sent: int = 0
    fulfilled: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _run(cmd: list[str], env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run(
        cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(cmd[:4])}... failed ({done.returncode}):\n{done.stderr[-3000:]}"
        )
    return done.stdout


async def _pay(ports: list[int], token: str, spsp_url: str, args: argparse.Namespace) -> Load:
    import httpx

    from ilp.conditions import fulfillment_matches
    from ilp.oer import UINT64_MAX
    from ilp.packet import Fulfill, decode_reply, encode_prepare
    from ilp.psk2_sender import build_chunk

    result = Load()
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        response = await client.get(spsp_url, headers={"Accept": "application/spsp+json"})
        response.raise_for_status()
        spsp = response.json()
        destination = str(spsp["destination_account"])
        secret = base64.b64decode(spsp["shared_secret"])
        turn = 0

        async def pay_one() -> None:
            nonlocal turn
            port = ports[turn % len(ports)]
            turn += 1
            prepare = build_chunk(
                secret,
                destination,
                payment_id=secrets.token_bytes(16),
                sequence=0,
                payment_amount=UINT64_MAX,
                chunk_amount=0,
                source_amount=args.amount,
                expires_at=datetime.now(UTC) + timedelta(seconds=30),
                iv=os.urandom(12),
                last=True,
            )
            result.sent += 1
            started = time.perf_counter()
            try:
                reply = await client.post(
                    f"http://127.0.0.1:{port}/ilp",
                    content=encode_prepare(prepare),
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Content-Type": "application/octet-stream",
                    },
                )
            except httpx.HTTPError:
                result.errors += 1
                return
            result.latencies.append(time.perf_counter() - started)
            if reply.status_code != 200:
                result.errors += 1
                return
            packet = decode_reply(reply.content)
            if isinstance(packet, Fulfill):
                if not fulfillment_matches(packet.fulfillment, prepare.execution_condition):
                    raise SystemExit("a Fulfill whose fulfillment does not match")
                result.fulfilled += 1
            else:
                result.rejected[packet.code] = result.rejected.get(packet.code, 0) + 1

        async def worker() -> None:
            while result.sent < args.count:
                await pay_one()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        result.seconds = time.perf_counter() - started
    return result


def _sql(database_url: str, query: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        cursor = conn.execute(query)
        return list(cursor.fetchall()) if cursor.description else []


def credit(args: argparse.Namespace) -> int:
    database_url = os.environ.get("DATABASE_URL", "")
    redis_url = os.environ.get("REDIS_URL", "")
    if not database_url.startswith(("postgres://", "postgresql://")) or not redis_url:
        print(
            "cluster_checks credit: needs DATABASE_URL (PostgreSQL) and REDIS_URL", file=sys.stderr
        )
        return 2
    base, name = database_url.rstrip("/").rsplit("/", 1)
    db_name = f"{name.split('?')[0]}_credit"
    db_url = f"{base}/{db_name}"
    _sql(f"{base}/postgres", f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
    run_dir = Path(tempfile.mkdtemp(prefix="cluster-credit-"))
    daphne_port = _free_run(args.daphnes)
    nginx_port = _free_run(1)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ILP_", "DJANGO_", "PROMETHEUS_", "CLUSTER_", "PYTEST_"))
    }
    env.update(
        {
            "DATABASE_URL": db_url,
            "REDIS_URL": redis_url,
            "ILP_VAR_DIR": str(run_dir / "var"),
            "ILP_ADDRESS": f"test.credit{secrets.token_hex(3)}",
            "ILP_SHARED_CREDIT": "1" if args.shared else "0",
            "CLUSTER_DAPHNES": str(args.daphnes),
            "CLUSTER_PORT": str(nginx_port),
            "CLUSTER_DAPHNE_PORT": str(daphne_port),
            "CLUSTER_DIR": str(run_dir / "run"),
            "LOG_LEVEL": "WARNING",
        }
    )
    token = secrets.token_hex(16)
    cluster = ["bash", str(ROOT / "scripts" / "cluster.sh")]
    try:
        _run([*cluster, "start"], env)
        _run(
            [PY, "manage.py", "add_peer", "oer", "--relation", "child", "--link", "http-sync",
             "--token", token, "--min-balance", str(args.min_balance),
             "--max-in-flight", "100000", "--packets-per-second", "1000000", "--burst", "1000000",
             "--throughput", "none"],
            env,
        )  # fmt: skip
        _run([PY, "manage.py", "add_pointer", "bob"], env)
        ports = [daphne_port + i for i in range(args.daphnes)]
        load = asyncio.run(_pay(ports, token, f"http://127.0.0.1:{nginx_port}/bob", args))
        # Every receipt applied (the worker's task), then the ledger's word.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            (left,) = _sql(
                db_url, "SELECT count(*) FROM payments_receipt WHERE applied_at IS NULL"
            )[0]
            if left == 0:
                break
            time.sleep(0.2)
        rows = _sql(db_url, "SELECT balance FROM payments_ledgeraccount WHERE code = 'peer:oer'")
        balance = int(rows[0][0])
        checked = subprocess.run(
            [PY, "manage.py", "check_ledger", "--differences-only"], env=env, cwd=ROOT,
            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    finally:
        subprocess.run([*cluster, "stop"], env=env, cwd=ROOT, capture_output=True, timeout=300)
    room = -args.min_balance
    used = -balance
    lat = sorted(load.latencies)
    report = {
        "check": "credit",
        "shared": args.shared,
        "daphnes": args.daphnes,
        "sent": load.sent,
        "fulfilled": load.fulfilled,
        "rejected": load.rejected,
        "errors": load.errors,
        "balance": balance,
        "min_balance": args.min_balance,
        "room_used": round(used / room, 4) if room else None,
        "payments_per_s": round(load.sent / load.seconds, 1) if load.seconds else None,
        "p50_ms": round(lat[len(lat) // 2] * 1000, 1) if lat else None,
        "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 1) if lat else None,
        "check_ledger": checked.returncode,
    }
    problems = []
    if balance < args.min_balance:
        problems.append(f"limit exceeded: balance {balance} < {args.min_balance}")
    if used < args.usable * room:
        problems.append(f"only {used} of {room} usable")
    if used != load.fulfilled * args.amount:
        problems.append(f"balance {balance} != -{load.fulfilled} fulfilled x {args.amount}")
    if checked.returncode != 0:
        problems.append("check_ledger: " + (checked.stdout + checked.stderr)[-500:])
    report["ok"] = not problems
    report["problems"] = problems
    print(json.dumps(report))
    return 0 if not problems else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="check", required=True)
    c = sub.add_parser("credit", help="a tight credit limit under load from every process")
    c.add_argument("--daphnes", type=int, default=3)
    c.add_argument("--count", type=int, default=2600)
    c.add_argument("--concurrency", type=int, default=60)
    c.add_argument("--amount", type=int, default=10)
    c.add_argument("--min-balance", type=int, default=-20000)
    c.add_argument("--usable", type=float, default=0.9)
    c.add_argument("--shared", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    if args.check == "credit":
        return credit(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
