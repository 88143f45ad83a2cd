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
import signal
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


@dataclass
class Cluster:
    """A cluster of its own for one check: database, ports, run directory, environment."""

    db_url: str
    env: dict[str, str]
    run_dir: Path
    daphne_port: int
    nginx_port: int
    daphnes: int

    @property
    def ports(self) -> list[int]:
        return [self.daphne_port + i for i in range(self.daphnes)]

    def script(self, command: str) -> None:
        _run(["bash", str(ROOT / "scripts" / "cluster.sh"), command], self.env)

    def stop(self) -> None:
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "cluster.sh"), "stop"],
            env=self.env, cwd=ROOT, capture_output=True, timeout=300,
        )  # fmt: skip

    def manage(self, *argv: str) -> str:
        return _run([PY, "manage.py", *argv], self.env)

    def check_ledger(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PY, "manage.py", "check_ledger", "--differences-only"], env=self.env, cwd=ROOT,
            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def pid(self, name: str) -> int:
        return int((self.run_dir / "run" / f"{name}.pid").read_text().strip())


def _cluster(check: str, daphnes: int, extra_env: dict[str, str]) -> Cluster | None:
    """A fresh Postgres database ``<DATABASE_URL's name>_<check>``, a fresh ``ILP_ADDRESS``
    (its Redis keys are its own), free ports; None when the environment lacks Postgres or
    Redis."""
    database_url = os.environ.get("DATABASE_URL", "")
    redis_url = os.environ.get("REDIS_URL", "")
    if not database_url.startswith(("postgres://", "postgresql://")) or not redis_url:
        print(
            f"cluster_checks {check}: needs DATABASE_URL (PostgreSQL) and REDIS_URL",
            file=sys.stderr,
        )
        return None
    base, name = database_url.rstrip("/").rsplit("/", 1)
    db_name = f"{name.split('?')[0]}_{check}"
    db_url = f"{base}/{db_name}"
    _sql(f"{base}/postgres", f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
    run_dir = Path(tempfile.mkdtemp(prefix=f"cluster-{check}-"))
    daphne_port = _free_run(daphnes)
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
            "ILP_ADDRESS": f"test.{check}{secrets.token_hex(3)}",
            "CLUSTER_DAPHNES": str(daphnes),
            "CLUSTER_PORT": str(nginx_port),
            "CLUSTER_DAPHNE_PORT": str(daphne_port),
            "CLUSTER_DIR": str(run_dir / "run"),
            "LOG_LEVEL": "WARNING",
            **extra_env,
        }
    )
    return Cluster(db_url, env, run_dir, daphne_port, nginx_port, daphnes)


def _wait_applied(db_url: str, seconds: float) -> tuple[int, float]:
    """Wait until no receipt is unapplied: (the number left, seconds waited)."""
    started = time.monotonic()
    while True:
        (left,) = _sql(db_url, "SELECT count(*) FROM payments_receipt WHERE applied_at IS NULL")[0]
        waited = time.monotonic() - started
        if left == 0 or waited >= seconds:
            return int(left), waited
        time.sleep(0.2)


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000, 1)


def credit(args: argparse.Namespace) -> int:
    cluster = _cluster("credit", args.daphnes, {"ILP_SHARED_CREDIT": "1" if args.shared else "0"})
    if cluster is None:
        return 2
    db_url, nginx_port = cluster.db_url, cluster.nginx_port
    token = secrets.token_hex(16)
    try:
        cluster.script("start")
        _add_oer(cluster, token, args.min_balance)
        load = asyncio.run(_pay(cluster.ports, token, f"http://127.0.0.1:{nginx_port}/bob", args))
        # Every receipt applied (the worker's task), then the ledger's word.
        _wait_applied(db_url, 60)
        rows = _sql(db_url, "SELECT balance FROM payments_ledgeraccount WHERE code = 'peer:oer'")
        balance = int(rows[0][0])
        checked = cluster.check_ledger()
    finally:
        cluster.stop()
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
        "p50_ms": _quantile(lat, 0.5),
        "p99_ms": _quantile(lat, 0.99),
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


