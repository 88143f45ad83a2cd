"""The node's Prometheus metrics: every definition in this one module, ``/metrics``, and the
node-wide traffic the operator dashboard shows.

Multi-process: when ``PROMETHEUS_MULTIPROC_DIR`` is set (``scripts/cluster.sh`` sets it
for every Daphne, the Celery worker and beat, and empties it at start) each process writes
its samples to files in that directory and ``/metrics``, served by any process, reports
the sum over all of them: the whole node, not the process that answered. The variable
must be in the environment before ``prometheus_client`` is imported (it picks its value
store at import), so it is set by the process's starter, never by Django settings.
Without it (``make run``, tests) the samples live in this process's default registry.

Hot-path cost: a ``prometheus_client`` increment is ~0.35 µs in one process and ~0.85 µs
in multi-process mode (an mmap write under a lock), and a packet touches five or six
series. So the packet path does not call it: :func:`prepare_started`,
:func:`packet_handled`, :func:`packet_forwarded` and :func:`packet_local` add to plain
dicts of the calling thread (:class:`_Pending`), and the first record of a loop iteration
schedules one :meth:`_Pending.flush` with ``call_soon``: the series are written once per
iteration with the iteration's sums, however many packets it carried (a thread with no
running loop writes at once). Readers in this process flush their own thread first.
Amounts are reported as floats, as Prometheus stores every sample: exact up to 2**53;
the ledger stays the truth for money.

Where the recording calls are (one line each, where the outcome is known):

- :func:`prepare_started` / :func:`packet_handled`: ``links.edge._call_switch``, around
  the switch call of every Prepare any transport hands to the switch.
- :func:`packet_forwarded`: ``links.switch.PacketSwitch._send``, on the reply of the next
  hop (forwards and echo), after the commit of a fulfilled one.
- :func:`packet_local`: ``links.switch.PacketSwitch._receive``, on the reply of a local
  receiver or handler.
- :func:`ledger_batch`: ``payments.ledger.writer.write_batch`` (commits in the batch, the
  transaction's seconds, whether it failed), in the ledger-writer thread.
- :func:`link_state`: ``links.presence`` (the process that owns the peer's link, only).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

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
from prometheus_client.metrics_core import Metric

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
    ["peer", "asset_code", "asset_scale"],
)
FORWARDED = Counter(
    "ilp_forwarded",
    "Prepares this node sent to each next hop (forwards and echo), by outcome.",
    ["peer", "outcome"],
)
FORWARDED_AMOUNT = Counter(
    "ilp_forwarded_amount",
    "Sum of the amounts of the fulfilled Prepares this node sent to each next hop, in "
    "that peer's asset units.",
    ["peer", "asset_code", "asset_scale"],
)
LOCAL = Counter(
    "ilp_local",
    "Prepares delivered to this node's own receivers and local handlers, by outcome.",
    ["outcome"],
)
IN_FLIGHT = Gauge(
    "ilp_packets_in_flight",
    "Prepares in the switch now (received, not yet answered), summed over live processes.",
    multiprocess_mode="livesum",
)
LEDGER_BATCH_SIZE = Histogram(
    "ilp_ledger_batch_size",
    "Commits (packets' postings and receipts) per ledger-writer batch (one transaction).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
)
LEDGER_BATCH_SECONDS = Histogram(
    "ilp_ledger_batch_seconds",
    "Time of one ledger-writer batch's database transaction.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
LEDGER_BATCH_FAILURES = Counter(
    "ilp_ledger_batch_failures",
    "Ledger-writer batches whose transaction failed (nothing of it was applied).",
)
LINKS_CONNECTED = Gauge(
    "ilp_links_connected",
    "1 for each peer with a live BTP link, reported by the process that owns the link "
    "(its lease), so the sum over the live processes is 1 per connected peer.",
    ["peer"],
    multiprocess_mode="livesum",
)

FULFILLED = "fulfilled"
REJECTED = "rejected"
_CODE = re.compile(r"[FTR][0-9]{2}")


def _code_label(code: str) -> str:
    # A next hop may answer any three IA5 characters: keep the label set bounded.
    return code if _CODE.fullmatch(code) else "other"


# --- recording (batched per loop iteration) -----------------------------------------------


class Peer(Protocol):
    """What the recording calls read of a source or next hop (``links.peers.PeerContext``)."""

    @property
    def name(self) -> str: ...
    @property
    def asset_code(self) -> str: ...
    @property
    def asset_scale(self) -> int: ...


class _PeerPending:
    """One peer's increments in one thread since its last flush. Amounts are kept per
    asset: normally the peer's one asset (``asset``); one that changed meanwhile (the
    operator edited the peer) goes to ``other_assets``."""

    __slots__ = (
        "amount_in",
        "amount_out",
        "asset",
        "fulfilled",
        "other_assets",
        "out_fulfilled",
        "out_rejected",
        "rejected",
    )

    def __init__(self, asset: tuple[str, int]) -> None:
        self.asset = asset
        self.fulfilled = 0
        self.rejected: dict[str, int] = {}  # by code label
        self.amount_in = 0
        self.out_fulfilled = 0
        self.out_rejected = 0
        self.amount_out = 0
        self.other_assets: dict[tuple[str, str, int], int] = {}  # (in|out, code, scale)

    def amount(self, peer: Peer, direction: str, amount: int) -> bool:
        """Whether ``amount`` is in the peer's usual asset (else it is booked aside here)."""
        code, scale = self.asset
        if peer.asset_code == code and peer.asset_scale == scale:
            return True
        key = (direction, peer.asset_code, peer.asset_scale)
        self.other_assets[key] = self.other_assets.get(key, 0) + amount
        return False


