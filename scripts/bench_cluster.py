"""``make bench-cluster``: the cluster shape (nginx + N Daphnes, Celery worker and beat, Postgres +
Redis) under PSK2 load, one BTP link per Daphne, next to one link (one Daphne busy) in the same run.

Starts a private Postgres + Redis (``scripts/services.sh`` with their own ``SVC_DIR`` and ports:
every server process's CPU is then this bench's), a fresh database and ``ILP_ADDRESS``, and
``scripts/cluster.sh`` with ``CLUSTER_DAPHNES`` (3). Adds one ``btp-server`` child per link
(``alice1`` .. ``aliceN``, limited, so their holds take the shared-credit path through Redis,
as ``scripts/bench.sh`` does) and the pointer ``bob``. Each phase is one sender process per link
(``scripts/bench-cluster-load.js``: the interop harness's PSK2 ``load``, ``--c`` in flight per
link, ``--n`` payments per link) connecting through nginx, whose ``least_conn`` puts the links on
different Daphnes (checked: the phase fails if a Daphne got none of the load's CPU while links were
open to as many Daphnes). Phases alternate ``1, N, 1, N, ...`` (``--rounds``) on the same cluster.

Per phase: payments/s (all fulfilled / wall time from the first sender's start to the last's end),
p50/p99 over every payment, and CPU ms per payment of each process group, from
``/proc/<pid>/stat`` (utime + stime) sampled every ``--sample-s`` for every pid of the group (new
backends and pool processes included): each Daphne, the Celery worker (with its pool), beat, nginx
(master + workers), Postgres (postmaster and every child: backends, WAL writer, checkpointer),
Redis, and the senders. The ledger must hold one receipt per fulfilled payment. Prints a table and
the projection to ``--cores`` (8) cores. Needs the interop harness (``scripts/interop.sh``
installs it). Run it under ``flock /tmp/interop.lock`` (the Makefile target does): fixed ports.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procstat import HZ, children, stat, tree

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")
if not os.path.exists(PY):
    PY = sys.executable
HARNESS = ROOT / ".interop" / "harness"
PAGE = os.sysconf("SC_PAGE_SIZE")
MIN_BALANCE = "-1000000000000000"


# --- /proc ------------------------------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20
    except OSError:
        return float("nan")


class CpuSampler:
    """Ticks per process group over a window: every pid of each group's tree, sampled
    periodically, so a process that starts or ends inside the window is counted for the part
    of it that was seen (a pid gone between two samples loses at most one interval)."""

    def __init__(self, roots: dict[str, int], interval: float) -> None:
        self.roots = roots
        self.interval = interval
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.group_of: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self, initial: bool = False) -> None:
        kids = children()
        for name, root in self.roots.items():
            for pid in tree(root, kids):
                st = stat(pid)
                if st is None:
                    continue
                self.group_of.setdefault(pid, name)
                # A pid first seen after the start began inside the window: from 0.
                self.first.setdefault(pid, st[0] if initial else 0)
                self.last[pid] = st[0]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> None:
        self.sample(initial=True)
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self.sample()
        seconds: dict[str, float] = {name: 0.0 for name in self.roots}
        for pid, ticks in self.last.items():
            seconds[self.group_of[pid]] += (ticks - self.first[pid]) / HZ
        return seconds


# --- running things ---------------------------------------------------------------------------


def _run(cmd: list[str], env: dict[str, str], timeout: float = 600) -> str:
    done = subprocess.run(
        cmd,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(cmd[:4])}... failed ({done.returncode}):\n{done.stderr[-3000:]}"
        )
    return done.stdout


def _pid_file(path: Path) -> int:
    return int(path.read_text().split()[0])


@dataclass
class Phase:
    links: int
    round: int
    fulfilled: int = 0
    failed: int = 0
    warmup: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    loadavg: str = ""

    @property
    def rate(self) -> float:
        return self.fulfilled / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(len(lat) * q))] if lat else float("nan")


def _load_phase(
    links: int,
    round_: int,
    args: argparse.Namespace,
    nginx_url: str,
    roots: dict[str, int],
    out: Path,
) -> Phase:
    phase = Phase(links, round_, loadavg=" ".join(Path("/proc/loadavg").read_text().split()[:3]))
    btp = nginx_url.replace("http://", "")
    start_at = int(time.time() * 1000) + 2500 + 150 * links  # after every sender's warm-up
    procs = []
    logs = []
    for i in range(1, links + 1):
        logs.append((out / f"sender-{links}-{round_}-{i}.log").open("w"))
        env = {
            **os.environ,
            "HARNESS_DIR": str(HARNESS),
            "SUT_BTP_URL": f"btp+ws://alice{i}:alice{i}token@{btp}/btp",
            "SUT_SPSP_URL": f"{nginx_url}/bob",
            "LOAD_N": str(args.n),
            "LOAD_C": str(args.c),
            "LOAD_START_AT": str(start_at),
            "LOAD_LAT_FILE": str(out / f"lat-{links}-{round_}-{i}.txt"),
        }
        procs.append(
            subprocess.Popen(
                ["node", str(ROOT / "scripts" / "bench-cluster-load.js")],
                cwd=HARNESS,
                env=env,
                stdout=subprocess.PIPE,
                stderr=logs[-1],
            )
        )
    # The senders' CPU is measured too (their own group), the window opens at the common start.
    sampler = CpuSampler(
        {**roots, **{f"sender{i}": p.pid for i, p in enumerate(procs, 1)}}, args.sample_s
    )
    time.sleep(max(0.0, start_at / 1000 - time.time()))
    sampler.start()
    results: list[dict[str, Any]] = []
    for p in procs:
        stdout, _ = p.communicate(timeout=args.n / 20 + 900)
        lines = [x for x in stdout.decode().splitlines() if x.startswith("{")]
        results.append(
            json.loads(lines[-1]) if lines else {"ok": False, "detail": "no output", "metrics": {}}
        )
    cpu = sampler.stop()
    for log in logs:
        log.close()
    t0 = min((r["metrics"].get("t0_epoch_ms", 1e18) for r in results), default=0)
    t1 = max((r["metrics"].get("t1_epoch_ms", 0) for r in results), default=0)
    phase.seconds = max(0.0, (t1 - t0) / 1000)
    for i, r in enumerate(results, 1):
        m = r["metrics"]
        phase.fulfilled += int(m.get("fulfilled") or 0)
        phase.failed += int(m.get("failed") or 0)
        phase.warmup += int(m.get("warmup_fulfilled") or 0)
        if not r.get("ok"):
            phase.ok = False
            phase.problems.append(f"sender {i}: {r.get('detail')} {m.get('errors', '')}")
        lat_file = out / f"lat-{links}-{round_}-{i}.txt"
        if lat_file.exists():
            phase.latencies += [float(x) for x in lat_file.read_text().split()]
    senders = sum(v for k, v in cpu.items() if k.startswith("sender"))
    phase.cpu = {k: v for k, v in cpu.items() if not k.startswith("sender")}
    phase.cpu["senders"] = senders
    # Spread: each link on its own Daphne, so as many Daphnes carry at least half an even share.
    daphne_cpu = {k: v for k, v in phase.cpu.items() if k.startswith("daphne")}
    even = sum(daphne_cpu.values()) / links
    busy = [k for k, v in daphne_cpu.items() if v >= 0.5 * even]
    if len(busy) < links:
        phase.problems.append(f"{links} links but only {len(busy)} Daphne(s) busy: {busy}")
        phase.ok = False
    return phase


def _fmt_cpu(phase: Phase, group: str) -> str:
    return f"{phase.cpu.get(group, 0.0) * 1000 / max(1, phase.fulfilled):.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--daphnes", type=int, default=int(os.environ.get("CLUSTER_DAPHNES", "3")))
    parser.add_argument(
        "--n",
        type=int,
        default=int(os.environ.get("BENCH_N", "10000")),
        help="payments per link per phase",
    )
    parser.add_argument(
        "--c", type=int, default=int(os.environ.get("BENCH_C", "50")), help="in flight per link"
    )
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "2")))
    parser.add_argument("--cores", type=int, default=8, help="projection target")
    parser.add_argument("--sample-s", type=float, default=0.5)
    parser.add_argument("--port", type=int, default=8794, help="nginx; Daphnes from port+101")
    parser.add_argument("--svc-dir", default="/tmp/ilp-bench-cluster-services")
    parser.add_argument("--pg-port", type=int, default=55446)
    parser.add_argument("--redis-port", type=int, default=56446)
    parser.add_argument(
        "--out", default=f"/tmp/bench-cluster-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    )
    parser.add_argument("--keep", action="store_true", help="leave the cluster and services up")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (HARNESS / "node_modules").is_dir():
        print("bench-cluster: the interop harness is not installed (run scripts/interop.sh once)")
        return 2
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ILP_", "DJANGO_", "PROMETHEUS_", "CLUSTER_", "DATABASE_", "REDIS_"))
    }
    svc_env = {
        **base_env,
        "SVC_DIR": args.svc_dir,
        "PG_PORT": str(args.pg_port),
        "REDIS_PORT": str(args.redis_port),
    }
    _run(["bash", "scripts/services.sh", "start"], svc_env)
    pg_base = f"postgres://postgres@127.0.0.1:{args.pg_port}"
    _run(
        [
            "psql",
            f"{pg_base}/postgres",
            "-qc",
            "DROP DATABASE IF EXISTS ilp_cluster_bench WITH (FORCE)",
            "-c",
            "CREATE DATABASE ilp_cluster_bench",
        ],
        svc_env,
    )
    _run(["redis-cli", "-p", str(args.redis_port), "flushall"], svc_env)
    run_dir = out / "run"
    env = {
        **base_env,
        "DATABASE_URL": f"{pg_base}/ilp_cluster_bench",
        "REDIS_URL": f"redis://127.0.0.1:{args.redis_port}/0",
        "ILP_VAR_DIR": str(out / "var"),
        "ILP_ADDRESS": f"test.cbench{secrets.token_hex(3)}",
        "ILP_ASSET_CODE": "XRP",
        "ILP_ASSET_SCALE": "9",
        "CLUSTER_DAPHNES": str(args.daphnes),
        "CLUSTER_PORT": str(args.port),
        "CLUSTER_DAPHNE_PORT": str(args.port + 101),
        "CLUSTER_DIR": str(run_dir),
        "LOG_LEVEL": "WARNING",
        "DJANGO_DEBUG": "0",
    }
    cluster = ["bash", str(ROOT / "scripts" / "cluster.sh")]
    phases: list[Phase] = []
    receipts = -1
    rss: dict[str, tuple[float, float]] = {}
    try:
        _run([*cluster, "start"], env)
        for i in range(1, args.daphnes + 1):
            _run(
                [
                    PY,
                    "manage.py",
                    "add_peer",
                    f"alice{i}",
                    "--relation",
                    "child",
                    "--link",
                    "btp-server",
                    "--token",
                    f"alice{i}token",
                    "--min-balance",
                    MIN_BALANCE,
                ],
                env,
            )
        _run([PY, "manage.py", "add_pointer", "bob"], env)
        roots = {
            f"daphne{i}": _pid_file(run_dir / f"daphne-{i}.pid") for i in range(1, args.daphnes + 1)
        }
        roots["worker"] = _pid_file(run_dir / "celery-worker.pid")
        roots["beat"] = _pid_file(run_dir / "celery-beat.pid")
        roots["nginx"] = _pid_file(run_dir / "nginx.pid")
        roots["postgres"] = _pid_file(Path(args.svc_dir) / "pg" / "postmaster.pid")
        roots["redis"] = _pid_file(Path(args.svc_dir) / "redis.pid")
        rss0 = {k: _rss_mb(v) for k, v in roots.items() if k.startswith("daphne") or k == "worker"}
        nginx_url = f"http://127.0.0.1:{args.port}"
        for round_ in range(1, args.rounds + 1):
            for links in (1, args.daphnes):
                print(
                    f"bench-cluster: round {round_}, {links} link(s), N={args.n} per link, "
                    f"C={args.c} per link, load average {Path('/proc/loadavg').read_text().split()[0]}",
                    file=sys.stderr,
                )
                phase = _load_phase(links, round_, args, nginx_url, roots, out)
                phases.append(phase)
                print(
                    f"  {phase.rate:,.0f} payments/s, p99 {phase.pct(0.99):.0f} ms"
                    + (f" FAIL: {phase.problems}" if phase.problems else ""),
                    file=sys.stderr,
                )
        rss = {k: (v, _rss_mb(roots[k])) for k, v in rss0.items()}
        time.sleep(1.0)
        receipts = int(
            _run(
                [
                    PY,
                    "manage.py",
                    "shell",
                    "-c",
                    "from payments.models import Receipt; "
                    "print(Receipt.objects.filter(account__code='receiver:bob').count())",
                ],
                env,
            )
            .strip()
            .splitlines()[-1]
        )
    finally:
        if not args.keep:
            subprocess.run([*cluster, "stop"], env=env, cwd=ROOT, capture_output=True, timeout=300)
            subprocess.run(
                ["bash", "scripts/services.sh", "stop"],
                env=svc_env,
                cwd=ROOT,
                capture_output=True,
                timeout=120,
            )
    print(report(phases, args, receipts, rss))
    expected = sum(p.fulfilled + p.warmup for p in phases)
    ok = all(p.ok for p in phases) and receipts == expected
    (out / "phases.json").write_text(
        json.dumps(
            [
                {
                    "links": p.links,
                    "round": p.round,
                    "fulfilled": p.fulfilled,
                    "seconds": p.seconds,
                    "rate": p.rate,
                    "p50": p.pct(0.5),
                    "p99": p.pct(0.99),
                    "cpu_s": p.cpu,
                    "ok": p.ok,
                    "problems": p.problems,
                    "loadavg": p.loadavg,
                }
                for p in phases
            ],
            indent=1,
        )
    )
    print(f"results under {out}")
    return 0 if ok else 1


def report(
    phases: list[Phase],
    args: argparse.Namespace,
    receipts: int,
    rss: dict[str, tuple[float, float]],
) -> str:
    if not phases:
        return "bench-cluster: no phase ran"
    groups = [k for k in phases[0].cpu if k != "senders"]
    lines = [
        f"=== bench-cluster: nginx + {args.daphnes} Daphnes, worker + beat, Postgres + Redis; "
        f"PSK2, N={args.n} and C={args.c} per link, {os.cpu_count()} cores ===",
        "| round | links | payments/s | p50 / p99 ms | "
        + " | ".join(groups)
        + " | node total | senders | load average |",
        "| --- " * (7 + len(groups)) + "|",
    ]
    for p in phases:
        node_total = sum(v for k, v in p.cpu.items() if k != "senders")
        lines.append(
            f"| {p.round} | {p.links} | {p.rate:,.0f} | {p.pct(0.5):.0f} / {p.pct(0.99):.0f} | "
            + " | ".join(_fmt_cpu(p, g) for g in groups)
            + f" | {node_total * 1000 / max(1, p.fulfilled):.3f} | {_fmt_cpu(p, 'senders')} | {p.loadavg} |"
        )
    lines.append("(CPU: ms per payment, utime+stime from /proc over the phase)")
    ones = [p for p in phases if p.links == 1 and p.ok]
    many = [p for p in phases if p.links == args.daphnes and p.ok]
    if ones and many and args.daphnes > 1:
        r1 = sum(p.rate for p in ones) / len(ones)
        rn = sum(p.rate for p in many) / len(many)
        lines.append(
            f"{args.daphnes} links / 1 link, same run: {rn:,.0f} / {r1:,.0f} = {rn / r1:.2f}x"
        )
        lines += projection(ones, many, args)
    for k, (a, b) in rss.items():
        lines.append(f"RSS {k}: {a:.0f} -> {b:.0f} MB")
    expected = sum(p.fulfilled + p.warmup for p in phases)
    lines.append(
        f"ledger: {receipts} receipts for {expected} fulfilled (warm-ups included): "
        + ("exact" if receipts == expected else "MISMATCH")
    )
    return "\n".join(lines)


def _per_payment(phases: list[Phase]) -> dict[str, float]:
    """CPU ms per payment by group over ``phases``; the Daphnes as ``daphnes`` (all of them)
    and ``busiest daphne`` (in each phase the Daphne that used the most, whichever it was:
    nginx's least_conn may put one link on a different Daphne each phase)."""
    paid = sum(p.fulfilled for p in phases)
    out: dict[str, float] = {"daphnes": 0.0, "busiest daphne": 0.0}
    for p in phases:
        daphnes = [v for k, v in p.cpu.items() if k.startswith("daphne")]
        out["daphnes"] += sum(daphnes)
        out["busiest daphne"] += max(daphnes, default=0.0)
        for k, v in p.cpu.items():
            if not k.startswith("daphne"):
                out[k] = out.get(k, 0.0) + v
    return {k: v * 1000 / paid for k, v in out.items()}


def _ceilings(per: dict[str, float], cores: int) -> dict[str, float]:
    """Payments/s at which each CPU limit is reached, from CPU ms per payment (``per``).

    A Daphne is one Python process (one GIL): at most one core; with the load spread over
    the Daphnes, the busiest one (the largest share of the CPU per payment) reaches its core
    at ``1000 / its ms per payment`` in total. Redis runs commands in one thread: one core.
    Postgres, the worker's pool and nginx's workers spread over cores. The senders are left
    out (in production they are other machines).
    """
    node = {k: v for k, v in per.items() if k not in ("senders", "busiest daphne")}
    busiest = per.get("busiest daphne", 0.0)
    ceilings = {
        f"all {cores} cores busy ({sum(node.values()):.3f} ms/payment)": cores
        * 1000
        / sum(node.values())
    }
    if busiest:
        ceilings[f"the busiest Daphne's one core ({busiest:.3f} ms/payment)"] = 1000 / busiest
    if node.get("redis"):
        ceilings[f"Redis's one thread ({node['redis']:.3f} ms/payment)"] = 1000 / node["redis"]
    return ceilings


def projection(ones: list[Phase], many: list[Phase], args: argparse.Namespace) -> list[str]:
    """The CPU-bound ceiling of one Daphne and of the cluster on ``args.cores`` cores."""
    cores = args.cores
    lines = [
        f"--- projection to {cores} cores: arithmetic on the measured budget, senders excluded ---"
    ]
    result = {}
    for name, phases in (("1 link (one Daphne carries it)", ones), (f"{args.daphnes} links", many)):
        per = _per_payment(phases)
        lines.append(f"{name}: CPU ms/payment " + ", ".join(f"{k} {v:.3f}" for k, v in per.items()))
        ceilings = _ceilings(per, cores)
        for what, value in ceilings.items():
            lines.append(f"  ceiling, {what}: {value:,.0f} payments/s")
        first = min(ceilings, key=lambda k: ceilings[k])
        result[name] = ceilings[first]
        lines.append(f"  saturates first: {first} -> ~{ceilings[first]:,.0f} payments/s")
    one, cluster = result.values()
    lines.append(
        f"projected cluster / one process on {cores} cores: {cluster:,.0f} / {one:,.0f} = {cluster / one:.2f}x"
        " (CPU-bound ceilings; each link's own bound is C / latency)"
    )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
