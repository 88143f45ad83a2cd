"""Shared credit: a peer's limits hold across every process of the node (Redis).

With ``REDIS_URL`` set, every process's :class:`~payments.ledger.BalanceBook` takes the holds
of accounts that have a limit through one Lua script on Redis instead of its own memory, so
``min_balance`` / ``max_balance`` hold for the node, not per process. Embedded mode (no
``REDIS_URL``) does not use this module: the in-process book is the whole truth, as before.

**What Redis holds** (key prefix ``ilp:<node address>:credit:``, :func:`default_prefix`, then
the ledger's scope ``<database name>.<oid>:``, so a re-created database whose account ids
start over never meets an older mirror; the ``epoch`` key is the prefix's alone):

* ``a:<account id>`` (hash) — the mirror of one limited account: its committed balance and
  ``version`` (from Postgres), its limits, and the sums of its live debit and credit holds.
  Every integer is two fields, ``h`` and ``l`` with value ``h * 2**32 + l`` and ``0 <= l <
  2**32``: Redis's Lua numbers are doubles, exact only up to 2**53, and ledger amounts are
  UInt64 (balances up to 10**21); with two limbs every sum and comparison is exact.
* ``h:<account id>`` (hash) — hold key → ``"D|C hi lo"``; ``x:<account id>`` (sorted set) — hold key →
  its expiry (Unix ms). Every script call on an account first drops its expired holds, so a
  hold whose process was killed, or whose release was lost, frees its room at the
  Prepare's expiry plus :data:`HOLD_MARGIN_MS` by itself.
* ``epoch`` (hash: ``id``, ``ready``) — which generation of the mirror this is. A flushed or
  restarted Redis has none: the first caller creates a new one that admits nothing before
  ``ready`` (:data:`GRACE_MS` later); every process notices the new id (on its next call, or
  within :data:`KEEPER_S` from its keeper), reloads its limited accounts from Postgres into
  the mirror and re-asserts its own live holds. So the mirror is rebuilt from the truth
  before anyone admits against it; holds are never lost, only (rarely) kept until their
  expiry.

**Who writes what.** A hold group (the source's debit hold and the next hop's credit hold of
one packet) is checked and taken together: both or neither (:meth:`SharedCredit.hold`).
Holds are batched per event-loop iteration: every group and release queued while one
script call is in flight goes in the next call (one round trip for many packets). A
committed batch sends the new balances (with their ``version``; an older version never
overwrites a newer one) and releases the holds of the committed keys in one step: on the
event loop that waited for the batch, as ops of that loop's next script call, ahead of its
holds (:meth:`SharedCredit.commit`); from a thread without a loop, in a call of its own
(:meth:`SharedCredit.commit_sync`). The balance moves and the hold goes at the same instant,
so nothing is counted twice or not at all; until then the mirror has the old balance and the
hold (less room for a moment, never more). Loads and refreshes of accounts (the writer's, and services' after their own
commits) update the mirror the same way (:meth:`SharedCredit.seed_sync`).

**Leases** (on unless ``ILP_CREDIT_LEASES=0``): the event loop takes most holds from this
process's lease of the account's room, a hold entry like the others (key ``lease:...``)
that grows (``T``) and shrinks (``K``) in the same script, so it is in the same sums and
the limit stays exact across processes with no round trip per packet; a hold the lease
cannot take goes to Redis as above. How leases are sized, given back, renewed, expired and
dropped on a new epoch: :class:`SharedCredit`.

Failure modes: Redis unreachable on a hold → the hold fails (T04 through the caller's
``BalanceLimitExceeded``: we do not admit what we cannot check). Unreachable on a commit or
release → logged; the holds stay until their expiry (conservative) and the next refresh
(every 5 s) brings the balance. Holds are never trusted to outlive their expiry: a commit
slower than the Prepare's expiry plus the margin could admit that packet's amount twice
for the rest of the margin.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from payments.errors import BalanceLimitExceeded, DuplicateHold

if TYPE_CHECKING:
    import redis as redis_sync
    import redis.asyncio as aioredis

log = logging.getLogger(__name__)

LIMB = 2**32
HOLD_MARGIN_MS = 10_000
GRACE_MS = 2_000
KEEPER_S = 0.5
MAX_OPS = 1_000  # hold groups and releases per script call
# Leases (see SharedCredit): how long a refused hold keeps every lease of its account from
# growing (and tells their holders to give back what they do not use).
SQUEEZE_MS = 1_000
LEASE_DIVISOR = 8  # a lease is at most 1/8 of the room it would see if it were empty
LEASE_HORIZON_S = 0.25  # a lease aims at this much of its recent rate
# With leases, commits wait this long for a call to ride (each call costs the loop ~0.3 ms of
# redis-py; a commit's ops change no room but what it frees: see SharedCredit).
COMMIT_DELAY_S = 0.1
LEASE_WANT_MAX = 2**50  # keeps the script's doubles exact

# ARGV: prefix, caller's epoch, a fresh epoch id (used if Redis has none), grace ms, the
# epoch's key, squeeze ms, then ops. Returns {status, epoch id, ms until ready, results of
# the G and T ops in order...}; status 'E' (epoch differs: nothing done) or 'OK'.
LUA = r"""
local P = ARGV[1]
local mine = ARGV[2]
local B = 4294967296
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ek = ARGV[5]
local e = redis.call('HMGET', ek, 'id', 'ready')
local eid, ready = e[1], tonumber(e[2])
if not eid then
  eid = ARGV[3]
  ready = now + tonumber(ARGV[4])
  redis.call('HSET', ek, 'id', eid, 'ready', string.format('%.0f', ready))
end
if eid ~= mine then return {'E', eid, string.format('%.0f', ready - now)} end

local function f(x) return string.format('%.0f', x) end
local function norm(h, l)
  local c = math.floor(l / B)
  return h + c, l - c * B
end
local FIELDS = {'bh', 'bl', 'v', 'mnh', 'mnl', 'mxh', 'mxl', 'dh', 'dl', 'ch', 'cl', 'sq'}
local SQUEEZE_MS = tonumber(ARGV[6])
local cache = {}
local function load(code)
  local a = cache[code]
  if a then return a end
  local r = redis.call('HMGET', P .. 'a:' .. code, unpack(FIELDS))
  if not r[1] then return nil end
  a = {bh = tonumber(r[1]), bl = tonumber(r[2]), v = tonumber(r[3]),
       mnh = tonumber(r[4]), mnl = tonumber(r[5]), mxh = tonumber(r[6]), mxl = tonumber(r[7]),
       dh = tonumber(r[8]), dl = tonumber(r[9]), ch = tonumber(r[10]), cl = tonumber(r[11]),
       sq = tonumber(r[12]), dirty = false}
  cache[code] = a
  -- drop expired holds first: a killed process's holds end here
  local xk = P .. 'x:' .. code
  local dead = redis.call('ZRANGEBYSCORE', xk, '-inf', now, 'LIMIT', 0, 1000)
  if #dead > 0 then
    local hk = P .. 'h:' .. code
    for _, k in ipairs(dead) do
      local v = redis.call('HGET', hk, k)
      if v then
        local d, hh, ll = string.match(v, '^(%a) (%-?%d+) (%d+)$')
        if d == 'D' then a.dh, a.dl = norm(a.dh - tonumber(hh), a.dl - tonumber(ll))
        else a.ch, a.cl = norm(a.ch - tonumber(hh), a.cl - tonumber(ll)) end
        redis.call('HDEL', hk, k)
      end
    end
    redis.call('ZREM', xk, unpack(dead))
    a.dirty = true
  end
  return a
