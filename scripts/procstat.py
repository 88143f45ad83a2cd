"""Reading processes' CPU time from ``/proc``, for the benches (``bench_cluster.py``,
``bench_ticks.py``): a pid's ticks and parent, the parent → children map, a process tree."""

from __future__ import annotations

import os
from pathlib import Path

HZ = os.sysconf("SC_CLK_TCK")


def stat(pid: int) -> tuple[int, int] | None:
    """(utime + stime in ticks, ppid) of ``pid``, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12]), int(fields[1])


def children() -> dict[int, list[int]]:
    """Every live process's children, by parent pid (one pass over ``/proc``)."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = stat(int(entry))
            if st is not None:
                kids.setdefault(st[1], []).append(int(entry))
    return kids


def tree(root: int, kids: dict[int, list[int]]) -> list[int]:
    """``root`` and its descendants in ``kids`` (:func:`children`)."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out
