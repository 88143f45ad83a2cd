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

Two limiters, one contract at the edge (``admit_prepare`` → a :class:`Slot` or the
refusal; ``release_slot`` once the reply is known). The node runtime
(``interledger_site.runtime``) builds one per runtime, :func:`build_limiter`:

* :class:`EdgeLimiter` (embedded mode, no ``REDIS_URL``): the state in this process (per
  peer: two buckets and a counter). Integer arithmetic on a nanosecond monotonic clock
  (``time.monotonic_ns`` unless a test passes its own), O(1), no I/O per packet.
* :class:`SharedLimiter` (``REDIS_URL`` set, unless ``ILP_SHARED_LIMITS=0``): the same
  three limits for the whole node, whichever process a packet lands on, kept in Redis
  (:data:`LEASE_LUA`, on Redis's clock) and **spent from local leases**: each process
  takes, per peer, a few packet tokens, some throughput amount and some in-flight slots
  from Redis in one call, and admits from them in memory, with no round trip per packet.
  Top-ups are asked ahead of need (when a lease falls to half its size) and, with the
  returns, batched: one script call carries every peer queued while the previous call was
  in flight (as the shared credit's holds, ``payments.ledger.shared``). Only a packet that
  finds its lease empty waits for a call. Releases are local; spare slots go back in the
  next call.

  *Lease size.* A lease aims at :data:`LEASE_HORIZON_NS` (100 ms) of the process's own
  recent traffic for the peer (its rate since the last call, smoothed; doubled when
  packets ran out before the top-up came), and is capped at 1/:data:`LEASE_FRACTION`
  (1/16) of the limit it is cut from: ``L = min(burst, rate) // 16`` tokens (at least 1),
  ``A = throughput // 16`` units. Slots: the most the process had in flight over the last
  one or two ticks (replies come in group commits, so the count swings from that peak to
  near zero and back within milliseconds: sized on the moment's count, the slots went
  back and forth in a call per swing) plus ``H = max_in_flight // 16`` spare at most (0
  below 16: then every admission and release is a call, exact). A process holds
  at most ``L`` unused tokens and ``A`` unused units after any call (more only until the
  next one gives the excess back: a refusal for another limit leaves a waiting packet's
  amount unspent), and idle leases (:data:`LEASE_IDLE_NS`) go back by themselves
  (:data:`LEASE_TICK_S`).

  *The bound.* Tokens and amount leave the shared buckets only through leases, so over
  any window ``W`` the node admits at most ``burst + rate x W + N x L`` packets and
  ``throughput x (1 + W) + N x A`` of amount, ``N`` the processes (the in-memory bucket:
  the same without ``N x L``). The in-flight cap is **exact**: the slots the processes
  hold never add up to more than ``max_in_flight``, and a process admits only on slots it
  holds. The price is the other way: a packet may be refused (T05) while other processes
  hold spare tokens or slots: at most ``2L`` tokens each, and slots for their peak of the
  last half second plus ``2H`` each, until their next tick or their idle return. A peer over its rate still gets T05, over
  throughput T04, in flight T05 (as :class:`EdgeLimiter` counts them); when the bucket
  is found empty, the peer's packets are refused without a call until one token would
  have refilled (an over-rate peer costs at most one call per token).

  *Expiry.* A process's slots are one field of a hash scored in a sorted set by expiry:
  Redis keeps them :data:`LEASE_VALID_MS` + ``ILP_MAX_HOLD_TIME_MS`` +
  :data:`SLOT_MARGIN_MS` after the call that granted them, and the process admits on them
  only for :data:`LEASE_VALID_MS` after it sent that call (renewed at half of it while in
  use), so every packet admitted on a slot is done before Redis frees it; a killed
  process's slots free themselves then (45 s by default), with no keeper. Its tokens and
  amount are simply lost (the buckets refill at their rate; nothing over-admits). A
  process shutting down (``aclose``) gives everything back. The buckets' hash expires
  once it would have refilled anyway. **Redis unreachable → the local share**: for
  :data:`FALLBACK_S` after a failed call, packets that find their lease empty are
  admitted by an in-memory :class:`EdgeLimiter` with the peer's limits divided by the
  number of processes Redis last counted (every call registers its process for
  :data:`PROCESS_TTL_MS`), so the node as a whole stays near its limits instead of
  refusing every packet (T05) for an outage of the limiter's store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger(__name__)

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


MAX_COUNT: Final = 2**31 - 1  # the largest count limit a peer's row can hold


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
        # The columns are PositiveIntegerField: Postgres's integer ends at 2**31 - 1 (a larger
        # value failed the save with a DataError instead of a reason).
        for name in ("packets_per_second", "burst", "max_in_flight"):
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= MAX_COUNT:
                raise InvalidLimits(f"{name} must be an integer from 1 to {MAX_COUNT}")
        for name in ("replay_quota", "max_routes"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= MAX_COUNT:
                raise InvalidLimits(f"{name} must be an integer from 0 to {MAX_COUNT}")
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


class Slot:
    """An admitted Prepare's in-flight slot: give it back with ``release_slot``."""

    __slots__ = ("lease", "local", "member", "name")

    def __init__(
        self,
        name: str,
        member: str = "",
        local: EdgeLimiter | None = None,
        lease: _Lease | None = None,
    ) -> None:
        self.name = name
        self.member = member  # unused since slots are leased (kept for callers' sake)
        self.local = local  # the in-memory limiter that holds it, if any
        self.lease = lease  # the shared limiter's lease it was admitted on, if any


class Limiter(Protocol):
    """What the edge (``links.edge``) uses; the runtime holds one."""

    async def admit_prepare(
        self, name: str, limits: PeerLimits, amount: int, expires_at: datetime
    ) -> Slot | Refusal: ...

    def release_slot(self, slot: Slot) -> None: ...

    def close(self) -> None: ...


class EdgeLimiter:
    """Admission of incoming Prepares per peer (this process's view).

    Contract: every ``admit`` that returns ``None`` is matched by exactly one ``release``
    of the same peer name once the Prepare's reply is known.
    """

    def __init__(self, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self._clock = clock
        self._peers: dict[str, _PeerState] = {}
        self._slots: dict[str, Slot] = {}

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

    async def admit_prepare(
        self, name: str, limits: PeerLimits, amount: int, expires_at: datetime
    ) -> Slot | Refusal:
        """:meth:`admit` behind the edge's contract (never suspends)."""
        refused = self.admit(name, limits, amount)
        if refused is not None:
            return refused
        slot = self._slots.get(name)  # one per peer: nothing but the name is needed back
        if slot is None:
            slot = self._slots[name] = Slot(name, "", self)
        return slot

    def release_slot(self, slot: Slot) -> None:
        self.release(slot.name)

    def close(self) -> None:
        self._peers.clear()


# --- shared across processes (Redis), spent from local leases ------------------------------

LEASE_FRACTION: Final = 16  # a lease is at most this fraction of the limit it is cut from
LEASE_HORIZON_NS: Final = 100_000_000  # a lease aims to last this long at the recent rate
LEASE_VALID_MS: Final = 5_000  # leased slots are used this long after the call that granted them
LEASE_IDLE_NS: Final = 1_000_000_000  # a peer unused this long gives its lease back
LEASE_TICK_S: Final = 0.25  # how often idle, renewable or oversized leases are looked at
SLOT_MARGIN_MS: Final = 10_000  # slots outlive the longest hold they may cover by this much
PROCESS_TTL_MS: Final = 30_000  # a process counts for the fallback share this long
FALLBACK_S: Final = 1.0  # after a failed call, the local share this long before trying again
MAX_OPS: Final = 1_000  # peers per script call

# ARGV: key prefix, this process's id, its liveness ms, the slots' lease ms, then every op
# of the call in one string (per-argument encoding was most of the client's cost), one a
# line, one per peer:
#   L <peer> <pps> <burst> <tput|-> <max_in_flight> <want tokens> <return tokens>
#     <want amount> <return amount> <slots wanted>
# Tokens and amount are taken from (or given back to) the peer's two buckets, at most
# what they hold; "slots wanted" is the number of in-flight slots this process wants to
# hold in all (not a difference), granted up to the cap less the other live processes'
# holdings. Returns "<live processes>" then "|<tokens> <amount> <slots>" per op.
# Levels in token-microseconds (tokens x 10^6) on Redis's clock (us): exact in Lua's
# doubles up to 9 x 10^9 tokens of burst or units a second of throughput (beyond, a
# limit on a rate rounds by one part in 2^53; no money is counted on it).
LEASE_LUA: Final = r"""
local P, me = ARGV[1], ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local nowms = math.floor(now / 1000)
local sttl = tonumber(ARGV[4])
local function f(x) return string.format('%.0f', x) end
local pk = P .. 'procs'
redis.call('ZADD', pk, nowms + tonumber(ARGV[3]), me)
redis.call('ZREMRANGEBYSCORE', pk, '-inf', nowms)
redis.call('PEXPIRE', pk, tonumber(ARGV[3]))
local out = {tostring(redis.call('ZCARD', pk))}
for line in string.gmatch(ARGV[5], '[^\n]+') do
  local name, a1, a2, a3, a4, a5, a6, a7, a8, a9 = string.match(line,
    '^L (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
  if not name then return redis.error_reply('limits: bad op') end
  local pps, burst, tput, cap = tonumber(a1), tonumber(a2), tonumber(a3), tonumber(a4)
  local wt, rt, wa, ra, ws = tonumber(a5), tonumber(a6), tonumber(a7), tonumber(a8), tonumber(a9)
  local bk = P .. 'b:' .. name
  local r = redis.call('HMGET', bk, 'pl', 'pt', 'al', 'at')
  local pcap = burst * 1000000
  local pl = pcap
  if r[1] then pl = tonumber(r[1]) + (now - tonumber(r[2])) * pps end
  pl = pl + rt * 1000000
  if pl > pcap then pl = pcap end
  local gt = math.floor(pl / 1000000)
  if gt > wt then gt = wt end
  if gt < 0 then gt = 0 end
  pl = pl - gt * 1000000
  local ttl = math.ceil(burst * 1000 / pps) + 2000
  local ga = 0
  if tput then
    local acap = tput * 1000000
    local al = acap
    if r[3] then al = tonumber(r[3]) + (now - tonumber(r[4])) * tput end
    al = al + ra * 1000000
    if al > acap then al = acap end
    ga = math.floor(al / 1000000)
    if ga > wa then ga = wa end
    if ga < 0 then ga = 0 end
    al = al - ga * 1000000
    redis.call('HSET', bk, 'pl', f(pl), 'pt', f(now), 'al', f(al), 'at', f(now))
    if ttl < 3000 then ttl = 3000 end
  else
    if r[3] then redis.call('HDEL', bk, 'al', 'at') end
    redis.call('HSET', bk, 'pl', f(pl), 'pt', f(now))
  end
  redis.call('PEXPIRE', bk, ttl)
  local sk, ek = P .. 's:' .. name, P .. 'e:' .. name
  local dead = redis.call('ZRANGEBYSCORE', ek, '-inf', nowms)
  if #dead > 0 then
    redis.call('HDEL', sk, unpack(dead))
    redis.call('ZREM', ek, unpack(dead))
  end
  local held = redis.call('HGETALL', sk)
  local others = 0
  for i = 1, #held, 2 do
    if held[i] ~= me then others = others + tonumber(held[i + 1]) end
  end
  local gs = cap - others
  if gs > ws then gs = ws end
  if gs > 0 then
    redis.call('HSET', sk, me, gs)
    redis.call('ZADD', ek, nowms + sttl, me)
    redis.call('PEXPIRE', sk, sttl)
    redis.call('PEXPIRE', ek, sttl)
  else
    gs = 0
    if #held > 0 then
      redis.call('HDEL', sk, me)
      redis.call('ZREM', ek, me)
    end
  end
  out[#out + 1] = f(gt) .. ' ' .. f(ga) .. ' ' .. gs
end
return table.concat(out, '|')
"""


class _Lease:
    """One peer's lease in this process (one event loop): what it may still admit without
    asking Redis, and what it knows of its own recent traffic to size the next top-up."""

    __slots__ = (
        "amount",
        "arate",
        "asked",
        "biggest",
        "count",
        "dry_until",
        "headroom",
        "in_flight",
        "key",
        "limits",
        "line",
        "low_amount",
        "low_slots",
        "low_tokens",
        "max_amount",
        "max_headroom",
        "max_tokens",
        "name",
        "peak",
        "peak_before",
        "queued",
        "rate",
        "renew_at",
        "rules",
        "side",
        "since",
        "slot",
        "slots",
        "target_amount",
        "target_tokens",
        "token_ns",
        "tokens",
        "used_at",
        "valid_until",
        "volume",
        "waiting",
    )

    def __init__(self, name: str, key: str, limits: PeerLimits, now: int, side: _Side) -> None:
        self.name = name
        self.side = side
        self.key = key  # the peer's name as one field of an op
        self.slot = Slot(name, "", None, self)  # one per peer: only the lease is needed back
        self.tokens = 0  # packets this process may admit
        self.amount = 0  # throughput units it may admit
        self.slots = 0  # in-flight slots it holds in Redis (its local cap)
        self.in_flight = 0  # of which in use
        # The most in flight since the last tick, and in the tick before: the slots are
        # sized on it, not on the moment's count (replies come in group commits: the count
        # swings from the peak to near zero and back within a few ms).
        self.peak = self.peak_before = 0
        self.valid_until = 0  # monotonic ns: the slots are used until then, renewed before
        self.renew_at = 0
        self.dry_until = 0  # the bucket was found empty: refuse without asking until then
        self.waiting: list[tuple[int, asyncio.Future[Slot | Refusal]]] = []
        self.queued = False  # in the side's next (or current) call
        self.asked: tuple[int, int, int, int] = (0, 0, 0, 0)  # waiters, tokens, amount, slots
        self.line = ""  # the op of the next call
        self.count = 0  # packets admitted since ``since`` (the rate estimate)
        self.volume = 0  # their amount
        self.biggest = 0  # the largest amount since the last call
        self.since = now
        self.used_at = now
        self.rate = 0.0  # packets per ns, smoothed
        self.arate = 0.0  # amount per ns, smoothed
        self.target_tokens = self.target_amount = 1  # (size() sets them)
        self.adopt(limits)

    def adopt(self, limits: PeerLimits) -> None:
        self.limits = limits
        tput = limits.throughput_per_second
        self.max_tokens = max(1, min(limits.burst, limits.packets_per_second) // LEASE_FRACTION)
        self.max_amount = 0 if tput is None else max(1, tput // LEASE_FRACTION)
        # Below LEASE_FRACTION slots, none spare: each admission and release is a call.
        self.max_headroom = limits.max_in_flight // LEASE_FRACTION
        self.token_ns = -(-_NS // limits.packets_per_second)  # one token's refill time
        self.rules = (
            f"{limits.packets_per_second} {limits.burst} {'-' if tput is None else tput} "
            f"{limits.max_in_flight}"
        )
        self.size(self.since)

    def size(self, now: int, missed: bool = False) -> None:
        """The next lease from the rate since the last call (smoothed), capped; doubled
        when packets ran out of the last one before its top-up came (ramping up)."""
        dt = now - self.since
        if dt >= 1_000_000:  # below 1 ms the count says little
            rate, arate = self.count / dt, self.volume / dt
            self.rate = rate if rate > self.rate else (rate + self.rate) / 2
            self.arate = arate if arate > self.arate else (arate + self.arate) / 2
            self.count = self.volume = 0
            self.since = now
        if missed:
            self.rate = max(self.rate, 2 * self.target_tokens / LEASE_HORIZON_NS)
            if self.max_amount:
                self.arate = max(self.arate, 2 * self.target_amount / LEASE_HORIZON_NS)
        self.target_tokens = min(self.max_tokens, int(self.rate * LEASE_HORIZON_NS) + 1)
        self.low_tokens = self.target_tokens // 2
        if self.max_amount:
            want = int(self.arate * LEASE_HORIZON_NS) + self.biggest
            self.target_amount = max(1, min(self.max_amount, want))
            self.low_amount = self.target_amount // 2
        else:
            self.target_amount = self.low_amount = 0
        self.headroom = min(self.max_headroom, self.recent_peak() // 4 + 1)
        self.low_slots = self.headroom // 2

    def recent_peak(self) -> int:
        return max(self.in_flight, self.peak, self.peak_before)

    def holds(self) -> bool:
        return bool(self.tokens or self.amount or self.slots or self.waiting)

    def take(self, amount: int, now: int, final: bool) -> Slot | Refusal | None:
        """Admit from the lease; the refusal (``final``: after a call; otherwise only when
        known without one) or ``None`` (Redis must be asked first). Counts as
        :meth:`EdgeLimiter.admit` does: a refusal for in-flight or throughput spends the
        packet's token, one for rate nothing."""
        if self.tokens < 1:
            return RATE_LIMITED if final or now < self.dry_until else None
        if self.in_flight >= self.slots or now >= self.valid_until:
            if not final:
                return None
            self.tokens -= 1
            return TOO_MANY_IN_FLIGHT
        if self.max_amount and amount > self.amount:
            if not final:
                return None
            self.tokens -= 1
            return BANDWIDTH_EXCEEDED
        self.tokens -= 1
        self.in_flight += 1
        if self.in_flight > self.peak:
            self.peak = self.in_flight
        if self.max_amount:
            self.amount -= amount
        self.count += 1
        self.volume += amount
        if amount > self.biggest:
            self.biggest = amount
        self.used_at = now
        return self.slot


@dataclass(slots=True)
class _LimitsStats:
    calls: int = 0
    ops: int = 0  # peers' lease calls (several per script call)
    waits: int = 0  # packets that waited for a call (the rest were admitted from a lease)
    dry: int = 0  # refused as over the rate without a call (the bucket was found empty)
    failures: int = 0
    fallbacks: int = 0  # admissions decided by the local share
    max_ops: int = 0


@dataclass(slots=True)
class _Side:
    """Per event loop: the async client, the peers' leases and the queue of the next call."""

    client: aioredis.Redis
    script: Any
    leases: dict[str, _Lease] = field(default_factory=dict)
    pending: list[_Lease] = field(default_factory=list)
    runner: asyncio.Task[None] | None = None
    ticker: asyncio.Task[None] | None = None
    closing: bool = False


class SharedLimiter:
    """The node's limits in Redis, spent from local leases (module docstring)."""

    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        max_hold_ms: int = 30_000,
        socket_timeout: float = 0.5,
        fallback_s: float = FALLBACK_S,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.max_hold_ms = max_hold_ms
        self.socket_timeout = socket_timeout
        self.fallback_s = fallback_s
        self.slot_margin_ms = SLOT_MARGIN_MS
        self.lease_valid_ms = LEASE_VALID_MS
        self.idle_ns = LEASE_IDLE_NS
        self.tick_s = LEASE_TICK_S
        self.process_id = os.urandom(8).hex()
        self.processes = 1  # live processes Redis counted on the last call
        self.stats = _LimitsStats()
        self.local = EdgeLimiter()  # the fallback's buckets
        self._down_until = 0.0
        self._shares: dict[tuple[PeerLimits, int], PeerLimits] = {}
        self._sides: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Side] = (
            weakref.WeakKeyDictionary()
        )
        self._loop: asyncio.AbstractEventLoop | None = None  # the last loop and its side
        self._current: _Side | None = None
        self._closed = False

    @property
    def slot_ttl_ms(self) -> int:
        """How long Redis keeps a process's slots after a call: a packet admitted on them
        (before ``lease_valid_ms``) is held ``max_hold_ms`` at most, so they outlive it."""
        return self.lease_valid_ms + self.max_hold_ms + self.slot_margin_ms

    def _side(self) -> _Side:
        loop = asyncio.get_running_loop()
        if loop is self._loop and self._current is not None:
            return self._current
        side = self._sides.get(loop)
        if side is None:
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(
                self.url,
                socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.socket_timeout,
            )
            side = _Side(client=client, script=client.register_script(LEASE_LUA))
            self._sides[loop] = side
        self._loop, self._current = loop, side
        return side

    async def admit_prepare(
        self, name: str, limits: PeerLimits, amount: int, expires_at: datetime
    ) -> Slot | Refusal:
        side = self._current if asyncio.get_running_loop() is self._loop else None
        if side is None:
            side = self._side()
        lease = side.leases.get(name)
        if (
            lease is not None
            and not lease.waiting
            and (lease.limits is limits or lease.limits == limits)
        ):
            # The packet path: from the lease, no call; a top-up queued ahead of need.
            lease.limits = limits  # (an equal object: compared once)
            now = time.monotonic_ns()
            outcome = lease.take(amount, now, False)
            if outcome is lease.slot:
                if not lease.queued and (
                    lease.tokens <= lease.low_tokens
                    or lease.slots - lease.in_flight <= lease.low_slots
                    or now >= lease.renew_at
                    or (lease.max_amount and lease.amount <= lease.low_amount)
                ):
                    self._queue(side, lease)
                return outcome
            if outcome is not None:  # over the rate, known without a call
                self.stats.dry += 1
                return outcome
        return await self._admit_waiting(side, lease, name, limits, amount)

    async def _admit_waiting(
        self, side: _Side, lease: _Lease | None, name: str, limits: PeerLimits, amount: int
    ) -> Slot | Refusal:
        if self._closed or side.closing or time.monotonic() < self._down_until:
            return self._admit_locally(name, limits, amount)
        now = time.monotonic_ns()
        if lease is None:
            lease = side.leases[name] = _Lease(name, _key(name), limits, now, side)
        elif lease.limits is not limits:
            if lease.limits != limits:
                lease.adopt(limits)
            lease.limits = limits
        if not lease.waiting:
            outcome = lease.take(amount, now, False)
            if outcome is not None:
                if outcome == RATE_LIMITED:
                    self.stats.dry += 1
                return outcome
        self.stats.waits += 1
        fut: asyncio.Future[Slot | Refusal] = asyncio.get_running_loop().create_future()
        lease.waiting.append((amount, fut))
        self._queue(side, lease)
        return await fut

    def release_slot(self, slot: Slot) -> None:
        lease = slot.lease
        if lease is not None:
            if lease.in_flight:
                lease.in_flight -= 1
            if (
                not lease.max_headroom
                and lease.slots > lease.in_flight
                and not lease.queued
                and lease.side is self._current  # (on another loop: its ticker will)
            ):
                # No spare slots for small caps: the other processes may need this one.
                with contextlib.suppress(RuntimeError):  # no loop: the ticker will
                    self._queue(lease.side, lease)
        elif slot.local is not None:
            slot.local.release(slot.name)

    def in_flight(self, name: str) -> int:
        """The peer's admitted packets in this process (every loop)."""
        return sum(s.leases[name].in_flight for s in self._sides.values() if name in s.leases)

    def _admit_locally(self, name: str, limits: PeerLimits, amount: int) -> Slot | Refusal:
        self.stats.fallbacks += 1
        share = self._share(limits)
        refused = self.local.admit(name, share, amount)
        return Slot(name, "", self.local) if refused is None else refused

    def _share(self, limits: PeerLimits) -> PeerLimits:
        """This process's part of ``limits`` while Redis is away."""
        n = max(1, self.processes)
        if n == 1:
            return limits
        share = self._shares.get((limits, n))
        if share is None:
            tput = limits.throughput_per_second
            share = PeerLimits(
                packets_per_second=max(1, limits.packets_per_second // n),
                burst=max(1, limits.burst // n),
                throughput_per_second=None if tput is None else max(1, tput // n),
                max_in_flight=max(1, limits.max_in_flight // n),
                replay_quota=limits.replay_quota,
                max_routes=limits.max_routes,
            )
            self._shares[(limits, n)] = share
        return share

    def _queue(self, side: _Side, lease: _Lease) -> None:
        if lease.queued or self._closed or side.closing:
            return
        lease.queued = True
        side.pending.append(lease)
        if side.runner is None or side.runner.done():
            side.runner = asyncio.get_running_loop().create_task(self._run(side))

    async def _run(self, side: _Side) -> None:
        # One call in flight per loop; the leases queued meanwhile go in the next one.
        while side.pending:
            batch, side.pending = side.pending[:MAX_OPS], side.pending[MAX_OPS:]
            if time.monotonic() < self._down_until:
                self._fail(batch, ())
                continue
            sent = time.monotonic_ns()
            returned = [self._ask(side, lease, sent) for lease in batch]
            try:
                await self._call(side, batch, sent)
            except Exception as exc:
                self.stats.failures += 1
                self._down_until = time.monotonic() + self.fallback_s
                log.warning("shared limits: Redis call failed (local share for now): %r", exc)
                self._fail(batch, returned)
        if (
            side.ticker is None
            and not side.closing
            and any(lease.holds() for lease in side.leases.values())
        ):
            side.ticker = asyncio.get_running_loop().create_task(self._tick(side))

    def _fail(self, batch: list[_Lease], returned: Any) -> None:
        """Redis away: the waiters get the local share; what was being returned stays."""
        for i, lease in enumerate(batch):
            if returned:
                tokens, amount = returned[i]
                lease.tokens += tokens
                lease.amount += amount
            lease.queued = False
            waiting, lease.waiting = lease.waiting, []
            for amount, fut in waiting:
                if not fut.done():
                    fut.set_result(self._admit_locally(lease.name, lease.limits, amount))

    def _ask(self, side: _Side, lease: _Lease, now: int) -> tuple[int, int]:
        """The lease's op for the next call (in ``lease.asked``); the tokens and amount it
        gives back, taken off the lease now so that nothing spends them meanwhile."""
        n = len(lease.waiting)
        lease.size(now, missed=n > 0)
        lease.biggest = 0
        if side.closing or self._closed or (not n and now - lease.used_at >= self.idle_ns):
            want_t, want_a, want_s = 0, 0, lease.in_flight  # idle: give everything back
        else:
            want_t = lease.target_tokens + n
            want_a = (
                lease.target_amount + sum(a for a, _ in lease.waiting) if lease.max_amount else 0
            )
            want_s = lease.in_flight + n
            if lease.max_headroom:  # (small caps: exactly what is in use)
                want_s = max(want_s, lease.recent_peak()) + lease.headroom
            if lease.slots >= want_s and lease.slots - want_s <= lease.headroom:
                want_s = lease.slots  # close enough: no churn
        # Top up to the target, or give back what is over twice of it.
        take_t = max(0, want_t - lease.tokens)
        back_t = (
            lease.tokens - want_t
            if lease.tokens > want_t + lease.target_tokens or not want_t
            else 0
        )
        take_a = max(0, want_a - lease.amount)
        back_a = (
            lease.amount - want_a
            if lease.amount > want_a + lease.target_amount or not want_a
            else 0
        )
        lease.tokens -= back_t
        lease.amount -= back_a
        if want_s < lease.slots:  # fewer slots from now on: Redis may give them away
            lease.slots = want_s
        lease.asked = (n, take_t, take_a, want_s)
        lease.line = f"L {lease.key} {lease.rules} {take_t} {back_t} {take_a} {back_a} {want_s}"
        return back_t, back_a

    async def _call(self, side: _Side, batch: list[_Lease], sent: int) -> None:
        ops = "\n".join(lease.line for lease in batch)
        args = (self.prefix, self.process_id, PROCESS_TTL_MS, self.slot_ttl_ms, ops)
        reply = await side.script(keys=(), args=args)
        self.stats.calls += 1
        self.stats.ops += len(batch)
        self.stats.max_ops = max(self.stats.max_ops, len(batch))
        text = reply.decode() if isinstance(reply, bytes) else str(reply)
        parts = text.split("|")
        if len(parts) != len(batch) + 1:
            raise RuntimeError(f"shared limits: {len(parts) - 1} grants for {len(batch)} peers")
        self.processes = int(parts[0])
        now = time.monotonic_ns()
        valid_ns = self.lease_valid_ms * 1_000_000
        for lease, part in zip(batch, parts[1:], strict=True):
            got_t, got_a, got_s = (int(x) for x in part.split(" "))
            n, want_t, _, _ = lease.asked
            lease.queued = False
            lease.tokens += got_t
            lease.amount += got_a
            lease.slots = got_s
            lease.valid_until = sent + valid_ns
            lease.renew_at = sent + valid_ns // 2
            if got_t < want_t:
                lease.dry_until = now + lease.token_ns
            # The packets counted in this call are decided now; later ones as they can.
            served, lease.waiting = lease.waiting[:n], lease.waiting[n:]
            for amount, fut in served:
                if not fut.done():  # (a caller cancelled meanwhile took nothing)
                    outcome = lease.take(amount, now, True)
                    assert outcome is not None
                    fut.set_result(outcome)
            while lease.waiting:
                amount, fut = lease.waiting[0]
                if fut.done():
                    lease.waiting.pop(0)
                    continue
                outcome = lease.take(amount, now, False)
                if outcome is None:
                    self._queue(side, lease)
                    break
                lease.waiting.pop(0)
                fut.set_result(outcome)

    async def _tick(self, side: _Side) -> None:
        """Give back idle or oversized leases and renew the slots in use, until nothing
        is held (a new lease starts it again)."""
        try:
            while not self._closed and not side.closing:
                await asyncio.sleep(self.tick_s)
                now = time.monotonic_ns()
                busy = False
                for lease in list(side.leases.values()):
                    if not lease.holds():
                        continue
                    busy = True
                    due = (
                        now - lease.used_at >= self.idle_ns
                        or (lease.slots and now >= lease.renew_at)
                        or lease.tokens > 2 * lease.target_tokens
                        or lease.amount > 2 * lease.target_amount
                        or lease.slots > lease.recent_peak() + 2 * lease.headroom
                    )
                    lease.peak_before, lease.peak = lease.peak, lease.in_flight
                    if due:
                        self._queue(side, lease)
                if not busy:
                    break
        finally:
            side.ticker = None

    async def leased_slots(self, name: str) -> int:
        """In-flight slots the live processes hold for the peer in Redis (tests, the
        dashboard): at least the packets in flight, at most ``max_in_flight``."""
        side = self._side()
        key = _key(name)
        now_ms = int(time.time() * 1000)
        live: list[bytes] = await side.client.zrangebyscore(f"{self.prefix}e:{key}", now_ms, "+inf")
        if not live:
            return 0
        counts = await side.client.hmget(f"{self.prefix}s:{key}", live)  # type: ignore[misc]
        return sum(int(c) for c in counts if c is not None)

    async def forget(self, name: str) -> None:
        """Drop a peer's buckets and slots in Redis (tests)."""
        side = self._side()
        key = _key(name)
        await side.client.delete(
            f"{self.prefix}b:{key}", f"{self.prefix}s:{key}", f"{self.prefix}e:{key}"
        )

    async def aclose(self) -> None:
        """Give this loop's leases back (one call) and close its client."""
        loop = asyncio.get_running_loop()
        side = self._sides.get(loop)
        if side is None:
            return
        side.closing = True
        for task in (side.ticker, side.runner):
            if task is not None and not task.done():
                if task is side.ticker:
                    task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if not self._closed:
            for lease in side.leases.values():
                if (lease.tokens or lease.amount or lease.slots) and not lease.queued:
                    lease.queued = True
                    side.pending.append(lease)
            with contextlib.suppress(Exception):
                await self._run(side)
        self._sides.pop(loop, None)
        if self._loop is loop:
            self._loop, self._current = None, None
        with contextlib.suppress(Exception):
            await side.client.aclose()

    def close(self) -> None:
        """No more Redis calls (leases not given back expire or are spent); clients
        close with their loops."""
        self._closed = True


def _key(name: str) -> str:
    """The peer's name as one field of an op (peer names have no blanks; be safe)."""
    return name.replace("%", "%25").replace(" ", "%20").replace("\n", "%0A") or "%"


def shared_limits_wanted() -> bool:
    """With ``REDIS_URL`` set, unless ``ILP_SHARED_LIMITS`` is off."""
    from django.conf import settings

    url = str(getattr(settings, "REDIS_URL", "") or "")
    flag = os.environ.get("ILP_SHARED_LIMITS", "").strip().lower()
    return bool(url) and flag not in ("0", "false", "no", "off")


def build_limiter(*, shared: bool | None = None) -> Limiter:
    """The runtime's limiter: :class:`SharedLimiter` with Redis, else :class:`EdgeLimiter`."""
    from django.conf import settings

    if shared is None:
        shared = shared_limits_wanted()
    if not shared:
        return EdgeLimiter()
    from links.ownership import node_namespace

    prefix = f"ilp:{settings.ILP_ADDRESS}:limits:{node_namespace()}:"
    return SharedLimiter(
        str(settings.REDIS_URL),
        prefix,
        max_hold_ms=int(getattr(settings, "ILP_MAX_HOLD_TIME_MS", 30_000)),
    )


def edge_limiter() -> Any:
    """The current runtime's limiter (``interledger_site.runtime`` builds it)."""
    from payments.node import runtime

    return runtime().limiter


def reset_edge_limiter(clock: Callable[[], int] = time.monotonic_ns) -> EdgeLimiter:
    """Put an empty in-memory limiter on ``clock`` on the current runtime (tests; ns)."""
    from payments.node import runtime

    limiter = EdgeLimiter(clock)
    rt = runtime()
    old = rt.limiter
    rt.limiter = limiter
    if old is not None:
        old.close()
    return limiter
