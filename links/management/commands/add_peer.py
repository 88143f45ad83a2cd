"""``manage.py add_peer NAME --relation R --link K [...]``: create or update a peer.

Prints the URL to give the peer (``btp+ws://NAME:TOKEN@host/btp`` for a BTP server
link, the ``/ilp`` endpoint and token for HTTP links). A token is generated when none
is given on creation; a re-run with the same arguments updates the peer in place and
keeps its token unless ``--token`` is given. Names and flags are a stable interface.

Then it prints the limits in force (credit and ``links.limits``: ``--packets-per-second``,
``--burst``, ``--throughput``, ``--max-in-flight``, ``--replay-quota``, ``--max-routes``;
a flag not given keeps the current value, or the default on creation) and warns on
stderr when the peer has no ``--min-balance``: it may then owe the node without bound.
"""

from __future__ import annotations

import argparse
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from links.limits import PeerLimits
from links.models import HttpProfile, LinkKind, Peer, Relation
from links.peers import InvalidPeerName, limits_of
from links.selectors import peer_get
from links.services import PeerError, PeerSaved, peer_create, peer_set_limits, peer_update

UNBOUNDED = "none"
# flag dest -> PeerLimits field
_LIMIT_FLAGS = {
    "packets_per_second": "packets_per_second",
    "burst": "burst",
    "throughput": "throughput_per_second",
    "max_in_flight": "max_in_flight",
    "replay_quota": "replay_quota",
    "max_routes": "max_routes",
}