end
local function save()
  for code, a in pairs(cache) do
    if a.dirty then
      redis.call('HSET', P .. 'a:' .. code, 'bh', f(a.bh), 'bl', f(a.bl), 'v', f(a.v),
        'dh', f(a.dh), 'dl', f(a.dl), 'ch', f(a.ch), 'cl', f(a.cl), 'sq', f(a.sq or 0))
    end
  end
end
local function fits(a, d, hh, ll)
  if d == 'D' then
    if not a.mnh then return true end
    -- balance - debits - amount - min >= 0
    local h, l = norm(a.bh - a.dh - hh - a.mnh, a.bl - a.dl - ll - a.mnl)
    return h >= 0
  end
  if not a.mxh then return true end
  -- max - balance - credits - amount >= 0
  local h, l = norm(a.mxh - a.bh - a.ch - hh, a.mxl - a.bl - a.cl - ll)
  return h >= 0
end
local function add(a, code, key, d, hh, ll, exp)
  redis.call('HSET', P .. 'h:' .. code, key, d .. ' ' .. f(hh) .. ' ' .. f(ll))
  redis.call('ZADD', P .. 'x:' .. code, exp, key)
  if d == 'D' then a.dh, a.dl = norm(a.dh + hh, a.dl + ll)
  else a.ch, a.cl = norm(a.ch + hh, a.cl + ll) end
  a.dirty = true
end
local function release(code, key)
  local a = load(code)
  if not a then return end
  local hk = P .. 'h:' .. code
  local v = redis.call('HGET', hk, key)
  if not v then return end
  local d, hh, ll = string.match(v, '^(%a) (%-?%d+) (%d+)$')
  if d == 'D' then a.dh, a.dl = norm(a.dh - tonumber(hh), a.dl - tonumber(ll))
  else a.ch, a.cl = norm(a.ch - tonumber(hh), a.cl - tonumber(ll)) end
  a.dirty = true
  redis.call('HDEL', hk, key)
  redis.call('ZREM', P .. 'x:' .. code, key)
end

local function entry(hk, key)
  local v = redis.call('HGET', hk, key)
  if not v then return nil end
  local d, hh, ll = string.match(v, '^(%a) (%-?%d+) (%d+)$')
  return d, tonumber(hh), tonumber(ll)
end

