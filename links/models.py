"""Models of links: peers and the state the transports must keep durably.

* :class:`Peer` — one bilateral relation (BTP server/client or HTTP-OER sync/async).
  Its money lives in ``payments.LedgerAccount`` (``account``); this app never writes
  balances.
* :class:`BtpStoredResponse` — BTP/2.0-I replay table (btp.md §7.3/7.4): the reply
  bytes we sent for a request id on an idempotent link, kept for a bounded window.
* :class:`HttpAsyncRequest` — HTTP-OER-ASYNC requests we received (path profile and
  RFC 35 header form): the request id with its outcome, so that a repeated POST is
  never processed twice and the callback is retried until delivered.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from ilp.oer import UINT64_MAX
from links import limits
from payments.models import WholeNumberField

PEER_NAME_PATTERN = r"^[a-z0-9][a-z0-9_~-]*\Z"
DEFAULT_MAX_PACKET_AMOUNT = Decimal(10**12)


class UInt64Field(WholeNumberField):
    """A UInt64 setting (an amount per packet or per second), exact on every database.

    Postgres: ``numeric(20, 0)``. SQLite has no exact column for it: its numeric affinity
    keeps integers up to 2**63 - 1 and turns larger ones into doubles. On SQLite the column
    is ``text`` holding the decimal digits; the node only reads these values, it never
    compares them in SQL.
    """

    DIGITS = 20

    def db_type(self, connection: Any) -> str | None:
        return "text" if connection.vendor == "sqlite" else super().db_type(connection)

    def get_db_prep_value(self, value: Any, connection: Any, prepared: bool = False) -> Any:
        value = super().get_db_prep_value(value, connection, prepared)
        if value is not None and connection.vendor == "sqlite" and not hasattr(value, "as_sql"):
            return str(int(value))
        return value


class Relation(models.TextChoices):
    PARENT = "parent", "parent"
    PEER = "peer", "peer"
    CHILD = "child", "child"


class LinkKind(models.TextChoices):
    BTP_SERVER = "btp-server", "BTP server (the peer connects to /btp)"
    BTP_CLIENT = "btp-client", "BTP client (we connect to the peer's url)"
    HTTP_SYNC = "http-sync", "HTTP-OER synchronous"
    HTTP_ASYNC = "http-async", "HTTP-OER asynchronous"


class HttpProfile(models.TextChoices):
    """The header form of our HTTP-OER requests to a peer."""

    INTERLEDGER = "interledger", "ilp-plugin-http (ILP-Peer-Name, ILP-Destination)"
    RAFIKI = "rafiki", "RFC 35 only (Rafiki): raw OER, Bearer token, no ILP-Peer-Name"


class Peer(models.Model):
    name = models.CharField(
        max_length=64,
        unique=True,
        validators=[RegexValidator(PEER_NAME_PATTERN, "lowercase letters, digits, _ ~ - only")],
        help_text="Account name: the BTP auth_username and the child's address segment.",
    )
    relation = models.CharField(max_length=8, choices=Relation.choices)
    link = models.CharField(max_length=16, choices=LinkKind.choices)
    url = models.CharField(
        max_length=1000,
        blank=True,
        help_text="btp+ws(s)://name:token@host/path for btp-client; the peer's base URL for HTTP links.",
    )
    token_hash = models.CharField(
        max_length=200, blank=True, help_text="Salted hash of the token the peer presents to us."
    )
    outgoing_token = models.CharField(
        max_length=500,
        blank=True,
        help_text="Token we present to the peer (HTTP links; BTP clients use the url's userinfo).",
    )
    ilp_address = models.CharField(
        max_length=1023,
        blank=True,
        help_text="The peer's own ILP address when known; children default to <node>.<name>.",
    )
    asset_code = models.CharField(max_length=16)
    asset_scale = models.PositiveSmallIntegerField()
    account = models.OneToOneField(
        "payments.LedgerAccount", on_delete=models.PROTECT, related_name="peer"
    )
    max_packet_amount = UInt64Field(default=DEFAULT_MAX_PACKET_AMOUNT)
    send_routes = models.BooleanField(default=False)
    receive_routes = models.BooleanField(default=False)
    enabled = models.BooleanField(default=True)
    idempotent = models.BooleanField(
        default=False, help_text="Speak BTP/2.0-I (or retry HTTP-OER-ASYNC) on this link."
    )
    # Abuse limits (links.limits; enforced per process at the edge, in CCP and BTP/2.0-I).
    packets_per_second = models.PositiveIntegerField(
        default=limits.DEFAULT_PACKETS_PER_SECOND,
        validators=[MinValueValidator(1)],
        help_text="Token bucket refill: Prepares per second (more → T05).",
    )
    burst = models.PositiveIntegerField(
        default=limits.DEFAULT_BURST,
        validators=[MinValueValidator(1)],
        help_text="Token bucket capacity: Prepares the peer may send at once.",
    )
    throughput_per_second = UInt64Field(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(UINT64_MAX)],
        help_text="Amount per second the peer may send (more → T04); empty = unbounded.",
    )
    max_in_flight = models.PositiveIntegerField(
        default=limits.DEFAULT_MAX_IN_FLIGHT,
        validators=[MinValueValidator(1)],
        help_text="Prepares of this peer in progress at once (more → T05).",
    )
    replay_quota = models.PositiveIntegerField(
        default=limits.DEFAULT_REPLAY_QUOTA,
        help_text="Entries of the BTP/2.0-I replay memory this peer may fill.",
    )
    max_routes = models.PositiveIntegerField(
        default=limits.DEFAULT_MAX_ROUTES,
        help_text="CCP routes accepted from this peer; more are ignored.",
    )
    http_profile = models.CharField(
        max_length=16,
        choices=HttpProfile.choices,
        default=HttpProfile.INTERLEDGER,
        help_text="Headers of our HTTP-OER requests to it (rafiki: RFC 35's, nothing more).",
    )
    connected_since = models.DateTimeField(null=True, blank=True)
    last_packet_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.relation}, {self.link})"


class BtpStoredResponse(models.Model):
    """One answered request on a BTP/2.0-I link, replayed verbatim on a repeat.

    Keyed per account (``peer_name``), not per socket, so it survives reconnects and
    restarts. Rows are pruned once ``expires_at`` has passed (see ``links.idempotency``).
    """

    peer_name = models.CharField(max_length=64)
    request_id = models.PositiveBigIntegerField()
    digest = models.BinaryField(max_length=32)
    response = models.BinaryField()
    received_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["peer_name", "request_id"], name="btp_stored_response_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.peer_name}#{self.request_id}"


class HttpAsyncState(models.TextChoices):
    IN_PROGRESS = "in_progress", "in progress"
    DONE = "done", "reply known, not yet delivered"
    DELIVERED = "delivered", "reply delivered"
    FAILED = "failed", "gave up delivering"


class HttpAsyncRequest(models.Model):
    """A Prepare received over HTTP-OER-ASYNC, with its outcome and callback state."""

    peer = models.ForeignKey(Peer, on_delete=models.CASCADE, related_name="async_requests")
    request_id = models.CharField(max_length=64)
    digest = models.BinaryField(max_length=32)
    # The Prepare itself (OER), kept until the row goes: a request cut by a restart is
    # resumed from it (links.http_oer: its outcome looked up in the ledger or re-run).
    prepare = models.BinaryField(null=True, blank=True)
    state = models.CharField(
        max_length=16, choices=HttpAsyncState.choices, default=HttpAsyncState.IN_PROGRESS
    )
    reply = models.BinaryField(null=True, blank=True)
    callback_url = models.CharField(max_length=1000, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    received_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    # Until when the process working on the request (processing it or delivering its
    # callback) holds it; it renews the lease while it works. Another process resumes
    # the request only once the lease has run out (empty: nobody holds it).
    lease_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["peer", "request_id"], name="http_async_request_key")
        ]

    def __str__(self) -> str:
        return f"{self.peer_id}/{self.request_id} {self.state}"
