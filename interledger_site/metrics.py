"""The node's Prometheus metrics: every definition in this one module, and ``/metrics``.

Multi-process: when ``PROMETHEUS_MULTIPROC_DIR`` is set (``scripts/cluster.sh`` sets it
for every Daphne, the Celery worker and beat, and empties it at start) each process writes
its samples to files in that directory and ``/metrics``, served by any process, reports
the sum over all of them: the whole node, not the process that answered. The variable
must be in the environment before ``prometheus_client`` is imported (it picks its value
store at import), so it is set by the process's starter, never by Django settings.
Without it (``make run``, tests) the samples live in this process's default registry.

Hot-path cost: the recording functions below cache the labelled children, so a packet
costs one dict look-up and one ``inc`` per metric (an mmap write under a lock in
multi-process mode). Amounts are reported as floats, as Prometheus stores every sample:
exact up to 2**53; the ledger stays the truth for money.

Where the recording calls go (one line each, at the points where the outcome is known):

- :func:`packet_handled`: ``links.edge._call_switch``, on the reply of every Prepare any
  transport hands to the switch.
- :func:`packet_forwarded`: ``links.switch.PacketSwitch._send``, after the commit of a
  fulfilled forward (``target.name``, ``out_amount``).
- :func:`ledger_batch`: ``payments.ledger.BalanceBook.process_jobs`` (jobs in the batch,
  seconds it took, whether a part failed).
- :func:`link_state`: ``links.activity.note_connected`` / ``note_disconnected``.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

from ilp.packet import Fulfill, Reply

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

PACKETS = Counter(
    "ilp_packets",
    "ILP Prepares handled by the switch, by source peer and outcome (code: the ILP error "
    "code of a Reject, empty for a Fulfill).",
    ["peer", "outcome", "code"],
)
FULFILLED_AMOUNT = Counter(
    "ilp_fulfilled_amount",
    "Sum of the amounts of the fulfilled Prepares received from each peer, in that "
    "peer's asset units.",
    ["peer"],
)
FORWARDED_AMOUNT = Counter(
    "ilp_forwarded_amount",
    "Sum of the amounts of the fulfilled Prepares this node sent to each next hop, in "
    "that peer's asset units.",
    ["peer"],
)
LEDGER_BATCH_SIZE = Histogram(
    "ilp_ledger_batch_size",
    "Jobs (commits, loads, totals) per ledger-writer batch.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
)
LEDGER_BATCH_SECONDS = Histogram(
    "ilp_ledger_batch_seconds",
    "Time of one ledger-writer batch (one database transaction).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
LEDGER_BATCH_FAILURES = Counter(
    "ilp_ledger_batch_failures",
    "Ledger-writer batches of which a part failed (nothing of that part was applied).",
)
LINKS_CONNECTED = Gauge(
    "ilp_links_connected",
    "Processes of the node holding a live BTP link to each peer (summed over live "
    "processes: 1 when the link is held once, more when several processes hold one).",
    ["peer"],
    multiprocess_mode="livesum",
)

_CODE = re.compile(r"[FTR][0-9]{2}")
# Labelled children by label values: ``labels()`` parses its arguments on every call.
_packet_children: dict[tuple[str, str, str], Counter] = {}
_amount_children: dict[str, Counter] = {}
_forwarded_children: dict[str, Counter] = {}


def _code_label(code: str) -> str:
    # A next hop may answer any three IA5 characters: keep the label set bounded.
    return code if _CODE.fullmatch(code) else "other"


def packet_handled(peer: str, amount: int, reply: Reply) -> None:
    """Count the reply the switch gave to a Prepare of ``amount`` from ``peer``."""
    if type(reply) is Fulfill:
        key = (peer, "fulfilled", "")
    else:
        key = (peer, "rejected", _code_label(str(getattr(reply, "code", ""))))
    child = _packet_children.get(key)
    if child is None:
        child = _packet_children[key] = PACKETS.labels(*key)
    child.inc()
    if amount and key[1] == "fulfilled":
        fulfilled = _amount_children.get(peer)
        if fulfilled is None:
            fulfilled = _amount_children[peer] = FULFILLED_AMOUNT.labels(peer)
        fulfilled.inc(amount)


def packet_forwarded(peer: str, amount: int) -> None:
    """Count ``amount`` sent to the next hop ``peer`` in a Prepare it fulfilled."""
    if amount <= 0:
        return
    child = _forwarded_children.get(peer)
    if child is None:
        child = _forwarded_children[peer] = FORWARDED_AMOUNT.labels(peer)
    child.inc(amount)


def ledger_batch(size: int, seconds: float, *, failed: bool = False) -> None:
    """Record one ledger-writer batch of ``size`` jobs that took ``seconds``."""
    LEDGER_BATCH_SIZE.observe(size)
    LEDGER_BATCH_SECONDS.observe(seconds)
    if failed:
        LEDGER_BATCH_FAILURES.inc()


def link_state(peer: str, connected: bool) -> None:
    """This process now holds (``True``) or no longer holds a live link to ``peer``."""
    LINKS_CONNECTED.labels(peer).set(1 if connected else 0)


# --- exposition ---------------------------------------------------------------------------


def multiproc_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV, "")
    return Path(value) if value else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def forget_dead_processes(path: Path) -> list[int]:
    """Drop the live-gauge files of processes that are gone (a Daphne that was killed
    never says so): their links are not connected any more. Counters and histograms of
    dead processes stay in the sums, as Prometheus expects of counters."""
    dead: list[int] = []
    for f in path.glob("gauge_live*_*.db"):
        pid_text = f.stem.rsplit("_", 1)[-1]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            dead.append(int(pid_text))
    for pid in set(dead):
        with contextlib.suppress(OSError):
            prom_multiprocess.mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]
    return sorted(set(dead))


def render() -> tuple[bytes, str]:
    """The exposition text of the whole node (all processes in multi-process mode)."""
    path = multiproc_dir()
    if path is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    forget_dead_processes(path)
    registry = CollectorRegistry()
    prom_multiprocess.MultiProcessCollector(registry, path=str(path))  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``: Prometheus text format. Peer names are labels: keep it off the
    public side (the nginx of ``scripts/cluster.sh`` answers it to loopback only)."""
    body, content_type = render()
    return HttpResponse(body, content_type=content_type)