def _add_oer(cluster: Cluster, token: str, min_balance: int) -> None:
    """The ``http-sync`` child ``oer`` (rate limits out of the way) and the pointer ``bob``."""
    cluster.manage(
        "add_peer", "oer", "--relation", "child", "--link", "http-sync", "--token", token,
        "--min-balance", str(min_balance), "--max-in-flight", "100000",
        "--packets-per-second", "1000000", "--burst", "1000000", "--throughput", "none",
    )  # fmt: skip
    cluster.manage("add_pointer", "bob")


@dataclass
class KillLoad:
    attempts: int = 0
    # (payment id hex, amount, the port that fulfilled it, sent after the kill)
    fulfills: list[tuple[str, int, int, bool]] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)
    transport_errors: dict[int, int] = field(default_factory=dict)
    http_errors: dict[int, int] = field(default_factory=dict)
    retried: int = 0
    gave_up: int = 0
    latencies: dict[bool, list[float]] = field(default_factory=lambda: {False: [], True: []})
    seconds: dict[bool, float] = field(default_factory=lambda: {False: 0.0, True: 0.0})
    killed_at_fulfilled: int = 0

    def fulfilled(self, after: bool) -> int:
        return sum(1 for f in self.fulfills if f[3] is after)


class _Spsp:
    def __init__(self, destination: str, secret: bytes) -> None:
        self.destination = destination
        self.secret = secret


async def _spsp(client: Any, url: str) -> _Spsp:
    response = await client.get(url, headers={"Accept": "application/spsp+json"})
    response.raise_for_status()
    spsp = response.json()
    return _Spsp(str(spsp["destination_account"]), base64.b64decode(spsp["shared_secret"]))


async def _pay_retrying(
    client: Any,
    ports: list[int],
    turn: int,
    token: str,
    spsp: _Spsp,
    args: argparse.Namespace,
    result: KillLoad,
    after: Any,
) -> None:
    """One payment as a client with several endpoints makes it: round robin from ``turn``;
    an endpoint that does not answer (refused, reset, cut mid-reply) gets the payment again
    on the next endpoint with a new Prepare (a new payment id: the sender cannot know
    whether the lost one was fulfilled)."""
    import httpx

    from ilp.conditions import fulfillment_matches
    from ilp.oer import UINT64_MAX
    from ilp.packet import Fulfill, decode_reply, encode_prepare
    from ilp.psk2_sender import build_chunk

    started = time.perf_counter()
    for attempt in range(args.attempts):
        port = ports[(turn + attempt) % len(ports)]
        payment_id = secrets.token_bytes(16)
        prepare = build_chunk(
            spsp.secret,
            spsp.destination,
            payment_id=payment_id,
            sequence=0,
            payment_amount=UINT64_MAX,
            chunk_amount=0,
            source_amount=args.amount,
            expires_at=datetime.now(UTC) + timedelta(seconds=30),
            iv=os.urandom(12),
            last=True,
        )
        result.attempts += 1
        if attempt:
            result.retried += 1
        # Which side of the kill: when the Prepare left. A reply the victim wrote just
        # before it died may still be read after the kill.
        sent_after = after()
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
            result.transport_errors[port] = result.transport_errors.get(port, 0) + 1
            continue
        if reply.status_code != 200:
            result.http_errors[reply.status_code] = result.http_errors.get(reply.status_code, 0) + 1
            continue
        packet = decode_reply(reply.content)
        if isinstance(packet, Fulfill):
            if not fulfillment_matches(packet.fulfillment, prepare.execution_condition):
                raise SystemExit("a Fulfill whose fulfillment does not match")
            result.fulfills.append((payment_id.hex(), args.amount, port, sent_after))
            result.latencies[sent_after].append(time.perf_counter() - started)
        else:
            result.rejected[packet.code] = result.rejected.get(packet.code, 0) + 1
        return
    result.gave_up += 1


