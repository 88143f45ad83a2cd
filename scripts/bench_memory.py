"""What grows in a Daphne over a long PSK2 load: RSS, gc object counts by type, tracemalloc.

``python scripts/bench_memory.py --shape embedded|postgres --chunks 10 --n 10000``: one Daphne
(started here, under this script as ``--serve``: Daphne's own CLI with a tracer thread in the
process), a fresh ledger (SQLite, or a private Postgres + Redis and a Celery worker:
``scripts/services.sh`` with ``--svc-dir``/ports of its own), the peer ``alice`` (limited: its
holds take the shared-credit path with Redis) and the pointer ``bob``; then ``--chunks`` loads of
``--n`` payments (``scripts/bench-cluster-load.js``, the interop harness's PSK2 load, C=50, one
BTP link). After each chunk the tracer writes, to ``<out>/mem-<k>.json``: RSS, the gc object
count of every type, and with ``--trace`` the tracemalloc growth by line since the first chunk.
Prints per chunk RSS and the types (and lines) that grew most since the first chunk. Run it under
``flock /tmp/interop.lock`` (fixed port).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")
if not os.path.exists(PY):
    PY = sys.executable
HARNESS = ROOT / ".interop" / "harness"


# --- inside the Daphne --------------------------------------------------------------------------


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _dump(path: Path, baseline: list[Any], k: int) -> None:
    import tracemalloc

    gc.collect()
    counts = Counter(type(o).__qualname__ for o in gc.get_objects())
    report: dict[str, Any] = {"rss_mb": _rss_mb(), "types": dict(counts.most_common(400))}
    if tracemalloc.is_tracing():
        snap = tracemalloc.take_snapshot().filter_traces(
            [
                tracemalloc.Filter(False, tracemalloc.__file__),
                tracemalloc.Filter(False, "*linecache.py"),
            ]
        )
        # The baseline is after the first chunk: imports and caches filling are not growth.
        if k <= 1:
            baseline[:] = [snap]
        top = snap.compare_to(baseline[0], "traceback")[:25]
        report["traced_mb"] = tracemalloc.get_traced_memory()[0] / 2**20
        report["growth"] = [
            {"kb": s.size_diff / 1024, "count": s.count_diff, "where": s.traceback.format()[-12:]}
            for s in top
        ]
    path.write_text(json.dumps(report))


def serve(argv: list[str]) -> int:
    """Daphne's CLI, with a thread that dumps when ``ILP_MEMDUMP_DIR/want-<k>`` appears."""
    import tracemalloc

    if os.environ.get("ILP_MEMTRACE") == "1":
        tracemalloc.start(int(os.environ.get("ILP_MEMTRACE_DEPTH", "1")))
    where = Path(os.environ["ILP_MEMDUMP_DIR"])
    baseline: list[Any] = []

    def watch() -> None:
        k = 0
        while True:
            want = where / f"want-{k}"
            if want.exists():
                _dump(where / f"mem-{k}.json", baseline, k)
                want.unlink()
                k += 1
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True, name="memdump").start()
    from interledger_site.serve import main as run_daphne  # on the node's loop, as in production

    run_daphne(argv)
    return 0


# --- the driver ---------------------------------------------------------------------------------


def _run(cmd: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}... failed:\n{done.stderr[-3000:]}")
    return done.stdout


