"""The dashboard's live snapshot: one JSON-safe dict the page renders from and the
``ws/ops/`` consumer pushes every couple of seconds.

:func:`process_state` reads what only this process knows: whether its switch runs and
its live links (call it on the event loop that owns them: no I/O, copies only).
:func:`build_snapshot` adds the whole node's state (:func:`node_state`: the packet
counters of every process from the Prometheus metrics, the peers connected in any
process from their link owners) and the database aggregates (sync: run it through
``database_sync_to_async``). Amounts are sent already formatted with the asset scale
(UInt64 does not fit a JavaScript number) and as exact integer strings.
``traffic.packets_per_second`` is ``null`` until the process answering has read the
counters twice (the page's first render; the live feed has it from its second snapshot).

Shape (``type`` is ``"snapshot"``)::

    {"type", "at", "range",
     "traffic": {"live", "packets_per_second", "packets_in", "fulfilled", "rejected"},
     "totals": {"receivers", "peers", "payments_24h", "received_24h"},
     "peers": [{"name", "relation", "link", "status", "connected_here", "connected_since",
                "last_packet_at", "balance", "balance_units", "min_balance", "max_balance",
                "unbounded_credit", "asset_code", "bar": {"left", "right", "unbounded", "warn"},
                "packets_in", "packets_out", "fulfilled", "rejected"}],
     "recent": [{"id", "receiver", "owner", "payment_id", "amount", "amount_units",
                 "asset_code", "chunks", "last_at"}],
     "chart": {"key", "svg"},            # svg omitted when unchanged since ``chart_key``
     "outgoing": [{"id", "destination", "state", "sent", "target", "progress", "created_at"}],
     "health": [{"name", "level", "summary", "detail"}]   # only when checks were given
    }
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from dashboard.charts import volume_svg
from dashboard.health import Check
from dashboard.selectors import (
    Range,
    incoming_payment_search,
    outgoing_payments,
    peer_rows,
    totals,
    volume_series,
)
from receivers.templatetags.ilp_format import format_amount

RECENT_PAYMENTS = 10


@dataclass(frozen=True, slots=True)
class ProcessState:
    """This process's own view: ``live`` its live links; ``traffic["live"]`` whether its
    switch was built."""

    traffic: Mapping[str, Any]
    live: tuple[str, ...] = field(default_factory=tuple)


def process_state() -> ProcessState:
    """This process's switch state and live links (cheap copies, no I/O)."""
    from links import registry
    from links.switch import peek_switch

    for _ in range(3):  # a sync view reads from a worker thread while the loop may change it
        try:
            live = tuple(registry.live_peers())
            break
        except RuntimeError:
            continue
    else:
        live = ()
    return ProcessState(traffic={"live": peek_switch() is not None}, live=live)


@dataclass(frozen=True, slots=True)
class NodeState:
    """The whole node's view: ``traffic`` the packet counters of every process
    (``interledger_site.metrics.node_traffic``), ``connected`` the peers with a live link
    in any process (``links.presence.connected_peers``; ``None`` in embedded mode, where
    this process's links are the node's)."""

    traffic: Mapping[str, Any]
    connected: frozenset[str] | None


def node_state() -> NodeState:
    """Read the node's state (sync: the metrics files, one or two Redis round trips)."""
    from interledger_site.metrics import node_traffic
    from links.presence import connected_peers

    connected = connected_peers()
    return NodeState(
        traffic=node_traffic(), connected=None if connected is None else frozenset(connected)
    )


def when(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S")


def _outgoing_amount(value: int, scale: int | None) -> str:
    return f"{value} units" if scale is None else format_amount(value, scale)


def _rate(value: Any) -> float | None:
    return None if value is None else round(float(value), 1)


def _opt_amount(value: int | None, scale: int) -> str | None:
    return None if value is None else format_amount(value, scale)


def build_snapshot(
    *,
    state: ProcessState,
    range_: Range = "24h",
    now: datetime | None = None,
    chart_key: str = "",
    checks: Sequence[Check] | None = None,
    node: NodeState | None = None,
) -> dict[str, Any]:
    """The snapshot (sync: a handful of indexed queries; ``node`` read here if not given)."""
    now = now or timezone.now()
    scale, code = settings.ILP_ASSET_SCALE, settings.ILP_ASSET_CODE
    node = node or node_state()
    traffic = node.traffic
    peers = peer_rows(traffic=traffic.get("peers", {}), live=state.live, connected=node.connected)
    counts = totals(now=now)
    series = volume_series(range_=range_, now=now)
    key = hashlib.sha256(
        repr([(b.start.isoformat(), b.amount, b.payments) for b in series]).encode()
    ).hexdigest()[:16]
    chart: dict[str, str] = {"key": key}
    if key != chart_key:
        chart["svg"] = volume_svg(series, range_=range_, scale=scale, code=code)
    outgoing = outgoing_payments()
    snapshot: dict[str, Any] = {
        "type": "snapshot",
        "at": now.isoformat(),
        "range": range_,
        "traffic": {
            "live": bool(state.traffic.get("live", False)),
            "packets_per_second": _rate(traffic.get("packets_per_second")),
            "packets_in": int(traffic.get("packets_in", 0)),
            "fulfilled": int(traffic.get("fulfilled", 0)),
            "rejected": int(traffic.get("rejected", 0)),
        },
        "totals": {
            "receivers": counts.receivers,
            "peers": counts.peers,
            "payments_24h": counts.payments_24h,
            "received_24h": format_amount(counts.received_24h, scale),
            "asset_code": code,
        },
        "peers": [
            {
                "name": p.name,
                "relation": p.relation,
                "link": p.link,
                "status": p.status,
                "connected_here": p.connected_here,
                "connected_since": when(p.connected_since) if p.status == "connected" else "",
                "last_packet_at": when(p.last_packet_at),
                "balance": format_amount(p.balance, p.asset_scale),
                "balance_units": str(p.balance),
                "min_balance": _opt_amount(p.min_balance, p.asset_scale),
                "max_balance": _opt_amount(p.max_balance, p.asset_scale),
                "unbounded_credit": p.unbounded_credit,
                "asset_code": p.asset_code,
                "bar": {
                    "left": p.bar.owed_to_us_pct,
                    "right": p.bar.owed_by_us_pct,
                    "unbounded": p.bar.unbounded,
                    "warn": p.bar.warn,
                },
                "packets_in": p.packets_in,
                "packets_out": p.packets_out,
                "fulfilled": p.fulfilled,
                "rejected": p.rejected,
            }
            for p in peers
        ],
        "recent": recent_payments(),
        "chart": chart,
        "outgoing": [
            {
                "id": o.id,
                "destination": o.destination,
                "state": o.state,
                "sent": _outgoing_amount(o.sent, o.scale),
                "target": _outgoing_amount(o.target, o.scale),
                "progress": o.progress_pct,
                "created_at": when(o.created_at),
            }
            for o in outgoing
        ],
    }
    if checks is not None:
        snapshot["health"] = [c.as_dict() for c in checks]
    return snapshot


def recent_payments(limit: int = RECENT_PAYMENTS) -> list[dict[str, Any]]:
    rows = []
    for p in incoming_payment_search()[:limit]:
        account = p.account
        receiver = account.receiver
        rows.append(
            {
                "id": p.pk,
                "receiver": receiver.name,
                "owner": receiver.user.get_username(),
                "payment_id": p.payment_id,
                "amount": format_amount(p.total, account.asset_scale),
                "amount_units": str(int(p.total)),
                "asset_code": account.asset_code,
                "chunks": p.chunks,
                "last_at": when(p.last_at),
            }
        )
    return rows