async def _kill_load(
    cluster: Cluster, token: str, victim: int, args: argparse.Namespace
) -> KillLoad:
    import httpx

    result = KillLoad()
    killed: float | None = None
    stop = asyncio.Event()
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        spsp = await _spsp(client, f"http://127.0.0.1:{cluster.nginx_port}/bob")
        turn = 0

        async def worker() -> None:
            nonlocal turn
            while not stop.is_set():
                turn += 1
                await _pay_retrying(
                    client, cluster.ports, turn, token, spsp, args, result,
                    lambda: killed is not None,
                )  # fmt: skip

        async def controller() -> None:
            nonlocal killed
            started = time.perf_counter()
            deadline = started + args.max_seconds
            try:
                while len(result.fulfills) < args.kill_after:
                    if time.perf_counter() > deadline:
                        return
                    await asyncio.sleep(0.01)
                # Mid-load: every worker has a payment in flight, some on the victim.
                os.kill(victim, signal.SIGKILL)
                # "After the kill" starts once it is dead (gone or a zombie), not when the
                # signal was sent.
                while _alive(victim):
                    await asyncio.sleep(0.001)
                killed = time.perf_counter()
                result.killed_at_fulfilled = len(result.fulfills)
                result.seconds[False] = killed - started
                while result.fulfilled(True) < args.after_kill:
                    if time.perf_counter() > deadline:
                        return
                    await asyncio.sleep(0.01)
            finally:
                if killed is not None:
                    result.seconds[True] = time.perf_counter() - killed
                stop.set()

        await asyncio.gather(controller(), *(worker() for _ in range(args.concurrency)))
    return result


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill(args: argparse.Namespace) -> int:
    cluster = _cluster("kill", args.daphnes, {})
    if cluster is None:
        return 2
    db_url = cluster.db_url
    token = secrets.token_hex(16)
    victim_name = f"daphne-{args.victim}"
    victim_port = cluster.daphne_port + args.victim - 1
    problems: list[str] = []
    report: dict[str, Any] = {"check": "kill", "daphnes": args.daphnes, "killed": victim_name}
    try:
        cluster.script("start")
        _add_oer(cluster, token, args.min_balance)
        victim = cluster.pid(victim_name)
        load = asyncio.run(_kill_load(cluster, token, victim, args))
        if load.killed_at_fulfilled == 0:
            raise SystemExit(f"the load never reached {args.kill_after} Fulfills: {load}")
        if _alive(victim):
            problems.append(f"{victim_name} ({victim}) is still alive after kill -9")
        (unapplied_at_end,) = _sql(
            db_url, "SELECT count(*) FROM payments_receipt WHERE applied_at IS NULL"
        )[0]
        # The killed process's committed receipts: the survivors' recovery sweep (receipts
        # older than 10 s, every 5 s) or the worker's task applies them, with no new payment.
        left, waited = _wait_applied(db_url, args.recovery_seconds)
        if left:
            problems.append(f"{left} receipts still unapplied {waited:.0f} s after the load")
        survivors = [p for p in cluster.ports if p != victim_port]
        after_by_port = {
            p: sum(1 for f in load.fulfills if f[3] and f[2] == p) for p in cluster.ports
        }
        if after_by_port[victim_port]:
            problems.append(
                f"{after_by_port[victim_port]} Fulfills from the killed port for Prepares "
                "sent after the kill"
            )
        for port in survivors:
            if after_by_port[port] == 0:
                problems.append(f"the survivor on :{port} fulfilled nothing after the kill")
        problems += _exactly_once(db_url, [(f[0], f[1]) for f in load.fulfills])
        unseen = _receipts_unseen(db_url, {f[0] for f in load.fulfills})
        checked = cluster.check_ledger()
        if checked.returncode != 0:
            problems.append("check_ledger: " + (checked.stdout + checked.stderr)[-500:])

        # The killed Daphne back (as a supervisor would), and one payment through it.
        cluster.script("revive")
        again = asyncio.run(_one_payment(cluster, token, victim_port, args))
        if again is None:
            problems.append(f"the revived {victim_name} did not fulfil a payment")
        else:
            left_again, _ = _wait_applied(db_url, 30)
            if left_again:
                problems.append("the revived Daphne's receipt was not applied")
            problems += _exactly_once(db_url, [(again, args.amount)])
        checked_again = cluster.check_ledger()
        if checked_again.returncode != 0:
            problems.append("check_ledger after the revival: " + checked_again.stdout[-500:])
    finally:
        cluster.stop()
    before, after = load.fulfilled(False), load.fulfilled(True)
    report.update(
        {
            "fulfilled_before_kill": before,
            "fulfilled_after_kill": after,
            "after_kill_by_daphne": {
                f"daphne-{i + 1}": after_by_port[p] for i, p in enumerate(cluster.ports)
            },
            "payments_per_s_before": round(before / load.seconds[False], 1)
            if load.seconds[False]
            else None,
            "payments_per_s_after": round(after / load.seconds[True], 1)
            if load.seconds[True]
            else None,
            "p50_ms_before": _quantile(load.latencies[False], 0.5),
            "p99_ms_before": _quantile(load.latencies[False], 0.99),
            "p50_ms_after": _quantile(load.latencies[True], 0.5),
            "p99_ms_after": _quantile(load.latencies[True], 0.99),
            "rejected": load.rejected,
            "transport_errors": {str(p): n for p, n in load.transport_errors.items()},
            "http_errors": {str(c): n for c, n in load.http_errors.items()},
            "retried": load.retried,
            "gave_up": load.gave_up,
            "receipts_unseen_by_sender": unseen,
            "unapplied_at_end_of_load": int(unapplied_at_end),
            "unapplied_after_recovery": left,
            "recovery_s": round(waited, 1),
            "revived_payment": again is not None,
            "check_ledger": checked.returncode,
        }
    )
    if after == 0:
        problems.append("nothing was fulfilled after the kill")
    if load.gave_up:
        problems.append(f"{load.gave_up} payments found no Daphne in {args.attempts} attempts")
    report["ok"] = not problems
    report["problems"] = problems
    print(json.dumps(report))
    return 0 if not problems else 1


