"""Reads for the operator dashboard and the users' pages (sync; no writes, no locks).

State outside the database (the node's packet counters, the registry of this process's
live links, the peers connected anywhere in the node) is read by the caller and passed
in; everything here only touches the database, so the consumer can run it through
``database_sync_to_async``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Literal

from django.conf import settings
from django.db.models import Count, Max, Q, QuerySet, Sum
from django.db.models.functions import TruncDay, TruncHour
from django.utils import timezone

from links.models import Peer
from links.selectors import PeerStatus, peer_status
from payments.models import IncomingPayment, LedgerAccount, Receipt
from payments.models_outgoing import OutgoingPayment
from receivers.models import MonetizedPage, Receiver

if TYPE_CHECKING:
    from django.contrib.auth.models import User

Range = Literal["24h", "30d"]
RANGES: tuple[Range, ...] = ("24h", "30d")
BAR_WARN_PCT = 80.0


# --- peers -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BalanceBar:
    """A two-sided bar around zero: the left half fills as the peer's debt to us nears
    ``min_balance``, the right half as our debt to the peer nears ``max_balance``.
    ``unbounded`` when the side the balance is on has no limit (the half is drawn full,
    hatched)."""

    owed_to_us_pct: float
    owed_by_us_pct: float
    unbounded: bool
    warn: bool


def balance_bar(balance: int, min_balance: int | None, max_balance: int | None) -> BalanceBar:
    if balance < 0:
        if min_balance is None:
            return BalanceBar(100.0, 0.0, unbounded=True, warn=False)
        pct = 100.0 if min_balance == 0 else min(100.0, balance / min_balance * 100)
        return BalanceBar(round(pct, 1), 0.0, unbounded=False, warn=pct >= BAR_WARN_PCT)
    if balance > 0:
        if max_balance is None:
            return BalanceBar(0.0, 100.0, unbounded=True, warn=False)
        pct = 100.0 if max_balance == 0 else min(100.0, balance / max_balance * 100)
        return BalanceBar(0.0, round(pct, 1), unbounded=False, warn=pct >= BAR_WARN_PCT)
    return BalanceBar(0.0, 0.0, unbounded=False, warn=False)


@dataclass(frozen=True, slots=True)
class PeerRow:
    name: str
    relation: str
    link: str
    enabled: bool
    address: str
    status: PeerStatus
    connected_here: bool  # a live link in the process that answered
    # Status ``connected``: in this process or, with several processes, in the link's
    # owner (``links.presence``); ``connected_since`` is shown only then.
    connected_since: datetime | None
    last_packet_at: datetime | None
    asset_code: str
    asset_scale: int
    balance: int
    min_balance: int | None
    max_balance: int | None
    bar: BalanceBar
    unbounded_credit: bool  # no min_balance: the peer may owe the node without bound
    packets_in: int
    packets_out: int
    fulfilled: int
    rejected: int


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def peer_rows(
    *,
    traffic: Mapping[str, Mapping[str, int]] | None = None,
    live: Iterable[str] = (),
    connected: Iterable[str] | None = None,
) -> list[PeerRow]:
    """Every peer with its balance, limits and status (one query).

    ``traffic`` is the node's counters by peer (``interledger_site.metrics.node_traffic``),
    ``live`` the calling process's live links, ``connected`` the peers with a live link
    anywhere in the node (``links.presence.connected_peers``; ``None`` in embedded mode).
    With ``connected`` a BTP peer's status comes from it alone: ``Peer.connected_since``
    is written late and stays behind when a process is killed. Without it: see
    :func:`peer_status`.
    """
    traffic = traffic or {}
    live_here = set(live)
    anywhere = None if connected is None else set(connected)
    node = settings.ILP_ADDRESS
    rows = []
    for peer in Peer.objects.select_related("account").order_by("name"):
        account = peer.account
        balance = int(account.balance)
        lo, hi = _opt_int(account.min_balance), _opt_int(account.max_balance)
        here = peer.name in live_here
        if anywhere is None:
            status = peer_status(
                enabled=peer.enabled,
                link=peer.link,
                live_here=here,
                connected_since=peer.connected_since,
            )
        else:
            status = peer_status(
                enabled=peer.enabled,
                link=peer.link,
                live_here=here or peer.name in anywhere,
                connected_since=None,
            )
        counters = traffic.get(peer.name, {})
        rows.append(
            PeerRow(
                name=peer.name,
                relation=peer.relation,
                link=peer.link,
                enabled=peer.enabled,
                address=peer.ilp_address
                or (f"{node}.{peer.name}" if peer.relation == "child" else ""),
                status=status,
                connected_here=here,
                connected_since=peer.connected_since,
                last_packet_at=peer.last_packet_at,
                asset_code=peer.asset_code,
                asset_scale=peer.asset_scale,
                balance=balance,
                min_balance=lo,
                max_balance=hi,
                bar=balance_bar(balance, lo, hi),
                unbounded_credit=lo is None,
                packets_in=int(counters.get("packets_in", 0)),
                packets_out=int(counters.get("packets_out", 0)),
                fulfilled=int(counters.get("fulfilled", 0)),
                rejected=int(counters.get("rejected", 0)),
            )
        )
    return rows


# --- receivers and incoming payments -------------------------------------------------------------


def day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=timezone.get_current_timezone())


def incoming_payment_search(
    *,
    user: User | None = None,
    receiver: str = "",
    q: str = "",
    date_from: date | None = None,
    date_to: date | None = None,
) -> QuerySet[IncomingPayment]:
    """Incoming payments to receivers, newest activity first, with receiver and owner.

    ``user`` restricts to that user's receivers (``None``: all, for staff). ``receiver``
    is an exact receiver name; ``q`` matches the start of a payment id (hex) or part of a
    receiver name; ``date_from``/``date_to`` bound the last chunk's day (inclusive).
    """
    qs = IncomingPayment.objects.filter(account__receiver__isnull=False).select_related(
        "account__receiver__user"
    )
    if user is not None:
        qs = qs.filter(account__receiver__user=user)
    if receiver:
        qs = qs.filter(account__receiver__name=receiver)
    if q:
        q = q.strip()
        qs = qs.filter(
            Q(payment_id__startswith=q.lower()) | Q(account__receiver__name__icontains=q)
        )
    if date_from is not None:
        qs = qs.filter(last_at__gte=day_start(date_from))
    if date_to is not None:
        qs = qs.filter(last_at__lt=day_start(date_to + timedelta(days=1)))
    return qs.order_by("-last_at", "-id")


@dataclass(frozen=True, slots=True)
class ReceiverRow:
    receiver: Receiver
    payments: int
    received: int
    last_payment_at: datetime | None


def receiver_rows(*, q: str = "") -> list[ReceiverRow]:
    """Every receiver with its owner, balance and payment totals (two queries)."""
    qs = Receiver.objects.select_related("account", "user").order_by("name")
    if q:
        q = q.strip()
        qs = qs.filter(Q(name__icontains=q) | Q(user__username__icontains=q))
    receivers = list(qs)
    totals = {
        row["account_id"]: row
        for row in IncomingPayment.objects.filter(account_id__in=[r.account_id for r in receivers])
        .values("account_id")
        .annotate(n=Count("id"), total=Sum("total"), last=Max("last_at"))
        .order_by()
    }
    rows = []
    for r in receivers:
        t = totals.get(r.account_id, {})
        rows.append(
            ReceiverRow(
                receiver=r,
                payments=int(t.get("n") or 0),
                received=int(t.get("total") or 0),
                last_payment_at=t.get("last"),
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class Totals:
    receivers: int
    peers: int
    payments_24h: int
    received_24h: int


def totals(*, now: datetime) -> Totals:
    since = now - timedelta(hours=24)
    received = Receipt.objects.filter(
        account__kind=LedgerAccount.Kind.RECEIVER, created_at__gte=since
    ).aggregate(total=Sum("amount"))["total"]
    return Totals(
        receivers=Receiver.objects.count(),
        peers=Peer.objects.count(),
        payments_24h=IncomingPayment.objects.filter(first_at__gte=since).count(),
        received_24h=int(received or 0),
    )


# --- volume over time ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bucket:
    start: datetime
    amount: int  # received by receivers in the bucket (sum of receipts)
    payments: int  # incoming payments whose first chunk arrived in the bucket


def volume_series(*, range_: Range, now: datetime) -> list[Bucket]:
    """Received volume per hour (``24h``: the last 24 hours) or per day (``30d``),
    aggregated in the database; empty buckets are zeros. Only receipts in the node's
    asset are summed (receivers are always in it)."""
    tz = timezone.get_current_timezone()
    if range_ == "24h":
        step = timedelta(hours=1)
        last = now.astimezone(tz).replace(minute=0, second=0, microsecond=0)
        first = last - 23 * step
        trunc: Any = TruncHour
    else:
        step = timedelta(days=1)
        last = day_start(now.astimezone(tz).date())
        first = last - 29 * step
        trunc = TruncDay
    amounts = {
        row["bucket"]: int(row["total"] or 0)
        for row in Receipt.objects.filter(
            account__kind=LedgerAccount.Kind.RECEIVER,
            account__asset_code=settings.ILP_ASSET_CODE,
            account__asset_scale=settings.ILP_ASSET_SCALE,
            created_at__gte=first,
        )
        .annotate(bucket=trunc("created_at", tzinfo=tz))
        .values("bucket")
        .annotate(total=Sum("amount"))
        .order_by()
    }
    counts = {
        row["bucket"]: int(row["n"])
        for row in IncomingPayment.objects.filter(
            account__kind=LedgerAccount.Kind.RECEIVER, first_at__gte=first
        )
        .annotate(bucket=trunc("first_at", tzinfo=tz))
        .values("bucket")
        .annotate(n=Count("id"))
        .order_by()
    }
    series = []
    start = first
    while start <= last:
        series.append(Bucket(start, amounts.get(start, 0), counts.get(start, 0)))
        start += step
    return series


# --- outgoing payments ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutgoingRow:
    id: str
    destination: str
    state: str
    sent: int
    target: int
    scale: int | None  # of ``sent``/``target``; None when in the receiver's (unknown) units
    progress_pct: float | None
    created_at: datetime


def outgoing_payments(*, limit: int = 10) -> list[OutgoingRow]:
    """The latest outgoing payments, newest first. ``source`` mode: ``amount_sent`` of
    ``amount`` in the source account's units; ``destination`` mode: ``amount_delivered``
    of ``amount`` in the receiver's units."""
    rows = []
    for p in OutgoingPayment.objects.select_related("source_account").order_by("-pk")[:limit]:
        destination_mode = p.mode == OutgoingPayment.Mode.DESTINATION
        sent = int(p.amount_delivered if destination_mode else p.amount_sent)
        target = int(p.amount)
        scale = None if destination_mode else p.source_account.asset_scale
        pct = round(min(100.0, sent / target * 100), 1) if target else None
        rows.append(
            OutgoingRow(
                id=str(p.pk),
                destination=p.receiver,
                state=p.status,
                sent=sent,
                target=target,
                scale=scale,
                progress_pct=pct,
                created_at=p.created_at,
            )
        )
    return rows


# --- the user's own things -----------------------------------------------------------------------------


def monetized_page_list_for_user(*, user: User) -> QuerySet[MonetizedPage]:
    return MonetizedPage.objects.filter(owner=user).select_related("receiver__account")
