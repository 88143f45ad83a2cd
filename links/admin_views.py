"""Staff-only operator pages of the links app: the live routing table.

The page reads the process-wide switch (:func:`links.switch.peek_switch`) of the process
serving the request; it never builds one (a switch is built by the first packet). Before
that, it shows the routes the switch *would* start with, computed from the ``Peer`` rows.
Everything it reads is copied first, so this sync view (run in a worker thread under
ASGI) never iterates a structure the event loop is changing.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from links.models import Peer
from links.peers import context_from_peer
from links.routing import DEFAULT_PREFIX, LOCAL_HOP, RouteEntry, static_routes
from links.switch import peek_switch


@dataclass(frozen=True, slots=True)
class RouteRow:
    prefix: str
    next_hop: str
    relation: str
    path: str
    origin: str
    epoch: int
    advertised: bool


def _rows(entries: list[RouteEntry], advertised: set[str]) -> list[RouteRow]:
    return [
        RouteRow(
            prefix=e.prefix if e.prefix != DEFAULT_PREFIX else "(default route)",
            next_hop=e.next_hop if e.next_hop != LOCAL_HOP else "(this node)",
            relation=e.relation,
            path=" → ".join(e.path),
            origin=e.origin.value,
            epoch=e.epoch,
            advertised=e.prefix in advertised,
        )
        for e in entries
    ]


@staff_member_required
def routing_table(request: HttpRequest) -> HttpResponse:
    switch = peek_switch()
    if switch is not None:
        entries = switch.routing.entries()
        advertised = set(switch.ccp.forwarding.advertised)
        context = {
            "live": True,
            "node_address": switch.address,
            "rows": _rows(entries, advertised),
            "ccp": switch.ccp.status(),
            "stats": switch.stats.snapshot(),
        }
    else:
        peers = [context_from_peer(p) for p in Peer.objects.filter(enabled=True)]
        entries = sorted(static_routes(settings.ILP_ADDRESS, peers), key=lambda e: e.prefix)
        context = {
            "live": False,
            "node_address": settings.ILP_ADDRESS,
            "rows": _rows(entries, set()),
            "ccp": None,
            "stats": None,
        }
    return render(request, "links/routing_table.html", context)
