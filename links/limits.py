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
  three limits for the whole node, whichever process a packet lands on, in one Lua script
  on Redis (:data:`LIMITS_LUA`), on Redis's clock. Admissions are batched per event-loop
  iteration, as the shared credit's holds are (``payments.ledger.shared``): everything
  queued while one call is in flight goes in the next (one round trip for all the packets
  of one iteration, never one per packet); releases ride along, never awaited. Each
  in-flight slot is a member of a sorted set scored by its expiry (the Prepare's, at most
  ``ILP_MAX_HOLD_TIME_MS`` away, plus :data:`SLOT_MARGIN_MS`): a killed process's slots
  free themselves then, with no keeper. The buckets' hash expires once it would have
  refilled anyway. **Redis unreachable → the local share**: for :data:`FALLBACK_S`
  after a failed call, packets are admitted by an in-memory :class:`EdgeLimiter` with the
  peer's limits divided by the number of processes Redis last counted (every call
  registers its process for :data:`PROCESS_TTL_MS`), so the node as a whole stays near
  its limits instead of refusing every packet (T05) for an outage of the limiter's store;
  slots taken in Redis before the outage expire there by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
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


class Slot:
    """An admitted Prepare's in-flight slot: give it back with ``release_slot``."""

    __slots__ = ("local", "member", "name")

    def __init__(self, name: str, member: str = "", local: EdgeLimiter | None = None) -> None:
        self.name = name
        self.member = member  # the slot's member in Redis ("" when taken in memory)
        self.local = local  # the in-memory limiter that holds it, if any


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


# --- shared across processes (Redis) -------------------------------------------------------

SLOT_MARGIN_MS: Final = 10_000  # a slot outlives its Prepare's expiry by this much at most
PROCESS_TTL_MS: Final = 30_000  # a process counts for the fallback share this long
FALLBACK_S: Final = 1.0  # after a failed call, the local share this long before trying again
MAX_OPS: Final = 1_000  # admissions and releases per script call
_US: Final = 1_000_000

# ARGV: key prefix, this process's id, its liveness ms, then every op of the call in one
# string (one argument: per-argument encoding was most of the client's cost), one op a line:
#   A <peer> <pps> <burst> <tput|-> <max_in_flight> <amount> <seq> <expiry ms>
#   X <peer> <seq>                       (release; the slot's member is "<process id>:<seq>")
# Returns "<live processes>:" then one character per A op: 1 admitted, R rate, F in flight,
# T throughput. Levels in token-microseconds (tokens x 10^6) on Redis's clock (us): a
# packet bucket is exact in Lua's doubles up to 9 x 10^9 tokens of burst; the throughput
# bucket up to 9 x 10^9 units a second (beyond, it rounds by one part in 2^53: a limit on
# a rate; no money is counted on it).
LIMITS_LUA: Final = r"""
local P, me = ARGV[1], ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local nowms = math.floor(now / 1000)
local function f(x) return string.format('%.0f', x) end
local pk = P .. 'procs'
redis.call('ZADD', pk, nowms + tonumber(ARGV[3]), me)
redis.call('ZREMRANGEBYSCORE', pk, '-inf', nowms)
redis.call('PEXPIRE', pk, tonumber(ARGV[3]))
local out = {tostring(redis.call('ZCARD', pk)), ':'}
local peers = {}
local function peer(name)
  local s = peers[name]
  if s then return s end
  local r = redis.call('HMGET', P .. 'b:' .. name, 'pl', 'pt', 'al', 'at')
  s = {pl = tonumber(r[1]), pt = tonumber(r[2]), al = tonumber(r[3]), at = tonumber(r[4]),
       fk = P .. 'f:' .. name, dirty = false, ttl = 0, fttl = 0}
  redis.call('ZREMRANGEBYSCORE', s.fk, '-inf', nowms)
  s.n = redis.call('ZCARD', s.fk)
  peers[name] = s
  return s
end
for line in string.gmatch(ARGV[4], '[^\n]+') do
  local op = string.sub(line, 1, 1)
  if op == 'X' then
    local name, seq = string.match(line, '^X (%S+) (%S+)$')
    local gone = redis.call('ZREM', P .. 'f:' .. name, me .. ':' .. seq)
    local s = peers[name]
    if s and gone == 1 then s.n = s.n - 1 end
  elseif op == 'A' then
    local name, a1, a2, a3, a4, a5, seq, a7 = string.match(line,
      '^A (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
    local s = peer(name)
    local pps, burst, tput, cap_n = tonumber(a1), tonumber(a2), tonumber(a3), tonumber(a4)
    local amount, exp = tonumber(a5), tonumber(a7)
    s.dirty = true
    local ttl = math.ceil(burst * 1000 / pps) + 2000
    if ttl > s.ttl then s.ttl = ttl end
    local cap = burst * 1000000
    local level = cap
    if s.pl then level = s.pl + (now - s.pt) * pps end
    if level > cap then level = cap end
    s.pt = now
    local res = '1'
    if level < 1000000 then
      s.pl = level
      res = 'R'
    else
      s.pl = level - 1000000
      if s.n >= cap_n then
        res = 'F'
      elseif tput and amount > 0 then
        local acap = tput * 1000000
        local alevel = acap
        if s.al then alevel = s.al + (now - s.at) * tput end
        if alevel > acap then alevel = acap end
        s.at = now
        local need = amount * 1000000
        if alevel < need then
          s.al = alevel
          res = 'T'
        else
          s.al = alevel - need
        end
      end
    end
    if res == '1' then
      redis.call('ZADD', s.fk, exp, me .. ':' .. seq)
      s.n = s.n + 1
      local fttl = exp - nowms
      if fttl > s.fttl then s.fttl = fttl end
    end
    out[#out + 1] = res
  else
    return redis.error_reply('limits: unknown op ' .. op)
  end
end
for name, s in pairs(peers) do
  if s.dirty then
    local bk = P .. 'b:' .. name
    if s.al then
      redis.call('HSET', bk, 'pl', f(s.pl), 'pt', f(s.pt), 'al', f(s.al), 'at', f(s.at))
    else
      redis.call('HSET', bk, 'pl', f(s.pl), 'pt', f(s.pt))
    end
    redis.call('PEXPIRE', bk, s.ttl)
    if s.fttl > 0 and redis.call('PTTL', s.fk) < s.fttl then
      redis.call('PEXPIRE', s.fk, s.fttl)
    end
  end
end
return table.concat(out)
"""

