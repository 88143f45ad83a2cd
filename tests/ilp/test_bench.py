"""``python -m ilp.bench``: it runs and reports; no timing is asserted."""

from __future__ import annotations

import inspect
import subprocess
import sys
import time
from pathlib import Path

from ilp.bench import (
    NodeRun,
    _encodings_that_differ,
    ops_per_second,
    python_operations,
    realistic_workload,
    report,
)
from ilp.packet import decode_prepare, encode_packet, encode_prepare

ROOT = Path(__file__).resolve().parents[2]


def test_workload_is_realistic_and_valid() -> None:
    work = realistic_workload()
    assert work.prepare.destination.startswith("test.sut.receivers.bob.")
    assert 32 <= len(work.prepare.destination) <= 100
    assert len(work.prepare.data) == 200
    assert decode_prepare(encode_prepare(work.prepare)) == work.prepare


def test_each_decode_reads_what_its_encode_wrote() -> None:
    operations = python_operations(realistic_workload())
    decodes = [name for name in operations if name.endswith(" decode")]
    assert len(decodes) >= 3
    for name in decodes:
        decoded = operations[name]()
        written = operations[name.replace(" decode", " encode")]()
        if name.startswith("btp"):
            from ilp.btp import encode_btp

            assert encode_btp(decoded) == written  # type: ignore[arg-type]
        elif name.startswith("stream"):
            from ilp.stream.packet import encode_stream_packet

            assert encode_stream_packet(decoded) == written  # type: ignore[arg-type]
        else:
            assert encode_packet(decoded) == written  # type: ignore[arg-type]


class CpuClock:
    """A fake CPU clock that only the measured operation moves: each call costs ``step``."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step
        self.calls = 0

    def __call__(self) -> float:
        return self.now

    def operation(self) -> None:
        self.calls += 1
        self.now += self.step


def test_ops_per_second_counts_calls() -> None:
    # Steps are powers of two, so every sum is exact. A 0.5 s budget keeps the test
    # short even if the fake clock were ignored (it would then fail on the rate).
    fake = CpuClock(2**-12)
    assert ops_per_second(fake.operation, 0.5, windows=1, clock=fake) == 4096.0
    # Warm-up: 20 % of 0.5 s in batches of 100 calls = 500 calls (0.122 s); then batches
    # of 1000 until 0.5 s have passed: 3000 calls (0.732 s). The rate counts only those,
    # over the time they took, the last batch whole.
    assert fake.calls == 500 + 3000
    fake = CpuClock(2**-8)
    assert ops_per_second(fake.operation, 0.5, windows=1, clock=fake) == 256.0
    assert fake.calls == 100 + 1000  # one batch already overshoots the budget


class SlowingClock(CpuClock):
    """Each call costs ``step``, except the calls in ``slow``, which cost twice."""

    def __init__(self, step: float, *slow: range) -> None:
        super().__init__(step)
        self.slow = slow

    def operation(self) -> None:
        self.now += self.step * (2 if any(self.calls in r for r in self.slow) else 1)
        self.calls += 1


def test_ops_per_second_gives_the_best_window() -> None:
    # 0.75 s in three windows of 0.25 s: warm-up 20 % of 0.75 s = 0.15 s in batches of
    # 100 (at 2**-12 s a call: 700 calls, 0.171 s), then 1,024 calls fill a window (the
    # last batch whole: 2,000 calls, 0.488 s).
    steady = CpuClock(2**-12)
    assert ops_per_second(steady.operation, 0.75, windows=3, clock=steady) == 4096.0
    assert steady.calls == 700 + 3 * 2000
    # A machine twice as slow in the first and the last window (1,000 calls fill each):
    # the middle window's rate counts, not the first, the last or the mean.
    slowed = SlowingClock(2**-12, range(700, 1700), range(3700, 4700))
    assert ops_per_second(slowed.operation, 0.75, windows=3, clock=slowed) == 4096.0
    assert slowed.calls == 700 + 1000 + 2000 + 1000
    # And slow throughout: half the rate.
    slow = CpuClock(2**-11)
    assert ops_per_second(slow.operation, 0.75, windows=3, clock=slow) == 2048.0


def test_ops_per_second_measures_cpu_time_by_default() -> None:
    assert inspect.signature(ops_per_second).parameters["clock"].default is time.process_time


def test_report_with_and_without_node() -> None:
    ours = {"prepare encode": 200.0, "prepare decode": 100.0}
    node = NodeRun({"node": "20"}, {"prepare encode": 100.0, "prepare decode": 400.0}, {})
    lines = report(ours, node, [])
    assert any(line.startswith("prepare encode") and line.endswith("2.00") for line in lines)
    assert any(line.startswith("prepare decode") and line.endswith("0.25") for line in lines)
    assert lines[-1] == "encodings: byte-identical to the reference packages"
    assert report(ours, "node not found", [])[-1] == "ratio unavailable: node not found"
    assert "WARNING" in report(ours, node, ["prepare encode"])[-1]


def test_encodings_that_differ() -> None:
    operations = python_operations(realistic_workload())
    good = operations["prepare encode"]()
    assert isinstance(good, bytes)
    same = NodeRun({}, {}, {"prepare encode": good.hex()})
    other = NodeRun({}, {}, {"prepare encode": "00"})
    assert _encodings_that_differ(operations, same) == []
    assert _encodings_that_differ(operations, other) == ["prepare encode"]


def test_bench_command_runs_without_node() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ilp.bench", "--seconds", "0.02", "--no-node"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "prepare decode" in result.stdout
    assert "ratio unavailable: --no-node given" in result.stdout
