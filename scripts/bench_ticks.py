"""CPU time of process groups over time, for ``scripts/bench.sh`` (run in the background).

    bench_ticks.py OUT name=pid[,pid...] ... name~cmdline-substring ...

Every :data:`INTERVAL` seconds it appends one line to OUT: the wall time, then each group's
``name ticks`` (user + system clock ticks of the group's processes and their children, the
ones alive at that moment). ``name~text`` is every process whose command line contains
``text`` (the load generator, which starts after the sampler). Children and matches are
looked up again every :data:`RESCAN_S` (the PostgreSQL backends come and go), and at every
sample while a ``~`` group has no process yet; the processes already found are read at
every sample. It stops on SIGTERM or SIGINT.

Why a series and not two readings: the load generator's warm-up (``LOAD_WARMUP`` payments,
one at a time) runs in the same process before the timed load. ``bench.sh`` takes each
group's CPU over the timed load only, from this series, between the load's end and its
start (the end less the load's own elapsed time).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from procstat import children, stat, tree

INTERVAL = 0.1
RESCAN_S = 1.0


def _matching(text: str) -> set[int]:
    found: set[int] = set()
    me = str(os.getpid())  # this sampler's own command line names the text too
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != me:
            with contextlib.suppress(OSError):  # the process exited
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
    return found


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    roots: dict[str, list[int]] = {}
    patterns: dict[str, str] = {}
    for spec in argv[1:]:
        if "~" in spec:
            name, text = spec.split("~", 1)
            patterns[name] = text
        else:
            name, listed = spec.split("=", 1)
            roots[name] = [int(p) for p in listed.split(",") if p]
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    members: dict[str, set[int]] = {}
    # A process that exited keeps its last ticks in the group's sum (the sum must not fall).
    last: dict[str, dict[int, int]] = {name: {} for name in [*roots, *patterns]}
    rescanned = 0.0
    with out.open("w") as f:
        while not stop:
            now = time.time()
            # A pattern with no process yet is looked for at every sample: the load
            # generator starts just after the sampler.
            if now - rescanned >= RESCAN_S or not all(members.get(n) for n in patterns):
                kids = children()
                members = {
                    name: {p for root in pids for p in tree(root, kids)}
                    for name, pids in roots.items()
                }
                members.update({name: _matching(text) for name, text in patterns.items()})
                rescanned = now
            parts = [f"{now:.3f}"]
            for name, pids in members.items():
                seen = last[name]
                for pid in pids:
                    st = stat(pid)
                    if st is not None and st[0] >= seen.get(pid, 0):
                        seen[pid] = st[0]
                parts.append(f"{name} {sum(seen.values())}")
            f.write(" ".join(parts) + "\n")
            f.flush()
            time.sleep(INTERVAL)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