def _uint(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return n


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return n


def _throughput(value: str) -> int | str:
    if value.strip().lower() in (UNBOUNDED, "unbounded"):
        return UNBOUNDED
    return _positive(value)


class Command(BaseCommand):
    help = "Create (or update) a peer and print the URL to give it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--relation", required=True, choices=Relation.values)
        parser.add_argument("--link", required=True, choices=LinkKind.values)
        parser.add_argument("--token", help="token the peer presents to us (default: generated)")
        parser.add_argument(
            "--url",
            default=None,
            help="btp+ws(s)://user:token@host/path for btp-client; peer base URL for HTTP links",
        )
        parser.add_argument("--outgoing-token", default=None, help="token we present (HTTP links)")
        parser.add_argument("--address", default=None, help="the peer's ILP address, if known")
        parser.add_argument("--min-balance", type=int, default=None)
        parser.add_argument("--max-balance", type=int, default=None)
        parser.add_argument("--max-packet-amount", type=_uint, default=None)
        parser.add_argument("--idempotent", action=argparse.BooleanOptionalAction, default=None)
        parser.add_argument("--send-routes", action=argparse.BooleanOptionalAction, default=None)
        parser.add_argument("--receive-routes", action=argparse.BooleanOptionalAction, default=None)
        parser.add_argument("--enabled", action=argparse.BooleanOptionalAction, default=None)
        parser.add_argument(
            "--http-profile",
            choices=HttpProfile.values,
            default=None,
            help="headers of our http-sync requests: interledger (ILP-Peer-Name, the default) "
            "or rafiki (RFC 35 only: raw OER, Bearer token, no ILP-Peer-Name)",
        )
        limits = parser.add_argument_group("abuse limits (default: keep, or links.limits defaults)")
        limits.add_argument(
            "--packets-per-second", type=_positive, help="Prepares per second (more: T05)"
        )
        limits.add_argument("--burst", type=_positive, help="Prepares at once (bucket capacity)")
        limits.add_argument(
            "--throughput",
            type=_throughput,
            help="amount per second the peer may send (more: T04), or 'none' for unbounded",
        )
        limits.add_argument(
            "--max-in-flight", type=_positive, help="Prepares in progress at once (more: T05)"
        )
        limits.add_argument(
            "--replay-quota", type=_uint, help="its entries of the BTP/2.0-I replay memory"
        )
        limits.add_argument("--max-routes", type=_uint, help="CCP routes accepted from it")
        parser.add_argument(
            "--public-url",
            default=None,
            help="base URL of this node for the printed link (default ILP_PUBLIC_URL or 127.0.0.1:8000)",
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        name: str = opts["name"]
        common = {
            "relation": opts["relation"],
            "link": opts["link"],
            "token": opts["token"],
            "url": opts["url"],
            "outgoing_token": opts["outgoing_token"],
            "ilp_address": opts["address"],
            "min_balance": opts["min_balance"],
            "max_balance": opts["max_balance"],
            "max_packet_amount": opts["max_packet_amount"],
            "send_routes": opts["send_routes"],
            "receive_routes": opts["receive_routes"],
            "idempotent": opts["idempotent"],
            "enabled": opts["enabled"],
            "http_profile": opts["http_profile"],
        }
        changes: dict[str, int | None] = {}
        for dest, field in _LIMIT_FLAGS.items():
            value = opts.get(dest)
            if value is not None:
                changes[field] = None if value == UNBOUNDED else value
        try:
            with transaction.atomic():
                if peer_get(name=name) is None:
                    created = {k: v for k, v in common.items() if v is not None}
                    saved = peer_create(name=name, **created)
                else:
                    saved = peer_update(name=name, **common)
                if changes:
                    peer_set_limits(name=name, changes=changes)
        except (PeerError, InvalidPeerName) as exc:
            raise CommandError(str(exc)) from exc
        self._report(saved, opts["public_url"])
        peer = peer_get(name=name)
        assert peer is not None
        self._report_limits(peer)

    def _report(self, saved: PeerSaved, public_url: str | None) -> None:
        peer = saved.peer
        verb = "created" if saved.created else "updated"
        profile = f" ({peer.http_profile} headers)" if peer.link == LinkKind.HTTP_SYNC else ""
        self.stdout.write(f"peer {peer.name} {verb}: {peer.relation} over {peer.link}{profile}")
        base = public_url or getattr(settings, "ILP_PUBLIC_URL", "") or "http://127.0.0.1:8000"
        base = base.rstrip("/")
        token = saved.token if saved.token is not None else "<unchanged token>"
        if peer.link == LinkKind.BTP_SERVER:
            ws = base.replace("https://", "btp+wss://").replace("http://", "btp+ws://")
            scheme, _, rest = ws.partition("://")
            self.stdout.write(f"{scheme}://{peer.name}:{token}@{rest}/btp")
        elif peer.link in (LinkKind.HTTP_SYNC, LinkKind.HTTP_ASYNC):
            self.stdout.write(f"{base}/ilp")
            self.stdout.write(f"token: {token}")
        else:
            self.stdout.write(f"dialling {_mask(peer.url)}")

    def _report_limits(self, peer: Peer) -> None:
        lo, hi = peer.account.min_balance, peer.account.max_balance
        limits: PeerLimits = limits_of(peer)
        tput = limits.throughput_per_second
        self.stdout.write("limits in force:")
        owes = "without bound" if lo is None else f"at most {-int(lo)} (min balance {int(lo)})"
        owed = "without bound" if hi is None else f"at most {int(hi)} (max balance {int(hi)})"
        self.stdout.write(f"  credit: it may owe us {owes}; we may owe it {owed}")
        self.stdout.write(f"  max packet amount: {int(peer.max_packet_amount)}")
        self.stdout.write(
            f"  packets: {limits.packets_per_second}/s, burst {limits.burst}, "
            f"in flight {limits.max_in_flight}; "
            f"throughput: {'unbounded' if tput is None else f'{tput}/s'}"
        )
        self.stdout.write(f"  replay quota: {limits.replay_quota}; CCP routes: {limits.max_routes}")
        if lo is None:
            self.stderr.write(
                self.style.WARNING(
                    f"WARNING: peer {peer.name} has no --min-balance: it may owe this node "
                    f"without bound (the node pays on what the peer sends before the peer "
                    f"settles). Set a limit, e.g. --min-balance -1000000 (units of "
                    f"{peer.asset_code} at scale {peer.asset_scale}; 0 = the peer must prepay)."
                )
            )


def _mask(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
