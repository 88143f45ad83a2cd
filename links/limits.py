"""Per-peer abuse limits (ilp-connector 21.3.0 style) and the edge limiter that enforces them.

:class:`PeerLimits` is part of a peer's settings (``Peer`` columns, carried on
``PeerContext.limits``):

* ``packets_per_second`` / ``burst`` — a token bucket over every Prepare the peer sends
  (zero-amount and ``peer.*`` ones included, as 21.3.0's ``rateLimit`` middleware counts
  all incoming data). Empty → Reject **T05** ``too many requests, throttling.``
* ``throughput_per_second`` — a token bucket over the *amount* of the peer's Prepares,
  capacity one second's worth (21.3.0's ``throughput`` middleware, incoming side).
  Over → Reject **T04** ``exceeded money bandwidth, throttling.``: 21.3.0's code and text
  (its ``InsufficientLiquidityError``), which senders read as "send less money", not
  "send fewer packets". ``None`` = unbounded (21.3.0's default too).
* ``max_in_flight`` — Prepares of the peer the node is still working on; one more →
  **T05** ``too many packets in flight, throttling.`` (21.3.0 has no such cap).
* ``replay_quota`` — the peer's share of the BTP/2.0-I replay memory (enforced by
  ``ilp.btp_session`` / ``links.idempotency``).
* ``max_routes`` — CCP routes accepted from the peer (``links.ccp``); more are ignored.

Defaults are far above what one honest peer sends (the interop load scenario peaks near
2,000 packets/s with 50 in flight over one link) and far below what would hurt the node.
21.3.0's own default (10,000 packets a *minute*, burst 10,000) would throttle that load.

:class:`EdgeLimiter` keeps its state in this process (per peer: two buckets and a
counter). A later step moves it to Redis for several processes; callers only see
``admit`` / ``release``. Everything is integer arithmetic on a nanosecond monotonic clock
(``time.monotonic_ns`` unless a test passes its own), O(1) and without I/O per packet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

DEFAULT_PACKETS_PER_SECOND: Final = 10_000
DEFAULT_BURST: Final = 20_000
DEFAULT_MAX_IN_FLIGHT: Final = 1_000
# A BTP/2.0-I entry lives at least the 120 s retention window, so the quota bounds a
# peer's sustained rate: 120,000 entries carry ~1,000 requests/s per idempotent peer.
DEFAULT_REPLAY_QUOTA: Final = 120_000
DEFAULT_MAX_ROUTES: Final = 10_000

# BTP auth (``/btp``): longer credentials are refused before any lookup. Our tokens are
# 43 characters; the cap leaves room for other implementations' secrets.
MAX_AUTH_TOKEN_LENGTH: Final = 1024
# Frames a peer may send after its auth Message while the auth is looked up, and their
# total size; beyond either the connection gets a BTP Error and is closed.
MAX_PREAUTH_FRAMES: Final = 64
MAX_PREAUTH_BYTES: Final = 1 << 20

_NS: Final = 1_000_000_000

# (ILP error code, message): the edge turns these into Rejects triggered by the node.
Refusal = tuple[str, str]
RATE_LIMITED: Final[Refusal] = ("T05", "too many requests, throttling.")
TOO_MANY_IN_FLIGHT: Final[Refusal] = ("T05", "too many packets in flight, throttling.")
BANDWIDTH_EXCEEDED: Final[Refusal] = ("T04", "exceeded money bandwidth, throttling.")


class InvalidLimits(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class PeerLimits:
    """A peer's limits (module docstring). Validated on construction."""

    packets_per_second: int = DEFAULT_PACKETS_PER_SECOND
    burst: int = DEFAULT_BURST
    throughput_per_second: int | None = None
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    replay_quota: int = DEFAULT_REPLAY_QUOTA
    max_routes: int = DEFAULT_MAX_ROUTES

    def __post_init__(self) -> None:
        for name in ("packets_per_second", "burst", "max_in_flight"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise InvalidLimits(f"{name} must be an integer >= 1")
        for name in ("replay_quota", "max_routes"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise InvalidLimits(f"{name} must be an integer >= 0")
        tput = self.throughput_per_second
        if tput is not None and (type(tput) is not int or not 1 <= tput < 2**64):
            raise InvalidLimits("throughput_per_second must be a UInt64 >= 1, or None")


DEFAULT_LIMITS: Final = PeerLimits()
LIMIT_FIELDS: Final = tuple(PeerLimits.__dataclass_fields__)


def auth_refusal(username: str, token: str, *, max_username: int) -> str | None:
    """Why BTP credentials are refused before any lookup, or ``None``."""
    if len(token) > MAX_AUTH_TOKEN_LENGTH:
        return f"auth_token too long (at most {MAX_AUTH_TOKEN_LENGTH} characters)"
    if len(username) > max_username:
        return f"auth_username too long (at most {max_username} characters)"
    return None


class _PeerState:
    """One peer's buckets. Levels are in token-nanoseconds (tokens x 10^9), so refills
    stay exact in integers however often the bucket is read."""

    __slots__ = ("amount_at", "amount_level", "in_flight", "limits", "packet_at", "packet_level")

    def __init__(self, limits: PeerLimits, now: int) -> None:
        self.limits = limits
        self.packet_level = limits.burst * _NS
        self.packet_at = now
        tput = limits.throughput_per_second
        self.amount_level = 0 if tput is None else tput * _NS
        self.amount_at = now
        self.in_flight = 0

    def adopt(self, limits: PeerLimits) -> None:
        """New settings: keep the levels (capped to the new capacities)."""
        old = self.limits
        self.limits = limits
        if old == limits:
            return
        self.packet_level = min(self.packet_level, limits.burst * _NS)
        tput = limits.throughput_per_second
        if tput is None:
            self.amount_level = 0
        elif old.throughput_per_second is None:
            self.amount_level = tput * _NS
        else:
            self.amount_level = min(self.amount_level, tput * _NS)


class EdgeLimiter:
    """Admission of incoming Prepares per peer (this process's view).

    Contract: every ``admit`` that returns ``None`` is matched by exactly one ``release``
    of the same peer name once the Prepare's reply is known.
    """

    def __init__(self, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self._clock = clock
        self._peers: dict[str, _PeerState] = {}

    def reset(self, clock: Callable[[], int] = time.monotonic_ns) -> None:
        """Forget every peer's state and use ``clock`` (tests; in nanoseconds)."""
        self._clock = clock
        self._peers.clear()

    def admit(self, name: str, limits: PeerLimits, amount: int) -> Refusal | None:
        """Take a packet (and ``amount``) from ``name``'s buckets and an in-flight slot;
        the refusal instead when a limit is reached (nothing is taken then, except the
        packet token when the refusal is for another limit, as 21.3.0 counts it)."""
        now = self._clock()
        state = self._peers.get(name)
        if state is None:
            state = self._peers[name] = _PeerState(limits, now)
        elif state.limits is not limits:
            state.adopt(limits)
        limits = state.limits
        cap = limits.burst * _NS
        level = state.packet_level + (now - state.packet_at) * limits.packets_per_second
        state.packet_at = now
        if level > cap:
            level = cap
        if level < _NS:
            state.packet_level = level
            return RATE_LIMITED
        state.packet_level = level - _NS
        if state.in_flight >= limits.max_in_flight:
            return TOO_MANY_IN_FLIGHT
        tput = limits.throughput_per_second
        if tput is not None and amount:
            cap = tput * _NS
            level = state.amount_level + (now - state.amount_at) * tput
            state.amount_at = now
            if level > cap:
                level = cap
            need = amount * _NS
            if level < need:
                state.amount_level = level
                return BANDWIDTH_EXCEEDED
            state.amount_level = level - need
        state.in_flight += 1
        return None

    def release(self, name: str) -> None:
        """The reply to one admitted Prepare of ``name`` is known."""
        state = self._peers.get(name)
        if state is not None and state.in_flight:
            state.in_flight -= 1

    def in_flight(self, name: str) -> int:
        state = self._peers.get(name)
        return 0 if state is None else state.in_flight


_limiter = EdgeLimiter()


def edge_limiter() -> EdgeLimiter:
    """The process's limiter (the edge binds it once: reset it, never replace it)."""
    return _limiter


def reset_edge_limiter(clock: Callable[[], int] = time.monotonic_ns) -> EdgeLimiter:
    """The process's limiter, emptied and on ``clock`` (tests; nanoseconds)."""
    _limiter.reset(clock)
    return _limiter
