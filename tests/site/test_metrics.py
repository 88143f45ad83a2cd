"""``/metrics``: Prometheus text, counting what happened; the whole node in multi-process mode."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import AsyncClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from ilp.btp import BtpMessage, BtpResponse, BtpType, encode_ilp_frame, find_entry
from ilp.packet import Fulfill, Prepare, Reject, decode_prepare, decode_reply, encode_packet
from interledger_site import metrics
from links import activity, registry, services
from tests.links.btp_helpers import RawBtp
from tests.payments.conftest import _close_thread_connections  # noqa: F401 (session fixture)

ROOT = Path(__file__).resolve().parents[2]


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def _links_clean() -> Iterator[None]:
    registry.current().clear()
    activity.cancel()
    yield
    registry.current().clear()
    activity.cancel()
    activity._connection.clear()
    activity._last_packet.clear()


@dataclass(frozen=True)
class _Peer:
    name: str
    asset_code: str = "USD"
    asset_scale: int = 9


def test_packet_outcomes_are_counted_by_peer_and_code() -> None:
    alice = _Peer("m-alice")
    before_ok = sample("ilp_packets_total", peer="m-alice", outcome="fulfilled", code="")
    before_f02 = sample("ilp_packets_total", peer="m-alice", outcome="rejected", code="F02")
    before_other = sample("ilp_packets_total", peer="m-alice", outcome="rejected", code="other")
    before_amount = sample(
        "ilp_fulfilled_amount_total", peer="m-alice", asset_code="USD", asset_scale="9"
    )
    in_flight = sample("ilp_packets_in_flight")
    for _ in range(4):
        metrics.prepare_started()
    metrics.packet_handled(alice, 1500, Fulfill(bytes(32), b""))
    metrics.packet_handled(alice, 2500, Fulfill(bytes(32), b""))
    metrics.packet_handled(alice, 700, Reject("F02", "test.x", "unreachable", b""))
    # Refused at the edge: counted, never in flight.
    metrics.packet_handled(alice, 700, Reject("T05", "test.x", "slow down", b""), started=False)
    metrics.flush()
    assert sample("ilp_packets_in_flight") == in_flight + 1
    metrics.packet_handled(alice, 700, Reject("X!?", "test.x", "odd code", b""))
    metrics.flush()
    assert sample("ilp_packets_in_flight") == in_flight
    assert sample("ilp_packets_total", peer="m-alice", outcome="fulfilled", code="") == (
        before_ok + 2
    )
    assert sample("ilp_packets_total", peer="m-alice", outcome="rejected", code="F02") == (
        before_f02 + 1
    )
    # A next hop's made-up code does not grow the label set.
    assert sample("ilp_packets_total", peer="m-alice", outcome="rejected", code="other") == (
        before_other + 1
    )
    # Only fulfilled amounts count.
    assert sample(
        "ilp_fulfilled_amount_total", peer="m-alice", asset_code="USD", asset_scale="9"
    ) == (before_amount + 4000)


def test_ledger_batches_forwards_and_local_deliveries() -> None:
    bob = _Peer("m-bob", "XRP", 6)
    count = sample("ilp_ledger_batch_size_count")
    total = sample("ilp_ledger_batch_size_sum")
    failures = sample("ilp_ledger_batch_failures_total")
    amount = sample("ilp_forwarded_amount_total", peer="m-bob", asset_code="XRP", asset_scale="6")
    ok = sample("ilp_forwarded_total", peer="m-bob", outcome="fulfilled")
    rejected = sample("ilp_forwarded_total", peer="m-bob", outcome="rejected")
    local_ok = sample("ilp_local_total", outcome="fulfilled")
    local_rejected = sample("ilp_local_total", outcome="rejected")
    metrics.ledger_batch(40, 0.003)
    metrics.ledger_batch(2, 0.001, failed=True)
    metrics.packet_forwarded(bob, 990, True)
    metrics.packet_forwarded(bob, 990, False)
    metrics.packet_local(Fulfill(bytes(32), b""))
    metrics.packet_local(None)
    metrics.flush()
    assert sample("ilp_ledger_batch_size_count") == count + 2
    assert sample("ilp_ledger_batch_size_sum") == total + 42
    assert sample("ilp_ledger_batch_seconds_count") >= 2
    assert sample("ilp_ledger_batch_failures_total") == failures + 1
    assert sample(
        "ilp_forwarded_amount_total", peer="m-bob", asset_code="XRP", asset_scale="6"
    ) == (amount + 990)
    assert sample("ilp_forwarded_total", peer="m-bob", outcome="fulfilled") == ok + 1
    assert sample("ilp_forwarded_total", peer="m-bob", outcome="rejected") == rejected + 1
    assert sample("ilp_local_total", outcome="fulfilled") == local_ok + 1
    assert sample("ilp_local_total", outcome="rejected") == local_rejected + 1


async def test_increments_wait_for_the_end_of_the_loop_iteration() -> None:
    """On a loop the series are written once per iteration, with the iteration's sums."""
    carol = _Peer("m-carol-batch")
    before = sample("ilp_packets_total", peer=carol.name, outcome="fulfilled", code="")
    for _ in range(5):
        metrics.prepare_started()
        metrics.packet_handled(carol, 10, Fulfill(bytes(32), b""))
    assert sample("ilp_packets_total", peer=carol.name, outcome="fulfilled", code="") == before
    await asyncio.sleep(0)  # the flush scheduled by the first record runs
    assert sample("ilp_packets_total", peer=carol.name, outcome="fulfilled", code="") == (
        before + 5
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("_links_clean")
async def test_a_btp_link_shows_as_connected_while_it_is_up() -> None:
    await database_sync_to_async(services.peer_create)(
        name="m-carol", relation="child", link="btp-server", token="caroltoken"
    )
    client = AsyncClient()

    async def connected() -> float:
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/plain")
        got = parse(response.content.decode())
        return got.get(("ilp_links_connected", (("peer", "m-carol"),)), 0.0)

    raw = await RawBtp().open()
    reply = await raw.auth("m-carol", "caroltoken")
    assert isinstance(reply, BtpResponse)  # authenticated
    assert await connected() == 1.0
    await raw.close()
    # The consumer's disconnect runs when the communicator closes.
    assert registry.links_of("m-carol") == ()
    assert await connected() == 0.0


def test_metrics_refuses_post(client: object) -> None:
    response = client.post("/metrics")  # type: ignore[attr-defined]
    assert response.status_code == 405


def test_multiprocess_sums_processes_and_forgets_dead_links(tmp_path: Path) -> None:
    """Two live processes record, a third renders /metrics and the dashboard's traffic:
    counters and live gauges summed; once the two are gone their gauges are dropped (their
    links and in-flight packets went with them) and their counters stay."""
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
        "DJANGO_SETTINGS_MODULE": "interledger_site.settings",
        "PYTHONPATH": str(ROOT),
    }
    record = textwrap.dedent(
        """
        import os, sys
        from types import SimpleNamespace
        from ilp.packet import Fulfill
        from interledger_site import metrics
        alice = SimpleNamespace(name="alice", asset_code="USD", asset_scale=9)
        metrics.prepare_started()
        metrics.packet_handled(alice, int(sys.argv[1]), Fulfill(bytes(32), b""))
        metrics.packet_forwarded(alice, 7, True)
        metrics.prepare_started()  # still in flight while this process lives
        metrics.flush()
        metrics.link_state(sys.argv[2], True)
        metrics.ledger_batch(3, 0.002)
        print(os.getpid(), flush=True)
        sys.stdin.read()  # live until the test closes stdin
        """
    )
    render = textwrap.dedent(
        """
        import json, sys
        from interledger_site import metrics
        print(json.dumps(metrics.node_traffic()))
        sys.stdout.write(metrics.render()[0].decode())
        """
    )

    def rendered() -> tuple[dict[str, Any], dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
        shown = subprocess.run(
            [sys.executable, "-c", render], env=env, capture_output=True, timeout=60, text=True
        )
        assert shown.returncode == 0, shown.stderr
        first, _, rest = shown.stdout.partition("\n")
        return json.loads(first), parse(rest)

    recorders = [
        subprocess.Popen(
            [sys.executable, "-c", record, amount, peer],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for amount, peer in (("100", "parent-a"), ("250", "parent-b"))
    ]
    try:
        pids = []
        for proc in recorders:
            assert proc.stdout is not None
            pids.append(int(proc.stdout.readline()))  # it has recorded
        traffic, got = rendered()
        key = (("code", ""), ("outcome", "fulfilled"), ("peer", "alice"))
        assert got[("ilp_packets_total", key)] == 2.0
        amount_key = (("asset_code", "USD"), ("asset_scale", "9"), ("peer", "alice"))
        assert got[("ilp_fulfilled_amount_total", amount_key)] == 350.0
        assert got[("ilp_forwarded_total", (("outcome", "fulfilled"), ("peer", "alice")))] == 2.0
        assert got[("ilp_packets_in_flight", ())] == 2.0
        assert got[("ilp_links_connected", (("peer", "parent-a"),))] == 1.0
        assert got[("ilp_links_connected", (("peer", "parent-b"),))] == 1.0
        assert got[("ilp_ledger_batch_size_count", ())] == 2.0
        assert traffic["packets_in"] == 2 and traffic["fulfilled"] == 2
        assert traffic["peers"]["alice"] == {
            "packets_in": 2,
            "packets_out": 2,
            "fulfilled": 2,
            "rejected": 0,
        }
    finally:
        for proc in recorders:
            proc.communicate("", timeout=60)
    traffic, got = rendered()
    assert got[("ilp_packets_total", key)] == 2.0
    assert traffic["packets_in"] == 2
    assert got.get(("ilp_packets_in_flight", ()), 0.0) == 0.0
    assert ("ilp_links_connected", (("peer", "parent-a"),)) not in got
    # The recorders' live gauges are gone (only a renderer's own may remain).
    left = {int(f.stem.rsplit("_", 1)[-1]) for f in prom_dir.glob("gauge_live*")}
    assert not left & set(pids)


async def _serve_next_hop(raw: RawBtp, destination: str, fulfillment: bytes) -> Prepare:
    """Answer the frames the node sends ``raw`` until the Prepare for ``destination``
    arrives; fulfil that one (the node's own side messages, if any, get an F02)."""
    while True:
        frame = await raw.next(timeout=10)
        assert isinstance(frame, BtpMessage), frame
        entry = find_entry(frame, "ilp")
        assert entry is not None
        prepare = decode_prepare(entry.data)
        if prepare.destination == destination:
            reply: Fulfill | Reject = Fulfill(fulfillment, b"")
        else:
            reply = Reject("F02", "test.x", "not here", b"")
        await raw.send(encode_ilp_frame(BtpType.RESPONSE, frame.request_id, encode_packet(reply)))
        if prepare.destination == destination:
            return prepare


def _ilp_reply(frame: object) -> Fulfill | Reject:
    assert isinstance(frame, BtpResponse), frame
    entry = find_entry(frame, "ilp")
    assert entry is not None
    return decode_reply(entry.data)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("_links_clean")
async def test_packets_through_a_live_node_move_the_counters(settings: Any) -> None:
    """Two children on the node's /btp: one pays the other through the real switch and
    ledger, and sends one Prepare nobody serves. /metrics and the dashboard's node
    traffic count both."""
    for name in ("mx-alice", "mx-bob"):
        await database_sync_to_async(services.peer_create)(
            name=name,
            relation="child",
            link="btp-server",
            token=f"{name}-token",
            min_balance=-(10**12),
        )
    client = AsyncClient()

    async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = await client.get("/metrics")
        assert response.status_code == 200
        return parse(response.content.decode())

    def value(got: dict[Any, float], name: str, **labels: str) -> float:
        return got.get((name, tuple(sorted(labels.items()))), 0.0)

    asset = {"asset_code": settings.ILP_ASSET_CODE, "asset_scale": str(settings.ILP_ASSET_SCALE)}
    before = await scrape()
    traffic_before = await database_sync_to_async(metrics.node_traffic)()
    alice = await RawBtp().open()
    bob = await RawBtp().open()
    try:
        assert isinstance(await alice.auth("mx-alice", "mx-alice-token"), BtpResponse)
        assert isinstance(await bob.auth("mx-bob", "mx-bob-token"), BtpResponse)
        fulfillment = os.urandom(32)
        destination = f"{settings.ILP_ADDRESS}.mx-bob.pay"
        prepare = Prepare(
            1000,
            datetime.now(UTC) + timedelta(seconds=30),
            hashlib.sha256(fulfillment).digest(),
            destination,
            b"",
        )
        hop = asyncio.create_task(_serve_next_hop(bob, destination, fulfillment))
        rid = await alice.send_prepare(prepare)
        frame = await alice.next(timeout=10)
        assert frame is not None and frame.request_id == rid
        assert _ilp_reply(frame) == Fulfill(fulfillment, b"")
        forwarded = await hop
        rid = await alice.send_prepare(
            Prepare(5, prepare.expires_at, bytes(32), "test.nowhere.x", b"")
        )
        frame = await alice.next(timeout=10)
        assert frame is not None and frame.request_id == rid
        assert _ilp_reply(frame).code == "F02"  # type: ignore[union-attr]
    finally:
        await alice.close()
        await bob.close()
    got = await scrape()

    def moved(name: str, **labels: str) -> float:
        return value(got, name, **labels) - value(before, name, **labels)

    assert moved("ilp_packets_total", peer="mx-alice", outcome="fulfilled", code="") == 1
    assert moved("ilp_packets_total", peer="mx-alice", outcome="rejected", code="F02") == 1
    assert moved("ilp_fulfilled_amount_total", peer="mx-alice", **asset) == 1000
    assert moved("ilp_forwarded_total", peer="mx-bob", outcome="fulfilled") == 1
    assert moved("ilp_forwarded_amount_total", peer="mx-bob", **asset) == forwarded.amount
    assert moved("ilp_ledger_batch_size_count") >= 1
    assert value(got, "ilp_packets_in_flight") == value(before, "ilp_packets_in_flight")
    # The dashboard reads the same counters.
    traffic = await database_sync_to_async(metrics.node_traffic)()
    peers_before = traffic_before["peers"]
    alice_before = peers_before.get("mx-alice", {"packets_in": 0, "fulfilled": 0, "rejected": 0})
    assert traffic["peers"]["mx-alice"]["packets_in"] == alice_before["packets_in"] + 2
    assert traffic["peers"]["mx-alice"]["fulfilled"] == alice_before["fulfilled"] + 1
    assert traffic["peers"]["mx-alice"]["rejected"] == alice_before["rejected"] + 1
    bob_out = peers_before.get("mx-bob", {"packets_out": 0})["packets_out"]
    assert traffic["peers"]["mx-bob"]["packets_out"] == bob_out + 1
    assert traffic["packets_in"] == traffic_before["packets_in"] + 2


def test_packets_per_second_is_the_difference_over_the_window() -> None:
    history = metrics._RateHistory()
    assert history.rate(100.0, 1000.0) is None  # one read: no rate yet
    assert history.rate(101.0, 1000.1) is None  # too close to tell
    assert history.rate(150.0, 1002.0) == pytest.approx(25.0)
    for t in range(3, 30):  # read every second at 10 packets/s
        history.rate(150.0 + 10 * (t - 2), 1000.0 + t)
    assert history.rate(150.0 + 10 * 28, 1030.0) == pytest.approx(10.0)
    assert history.rate(0.0, 1031.0) is None  # the counters restarted