def _exactly_once(db_url: str, fulfills: list[tuple[str, int]]) -> list[str]:
    """Every Fulfill the sender holds is one receipt of ``receiver:bob`` for its amount, with
    one posting on the peer (the packet's key), and applied; the receiver's postings
    (``receipts:<first receipt id>``, one per apply) sum to its applied receipts, each key
    naming one of its receipts; the accounts' balances are the receipts' sum."""
    receipts: dict[str, list[tuple[str, int, bool]]] = {}
    receipt_ids: set[int] = set()
    applied_total = 0
    for rid, payment_id, key, amount, applied in _sql(
        db_url,
        "SELECT r.id, r.payment_id, r.key, r.amount, r.applied_at IS NOT NULL "
        "FROM payments_receipt r "
        "JOIN payments_ledgeraccount a ON a.id = r.account_id WHERE a.code = 'receiver:bob'",
    ):
        receipts.setdefault(payment_id, []).append((key, int(amount), bool(applied)))
        receipt_ids.add(int(rid))
        applied_total += int(amount) if applied else 0
    postings: dict[str, list[tuple[str, int]]] = {}
    for key, code, amount in _sql(
        db_url,
        "SELECT p.key, a.code, p.amount FROM payments_posting p "
        "JOIN payments_ledgeraccount a ON a.id = p.account_id "
        "WHERE a.code IN ('peer:oer', 'receiver:bob')",
    ):
        postings.setdefault(key, []).append((code, int(amount)))
    problems: list[str] = []
    wrong = 0
    for payment_id, amount in fulfills:
        rows = receipts.get(payment_id, [])
        if len(rows) != 1 or rows[0][1] != amount or not rows[0][2]:
            wrong += 1
            continue
        key = rows[0][0]
        # The peer's posting has the packet's key; the receipt's is that key under a prefix
        # saying where its payment id came from ("psk2:<packet key>", receivers.addresses).
        peer = [postings.get(k) for k in {key, key.partition(":")[2]} if k in postings]
        if peer != [[("peer:oer", -amount)]]:
            wrong += 1
    receiver = [
        (key, rows)
        for key, rows in postings.items()
        if any(code == "receiver:bob" for code, _amount in rows)
    ]
    posted = sum(amount for _key, rows in receiver for _code, amount in rows)
    strays = [
        key
        for key, rows in receiver
        if rows != [("receiver:bob", rows[0][1])]
        or not key.startswith("receipts:")
        or not key.partition(":")[2].isdigit()
        or int(key.partition(":")[2]) not in receipt_ids
    ]
    if strays or posted != applied_total:
        problems.append(
            f"the receiver's postings ({posted}; not a receipts' sum: {strays[:5]}) "
            f"are not its applied receipts' sum {applied_total}"
        )
    if wrong:
        problems.append(f"{wrong} of {len(fulfills)} Fulfills are not exactly one posting each")
    total = sum(r[1] for rows in receipts.values() for r in rows)
    balances = dict(
        _sql(
            db_url,
            "SELECT code, balance FROM payments_ledgeraccount "
            "WHERE code IN ('peer:oer', 'receiver:bob')",
        )
    )
    if int(balances.get("peer:oer", 0)) != -total or int(balances.get("receiver:bob", 0)) != total:
        problems.append(f"balances {balances} are not -/+ the receipts' sum {total}")
    return problems


