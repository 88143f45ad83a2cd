"""``scripts/bench_ticks.py``, the CPU sampler ``make bench`` reads the timed load's CPU from."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SAMPLER = Path(__file__).resolve().parents[2] / "scripts" / "bench_ticks.py"
SPIN = "import time\nend = time.time() + 30\nwhile time.time() < end: pass  # bench-ticks-{}\n"


def _series(path: Path) -> list[dict[str, int]]:
    rows = []
    for line in path.read_text().splitlines():
        fields = line.split()
        rows.append({fields[i]: int(fields[i + 1]) for i in range(1, len(fields) - 1, 2)})
    return rows


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_the_sampler_follows_a_group_its_children_and_a_command_line(tmp_path: Path) -> None:
    # A parent that sleeps and its child that spins: the group's ticks are the child's.
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys; subprocess.run([sys.executable, '-c', {SPIN.format('child')!r}])",
        ],
        start_new_session=True,  # its own process group: the child is killed with it
    )
    # A spinning process found by its command line, started after the sampler.
    out = tmp_path / "ticks"
    sampler = subprocess.Popen(
        [
            sys.executable,
            str(SAMPLER),
            str(out),
            f"group={parent.pid}",
            "spinner~bench-ticks-late",
            "nobody~bench-ticks-nobody",  # in the sampler's own argv only: never itself
        ]
    )
    time.sleep(0.3)
    late = subprocess.Popen([sys.executable, "-c", SPIN.format("late")])
    try:
        time.sleep(2.5)
    finally:
        sampler.send_signal(signal.SIGTERM)
        assert sampler.wait(5) == 0
        late.kill()
        os.killpg(parent.pid, signal.SIGKILL)
        late.wait()
        parent.wait()
    rows = _series(out)
    assert len(rows) >= 10  # every 0.1 s (fewer on a busy machine)
    first, last = rows[0], rows[-1]
    # 2.8 s of a spinning child: at 100 ticks a second, half a second of CPU at least,
    # even beside a busy test run.
    assert last["group"] - first["group"] >= 50
    assert last["spinner"] >= 50  # looked for at every sample until it started
    assert all(row["nobody"] == 0 for row in rows)
    # Sums never fall, though members come and go.
    for name in ("group", "spinner"):
        assert all(a[name] <= b[name] for a, b in itertools.pairwise(rows))
