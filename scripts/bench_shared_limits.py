"""Cost per packet of the shared limiter (Redis) against the in-memory one, same run.

    .venv/bin/python scripts/bench_shared_limits.py redis://127.0.0.1:56379/4 [packets] [in_flight]

Each of ``in_flight`` workers loops: admit a Prepare of peer ``kid`` (``admit_prepare``),
yield to the loop once (the switch's work), release its slot. Reports this process's CPU
time per packet (``os.times``), Redis's CPU per packet (``INFO cpu``), wall time and the
script calls per packet, for both limiters on the same loop, in three shapes:

* ``flat out``: limits far above the load (10^9/s), as fast as the loop goes;
* ``throughput``: the same with a throughput limit too (the amount is leased as well);
* ``paced``: the node's default limits (10,000/s, burst 20,000, 1,000 in flight) at
  2,500 packets/s, about the node's own rate in ``make bench`` (leases of ~250 tokens);
* ``batched``: the node's default limits, the replies coming in groups as the ledger's
  group commit sends them (every 8 ms, all the packets in flight at once, ~6,000/s), each
  answered packet followed by the sender's next within 4 ms: the in-flight count swings
  from all to none and back, as in ``make bench``.

Run it with ``PYTHONPATH`` at another checkout to measure that one's limiter (A/B).
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from links.limits import EdgeLimiter, PeerLimits, SharedLimiter, Slot

FLAT = PeerLimits(packets_per_second=10**9, burst=10**9, max_in_flight=10**6)
SHAPES: dict[str, tuple[PeerLimits, float]] = {  # limits, packets/s (0: flat out)
    "flat out": (FLAT, 0.0),
    "throughput": (
        PeerLimits(
            packets_per_second=10**9,
            burst=10**9,
            max_in_flight=10**6,
            throughput_per_second=10**12,
        ),
        0.0,
    ),
    "paced": (PeerLimits(), 2_500.0),
    "batched": (PeerLimits(), -2_500.0),  # negative: replies every COMMIT_S
}
COMMIT_S = 0.008
SENDER_S = 0.004  # from a reply to the sender's next Prepare: up to the link's round trip


async def run(
    limiter: EdgeLimiter | SharedLimiter,
    packets: int,
    in_flight: int,
    rules: PeerLimits = FLAT,
    rate: float = 0.0,
) -> int:
    expiry = datetime.now(UTC) + timedelta(seconds=30)
    per_worker = packets // in_flight
    refused = 0
    gap = in_flight / abs(rate) if rate else 0.0
    commits: list[asyncio.Future[None]] = [asyncio.get_running_loop().create_future()]

    async def committer() -> None:
        while True:
            await asyncio.sleep(COMMIT_S)
            done, commits[0] = commits[0], asyncio.get_running_loop().create_future()
            done.set_result(None)

    async def worker() -> None:
        nonlocal refused
        for _ in range(per_worker):
            slot = await limiter.admit_prepare("kid", rules, 10, expiry)
            if rate < 0:  # the reply comes with the next group commit, then a new payment
                await commits[0]
                await asyncio.sleep(SENDER_S * random.random())
            else:
                await asyncio.sleep(gap)
            if isinstance(slot, Slot):
                limiter.release_slot(slot)
            else:
                refused += 1

    ticking = asyncio.get_running_loop().create_task(committer())
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    ticking.cancel()
    return refused


async def replay_round(
    url: str, prefix: str, client: redis.Redis, packets: int, in_flight: int
) -> None:
    """BTP/2.0-I's shared memory on the same loop: a claim and a reply per request."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "interledger_site.settings")
    django.setup()
    from links.idempotency import SharedReplay

    store = SharedReplay(url, prefix)
    digest = bytes(32)
    reply = bytes(60)
    seq = iter(range(10**9))

    async def worker(n: int) -> None:
        for _ in range(n):
            rid = next(seq)
            await store.claim("kid", rid, digest, 10**9, 30_000)
            await asyncio.sleep(0)
            await store.complete("kid", rid, digest, reply, 120_000)

    await asyncio.gather(*(worker(10) for _ in range(in_flight)))
    calls0 = store.calls
    r0 = redis_cpu(client)
    t0 = os.times()
    w0 = time.perf_counter()
    await asyncio.gather(*(worker(packets // in_flight) for _ in range(in_flight)))
    wall = time.perf_counter() - w0
    t1 = os.times()
    cpu = (t1.user - t0.user) + (t1.system - t0.system)
    rcpu = redis_cpu(client) - r0
    calls = store.calls - calls0
    print(
        f"BTP/2.0-I shared replay  : {cpu / packets * 1e6:6.1f} us CPU/request here, "
        f"{rcpu / packets * 1e6:5.1f} us in Redis, {packets / wall:8.0f} requests/s, "
        f"{calls} calls ({packets / calls:.1f} requests per call)"
    )
    await store.aclose()


def redis_cpu(client: redis.Redis) -> float:
    info: dict[str, Any] = client.info("cpu")  # type: ignore[assignment]
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def main() -> None:
    url = sys.argv[1]
    packets = int(sys.argv[2]) if len(sys.argv) > 2 else 60_000
    in_flight = int(sys.argv[3]) if len(sys.argv) > 3 else 60
    client = redis.Redis.from_url(url)
    prefix = f"ilp:bench:limits:{uuid.uuid4().hex}:"
    for round_ in range(2):
        for shape, (rules, rate) in SHAPES.items():
            n = packets if not rate else min(packets, int(abs(rate) * 4))
            for name, limiter in (
                ("in-memory", EdgeLimiter()),
                ("shared (Redis)", SharedLimiter(url, prefix)),
            ):
                if isinstance(limiter, SharedLimiter):
                    await run(limiter, in_flight * 10, in_flight, rules)  # connect, the script
                    calls0 = limiter.stats.calls
                r0 = redis_cpu(client)
                t0 = os.times()
                w0 = time.perf_counter()
                refused = await run(limiter, n, in_flight, rules, rate)
                wall = time.perf_counter() - w0
                t1 = os.times()
                user, system = t1.user - t0.user, t1.system - t0.system
                cpu = user + system
                rcpu = redis_cpu(client) - r0
                extra = ""
                if isinstance(limiter, SharedLimiter):
                    calls = limiter.stats.calls - calls0
                    extra = f", {calls} calls ({n / max(1, calls):.1f} packets per call)"
                    await limiter.aclose()
                    keys = list(client.scan_iter(match=f"{prefix}*"))
                    if keys:
                        client.delete(*keys)
                print(
                    f"round {round_ + 1} {shape:10s} {name:15s}: "
                    f"{cpu / n * 1e6:6.1f} us CPU/packet here "
                    f"({user / n * 1e6:.1f} user, {system / n * 1e6:.1f} sys), "
                    f"{rcpu / n * 1e6:5.1f} us in Redis, {n / wall:8.0f} packets/s, "
                    f"{refused} refused{extra}",
                    flush=True,
                )
    await replay_round(url, prefix, client, packets, in_flight)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)


if __name__ == "__main__":
    asyncio.run(main())