class _Pending:
    """One thread's increments not yet written to the series (see the module docstring).

    Only its own thread touches it: the record functions add, :meth:`flush` (scheduled on
    that thread's loop, or called by a reader in that thread) writes and empties.
    """

    __slots__ = ("in_flight", "local", "loop", "peers")

    def __init__(self) -> None:
        self.peers: dict[str, _PeerPending] = {}
        self.local: dict[str, int] = {}
        self.in_flight = 0
        # The loop a flush is scheduled on (None: none is).
        self.loop: asyncio.AbstractEventLoop | None = None

    def peer(self, peer: Peer) -> _PeerPending:
        counts = self.peers.get(peer.name)
        if counts is None:
            counts = self.peers[peer.name] = _PeerPending((peer.asset_code, peer.asset_scale))
        return counts

    def touch(self) -> None:
        """Make sure a flush comes: at the end of this loop iteration, or now."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None
            self.flush()
            return
        self.loop = loop
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self.loop = None
        if self.peers:
            peers, self.peers = self.peers, {}
            for name, c in peers.items():
                _write_peer(name, c)
        if self.local:
            local, self.local = self.local, {}
            for outcome, n in local.items():
                _child(_local_children, LOCAL, (outcome,)).inc(n)
        if self.in_flight:
            delta, self.in_flight = self.in_flight, 0
            IN_FLIGHT.inc(delta)


def _write_peer(name: str, c: _PeerPending) -> None:
    code, scale = c.asset
    if c.fulfilled:
        _child(_packet_children, PACKETS, (name, FULFILLED, "")).inc(c.fulfilled)
    for label, n in c.rejected.items():
        _child(_packet_children, PACKETS, (name, REJECTED, label)).inc(n)
    if c.amount_in:
        _child(_amount_children, FULFILLED_AMOUNT, (name, code, scale)).inc(c.amount_in)
    if c.out_fulfilled:
        _child(_forwarded_children, FORWARDED, (name, FULFILLED)).inc(c.out_fulfilled)
    if c.out_rejected:
        _child(_forwarded_children, FORWARDED, (name, REJECTED)).inc(c.out_rejected)
    if c.amount_out:
        key = (name, code, scale)
        _child(_forwarded_amount_children, FORWARDED_AMOUNT, key).inc(c.amount_out)
    for (direction, other_code, other_scale), amount in c.other_assets.items():
        cache, metric = (
            (_amount_children, FULFILLED_AMOUNT)
            if direction == "in"
            else (_forwarded_amount_children, FORWARDED_AMOUNT)
        )
        _child(cache, metric, (name, other_code, other_scale)).inc(amount)


# Labelled children by label values: ``labels()`` parses its arguments on every call.
# Read and extended by whichever thread flushes: a race only builds the same child twice.
_packet_children: dict[Any, Any] = {}
_amount_children: dict[Any, Any] = {}
_forwarded_children: dict[Any, Any] = {}
_forwarded_amount_children: dict[Any, Any] = {}
_local_children: dict[Any, Any] = {}


def _child(cache: dict[Any, Any], metric: Any, key: tuple[Any, ...]) -> Any:
    child = cache.get(key)
    if child is None:
        child = cache[key] = metric.labels(*key)
    return child


_local = threading.local()


def _pending() -> _Pending:
    try:
        pending: _Pending = _local.pending
    except AttributeError:
        pending = _local.pending = _Pending()
    return pending


def _forget_after_fork() -> None:
    # The parent's unwritten increments are the parent's: a forked child (Celery's
    # prefork pool) must not write them again.
    global _local
    _local = threading.local()


os.register_at_fork(after_in_child=_forget_after_fork)


def flush() -> None:
    """Write this thread's pending increments now (readers, tests, before a process ends)."""
    _pending().flush()


def prepare_started() -> None:
    """A Prepare entered the switch (the in-flight gauge; :func:`packet_handled` ends it)."""
    pending = _pending()
    pending.in_flight += 1
    pending.touch()


