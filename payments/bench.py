"""Micro-benchmark of the group-commit writer: ``python -m payments.bench``.

N concurrent waiters (default 50) each loop ``hold`` + ``await book.commit(...)`` with fresh
keys, like the packet switch does for every fulfilled packet, for a few seconds, on the
configured database engine. Prints commits/s, batch sizes and commit latency.

By default it runs in a scratch database of the configured engine (a temporary SQLite file
in WAL mode, or a temporary Postgres database), so the real ledger is left alone;
``--in-place`` writes balanced ``bench:*`` postings into the configured database instead.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m payments.bench", description=__doc__)
    parser.add_argument("--waiters", type=int, default=50, help="concurrent committers")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured duration")
    parser.add_argument(
        "--mode",
        choices=("forward", "receive"),
        default="forward",
        help="forward: two postings per commit (source and destination peers); "
        "receive: source posting + PSK2 receipt (the receiver's hot path), with "
        "payments.apply_receipts run eagerly after each batch (as in the embedded mode)",
    )
    parser.add_argument("--in-place", action="store_true", help="use the configured database")
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    from payments.ledger import PostingDraft, ReceiptDraft, get_book

    book = get_book()
    await book.load_account("bench:a")
    run_id = os.urandom(4).hex()
    latencies: list[float] = []
    stop_at = 0.0
    counter = 0

    def drafts(key: str) -> tuple[list[PostingDraft], list[ReceiptDraft]]:
        if args.mode == "forward":
            return [PostingDraft("bench:a", -1, key), PostingDraft("bench:b", 1, key + ":d")], []
        return [PostingDraft("bench:a", -1, key)], [
            ReceiptDraft("bench:r", run_id.encode() * 4, 0, 1, key)
        ]

    async def worker(w: int, measure: bool) -> int:
        nonlocal counter
        done = 0
        while time.perf_counter() < stop_at:
            counter += 1
            key = f"bench:{run_id}:{w}:{counter}"
            book.hold("bench:a", 1, key)
            started = time.perf_counter()
            postings, receipts = drafts(key)
            await book.commit(postings, receipts)
            if measure:
                latencies.append(time.perf_counter() - started)
            done += 1
        return done

    stop_at = time.perf_counter() + 1.0  # warm-up
    await asyncio.gather(*(worker(w, False) for w in range(args.waiters)))
    stats0 = (book.stats.batches, book.stats.commits, book.stats.transactions)
    started = time.perf_counter()
    stop_at = started + args.seconds
    done = sum(await asyncio.gather(*(worker(w, True) for w in range(args.waiters))))
    elapsed = time.perf_counter() - started
    batches = book.stats.batches - stats0[0]
    transactions = book.stats.transactions - stats0[2]
    latencies.sort()
    return {
        "commits": done,
        "seconds": elapsed,
        "commits_per_s": done / elapsed,
        "transactions": transactions,
        "avg_batch": done / max(transactions, 1),
        "batches": batches,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
    }


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "interledger_site.settings")
    import django

    django.setup()
    logging.getLogger("celery").setLevel(logging.WARNING)
    logging.getLogger("kombu").setLevel(logging.ERROR)
    from django.db import connection

    from payments.ledger import ensure_account, reset_book

    vendor = connection.vendor
    old_name = connection.settings_dict["NAME"]
    scratch_dir: tempfile.TemporaryDirectory[str] | None = None
    if not args.in_place:
        # Keep everything inside the scratch database: apply_receipts runs in-process (in
        # the writer thread, as in the embedded mode) instead of going to a real broker.
        from interledger_site.celery import app as celery_app

        celery_app.conf.task_always_eager = True
        test = connection.settings_dict.setdefault("TEST", {})
        if vendor == "sqlite":
            scratch_dir = tempfile.TemporaryDirectory(prefix="payments-bench-")
            test["NAME"] = str(Path(scratch_dir.name) / "bench.sqlite3")
        else:
            test["NAME"] = f"ilp_bench_{os.getpid()}"
        connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        ensure_account("bench:a", kind="node")
        ensure_account("bench:b", kind="node")
        ensure_account("bench:r", kind="node")
        result = asyncio.run(_run(args))
    finally:
        reset_book()
        if not args.in_place:
            connection.creation.destroy_test_db(old_name, verbosity=0)
            if scratch_dir is not None:
                scratch_dir.cleanup()
    print(
        f"payments.bench: {vendor}, mode={args.mode}, {args.waiters} waiters: "
        f"{result['commits_per_s']:.0f} commits/s ({result['commits']} in "
        f"{result['seconds']:.1f} s), {result['transactions']} transactions, "
        f"avg {result['avg_batch']:.1f} commits/transaction, "
        f"latency p50 {result['p50_ms']:.1f} ms p99 {result['p99_ms']:.1f} ms"
    )


if __name__ == "__main__":
    main()