local out = {'OK', eid, f(ready - now)}
local i = 7
local n = #ARGV
while i <= n do
  local op = ARGV[i]
  if op == 'R' then
    release(ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'B' then  -- a committed balance: code, h, l, version
    local a = load(ARGV[i + 1])
    local v = tonumber(ARGV[i + 4])
    if a and v > a.v then
      a.bh, a.bl, a.v, a.dirty = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), v, true
    end
    i = i + 5
  elseif op == 'S' then  -- seed/refresh: code, bh, bl, version, mnh, mnl, mxh, mxl ('' = none)
    local code = ARGV[i + 1]
    local ak = P .. 'a:' .. code
    local a = load(code)
    local v = tonumber(ARGV[i + 4])
    if not a then
      -- holds outlive a lost mirror hash (they have their own keys): count the live ones
      a = {bh = tonumber(ARGV[i + 2]), bl = tonumber(ARGV[i + 3]), v = v,
           dh = 0, dl = 0, ch = 0, cl = 0, dirty = true}
      local hk, xk = P .. 'h:' .. code, P .. 'x:' .. code
      redis.call('ZREMRANGEBYSCORE', xk, '-inf', now)
      local held = redis.call('HGETALL', hk)
      for j = 1, #held, 2 do
        if redis.call('ZSCORE', xk, held[j]) then
          local d, hh, ll = string.match(held[j + 1], '^(%a) (%-?%d+) (%d+)$')
          if d == 'D' then a.dh, a.dl = norm(a.dh + tonumber(hh), a.dl + tonumber(ll))
          else a.ch, a.cl = norm(a.ch + tonumber(hh), a.cl + tonumber(ll)) end
        else
          redis.call('HDEL', hk, held[j])
        end
      end
      cache[code] = a
    elseif v > a.v then
      a.bh, a.bl, a.v, a.dirty = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), v, true
    end
    if ARGV[i + 5] == '' then
      redis.call('HDEL', ak, 'mnh', 'mnl'); a.mnh, a.mnl = nil, nil
    else
      redis.call('HSET', ak, 'mnh', ARGV[i + 5], 'mnl', ARGV[i + 6])
      a.mnh, a.mnl = tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6])
    end
    if ARGV[i + 7] == '' then
      redis.call('HDEL', ak, 'mxh', 'mxl'); a.mxh, a.mxl = nil, nil
    else
      redis.call('HSET', ak, 'mxh', ARGV[i + 7], 'mxl', ARGV[i + 8])
      a.mxh, a.mxl = tonumber(ARGV[i + 7]), tonumber(ARGV[i + 8])
    end
    i = i + 9
  elseif op == 'A' or op == 'G' then
    -- 'A' asserts one hold already admitted (a resync): no limit check.
    -- 'G' n, then n holds (code, key, D|C, h, l, expiry ms): all or none.
    local cnt = 1
    if op == 'G' then cnt = tonumber(ARGV[i + 1]); i = i + 2 else i = i + 1 end
    local res = 1
    if op == 'G' and now < ready then res = 'W' end
    local rows = {}
    for j = 0, cnt - 1 do
      local b = i + j * 6
      local code, key, d = ARGV[b], ARGV[b + 1], ARGV[b + 2]
      local hh, ll, exp = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
      rows[j + 1] = {code, key, d, hh, ll, exp}
      if res == 1 then
        local a = load(code)
        if not a then
          res = 'M' .. (j + 1)
        else
          local have = redis.call('HGET', P .. 'h:' .. code, key)
          if have then
            if have ~= d .. ' ' .. f(hh) .. ' ' .. f(ll) then res = 'D' .. (j + 1) end
            rows[j + 1] = false  -- already held: nothing to add
          elseif op == 'G' and not fits(a, d, hh, ll) then
            res = 'L' .. (j + 1)
            -- refused: leases on this account give their unused room back (their
            -- holders see cap 0 on their next renewal) and grow no more for a while
            a.sq, a.dirty = now + SQUEEZE_MS, true
          end
        end
      end
    end
    if res == 1 then
      -- two holds of one group on one account: check their sum too
      for j, r in ipairs(rows) do
        if r then
          local a = load(r[1])
          if op == 'G' and j > 1 and not fits(a, r[3], r[4], r[5]) then res = 'L' .. j; break end
          add(a, r[1], r[2], r[3], r[4], r[5], r[6])
        end
      end
      if res ~= 1 then  -- undo what this group added
        for j2 = 1, #rows do
          local r = rows[j2]
          if r and j2 < tonumber(string.sub(res, 2)) then release(r[1], r[2]) end
        end
      end
    end
    if op == 'G' then out[#out + 1] = res end
    i = i + cnt * 6
  elseif op == 'K' then
    -- a lease shrinks: code, key, h, l (its room used by a commit, or given back)
    local code, key = ARGV[i + 1], ARGV[i + 2]
    local hh, ll = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
    i = i + 5
    local a = load(code)
    local hk = P .. 'h:' .. code
    local d, eh, el
    if a then d, eh, el = entry(hk, key) end
    if d then
      local nh, nl = norm(eh - hh, el - ll)
      if nh < 0 then hh, ll, nh, nl = eh, el, 0, 0 end  -- never below nothing
      redis.call('HSET', hk, key, d .. ' ' .. f(nh) .. ' ' .. f(nl))
      if d == 'D' then a.dh, a.dl = norm(a.dh - hh, a.dl - ll)
      else a.ch, a.cl = norm(a.ch - hh, a.cl - ll) end
      a.dirty = true
    end
  elseif op == 'T' then
    -- a lease grows and/or is renewed: code, key, D|C, want h, want l, expiry ms, divisor,
    -- N (new: created if missing) | E (must exist). Result 'OK granted cap', 'X' (gone:
    -- expired or dropped), 'M' (account not in the mirror). cap = what this lease may be
    -- at most: 1/divisor of the room it would see if it were empty (0 while squeezed).
    local code, key, d = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    local want = tonumber(ARGV[i + 4]) * B + tonumber(ARGV[i + 5])
    local exp, div, flag = tonumber(ARGV[i + 6]), tonumber(ARGV[i + 7]), ARGV[i + 8]
    i = i + 9
    local a = load(code)
    local hk, xk = P .. 'h:' .. code, P .. 'x:' .. code
    local ed, eh, el
    if a then ed, eh, el = entry(hk, key) end
    if not a then
      out[#out + 1] = 'M'
    elseif not ed and flag == 'E' then
      out[#out + 1] = 'X'
    else
      if not ed then
        ed, eh, el = d, 0, 0
        redis.call('HSET', hk, key, d .. ' 0 0')
      end
      local old = redis.call('ZSCORE', xk, key)
      if not old or tonumber(old) < exp then redis.call('ZADD', xk, exp, key) end
      local g, cap = 0, 0
      local lim = (d == 'D' and a.mnh) or (d == 'C' and a.mxh)
      if lim and now >= ready and not (a.sq and a.sq > now) then
        local fh, fl
        if d == 'D' then fh, fl = norm(a.bh - a.dh - a.mnh, a.bl - a.dl - a.mnl)
        else fh, fl = norm(a.mxh - a.bh - a.ch, a.mxl - a.bl - a.cl) end
        -- doubles: approximate above 2**53, so the grant is checked exactly below
        local free, lease = fh * B + fl, eh * B + el
        cap = math.floor((math.max(free, 0) + lease) / div)
        g = math.floor(math.min(want, cap - lease, free))
        if g > 0 then
          local gh, gl = math.floor(g / B), g % B
          if fits(a, d, gh, gl) then
            local nh, nl = norm(eh + gh, el + gl)
            redis.call('HSET', hk, key, d .. ' ' .. f(nh) .. ' ' .. f(nl))
            if d == 'D' then a.dh, a.dl = norm(a.dh + gh, a.dl + gl)
            else a.ch, a.cl = norm(a.ch + gh, a.cl + gl) end
            a.dirty = true
          else
            g = 0
          end
        else
          g = 0
        end
      end
      out[#out + 1] = 'OK ' .. f(g) .. ' ' .. f(cap)
    end
  else
    return redis.error_reply('shared credit: unknown op ' .. tostring(op))
  end
end
save()
return out
"""


@dataclass(frozen=True, slots=True)
class HoldDraft:
    """One hold for :meth:`BalanceBook.hold_many`: ``credit`` False = a debit hold (the
    source of a packet, checked against ``min_balance``), True = a credit hold (the next
    hop, checked against ``max_balance``)."""

    account_code: str
    amount: int
    key: str
    credit: bool = False


def shared_credit_from_settings() -> SharedCredit | None:
    """The process's shared credit: with ``REDIS_URL`` set, unless ``ILP_SHARED_CREDIT`` is
    off (then each process checks limits against its own holds, as in embedded mode)."""
    from django.conf import settings

    url = str(getattr(settings, "REDIS_URL", "") or "")
    flag = os.environ.get("ILP_SHARED_CREDIT", "").strip().lower()
    if not url or flag in ("0", "false", "no", "off"):
        return None
    return SharedCredit(url)


def _leases_from_env() -> bool:
    """``ILP_CREDIT_LEASES=0`` turns leases off (every limited hold is one script call, as
    before leases; the A/B switch of the benchmark)."""
    flag = os.environ.get("ILP_CREDIT_LEASES", "").strip().lower()
    return flag not in ("0", "false", "no", "off")


def limbs(value: int) -> tuple[str, str]:
    """``value`` as the script's two limbs (``h * 2**32 + l``, ``0 <= l < 2**32``)."""
    hi, lo = divmod(value, LIMB)
    return str(hi), str(lo)


def default_prefix() -> str:
    from django.conf import settings

    return f"ilp:{settings.ILP_ADDRESS}:credit:"


# Not frozen, though never changed once made: one is made per limited hold (per packet),
# and a frozen dataclass's __init__ (object.__setattr__ per field) costs twice as much.
@dataclass(slots=True)
class SharedHold:
    """One hold in Redis: ``credit`` False = a debit hold (checked against ``min_balance``).

    The mirror is keyed by the account's id (a re-created account, or a test database
    that starts over, never meets an older mirror of the same code)."""

    account_id: int
    account_code: str
    amount: int
    key: str
    credit: bool
    expires_ms: int  # Unix ms; Redis drops the hold after it

    def argv(self) -> list[str]:
        hi, lo = limbs(self.amount)
        return [
            str(self.account_id),
            self.key,
            "C" if self.credit else "D",
            hi,
            lo,
            str(self.expires_ms),
        ]


@dataclass(frozen=True, slots=True)
class MirrorRow:
    """An account as read from Postgres in a committed transaction."""

    id: int
    code: str
    balance: int
    version: int
    min_balance: int | None
    max_balance: int | None

    def argv(self) -> list[str]:
        bh, bl = limbs(self.balance)
        mn = limbs(self.min_balance) if self.min_balance is not None else ("", "")
        mx = limbs(self.max_balance) if self.max_balance is not None else ("", "")
        return ["S", str(self.id), bh, bl, str(self.version), *mn, *mx]


class SharedCreditError(Exception):
    """Redis could not answer (the hold is refused, conservatively)."""


# A committed batch for the mirror: (account id, balance, version), ended holds (account
# id, key), lease use (account id, lease key, amount).
_Commit = tuple[
    Sequence[tuple[int, int, int]], Sequence[tuple[int, str]], Sequence[tuple[int, str, int]]
]


@dataclass(slots=True)
class _Group:
    holds: tuple[SharedHold, ...]
    future: asyncio.Future[None]
    missing_retried: bool = False


@dataclass(slots=True, eq=False)
class _Lease:
    """This process's slice of one limited account's room in one direction, held in Redis as
    one hold entry (``key``) that grows (``T``) and shrinks (``K``). Guarded by
    ``SharedCredit._lease_lock``.

    ``amount`` is never more than Redis counts for ``key`` (it grows only after Redis
    granted, shrinks before Redis is told), ``used`` is the sum of this process's holds
    taken from it (``used <= amount``), ``expires_ms`` the expiry Redis confirmed: a hold
    that would outlive it is not taken from the lease."""

    account_id: int
    account_code: str
    credit: bool
    key: str
    amount: int = 0
    used: int = 0
    expires_ms: int = 0
    fresh: bool = True  # not yet confirmed by Redis: the first T may create the entry
    dead: bool = False  # no more holds from it (dropped, lost, or of an older epoch)
    topup: bool = False  # a T is queued or in flight
    returning: int = 0  # taken off ``amount``, to be taken off Redis's (a K op)
    admitted: int = 0  # amount asked of it since the keeper's last pass (its rate)
    rate: float = 0.0  # amount per second, smoothed over the keeper's passes
    biggest: int = 0  # the largest hold asked of it
    idle: int = 0  # keeper passes in a row without a hold asked of it
    # Doubled by every hold it could not take, halved by a keeper pass without one: the
    # lease catches up with a burst before the keeper has measured the rate.
    floor: int = 0
    missed: bool = False

    def target(self, horizon_s: float) -> int:
        return min(LEASE_WANT_MAX, max(4 * self.biggest, int(self.rate * horizon_s), self.floor))


@dataclass(slots=True)
class _Stats:
    calls: int = 0
    lease_holds: int = 0  # hold groups taken from leases (no round trip)
    lease_misses: int = 0  # hold groups a lease could not take (a script call)
    lease_grants: int = 0  # T ops that granted room
    lease_returns: int = 0  # K ops that gave unused room back
    groups: int = 0
    releases: int = 0
    commits: int = 0  # committed batches mirrored through the loop's calls
    resyncs: int = 0
    waits: int = 0
    max_ops: int = 0
    seconds: float = 0.0  # wall time spent in script calls (loop side)


@dataclass(slots=True)
class _LoopSide:
    """Per event loop: the async client, the queue of the next call, the keeper."""

    client: aioredis.Redis
    script: Any
    groups: list[_Group] = field(default_factory=list)
    releases: list[tuple[int, str]] = field(default_factory=list)
    # Committed batches (balances, ends of holds, lease use), oldest first: they ride the
    # next call, ahead of its releases and holds, merged (_merged_ops).
    commits: list[_Commit] = field(default_factory=list)
    topups: list[_Lease] = field(default_factory=list)  # T ops of the next call
    drops: list[_Lease] = field(default_factory=list)  # R ops of idle leases
    flush: bool = False  # with leases: send the queued commits now
    timer: asyncio.TimerHandle | None = None  # with leases: when the commits go anyway
    runner: asyncio.Task[None] | None = None
    keeper: asyncio.Task[None] | None = None
    # Set to stop the keeper between calls: cancelling redis-py's asyncio client in the
    # middle of a command can leave the task hanging.
    stop: asyncio.Event = field(default_factory=asyncio.Event)


class SharedCredit:
    """The Redis side of the book's holds; see the module docstring.

    ``resync`` (async, set by the book) reloads every limited account the process knows
    from Postgres into the mirror (through :meth:`seed_sync`); ``live_holds`` lists the
    process's live shared holds, re-asserted after a resync; ``load_missing`` (async)
    loads one account the mirror does not have yet. ``batch=False`` sends one script call
    per hold group (the benchmark's comparison).

    **Leases** (``leases``, on unless ``ILP_CREDIT_LEASES=0``): the event loop's holds are
    taken, with no round trip, from this process's lease of the account's room (one per
    account and direction, :class:`_Lease`), a hold entry in Redis like any other, counted
    in the same sums, so the limit stays exact across processes: committed balance + every
    hold + every lease never passes it. Leases grow in the background (``T``, queued when a
    lease is below half its target: ``lease_horizon_s`` of its recent rate, at least four
    of its largest holds; at most ``1/lease_divisor`` of the room it would see if it were
    empty, so near the limit leases shrink toward nothing and holds are checked one by one
    again), shrink by what commits turn into balance (``K``, with the batch's balances,
    one step) and give back what they do not use: when Redis lowers their cap, when a
    hold that did not fit was refused anywhere (the "squeeze": every lease of that
    account gives back its unused room on its next renewal, within ``keeper_s``, and grows
    no more for ``squeeze_ms``), when idle for a keeper pass (dropped after two). A hold
    the lease cannot take goes to Redis as before, after this process's own unused room
    of that account went back (in the same call, ahead of it). The trade-off: a hold may
    be refused while another process's lease has the room for up to ``keeper_s``; a lease
    is at most 1/``lease_divisor`` of the room, and the refused sender's retry finds it.
    Leases expire like holds (``lease_ttl_ms``, renewed by the keeper while used; a hold
    is taken from a lease only if the lease outlives it), so a killed process's lease
    frees at its expiry; on a new epoch this process stops using its leases and
    re-asserts only what its packets in flight use of them (under new keys). Holds are
    taken from leases only while this process heard from Redis in its epoch less than
    half ``grace_ms`` ago, so after a flush nothing is admitted from a lease once the
    rebuilt mirror admits anything. With leases, committed batches' ops wait up to
    ``commit_delay_s`` for a call to ride (the mirror keeps the old balance and the lease
    meanwhile: as much room as before the commit, never more; what a commit frees, e.g. a
    limited peer credited as the next hop, other processes see that much later).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str | None = None,
        grace_ms: int = GRACE_MS,
        keeper_s: float = KEEPER_S,
        hold_margin_ms: int = HOLD_MARGIN_MS,
        batch: bool = True,
        leases: bool | None = None,
        lease_ttl_ms: int | None = None,
        lease_divisor: int = LEASE_DIVISOR,
        lease_horizon_s: float = LEASE_HORIZON_S,
        commit_delay_s: float = COMMIT_DELAY_S,
        squeeze_ms: int = SQUEEZE_MS,
    ) -> None:
        self.url = url
        # The ledger's identity (database name and oid), set by the book's writer before
        # its first call: keys are ``<prefix><scope>:...``.
        self.scope = ""
        self.hold_margin_ms = hold_margin_ms
        self.prefix = prefix if prefix is not None else default_prefix()
        self.grace_ms = grace_ms
        self.keeper_s = keeper_s
        self.batch = batch
        self.epoch = ""
        self.stats = _Stats()
        self.resync: Callable[[], Awaitable[None]] | None = None
        self.live_holds: Callable[[], Iterable[SharedHold]] | None = None
        self.load_missing: Callable[[str], Awaitable[None]] | None = None  # by code
        self.load_missing_sync: Callable[[str], None] | None = None
        self._sync: redis_sync.Redis | None = None
        self._sync_script: Any = None
        self._sides: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopSide] = (
            weakref.WeakKeyDictionary()
        )
        self._resyncing: asyncio.Future[None] | None = None
        self._closed = False
        self._last_loop: asyncio.AbstractEventLoop | None = None
        self._last_side: _LoopSide | None = None
        self.leases = _leases_from_env() if leases is None else leases
        # Set by the book from its longest hold when left None (a lease must outlive the
        # holds taken from it).
        self.lease_ttl_ms = lease_ttl_ms
        self.lease_divisor = max(2, int(lease_divisor))
        self.lease_horizon_s = lease_horizon_s
        self.commit_delay_s = commit_delay_s
        self.squeeze_ms = squeeze_ms
        self._lease_lock = threading.Lock()
        self._leases: dict[tuple[int, bool], _Lease] = {}
        # Leases of an older epoch whose holds are still in flight (re-asserted on a resync).
        self._retired: list[_Lease] = []
        self._returns_pending = False
        self._lease_serial = itertools.count(1)
        self._token = os.urandom(6).hex()
        # When (time.monotonic) the newest call that Redis answered in our epoch was sent.
        self._ok_at = float("-inf")

    def _keys(self) -> str:
        return f"{self.prefix}{self.scope}:"

    def _head(self) -> list[str]:
        # The epoch is Redis's, not one ledger's: one key per prefix.
        return [
            self._keys(),
            self.epoch,
            os.urandom(8).hex(),
            str(self.grace_ms),
            f"{self.prefix}epoch",
            str(self.squeeze_ms),
        ]

    def _note(self, reply: Sequence[Any], sent: float) -> None:
        if _text(reply[0]) == "OK":
            self._ok_at = max(self._ok_at, sent)

    # --- sync side (the writer thread, services, threads without a loop) ---------------

    def _sync_call(self, ops: list[str]) -> list[Any]:
        if self._sync is None:
            import redis as redis_sync

            self._sync = redis_sync.Redis.from_url(
                self.url, socket_timeout=2, socket_connect_timeout=2
            )
            self._sync_script = self._sync.register_script(LUA)
        head = self._head()
        sent = time.monotonic()
        reply: list[Any] = self._sync_script(keys=[], args=head + ops)
        self._note(reply, sent)
        return reply

    def seed_sync(self, rows: Iterable[MirrorRow]) -> bool:
        """Bring these accounts' mirror up to the rows (created if missing; a balance only
        if its version is newer; limits always). False when Redis failed."""
        ops = [a for row in rows for a in row.argv()]
        if not ops or not self.scope:  # no scope: this book has held nothing yet
            return True
        return self._call_adopting(ops, "cannot update the mirror")

    def commit_sync(
        self,
        balances: Sequence[tuple[int, int, int]],
        released: Sequence[tuple[int, str]],
        consumed: Sequence[tuple[int, str, int]] = (),
    ) -> None:
        """After COMMIT: the new ``(account id, balance, version)`` and the holds ``(account
        id, key)`` the commit turned into postings, in one call (one atomic step in Redis).
        A failure is logged: the holds then stay until they expire (conservative) and the
        next refresh brings the balance. ``consumed``: ``(account id, lease key, amount)``,
        what the commit took out of this process's leases (the lease shrinks by it)."""
        ops = _commit_ops(balances, released, consumed)
        if ops and self.scope:
            self._call_adopting(ops, "commit not mirrored (holds expire)")

    def commit(
        self,
        balances: Sequence[tuple[int, int, int]],
        released: Sequence[tuple[int, str]],
        consumed: Sequence[tuple[int, str, int]] = (),
    ) -> None:
        """:meth:`commit_sync` from the event loop, without a call of its own: the ops go
        into the loop's next script call (with the holds and releases queued meanwhile, in
        commit order, ahead of them: one atomic step per batch still). No round trip in the
        writer thread, none more on the loop. Without a running loop, or once closed:
        :meth:`commit_sync`. With leases the ops wait up to ``commit_delay_s`` for a call."""
        if not (balances or released or consumed) or not self.scope:
            return
        try:
            side = None if self._closed else self._side()
        except RuntimeError:  # no running loop
            side = None
        if side is None:
            ops = _commit_ops(balances, released, consumed)
            self._call_adopting(ops, "commit not mirrored (holds expire)")
            return
        side.commits.append((balances, released, consumed))
        if self.leases and self.commit_delay_s > 0 and not side.flush:
            # Nothing waits for these: they ride the next call, or go when the timer fires.
            if side.timer is None:
                side.timer = asyncio.get_running_loop().call_later(
                    self.commit_delay_s, self._flush_due, side
                )
            return
        self._kick(side)

    def _flush_due(self, side: _LoopSide) -> None:
        side.timer = None
        side.flush = True
        self._kick(side)

    def _call_adopting(self, ops: list[str], failure: str) -> bool:
        # A new epoch met here (a fresh book, or Redis lost its data): adopt it (this
        # process's live holds re-asserted) and send again.
        try:
            for _ in range(3):
                reply = self._sync_call(ops)
                if _text(reply[0]) == "OK":
                    return True
                self._adopt_sync(_text(reply[1]))
        except Exception:
            log.warning("shared credit: %s", failure, exc_info=True)
        return False

    def hold_sync(self, holds: Sequence[SharedHold]) -> None:
        """:meth:`hold` for callers that cannot await (one blocking round trip, more on a new
        epoch). A new epoch is adopted after re-asserting this process's live holds (the
        mirror itself is seeded from Postgres by whoever rebuilt it, and an account it lacks
        is loaded through ``load_missing_sync``); during a rebuild's grace it blocks until
        the grace ends (at most ``grace_ms``, only after Redis lost its data)."""
        ops = ["G", str(len(holds))] + [a for h in holds for a in h.argv()]
        # Commits and releases this loop queued go first, in the same call: a sync caller
        # that released then holds again sees its room back, as with the in-memory book.
        with contextlib.suppress(RuntimeError):
            side = self._sides.get(asyncio.get_running_loop())
            if side is not None and (side.releases or side.commits):
                queued, side.releases = side.releases, []
                commits, side.commits = side.commits, []
                ops = (
                    _merged_ops(commits)
                    + [a for pk, key in queued for a in ("R", str(pk), key)]
                    + ops
                )
        missing_loaded = False
        for _ in range(8):
            try:
                reply = self._sync_call(ops)
            except Exception as exc:
                raise BalanceLimitExceeded(
                    "credit check unavailable", account=holds[0].account_code
                ) from exc
            if _text(reply[0]) == "E":
                self._adopt_sync(_text(reply[1]))
                continue
            res = _text(reply[3])
            if res == "W":
                # A rebuild's grace (at most grace_ms, only after Redis lost its data).
                time.sleep(max(int(reply[2]), 10) / 1000)
                continue
            if res.startswith("M") and not missing_loaded and self.load_missing_sync:
                missing_loaded = True
                try:
                    self.load_missing_sync(holds[int(res[1:]) - 1].account_code)
                except RuntimeError:  # on an event loop: no database here
                    pass
                else:
                    continue
            _raise_for(res, holds)
            return
        raise BalanceLimitExceeded("credit is being rebuilt", account=holds[0].account_code)

    def _adopt_sync(self, epoch: str) -> None:
        self.stats.resyncs += 1
        previous, self.epoch = self.epoch, epoch
        self._ok_at = float("-inf")
        lease_ops = self._retire_leases()
        holds = list(self.live_holds()) if self.live_holds is not None else []
        ops = [a for h in holds for a in ("A", *h.argv())] + lease_ops
        try:
            if ops:
                self._sync_call(ops)
        except Exception:
            self.epoch = previous
            raise

    def release_sync(self, released: Sequence[tuple[int, str]]) -> None:
        self.commit_sync((), released)

    # --- async side (the event loop's hot path) -----------------------------------------

    def _side(self) -> _LoopSide:
        loop = asyncio.get_running_loop()
        if loop is self._last_loop and self._last_side is not None:
            return self._last_side  # the hot path: one process, one loop
        side = self._sides.get(loop)
        if side is None:
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
            side = _LoopSide(client=client, script=client.register_script(LUA))
            self._sides[loop] = side
        self._last_loop, self._last_side = loop, side
        return side

    def _start_keeper(self, side: _LoopSide) -> None:
        # Only a loop that takes holds has something to re-assert after a rebuild.
        if side.keeper is None and self.keeper_s > 0 and not self._closed:
            side.keeper = asyncio.get_running_loop().create_task(
                self._keep(side), name="shared-credit-keeper"
            )

    async def hold(self, holds: Sequence[SharedHold]) -> None:
        """Take ``holds`` together, all or none. Raises :class:`BalanceLimitExceeded`
        (``account=`` the one that has no room), :class:`DuplicateHold`."""
        if self._closed:
            raise BalanceLimitExceeded("the book is closed", account=holds[0].account_code)
        side = self._side()
        self._start_keeper(side)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        side.groups.append(_Group(tuple(holds), fut))
        self._kick(side)
        await fut

    def release(self, account_id: int, key: str) -> None:
        """Drop one hold (queued into the next call from a loop; blocking from a thread)."""
        try:
            side = self._side()
        except RuntimeError:  # no running loop
            self.release_sync([(account_id, key)])
            return
        side.releases.append((account_id, key))
        self._kick(side)

    # --- leases (see the class docstring) ------------------------------------------------

    def _lease_key(self, credit: bool) -> str:
        # Unique per process and per lease: a K op built for an older key (an older epoch's
        # lease) never shrinks a newer one.
        return f"lease:{self._token}:{next(self._lease_serial)}:{'C' if credit else 'D'}"

    def take_leased(self, holds: Sequence[SharedHold]) -> list[_Lease] | None:
        """Take ``holds`` (one packet's) from this process's leases, all or none; the leases
        they came from, or None (then :meth:`hold` them; this process's unused room of
        their accounts is queued to go back first). From the event loop; no I/O."""
        if not self.leases or self._closed:
            return None
        side = self._side()
        now = time.monotonic()
        fresh = now - self._ok_at < self.grace_ms / 2000
        picked: list[_Lease] = []
        with self._lease_lock:
            for h in holds:
                lease = self._leases.get((h.account_id, h.credit))
                if lease is None:
                    lease = _Lease(
                        h.account_id, h.account_code, h.credit, self._lease_key(h.credit)
                    )
                    self._leases[(h.account_id, h.credit)] = lease
                lease.admitted += h.amount
                lease.idle = 0
                if h.amount > lease.biggest:
                    lease.biggest = h.amount
                picked.append(lease)
            ok = fresh
            if ok:
                for lease, h in zip(picked, holds, strict=True):
                    # Two holds of one packet on one lease: checked one after the other.
                    if lease.expires_ms < h.expires_ms or lease.used + h.amount > lease.amount:
                        ok = False
                        break
                    lease.used += h.amount
                if not ok:
                    for undo, h2 in zip(picked, holds, strict=False):
                        if h2 is h:
                            break
                        undo.used -= h2.amount
            if not ok:
                for lease in picked:
                    if fresh and not lease.missed:  # once per call: one burst, one doubling
                        lease.missed = True
                        lease.floor = min(LEASE_WANT_MAX, 2 * max(lease.floor, lease.amount))
                    spare = lease.amount - lease.used
                    if spare > 0:  # so the direct hold can have it (the same call, ahead)
                        lease.amount -= spare
                        lease.returning += spare
                        self._returns_pending = True
            horizon = self.lease_horizon_s
            for lease in picked:
                if (
                    not lease.topup
                    and not lease.dead
                    and lease.amount - lease.used < lease.target(horizon) // 2
                ):
                    lease.topup = True
                    side.topups.append(lease)
        if ok:
            self.stats.lease_holds += 1
        else:
            self.stats.lease_misses += 1
        if side.topups:
            self._kick(side)
        return picked if ok else None

    def lease_end(self, lease: _Lease, amount: int, committed: bool) -> None:
        """A hold taken from ``lease`` ended: back into the lease (a Reject, an expiry), or
        committed, when the lease shrinks by it (the commit's K op tells Redis)."""
        with self._lease_lock:
            lease.used -= amount
            if committed:
                lease.amount -= amount

    def _retire_leases(self) -> list[str]:
        """A new epoch (Redis lost our leases, or we are not sure): no more holds from any
        lease; what their packets in flight use is re-asserted under new keys (``A`` ops,
        returned), so it counts until those packets end. Leases start over."""
        with self._lease_lock:
            for lease in self._leases.values():
                lease.dead = True
                self._retired.append(lease)
            self._leases.clear()
            self._returns_pending = False
            now_ms = int(time.time() * 1000)
            ops: list[str] = []
            keep: list[_Lease] = []
            for lease in self._retired:
                lease.returning = 0
                lease.amount = lease.used
                if lease.used <= 0 or lease.expires_ms <= now_ms:
                    continue
                keep.append(lease)
                lease.key = self._lease_key(lease.credit)
                ops += [
                    "A",
                    str(lease.account_id),
                    lease.key,
                    "C" if lease.credit else "D",
                    *limbs(lease.used),
                    str(lease.expires_ms),
                ]
            self._retired = keep
        return ops

    def _maintain(self, side: _LoopSide, elapsed: float) -> None:
        """The keeper's pass over the leases: rates, renewals (T), idle ones give back their
        room and are dropped (R) after a second idle pass."""
        with self._lease_lock:
            for k, lease in list(self._leases.items()):
                inst = lease.admitted / elapsed if elapsed > 0 else 0.0
                lease.rate = inst if lease.rate == 0 else (lease.rate + inst) / 2
                if not lease.missed:
                    lease.floor //= 2
                if lease.admitted == 0:
                    lease.idle += 1
                    spare = lease.amount - lease.used
                    if spare > 0:
                        lease.amount -= spare
                        lease.returning += spare
                        self._returns_pending = True
                    if lease.idle >= 2 and lease.used == 0 and not lease.topup:
                        del self._leases[k]
                        lease.dead = True
                        lease.returning = 0  # the R drops the whole entry
                        side.drops.append(lease)
                elif not lease.topup:
                    lease.topup = True
                    side.topups.append(lease)
                lease.admitted = 0

    def _lease_ops(
        self, topups: list[_Lease], drops: list[_Lease]
    ) -> tuple[list[str], list[str], list[tuple[_Lease, str, int]]]:
        """K (give back) and R (drop) ops, T (grow, renew) ops, for the next call."""
        ops: list[str] = []
        sent: list[tuple[_Lease, str, int]] = []
        ttl = self.lease_ttl_ms if self.lease_ttl_ms is not None else 60_000
        exp = int(time.time() * 1000) + ttl
        with self._lease_lock:
            if self._returns_pending:
                self._returns_pending = False
                for lease in self._leases.values():
                    if lease.returning > 0:
                        ops += ["K", str(lease.account_id), lease.key, *limbs(lease.returning)]
                        lease.returning = 0
                        self.stats.lease_returns += 1
            for lease in drops:
                ops += ["R", str(lease.account_id), lease.key]
            tops: list[str] = []
            for lease in topups:
                if lease.dead:
                    lease.topup = False
                    continue
                want = max(0, lease.target(self.lease_horizon_s) - (lease.amount - lease.used))
                tops += [
                    "T",
                    str(lease.account_id),
                    lease.key,
                    "C" if lease.credit else "D",
                    *limbs(min(want, LEASE_WANT_MAX)),
                    str(exp),
                    str(self.lease_divisor),
                    "N" if lease.fresh else "E",
                ]
                sent.append((lease, lease.key, exp))
        return ops, tops, sent

    def _lease_replies(self, sent: list[tuple[_Lease, str, int]], replies: Sequence[Any]) -> None:
        with self._lease_lock:
            for (lease, key, exp), raw in zip(sent, replies, strict=True):
                lease.topup = False
                lease.missed = False
                res = _text(raw)
                if lease.dead or lease.key != key or res == "M":
                    continue
                if res == "X":  # expired or dropped in Redis: its holds are past their expiry
                    lease.dead = True
                    if self._leases.get((lease.account_id, lease.credit)) is lease:
                        del self._leases[(lease.account_id, lease.credit)]
                    continue
                _, granted, cap_text = res.split()
                lease.fresh = False
                lease.expires_ms = max(lease.expires_ms, exp)
                if int(granted):
                    lease.amount += int(granted)
                    self.stats.lease_grants += 1
                cap = int(cap_text)
                if lease.amount > cap:  # the room shrank, or a squeeze: give back the spare
                    spare = min(lease.amount - lease.used, lease.amount - cap)
                    if spare > 0:
                        lease.amount -= spare
                        lease.returning += spare
                        self._returns_pending = True

    def _drop_retired(self) -> list[str]:
        with self._lease_lock:
            leases = list(self._leases.values()) + self._retired
            self._leases.clear()
            self._retired = []
            self._returns_pending = False
            ops: list[str] = []
            for lease in leases:
                lease.dead = True
                ops += ["R", str(lease.account_id), lease.key]
        return ops

    # --- the loop's calls ---------------------------------------------------------------

    def _kick(self, side: _LoopSide) -> None:
        if side.runner is None or side.runner.done():
            side.runner = asyncio.get_running_loop().create_task(self._run(side))

    def _pending(self, side: _LoopSide) -> bool:
        return bool(
            side.groups
            or side.releases
            or side.topups
            or side.drops
            or self._returns_pending
            or (side.commits and (side.flush or not self.leases or self.commit_delay_s <= 0))
        )

    async def _run(self, side: _LoopSide) -> None:
        # One call in flight per loop; what queues meanwhile goes in the next one.
        while self._pending(side):
            side.flush = False
            if side.timer is not None:
                side.timer.cancel()
                side.timer = None
            commits, side.commits = side.commits[:MAX_OPS], side.commits[MAX_OPS:]
            if self.batch:
                groups, side.groups = side.groups[:MAX_OPS], side.groups[MAX_OPS:]
                releases, side.releases = side.releases[:MAX_OPS], side.releases[MAX_OPS:]
            else:
                groups, side.groups = side.groups[:1], side.groups[1:]
                releases, side.releases = side.releases[:1], side.releases[1:]
            topups, side.topups = side.topups, []
            drops, side.drops = side.drops, []
            try:
                await self._call(side, groups, releases, commits, topups, drops)
            except Exception as exc:
                log.warning("shared credit: script call failed: %r", exc)
                if commits:
                    log.warning(
                        "shared credit: %d commits not mirrored (holds expire)", len(commits)
                    )
                with self._lease_lock:
                    for lease in topups:
                        lease.topup = False
                for g in groups:
                    if not g.future.done():
                        error = BalanceLimitExceeded(
                            "credit check unavailable", account=g.holds[0].account_code
                        )
                        error.__cause__ = exc
                        g.future.set_exception(error)
        if side.commits and side.timer is None and not self._closed:
            side.timer = asyncio.get_running_loop().call_later(
                self.commit_delay_s, self._flush_due, side
            )

    async def _call(
        self,
        side: _LoopSide,
        groups: list[_Group],
        releases: list[tuple[int, str]],
        commits: Sequence[_Commit] = (),
        topups: list[_Lease] | None = None,
        drops: list[_Lease] | None = None,
    ) -> None:
        ops: list[str] = _merged_ops(commits)
        for pk, key in releases:
            ops += ["R", str(pk), key]
        given, asked, sent = self._lease_ops(topups or [], drops or [])
        # Ahead of the holds: what leases give back (a refused hold may need it); after
        # them: what leases ask for (a packet comes before a lease's growth).
        ops += given
        for g in groups:
            ops += ["G", str(len(g.holds))] + [a for h in g.holds for a in h.argv()]
        ops += asked
        head = self._head()
        started = time.perf_counter()
        sent_at = time.monotonic()
        reply = await side.script(keys=[], args=head + ops)
        self.stats.seconds += time.perf_counter() - started
        self.stats.calls += 1
        self.stats.groups += len(groups)
        self.stats.releases += len(releases)
        self.stats.commits += len(commits)
        self.stats.max_ops = max(self.stats.max_ops, len(groups) + len(releases))
        status, epoch, ready_in = _text(reply[0]), _text(reply[1]), int(reply[2])
        if status == "E":
            with self._lease_lock:
                for lease in topups or []:
                    lease.topup = False
            await self._resync(epoch)
            side.commits[:0] = commits
            side.releases[:0] = releases
            side.groups[:0] = groups
            # Leases' K/T ops are not sent again: the resync retired every lease.
            return
        self._note(reply, sent_at)
        if sent:
            self._lease_replies(sent, reply[3 + len(groups) :])
        retry: list[_Group] = []
        for g, raw in zip(groups, reply[3 : 3 + len(groups)], strict=True):
            res = _text(raw)
            if res == "W":
                self.stats.waits += 1
                retry.append(g)
            elif res.startswith("M") and not g.missing_retried and self.load_missing:
                g.missing_retried = True
                try:
                    await self.load_missing(g.holds[int(res[1:]) - 1].account_code)
                except Exception as exc:
                    g.future.set_exception(exc)
                    continue
                retry.append(g)
            else:
                try:
                    _raise_for(res, g.holds)
                except Exception as exc:
                    if not g.future.done():
                        g.future.set_exception(exc)
                else:
                    if not g.future.done():
                        g.future.set_result(None)
        if retry:
            if any(_text(r) == "W" for r in reply[3 : 3 + len(groups)]):
                await asyncio.sleep(max(ready_in, 10) / 1000)
            side.groups[:0] = retry

    async def _resync(self, epoch: str) -> None:
        """A new mirror generation: reload limited accounts from Postgres, re-assert ours."""
        if self._resyncing is not None:
            await asyncio.shield(self._resyncing)
            return
        self._resyncing = asyncio.get_running_loop().create_future()
        try:
            self.stats.resyncs += 1
            log.warning("shared credit: new mirror epoch %s; rebuilding from the ledger", epoch)
            self.epoch = epoch
            # No hold from a lease until Redis answers in this epoch; the leases' holds in
            # flight are re-asserted below with the others.
            self._ok_at = float("-inf")
            lease_ops = self._retire_leases()
            if self.resync is not None:
                await self.resync()
            holds = list(self.live_holds()) if self.live_holds is not None else []
            ops: list[str] = []
            for h in holds:
                ops += ["A", *h.argv()]
            ops += lease_ops
            if ops:
                side = self._side()
                head = self._head()
                reply = await side.script(keys=[], args=head + ops)
                if _text(reply[0]) == "E":  # moved again; the next call resyncs again
                    self.epoch = ""
        except Exception:
            self.epoch = ""  # try again on the next call
            raise
        finally:
            fut, self._resyncing = self._resyncing, None
            fut.set_result(None)

    async def _keep(self, side: _LoopSide) -> None:
        """Notice a new epoch within ``keeper_s`` even when no packet comes; with leases,
        renew them (or give back what an idle one holds) and send what commits queued."""
        last = time.monotonic()
        while not self._closed:
            try:
                await asyncio.wait_for(side.stop.wait(), self.keeper_s)
                return
            except TimeoutError:
                pass
            try:
                now = time.monotonic()
                if self.leases:
                    self._maintain(side, now - last)
                last = now
                if self._pending(side) or side.commits:
                    # The loop's call does the epoch check too.
                    side.flush = True
                    self._kick(side)
                    continue
                head = self._head()
                sent_at = time.monotonic()
                reply = await side.script(keys=[], args=head)
                if _text(reply[0]) == "E":
                    await self._resync(_text(reply[1]))
                else:
                    self._note(reply, sent_at)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.debug("shared credit: keeper check failed", exc_info=True)

    async def check_epoch(self) -> None:
        """One keeper pass now (tests; start-up)."""
        side = self._side()
        head = self._head()
        sent_at = time.monotonic()
        reply = await side.script(keys=[], args=head)
        if _text(reply[0]) == "E":
            await self._resync(_text(reply[1]))
        else:
            self._note(reply, sent_at)

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the keeper on the running loop (it also starts with the first hold)."""
        self._start_keeper(self._side())

    async def aclose(self) -> None:
        """Stop this loop's keeper, send what this loop still queued (commits waiting for a
        call included), and close its client."""
        loop = asyncio.get_running_loop()
        side = self._sides.get(loop)
        if side is None:
            return
        side.stop.set()
        if side.keeper is not None:
            with contextlib.suppress(Exception):
                await side.keeper
        if side.commits:
            side.flush = True
            self._kick(side)
        if side.runner is not None and not side.runner.done():
            with contextlib.suppress(BaseException):
                await side.runner
        if side.timer is not None:
            side.timer.cancel()
            side.timer = None
        self._sides.pop(loop, None)
        if self._last_loop is loop:
            self._last_loop, self._last_side = None, None
        await side.client.aclose()

    def close(self) -> None:
        """Stop the keepers (from any thread); clients close with their loops. Commits still
        queued on a loop are sent here (their holds would otherwise wait for their expiry)."""
        self._closed = True
        ops: list[str] = []
        for side in list(self._sides.values()):
            commits, side.commits = side.commits, []
            ops += _merged_ops(commits)
            if side.keeper is not None:
                with contextlib.suppress(RuntimeError):  # its loop is closed: nothing runs
                    side.keeper.get_loop().call_soon_threadsafe(side.stop.set)
        # Our leases go with us (their packets cannot commit any more: the book is closed).
        ops += self._drop_retired()
        if ops and self.scope:
            self._call_adopting(ops, "commit not mirrored (holds expire)")
        if self._sync is not None:
            with contextlib.suppress(Exception):
                self._sync.close()


def _merged_ops(commits: Sequence[_Commit]) -> list[str]:
    """Several committed batches as one step: the same effect as their ops one after the
    other (a balance with an older version changes nothing; lease shrinks add up), fewer
    ops."""
    if len(commits) == 1:
        return _commit_ops(*commits[0])
    newest: dict[int, tuple[int, int]] = {}
    released: list[tuple[int, str]] = []
    used: dict[tuple[int, str], int] = {}
    for balances, ended, consumed in commits:
        for pk, balance, version in balances:
            if pk not in newest or version > newest[pk][1]:
                newest[pk] = (balance, version)
        released += ended
        for pk, key, amount in consumed:
            used[(pk, key)] = used.get((pk, key), 0) + amount
    return _commit_ops(
        [(pk, b, v) for pk, (b, v) in newest.items()],
        released,
        [(pk, key, amount) for (pk, key), amount in used.items()],
    )


def _commit_ops(
    balances: Sequence[tuple[int, int, int]],
    released: Sequence[tuple[int, str]],
    consumed: Sequence[tuple[int, str, int]] = (),
) -> list[str]:
    ops: list[str] = []
    for pk, balance, version in balances:
        ops += ["B", str(pk), *limbs(balance), str(version)]
    for pk, key in released:
        ops += ["R", str(pk), key]
    # After the balances (one step with them): a lease shrinks by what became balance.
    for pk, key, amount in consumed:
        ops += ["K", str(pk), key, *limbs(amount)]
    return ops


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _raise_for(res: str, holds: Sequence[SharedHold]) -> None:
    if res == "1":
        return
    hold = holds[int(res[1:]) - 1] if res[:1] in ("L", "D", "M") else holds[0]
    if res.startswith("D"):
        raise DuplicateHold(f"hold key {hold.key!r} is already used", key=hold.key)
    if res.startswith("M"):
        raise BalanceLimitExceeded("account not in the credit mirror", account=hold.account_code)
    raise BalanceLimitExceeded(
        "exceeded maximum balance" if hold.credit else "insufficient liquidity",
        account=hold.account_code,
    )
