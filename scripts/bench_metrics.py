"""Per-packet cost of the metrics hooks on the packet path (interledger_site.metrics).

    .venv/bin/python scripts/bench_metrics.py                       # one process
    PROMETHEUS_MULTIPROC_DIR=$(mktemp -d) .venv/bin/python scripts/bench_metrics.py

A forwarded packet makes three calls (prepare_started, packet_forwarded, packet_handled);
``BURST`` packets run per loop iteration (1: an idle node, one flush per packet), and the
flush is timed with them. Compared with the same series written directly (what the hooks
would cost without batching).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "interledger_site.settings")

import django

django.setup()

from ilp.packet import Fulfill, Reject  # noqa: E402
from interledger_site import metrics  # noqa: E402

PACKETS = 200_000
FULFILL = Fulfill(bytes(32), b"")
REJECT = Reject("T04", "test.x", "", b"")
NAMES = ("alice", "bob", "carol", "dave")
PEERS = tuple(SimpleNamespace(name=n, asset_code="USD", asset_scale=9) for n in NAMES)


def hooks(i: int) -> None:
    source, target = PEERS[i & 3], PEERS[(i + 1) & 3]
    reply = FULFILL if i % 10 else REJECT
    metrics.prepare_started()
    metrics.packet_forwarded(target, 990, reply is FULFILL)
    metrics.packet_handled(source, 1000, reply)


def direct(i: int) -> None:
    source, target = NAMES[i & 3], NAMES[(i + 1) & 3]
    fulfilled = i % 10 != 0
    metrics.IN_FLIGHT.inc()
    metrics.FORWARDED.labels(target, "fulfilled" if fulfilled else "rejected").inc()
    if fulfilled:
        metrics.FORWARDED_AMOUNT.labels(target, "USD", "9").inc(990)
        metrics.FULFILLED_AMOUNT.labels(source, "USD", "9").inc(1000)
    code = "" if fulfilled else "T04"
    metrics.PACKETS.labels(source, "fulfilled" if fulfilled else "rejected", code).inc()
    metrics.IN_FLIGHT.dec()


async def run(fn: object, burst: int) -> float:
    call = fn  # type: ignore[assignment]
    started = time.thread_time_ns()
    i = 0
    while i < PACKETS:
        for _ in range(burst):
            call(i)  # type: ignore[operator]
            i += 1
        await asyncio.sleep(0)  # one loop iteration: the scheduled flush runs
    metrics.flush()
    return (time.thread_time_ns() - started) / PACKETS


async def switch_ab(rounds: int = 7, packets: int = 20_000, in_flight: int = 50) -> None:
    """The real switch forwarding to a link that fulfils at once (the tests' in-memory book
    and link), with the edge's calls around each Prepare: CPU per packet with the hooks
    and with them replaced by no-ops, interleaved rounds."""
    from unittest import mock

    from links import switch as switch_module
    from tests.links.test_switch_support import make_rig, peer
    from tests.links.test_switch_support import prepare as make_prepare

    alice, carl = peer("alice"), peer("carl")

    async def one_round() -> float:
        rig = make_rig([alice, carl])
        rig.link("carl")
        started = time.thread_time_ns()
        for base in range(0, packets, in_flight):

            async def one(i: int) -> None:
                metrics.prepare_started()
                reply = await rig.switch.handle_prepare(
                    alice, make_prepare("test.conn.carl", data=i.to_bytes(8, "big"))
                )
                metrics.packet_handled(alice, 100, reply)

            await asyncio.gather(*(one(base + k) for k in range(in_flight)))
        metrics.flush()
        return (time.thread_time_ns() - started) / packets

    class Off:
        def __getattr__(self, name: str) -> object:
            return lambda *a, **k: None

    on: list[float] = []
    off: list[float] = []
    for _ in range(rounds):
        on.append(await one_round())
        with (
            mock.patch.object(switch_module, "metrics", Off()),
            mock.patch.object(sys.modules[__name__], "metrics", Off()),
        ):
            off.append(await one_round())
    best_on, best_off = min(on), min(off)
    print(
        f"switch, {in_flight} in flight: {best_off / 1000:.1f} µs/packet without the hooks, "
        f"{best_on / 1000:.1f} µs with them ({best_on - best_off:+.0f} ns, "
        f"{(best_on - best_off) / best_off:+.1%}); best of {rounds} interleaved rounds"
    )


async def main() -> None:
    mode = "multi-process" if metrics.multiproc_dir() else "one process"
    empty = await run(lambda i: None, 1)
    print(f"{mode}; loop overhead per packet at burst 1: {empty:.0f} ns (subtracted)")
    for burst in (1, 10, 100):
        base = await run(lambda i: None, burst)
        batched = await run(hooks, burst) - base
        print(f"burst {burst:>3}: batched hooks {batched:6.0f} ns/packet")
    base = await run(lambda i: None, 100)
    print(
        f"direct series writes (labels cached by prometheus_client): "
        f"{await run(direct, 100) - base:6.0f} ns/packet"
    )
    await switch_ab()


asyncio.run(main())