def _receipts_unseen(db_url: str, seen: set[str]) -> int:
    """Receipts the sender never saw a Fulfill for: committed by the killed Daphne, whose
    reply died with it (the sender paid again with a new payment: the receiver has both)."""
    rows = _sql(
        db_url,
        "SELECT r.payment_id FROM payments_receipt r "
        "JOIN payments_ledgeraccount a ON a.id = r.account_id WHERE a.code = 'receiver:bob'",
    )
    return sum(1 for (payment_id,) in rows if payment_id not in seen)


async def _one_payment(
    cluster: Cluster, token: str, port: int, args: argparse.Namespace
) -> str | None:
    """One payment through ``port`` only: its payment id when fulfilled."""
    import httpx

    result = KillLoad()
    async with httpx.AsyncClient(timeout=30) as client:
        spsp = await _spsp(client, f"http://127.0.0.1:{port}/bob")
        single = argparse.Namespace(**{**vars(args), "attempts": 1})
        await _pay_retrying(client, [port], 0, token, spsp, single, result, lambda: True)
    return result.fulfills[0][0] if result.fulfills else None


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
    k = sub.add_parser(
        "kill", help="kill -9 one Daphne mid-load: the others carry on, nothing is lost"
    )
    k.add_argument("--daphnes", type=int, default=3)
    k.add_argument("--victim", type=int, default=2, help="which Daphne is killed (1-based)")
    k.add_argument("--concurrency", type=int, default=30)
    k.add_argument("--amount", type=int, default=10)
    k.add_argument("--min-balance", type=int, default=-(10**15))
    k.add_argument("--kill-after", type=int, default=500, help="Fulfills before the kill")
    k.add_argument("--after-kill", type=int, default=500, help="Fulfills after the kill")
    k.add_argument("--attempts", type=int, default=5, help="endpoints tried per payment")
    k.add_argument("--max-seconds", type=float, default=180)
    k.add_argument("--recovery-seconds", type=float, default=60)
    args = parser.parse_args(argv)
    if args.check == "credit":
        return credit(args)
    if args.check == "kill":
        return kill(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