_REFUSALS: Final[dict[str, Refusal]] = {
    "R": RATE_LIMITED,
    "F": TOO_MANY_IN_FLIGHT,
    "T": BANDWIDTH_EXCEEDED,
}


@dataclass(slots=True)
class _Admit:
    name: str
    limits: PeerLimits
    amount: int
    member: str
    expires_ms: int
    future: asyncio.Future[Slot | Refusal]


@dataclass(slots=True)
class _LimitsStats:
    calls: int = 0
    admits: int = 0
    releases: int = 0
    failures: int = 0
    fallbacks: int = 0  # admissions decided by the local share
    max_ops: int = 0


@dataclass(slots=True)
class _Side:
    """Per event loop: the async client and the queue of the next call."""

    client: aioredis.Redis
    script: Any
    admits: list[_Admit] = field(default_factory=list)
    releases: list[tuple[str, str]] = field(default_factory=list)
    runner: asyncio.Task[None] | None = None


class SharedLimiter:
    """The node's limits in Redis (module docstring): one script call per loop iteration."""

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
        self.process_id = os.urandom(8).hex()
        self.processes = 1  # live processes Redis counted on the last call
        self.stats = _LimitsStats()
        self.local = EdgeLimiter()  # the fallback's buckets
        self._down_until = 0.0
        self._seq = itertools.count()
        self._shares: dict[tuple[PeerLimits, int], PeerLimits] = {}
        self._names: dict[str, str] = {}
        self._limit_fields: dict[PeerLimits, str] = {}
        self._sides: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Side] = (
            weakref.WeakKeyDictionary()
        )
        self._closed = False

    def _side(self) -> _Side:
        loop = asyncio.get_running_loop()
        side = self._sides.get(loop)
        if side is None:
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(
                self.url,
                socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.socket_timeout,
            )
            side = _Side(client=client, script=client.register_script(LIMITS_LUA))
            self._sides[loop] = side
        return side

    async def admit_prepare(
        self, name: str, limits: PeerLimits, amount: int, expires_at: datetime
    ) -> Slot | Refusal:
        if self._closed or time.monotonic() < self._down_until:
            return self._admit_locally(name, limits, amount)
        side = self._side()
        loop = asyncio.get_running_loop()
        now_ms = int(time.time() * 1000)
        expires_ms = min(int(expires_at.timestamp() * 1000), now_ms + self.max_hold_ms)
        member = str(next(self._seq))  # the slot is "<process id>:<seq>" in Redis
        fut: asyncio.Future[Slot | Refusal] = loop.create_future()
        side.admits.append(
            _Admit(name, limits, amount, member, max(expires_ms, now_ms) + self.slot_margin_ms, fut)
        )
        self._kick(side)
        return await fut

    def release_slot(self, slot: Slot) -> None:
        if slot.local is not None:
            slot.local.release(slot.name)
            return
        try:
            side = self._side()
        except RuntimeError:  # no loop here: the slot expires by itself
            return
        side.releases.append((slot.name, slot.member))
        self._kick(side)

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

    def _kick(self, side: _Side) -> None:
        if side.runner is None or side.runner.done():
            side.runner = asyncio.get_running_loop().create_task(self._run(side))

    async def _run(self, side: _Side) -> None:
        # One call in flight per loop; what queues meanwhile goes in the next one.
        while side.admits or side.releases:
            admits, side.admits = side.admits[:MAX_OPS], side.admits[MAX_OPS:]
            releases, side.releases = side.releases[:MAX_OPS], side.releases[MAX_OPS:]
            if time.monotonic() < self._down_until:
                # Redis away: the releases are dropped (those slots expire there).
                for a in admits:
                    if not a.future.done():
                        a.future.set_result(self._admit_locally(a.name, a.limits, a.amount))
                continue
            try:
                await self._call(side, admits, releases)
            except Exception as exc:
                self.stats.failures += 1
                self._down_until = time.monotonic() + self.fallback_s
                log.warning("shared limits: Redis call failed (local share for now): %r", exc)
                for a in admits:
                    if not a.future.done():
                        a.future.set_result(self._admit_locally(a.name, a.limits, a.amount))

    async def _call(
        self, side: _Side, admits: list[_Admit], releases: list[tuple[str, str]]
    ) -> None:
        lines = [f"X {self._key(name)} {seq}" for name, seq in releases]
        for a in admits:
            lines.append(
                f"A {self._key(a.name)} {self._rules(a.limits)} {a.amount} {a.member} "
                f"{a.expires_ms}"
            )
        args = (self.prefix, self.process_id, PROCESS_TTL_MS, "\n".join(lines))
        reply = await side.script(keys=(), args=args)
        self.stats.calls += 1
        self.stats.admits += len(admits)
        self.stats.releases += len(releases)
        self.stats.max_ops = max(self.stats.max_ops, len(admits) + len(releases))
        text = reply.decode() if isinstance(reply, bytes) else str(reply)
        count, _, results = text.partition(":")
        self.processes = int(count)
        if len(results) != len(admits):
            raise RuntimeError(f"shared limits: {len(results)} results for {len(admits)} packets")
        for a, res in zip(admits, results, strict=True):
            outcome: Slot | Refusal = (
                Slot(a.name, a.member) if res == "1" else _REFUSALS.get(res, RATE_LIMITED)
            )
            if not a.future.done():
                a.future.set_result(outcome)
            elif res == "1":  # its caller is gone: give the slot back in the next call
                side.releases.append((a.name, a.member))

    def _key(self, name: str) -> str:
        """The peer's name as one field of an op (peer names have no blanks; be safe)."""
        key = self._names.get(name)
        if key is None:
            key = self._names[name] = (
                name.replace("%", "%25").replace(" ", "%20").replace("\n", "%0A") or "%"
            )
        return key

    def _rules(self, limits: PeerLimits) -> str:
        rules = self._limit_fields.get(limits)
        if rules is None:
            tput = limits.throughput_per_second
            rules = self._limit_fields[limits] = (
                f"{limits.packets_per_second} {limits.burst} {'-' if tput is None else tput} "
                f"{limits.max_in_flight}"
            )
        return rules

    async def in_flight_shared(self, name: str) -> int:
        """The peer's live slots in Redis, all processes (tests, the dashboard)."""
        side = self._side()
        key = f"{self.prefix}f:{self._key(name)}"
        now_ms = int(time.time() * 1000)
        return int(await side.client.zcount(key, now_ms, "+inf"))

    async def forget(self, name: str) -> None:
        """Drop a peer's buckets and slots in Redis (tests)."""
        side = self._side()
        key = self._key(name)
        await side.client.delete(f"{self.prefix}b:{key}", f"{self.prefix}f:{key}")

    async def aclose(self) -> None:
        """Close this loop's client (after its last queued call)."""
        side = self._sides.pop(asyncio.get_running_loop(), None)
        if side is None:
            return
        if side.runner is not None and not side.runner.done():
            with contextlib.suppress(BaseException):
                await side.runner
        with contextlib.suppress(Exception):
            await side.client.aclose()

    def close(self) -> None:
        """No more Redis calls; clients close with their loops."""
        self._closed = True


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