def _ask(out: Path, k: int, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    (out / f"want-{k}").touch()
    deadline = time.monotonic() + 300
    while (out / f"want-{k}").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the Daphne did not dump")
        time.sleep(0.2)
    result: dict[str, Any] = json.loads((out / f"mem-{k}.json").read_text())
    return result


def drive(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ILP_", "DJANGO_", "DATABASE_", "REDIS_", "PROMETHEUS_"))
    }
    env = {
        **base,
        "ILP_ADDRESS": "test.sut",
        "ILP_ASSET_CODE": "XRP",
        "ILP_ASSET_SCALE": "9",
        "DJANGO_DEBUG": "0",
        "LOG_LEVEL": "WARNING",
        "ILP_VAR_DIR": str(out / "var"),
        "ILP_MEMDUMP_DIR": str(out),
        "ILP_MEMTRACE": "1" if args.trace else "0",
    }
    svc_env = {
        **base,
        "SVC_DIR": args.svc_dir,
        "PG_PORT": str(args.pg_port),
        "REDIS_PORT": str(args.redis_port),
    }
    procs: list[subprocess.Popen[bytes]] = []
    if args.shape == "postgres":
        _run(["bash", "scripts/services.sh", "start"], svc_env)
        pg = f"postgres://postgres@127.0.0.1:{args.pg_port}"
        _run(
            [
                "psql",
                f"{pg}/postgres",
                "-qc",
                "DROP DATABASE IF EXISTS ilp_mem WITH (FORCE)",
                "-c",
                "CREATE DATABASE ilp_mem",
            ],
            svc_env,
        )
        _run(["redis-cli", "-p", str(args.redis_port), "flushall"], svc_env)
        env["DATABASE_URL"] = f"{pg}/ilp_mem"
        env["REDIS_URL"] = f"redis://127.0.0.1:{args.redis_port}/0"
    else:
        (out / "var").mkdir(parents=True, exist_ok=True)
        db = out / "var" / "mem.sqlite3"
        for p in out.glob("var/mem.sqlite3*"):
            p.unlink()
        env["DATABASE_URL"] = f"sqlite:///{db}"
    rows = []
    try:
        _run([PY, "manage.py", "migrate", "--noinput", "-v0"], env)
        _run(
            [
                PY,
                "manage.py",
                "add_peer",
                "alice",
                "--relation",
                "child",
                "--link",
                "btp-server",
                "--token",
                "alicetoken",
                "--min-balance",
                "-1000000000000000",
            ],
            env,
        )
        _run([PY, "manage.py", "add_pointer", "bob"], env)
        if args.shape == "postgres":
            procs.append(
                subprocess.Popen(
                    [
                        str(ROOT / ".venv/bin/celery"),
                        "-A",
                        "interledger_site",
                        "worker",
                        "-l",
                        "warning",
                        "--concurrency",
                        "2",
                    ],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        daphne = subprocess.Popen(
            [
                PY,
                str(Path(__file__).resolve()),
                "--serve",
                "-b",
                "127.0.0.1",
                "-p",
                str(args.port),
                "interledger_site.asgi:application",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(out / "daphne.log").open("w"),
        )
        procs.append(daphne)
        for _ in range(150):
            if (
                subprocess.run(
                    ["curl", "-fs", "-o", "/dev/null", f"http://127.0.0.1:{args.port}/"],
                    check=False,
                ).returncode
                == 0
            ):
                break
            time.sleep(0.2)
        first = _ask(out, 0, daphne)
        rows.append((0, 0.0, first["rss_mb"], first.get("traced_mb")))
        print(f"chunk 0: RSS {first['rss_mb']:.1f} MB", file=sys.stderr)
        load_env = {
            **base,
            "HARNESS_DIR": str(HARNESS),
            "SUT_BTP_URL": f"btp+ws://alice:alicetoken@127.0.0.1:{args.port}/btp",
            "SUT_SPSP_URL": f"http://127.0.0.1:{args.port}/bob",
            "LOAD_N": str(args.n),
            "LOAD_C": str(args.c),
        }
        last = first
        for k in range(1, args.chunks + 1):
            done = subprocess.run(
                ["node", str(ROOT / "scripts" / "bench-cluster-load.js")],
                cwd=HARNESS,
                env=load_env,
                capture_output=True,
                text=True,
                check=False,
            )
            line = [x for x in done.stdout.splitlines() if x.startswith("{")][-1:]
            rate = json.loads(line[0])["metrics"].get("payments_per_sec", 0) if line else 0
            last = _ask(out, k, daphne)
            rows.append((k, rate, last["rss_mb"], last.get("traced_mb")))
            print(
                f"chunk {k}: {rate}/s RSS {last['rss_mb']:.1f} MB traced "
                f"{last.get('traced_mb') or 0:.1f} MB",
                file=sys.stderr,
            )
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        if args.shape == "postgres":
            subprocess.run(
                ["bash", "scripts/services.sh", "stop"],
                env=svc_env,
                cwd=ROOT,
                capture_output=True,
                check=False,
            )
    print(f"=== bench-memory: {args.shape}, {args.chunks} x {args.n} payments, C={args.c} ===")
    for k, rate, rss, traced in rows:
        print(
            f"after {k * args.n:>7} payments: {rate:>7}/s  RSS {rss:6.1f} MB"
            + (f"  traced {traced:6.1f} MB" if traced is not None else "")
        )
    grew = Counter(last["types"])
    grew.subtract(Counter(first["types"]))
    # Growth between the first chunk's end and the last: warm-up (imports, caches filling)
    # is in chunk 1, steady growth after it.
    base1 = json.loads((out / "mem-1.json").read_text()) if (out / "mem-1.json").exists() else first
    steady = Counter(last["types"])
    steady.subtract(Counter(base1["types"]))
    print("gc objects by type, growth after chunk 0 / after chunk 1:")
    for name, d in grew.most_common(20):
        print(f"  {name:<40} {d:>+9} {steady[name]:>+9}")
    if "growth" in last:
        print("tracemalloc, growth since chunk 1 (KiB, blocks, where):")
        for g in last["growth"][:15]:
            print(
                f"  {g['kb']:>+9.1f} {g['count']:>+8}  "
                + " <- ".join(
                    x.strip() for x in reversed(g["where"]) if x.strip().startswith("File")
                )[:600]
            )
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        return serve(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("embedded", "postgres"), default="embedded")
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--c", type=int, default=50)
    parser.add_argument("--trace", action="store_true", help="tracemalloc (slower)")
    parser.add_argument("--port", type=int, default=8796)
    parser.add_argument("--svc-dir", default="/tmp/ilp-bench-memory-services")
    parser.add_argument("--pg-port", type=int, default=55447)
    parser.add_argument("--redis-port", type=int, default=56447)
    parser.add_argument("--out", default=f"/tmp/bench-memory-{int(time.time())}")
    return drive(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
