"""``manage.py add_peer NAME --relation R --link K [...]``: create or update a peer.

Prints the URL to give the peer (``btp+ws://NAME:TOKEN@host/btp`` for a BTP server
link, the ``/ilp`` endpoint and token for HTTP links). A token is generated when none
is given on creation; a re-run with the same arguments updates the peer in place and
keeps its token unless ``--token`` is given. Names and flags are a stable interface.
"""

from __future__ import annotations

import argparse
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from links.models import LinkKind, Relation
from links.peers import InvalidPeerName
from links.selectors import peer_get
from links.services import PeerError, PeerSaved, peer_create, peer_update


def _uint(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return n


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
        }
        try:
            if peer_get(name=name) is None:
                created = {k: v for k, v in common.items() if v is not None}
                saved = peer_create(name=name, **created)
            else:
                saved = peer_update(name=name, **common)
        except (PeerError, InvalidPeerName) as exc:
            raise CommandError(str(exc)) from exc
        self._report(saved, opts["public_url"])

    def _report(self, saved: PeerSaved, public_url: str | None) -> None:
        peer = saved.peer
        verb = "created" if saved.created else "updated"
        self.stdout.write(f"peer {peer.name} {verb}: {peer.relation} over {peer.link}")
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


def _mask(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
