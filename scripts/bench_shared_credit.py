"""Cost per packet of shared credit (``payments.ledger.shared``): CPU and added latency.

Runs, on the Redis of ``REDIS_URL`` (its own key prefix, removed afterwards) and without a
database, the Redis side of what a forwarded packet costs the process: the hold of both
sides (one group), then the end of the holds as the group commit sends it (``B`` balance
updates and ``R`` releases or ``K`` lease shrinks, one batch of ``--batch`` packets at a
time, queued on the event loop as the book does since the writer hands its results to the
loop). Four modes, ``--concurrency`` packets in flight:

* ``memory``  — the in-process holds (a dict and two integers under a lock);
* ``batched`` — one script call per event-loop iteration for every queued group
  (``ILP_CREDIT_LEASES=0``);
* ``leased``  — holds taken from the process's leases (no call), grown in the background;
* ``single``  — one script call per group (EVALSHA per packet).

Prints one line per mode: packets/s, process CPU per packet (µs, client side), the Redis
server's script time per packet (µs, from ``INFO commandstats``), the hold's latency
(p50/p99, µs) and the script calls made.
``python scripts/bench_shared_credit.py [--count 20000] [--concurrency 60]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


async def run(mode: str, url: str, count: int, concurrency: int, batch: int) -> str:
    from payments.ledger.shared import MirrorRow, SharedCredit, SharedHold

    prefix = f"bench:credit:{secrets.token_hex(4)}:"
    credit = SharedCredit(
        url,
        prefix=prefix,
        # Leases are used only within half the grace of Redis's last answer.
        grace_ms=500 if mode == "leased" else 0,
        keeper_s=0.5 if mode == "leased" else 0,
        batch=mode != "single",
        leases=mode == "leased",
        lease_ttl_ms=300_000,
    )
    credit.scope = "bench"
    lock = threading.Lock()
    held: dict[str, tuple[int, bool]] = {}
    if mode != "memory":
        credit.seed_sync([MirrorRow(1, "peer:a", 0, 1, -(10**15), None)])
        await credit.check_epoch()
        await asyncio.sleep(credit.grace_ms / 1000)  # a new epoch admits nothing before
        credit.seed_sync(
            [
                MirrorRow(1, "peer:a", 0, 1, -(10**15), None),
                MirrorRow(2, "peer:b", 0, 1, None, 10**15),
            ]
        )
    expires = int(time.time() * 1000) + 120_000
    latencies: list[float] = []
    done: list[tuple[str, str, Any]] = []
    version = [1]
    todo = iter(range(count))

    def flush() -> None:
        # The writer's results, on the loop: one commit per batch.
        taken = done[:]
        del done[:]
        if not taken:
            return
        version[0] += 1
        released: list[tuple[int, str]] = []
        consumed: dict[tuple[int, str], int] = {}
        for k_in, k_out, leases in taken:
            if leases is None:
                released += [(1, k_in), (2, k_out)]
                continue
            for lease in leases:
                credit.lease_end(lease, 10, True)
                key = (lease.account_id, lease.key)
                consumed[key] = consumed.get(key, 0) + 10
        credit.commit(
            [(1, -version[0], version[0]), (2, version[0], version[0])],
            released,
            [(pk, key, amount) for (pk, key), amount in consumed.items()],
        )

    async def worker() -> None:
        for i in todo:
            k_in, k_out = f"{i}:in", f"{i}:out"
            started = time.perf_counter()
            leases = None
            if mode == "memory":
                with lock:
                    held[k_in] = (10, False)
                    held[k_out] = (10, True)
            else:
                holds = [
                    SharedHold(1, "peer:a", 10, k_in, False, expires),
                    SharedHold(2, "peer:b", 10, k_out, True, expires),
                ]
                leases = credit.take_leased(holds)
                if leases is None:
                    await credit.hold(holds)
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0)  # the next hop
            if mode == "memory":
                with lock:
                    held.pop(k_in, None)
                    held.pop(k_out, None)
            else:
                done.append((k_in, k_out, leases))
                if len(done) >= batch:
                    flush()

    import redis

    client = redis.Redis.from_url(url)

    def server_us() -> float:
        stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
        return sum(
            float(stats.get(name, {}).get("usec", 0))
            for name in ("cmdstat_evalsha", "cmdstat_eval")
        )

    server = server_us()
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if mode != "memory":
        flush()
    await credit.aclose()  # the queued commits go
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    server = server_us() - server
    credit.close()
    if mode != "memory":
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
    client.close()
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1e6
    p99 = latencies[int(len(latencies) * 0.99)] * 1e6
    return (
        f"{mode:8s} c={concurrency:3d}: {count / wall:8.0f} packets/s, "
        f"CPU {cpu / count * 1e6:6.1f} us/packet, Redis {server / count:5.1f} us/packet, "
        f"hold p50 {p50:7.0f} us p99 {p99:7.0f} us"
        + (f", {credit.stats.calls} script calls" if mode != "memory" else "")
        + (
            f" ({credit.stats.lease_holds} from leases, {credit.stats.lease_misses} not)"
            if mode == "leased"
            else ""
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 60])
    parser.add_argument("--batch", type=int, default=32, help="packets per commit batch")
    parser.add_argument(
        "--modes", nargs="+", default=["memory", "batched", "leased", "batched", "leased"]
    )
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "interledger_site.settings")
    import django

    django.setup()
    url = os.environ.get("REDIS_URL", "")
    if not url:
        print("bench_shared_credit: needs REDIS_URL", file=sys.stderr)
        return 2
    for concurrency in args.concurrency:
        for mode in args.modes:
            count = args.count if concurrency > 1 else min(args.count, 5000)
            batch = min(args.batch, concurrency)
            print(asyncio.run(run(mode, url, count, concurrency, batch)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
