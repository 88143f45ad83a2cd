"""REST API of peers and routes, staff only.

``/api/v1/peers/`` (list with live status and balance, create through
``links.services.peer_create``: the token is in the answer once), ``/api/v1/peers/<name>/``
(detail, change with ``peer_update``, delete with ``peer_remove``: the ledger account
stays) and ``/api/v1/routes/`` (the routing table of the serving process, or the routes
its switch would start with when no packet has reached it yet).

Live status and packet counters are this process's (``links.registry``,
``links.switch.dashboard_stats``); ``connected_since`` covers links held by other
processes (flushed by ``links.activity`` every few seconds).

A peer's abuse limits (``links.limits``: ``packets_per_second``, ``burst``,
``throughput_per_second``, ``max_in_flight``, ``replay_quota``, ``max_routes``) and its
``http_profile`` are read and set here as with ``manage.py add_peer``: a value out of range
is a 400 naming the field, a combination ``links.limits`` refuses a 400 ``peer_invalid``.
``throughput_per_second`` is an integer string (UInt64), ``null`` = unbounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

from django.conf import settings
from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import serializers, status
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response

from ilp.oer import UINT64_MAX
from interledger_site.api import ApiError, ApiGenericView, error_responses, validated_query
from links import registry
from links.limits import LIMIT_FIELDS
from links.models import HttpProfile, LinkKind, Peer, Relation
from links.peers import context_from_peer
from links.routing import DEFAULT_PREFIX, LOCAL_HOP, RouteEntry, static_routes
from links.selectors import PeerStatus, peer_get, peer_list, peer_status
from links.services import peer_create, peer_remove, peer_update
from links.switch import dashboard_stats, peek_switch


def _live_peers() -> set[str]:
    """Peers with a link in this process (read from a worker thread: retry on a race)."""
    for _ in range(3):
        try:
            return set(registry.live_peers())
        except RuntimeError:
            continue
    return set()


def _status(peer: Peer, live: set[str]) -> str:
    return peer_status(
        enabled=peer.enabled,
        link=peer.link,
        live_here=peer.name in live,
        connected_since=peer.connected_since,
    )


def _units(value: Any) -> str | None:
    return None if value is None else str(int(value))


class PeerSerializer(serializers.ModelSerializer[Peer]):
    status = serializers.SerializerMethodField(
        help_text="BTP: `connected` (a socket here or in another process) or `down`; "
        "HTTP-OER: `ready` (this process can send to the peer) or `idle`; or `disabled`."
    )
    balance = serializers.SerializerMethodField(
        help_text="Integer string. Positive: we owe the peer; negative: the peer owes us."
    )
    min_balance = serializers.SerializerMethodField(
        help_text="How far the peer may owe us (integer string); null = no limit."
    )
    max_balance = serializers.SerializerMethodField(
        help_text="How much we may owe the peer (integer string); null = no limit."
    )
    max_packet_amount = serializers.SerializerMethodField()
    account = serializers.CharField(source="account.code")
    traffic = serializers.SerializerMethodField(
        help_text="This process's counters: packets_in, packets_out, fulfilled, rejected."
    )
    throughput_per_second = serializers.SerializerMethodField(
        help_text="Amount per second the peer may send (integer string); null = unbounded."
    )

    class Meta:
        model = Peer
        fields: tuple[str, ...] = (
            "name",
            "relation",
            "link",
            "url",
            "ilp_address",
            "asset_code",
            "asset_scale",
            "enabled",
            "status",
            "connected_since",
            "last_packet_at",
            "account",
            "balance",
            "min_balance",
            "max_balance",
            "max_packet_amount",
            "send_routes",
            "receive_routes",
            "idempotent",
            "http_profile",
            "packets_per_second",
            "burst",
            "throughput_per_second",
            "max_in_flight",
            "replay_quota",
            "max_routes",
            "traffic",
            "created_at",
        )

    def get_status(self, obj: Peer) -> str:
        return _status(obj, self.context.get("live_peers", set()))

    def get_balance(self, obj: Peer) -> str:
        return str(int(obj.account.balance))

    def get_min_balance(self, obj: Peer) -> str | None:
        return _units(obj.account.min_balance)

    def get_max_balance(self, obj: Peer) -> str | None:
        return _units(obj.account.max_balance)

    def get_max_packet_amount(self, obj: Peer) -> str:
        return str(int(obj.max_packet_amount))

    def get_throughput_per_second(self, obj: Peer) -> str | None:
        return _units(obj.throughput_per_second)

    def get_traffic(self, obj: Peer) -> dict[str, int]:
        counters = self.context.get("traffic", {}).get(obj.name, {})
        return {
            k: int(counters.get(k, 0))
            for k in ("packets_in", "packets_out", "fulfilled", "rejected")
        }

    def to_representation(self, instance: Peer) -> dict[str, Any]:
        data = super().to_representation(instance)
        # Never echo credentials: a btp-client url carries the token as userinfo.
        if data.get("url") and "@" in data["url"]:
            scheme, _, rest = data["url"].partition("://")
            data["url"] = f"{scheme}://***@{rest.split('@', 1)[1]}"
        return data


class PeerCreatedSerializer(PeerSerializer):
    token = serializers.CharField(
        allow_null=True,
        help_text="The token the peer presents to us, shown this once (only its hash is kept).",
    )

    class Meta(PeerSerializer.Meta):
        fields = (*PeerSerializer.Meta.fields, "token")


def _uint(**kwargs: Any) -> serializers.IntegerField:
    return serializers.IntegerField(min_value=0, max_value=UINT64_MAX, **kwargs)


# The limit columns are PositiveIntegerFields: 32-bit on Postgres, whatever the backend.
INT32_MAX = 2**31 - 1


def _count(least: int, help_text: str) -> serializers.IntegerField:
    return serializers.IntegerField(
        required=False, min_value=least, max_value=INT32_MAX, help_text=help_text
    )


class _PeerSettingsSerializer(serializers.Serializer[Any]):
    """What create and change share: the header profile and the abuse limits."""

    http_profile = serializers.ChoiceField(
        choices=HttpProfile.choices,
        required=False,
        help_text="Headers of our HTTP-OER requests to the peer (rafiki: RFC 35's alone).",
    )
    packets_per_second = _count(1, "Prepares per second (token bucket refill; more → T05).")
    burst = _count(1, "Prepares the peer may send at once (token bucket capacity).")
    throughput_per_second = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=UINT64_MAX,
        help_text="Amount per second the peer may send (more → T04); null = unbounded.",
    )
    max_in_flight = _count(1, "Prepares of the peer in progress at once (more → T05).")
    replay_quota = _count(0, "Entries of the BTP/2.0-I replay memory the peer may fill.")
    max_routes = _count(0, "CCP routes accepted from the peer; more are ignored.")


def _split_limits(values: dict[str, Any]) -> dict[str, int | None]:
    """Take the limit fields out of validated ``values`` (only those given)."""
    return {field: values.pop(field) for field in LIMIT_FIELDS if field in values}


class PeerCreateSerializer(_PeerSettingsSerializer):
    name = serializers.CharField(help_text="`[a-z0-9][a-z0-9_~-]*`, at most 64 characters.")
    relation = serializers.ChoiceField(choices=Relation.choices)
    link = serializers.ChoiceField(choices=LinkKind.choices)
    token = serializers.CharField(
        required=False, help_text="The peer's token; generated when omitted (not for btp-client)."
    )
    url = serializers.CharField(required=False, default="", allow_blank=True)
    outgoing_token = serializers.CharField(required=False, default="", allow_blank=True)
    ilp_address = serializers.CharField(required=False, default="", allow_blank=True)
    min_balance = serializers.IntegerField(required=False, max_value=0, allow_null=True)
    max_balance = serializers.IntegerField(required=False, min_value=0, allow_null=True)
    max_packet_amount = _uint(required=False)
    send_routes = serializers.BooleanField(required=False, allow_null=True, default=None)
    receive_routes = serializers.BooleanField(required=False, allow_null=True, default=None)
    idempotent = serializers.BooleanField(required=False, default=False)
    enabled = serializers.BooleanField(required=False, default=True)


class PeerUpdateSerializer(_PeerSettingsSerializer):
    relation = serializers.ChoiceField(choices=Relation.choices, required=False)
    link = serializers.ChoiceField(choices=LinkKind.choices, required=False)
    token = serializers.CharField(required=False, help_text="Replace the peer's token.")
    url = serializers.CharField(required=False, allow_blank=True)
    outgoing_token = serializers.CharField(required=False, allow_blank=True)
    ilp_address = serializers.CharField(required=False, allow_blank=True)
    min_balance = serializers.IntegerField(required=False, max_value=0)
    max_balance = serializers.IntegerField(required=False, min_value=0)
    max_packet_amount = _uint(required=False)
    send_routes = serializers.BooleanField(required=False)
    receive_routes = serializers.BooleanField(required=False)
    idempotent = serializers.BooleanField(required=False)
    enabled = serializers.BooleanField(required=False)


class PeerFilter(serializers.Serializer[Any]):
    relation = serializers.ChoiceField(choices=Relation.choices, required=False)
    status = serializers.ChoiceField(choices=list(get_args(PeerStatus)), required=False)


class _PeerView(ApiGenericView):
    permission_classes = [IsAdminUser]
    serializer_class = PeerSerializer

    def get_serializer_context(self) -> dict[str, Any]:
        context: dict[str, Any] = super().get_serializer_context()
        context["live_peers"] = _live_peers()
        context["traffic"] = dashboard_stats().get("peers", {})
        return context


def _peer_or_404(name: str) -> Peer:
    peer = peer_get(name=name)
    if peer is None:
        raise ApiError("peer_not_found", f"no peer named {name!r}", 404)
    return peer


@extend_schema(tags=["peers (staff)"])
@extend_schema_view(
    get=extend_schema(
        operation_id="peers_list",
        summary="List peers (staff)",
        description="Every peer with its link status, balance against its limits and this "
        "process's packet counters.",
        parameters=[PeerFilter],
        responses={200: PeerSerializer(many=True), **error_responses(400, 401, 403)},
    ),
    post=extend_schema(
        operation_id="peers_create",
        summary="Add a peer (staff)",
        description="Creates the peer and its ledger account `peer:<name>`. The answer "
        "carries the peer's token once.",
        request=PeerCreateSerializer,
        responses={201: PeerCreatedSerializer, **error_responses(400, 401, 403, 409)},
    ),
)
class PeerListView(_PeerView):
    def get_queryset(self) -> QuerySet[Peer]:
        query = validated_query(PeerFilter, self.request)
        qs = peer_list()
        if query.get("relation"):
            qs = qs.filter(relation=query["relation"])
        wanted = query.get("status")
        if wanted:
            live = _live_peers()
            qs = qs.filter(pk__in=[p.pk for p in qs if _status(p, live) == wanted])
        return qs

    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    def post(self, request: Request) -> Response:
        data = PeerCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        limits = _split_limits(values)
        saved = peer_create(**values, limits=limits)
        peer = _peer_or_404(saved.peer.name)
        body = PeerSerializer(peer, context=self.get_serializer_context()).data
        body["token"] = saved.token
        return Response(body, status=status.HTTP_201_CREATED)


@extend_schema(tags=["peers (staff)"])
@extend_schema_view(
    get=extend_schema(
        operation_id="peers_retrieve",
        summary="One peer (staff)",
        responses={200: PeerSerializer, **error_responses(401, 403, 404)},
    ),
    patch=extend_schema(
        operation_id="peers_update",
        summary="Change a peer (staff)",
        description="Only the given fields change. Limits go through the ledger's service.",
        request=PeerUpdateSerializer,
        responses={200: PeerSerializer, **error_responses(400, 401, 403, 404)},
    ),
    delete=extend_schema(
        operation_id="peers_destroy",
        summary="Remove a peer (staff)",
        description="Its ledger account and postings stay.",
        responses={204: OpenApiResponse(description="Removed"), **error_responses(401, 403, 404)},
    ),
)
class PeerDetailView(_PeerView):
    def get(self, request: Request, name: str) -> Response:
        return Response(self.get_serializer(_peer_or_404(name)).data)

    def patch(self, request: Request, name: str) -> Response:
        _peer_or_404(name)
        data = PeerUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        limits = _split_limits(values)
        peer_update(name=name, **values, limits=limits)
        return Response(self.get_serializer(_peer_or_404(name)).data)

    def delete(self, request: Request, name: str) -> Response:
        if not peer_remove(name=name):
            raise ApiError("peer_not_found", f"no peer named {name!r}", 404)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- routes ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteRow:
    prefix: str
    next_hop: str
    origin: str
    relation: str
    path: list[str]
    epoch: int
    is_default: bool
    is_local: bool


class RouteSerializer(serializers.Serializer[RouteRow]):
    prefix = serializers.CharField(help_text="Address prefix; empty for the default route.")
    next_hop = serializers.CharField(help_text="Peer name; empty when this node serves it.")
    origin = serializers.ChoiceField(choices=["local", "configured", "ccp"])
    relation = serializers.CharField()
    path = serializers.ListField(child=serializers.CharField())
    epoch = serializers.IntegerField(help_text="Speaker's epoch that carried a learned route.")
    is_default = serializers.BooleanField()
    is_local = serializers.BooleanField()


def route_rows() -> tuple[bool, list[RouteRow]]:
    """``(live, rows)``: the serving process's table, else the starting routes."""
    switch = peek_switch()
    entries: list[RouteEntry]
    if switch is not None:
        entries, live = list(switch.routing.entries()), True
    else:
        peers = [context_from_peer(p) for p in Peer.objects.filter(enabled=True)]
        entries, live = static_routes(settings.ILP_ADDRESS, peers), False
    rows = [
        RouteRow(
            prefix=e.prefix,
            next_hop=e.next_hop,
            origin=str(e.origin),
            relation=e.relation,
            path=list(e.path),
            epoch=e.epoch,
            is_default=e.prefix == DEFAULT_PREFIX,
            is_local=e.next_hop == LOCAL_HOP,
        )
        for e in sorted(entries, key=lambda e: e.prefix)
    ]
    return live, rows


@extend_schema(tags=["routing (staff)"])
@extend_schema_view(
    get=extend_schema(
        operation_id="routes_list",
        summary="The routing table (staff)",
        description="Routes of the serving process's packet switch, sorted by prefix. "
        "Before the first packet reaches the process, the routes its switch will start "
        "with (header `X-Routes-Live: 0`).",
        responses={200: RouteSerializer(many=True), **error_responses(401, 403)},
    )
)
class RouteListView(ApiGenericView):
    permission_classes = [IsAdminUser]
    serializer_class = RouteSerializer

    def get(self, request: Request) -> Response:
        live, rows = route_rows()
        page = self.paginate_queryset(rows)  # type: ignore[arg-type]
        response = self.get_paginated_response(self.get_serializer(page, many=True).data)
        response["X-Routes-Live"] = "1" if live else "0"
        return response