def packet_handled(source: Peer, amount: int, reply: Reply | None, *, started: bool = True) -> None:
    """The node answered ``reply`` to a Prepare of ``amount`` (the source's asset units)
    from ``source``. ``started``: it ends a :func:`prepare_started` (``False``: refused at
    the edge, before the switch). ``None``: the caller was cancelled before a reply (the
    Prepare only leaves the in-flight gauge)."""
    pending = _pending()
    if started:
        pending.in_flight -= 1
    if reply is not None:
        counts = pending.peer(source)
        if type(reply) is Fulfill:
            counts.fulfilled += 1
            if amount and counts.amount(source, "in", amount):
                counts.amount_in += amount
        else:
            label = _code_label(str(getattr(reply, "code", "")))
            counts.rejected[label] = counts.rejected.get(label, 0) + 1
    pending.touch()


def packet_forwarded(target: Peer, amount: int, fulfilled: bool) -> None:
    """The next hop ``target`` was sent a Prepare of ``amount`` (its units); ``fulfilled``:
    it fulfilled it and the node committed it (else the switch answered a Reject)."""
    pending = _pending()
    counts = pending.peer(target)
    if fulfilled:
        counts.out_fulfilled += 1
        if amount and counts.amount(target, "out", amount):
            counts.amount_out += amount
    else:
        counts.out_rejected += 1
    pending.touch()


def packet_local(reply: Reply | None) -> None:
    """A local receiver or handler answered ``reply`` (``None``: it never did)."""
    pending = _pending()
    outcome = FULFILLED if type(reply) is Fulfill else REJECTED
    pending.local[outcome] = pending.local.get(outcome, 0) + 1
    pending.touch()


def ledger_batch(size: int, seconds: float, *, failed: bool = False) -> None:
    """Record one ledger-writer batch of ``size`` commits that took ``seconds`` (once per
    transaction, in the writer thread: written at once)."""
    LEDGER_BATCH_SIZE.observe(size)
    LEDGER_BATCH_SECONDS.observe(seconds)
    if failed:
        LEDGER_BATCH_FAILURES.inc()


def link_state(peer: str, connected: bool) -> None:
    """This process now owns (``True``) or no longer owns a live link to ``peer``."""
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
    flush()
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


# --- the node's traffic, for the dashboard ------------------------------------------------

RATE_WINDOW_S = 10.0
RATE_MIN_SPAN_S = 0.5


def _counter_families() -> Iterable[Metric]:
    """The packet counters of the whole node: every process's files in multi-process
    mode (counters only: no histogram merging), else this process's series."""
    path = multiproc_dir()
    if path is None:
        return [*PACKETS.collect(), *FORWARDED.collect()]
    files = [str(f) for f in path.glob("counter_*.db")]
    families: list[Metric] = prom_multiprocess.MultiProcessCollector.merge(  # type: ignore[no-untyped-call]
        files, accumulate=True
    )
    return families


class _RateHistory:
    """(time, node-wide packets in) at each read, in this process: packets/s is the
    difference over the last :data:`RATE_WINDOW_S` (what Prometheus' ``rate()`` does)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, float]] = deque()

    def rate(self, total: float, now: float) -> float | None:
        """Packets/s over the last ``RATE_WINDOW_S`` (or since the previous read, when
        reads are further apart); ``None`` until two reads ``RATE_MIN_SPAN_S`` apart."""
        with self._lock:
            samples = self._samples
            if samples and total < samples[-1][1]:
                samples.clear()  # the counters restarted (the node's directory was emptied)
            samples.append((now, total))
            # Keep the newest sample that is at least a window old, and the ones after it.
            while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW_S:
                samples.popleft()
            then, before = samples[0]
            if now - then < RATE_MIN_SPAN_S:
                return None
            return (total - before) / (now - then)


_rates = _RateHistory()


def node_traffic(*, now: float | None = None) -> dict[str, Any]:
    """The whole node's packet counters (every process on this host in multi-process
    mode, since the node's metrics directory was emptied), in the shape of
    ``links.switch.dashboard_stats()``: ``packets_per_second`` (``None`` until this
    process has read twice), ``packets_in``, ``fulfilled``, ``rejected`` and ``peers``
    (name -> ``packets_in``, ``packets_out``, ``fulfilled``, ``rejected``). Sync, reads
    files: call it off the event loop in multi-process mode."""
    flush()
    peers: dict[str, dict[str, int]] = {}

    def peer(name: str) -> dict[str, int]:
        counters = peers.get(name)
        if counters is None:
            counters = peers[name] = dict.fromkeys(
                ("packets_in", "packets_out", "fulfilled", "rejected"), 0
            )
        return counters

    for family in _counter_families():
        for s in family.samples:
            if s.name == "ilp_packets_total":
                counters = peer(s.labels["peer"])
                n = int(s.value)
                counters["packets_in"] += n
                outcome = s.labels["outcome"]
                if outcome in (FULFILLED, REJECTED):
                    counters[outcome] += n
            elif s.name == "ilp_forwarded_total":
                peer(s.labels["peer"])["packets_out"] += int(s.value)
    totals = {k: sum(p[k] for p in peers.values()) for k in ("packets_in", "fulfilled", "rejected")}
    moment = time.monotonic() if now is None else now
    return {
        "packets_per_second": _rates.rate(float(totals["packets_in"]), moment),
        **totals,
        "peers": dict(sorted(peers.items())),
    }
