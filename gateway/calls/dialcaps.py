"""Caps on the calls the gateway places, per scope (an API key, an agent): calls per rolling
minute, live calls at once, and minutes of calls per UTC day.

``admit(call_id, caps)`` checks every scope's caps and, only when all have room, counts the
dial in each: one decision for the key and the agent together. ``ended(call_id, outcome,
seconds)`` frees the call's live slots and adds its minutes to each scope's day: the call's
duration from the dial to its end, rounded up to whole minutes as carriers bill it (a call the
carrier never placed, ``dial_failed``, counts none); the minutes go to the UTC day on which the
call ends. ``ended`` is idempotent: whoever ends the call first counts it.

``RedisDialCaps`` keeps the counts in Redis (replicas share them): every key lives under one
hash tag, so each script runs in one slot of a Redis Cluster; the rate window and the live
slots use the Redis server's clock. ``InProcessDialCaps`` keeps them in this process;
``FallbackDialCaps`` uses Redis while it answers and the process while it does not (each
replica then enforces the caps on its own).

A live slot whose end the gateway never saw (its replica was killed) is freed by ``prune``
(the caller names the calls still live, from the registry) and in any case after
``LEASE_S``.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import orjson
from redis.exceptions import RedisError

from security.exceptions import StateUnavailable
from security.rediskeys import RedisClient
from security.replay import REDIS_TIMEOUT_S, Degradation

WINDOW_S: Final = 60.0
LEASE_S: Final = 6 * 3600.0
"""The longest a live slot is held without its call's end being seen."""
PRUNE_GRACE_S: Final = 120.0
"""A live slot younger than this is never pruned: its dial may not be registered yet."""
DAY_TTL_S: Final = 2 * 86400
NOT_PLACED: Final = "dial_failed"

WallClock = Callable[[], float]


class CapRefusal(enum.StrEnum):
    """Which cap refused a dial (a bounded metric label)."""

    RATE = "rate"
    CONCURRENT = "concurrent"
    MINUTES = "minutes"


@dataclass(frozen=True, slots=True)
class Cap:
    """The caps of one ``scope`` (``key:ID``, ``agent:NAME``); ``None``: not capped."""

    scope: str
    per_minute: int | None = None
    concurrent: int | None = None
    minutes_per_day: int | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """``refusal`` None: admitted. Else the refusing ``scope`` and when to retry."""

    refusal: CapRefusal | None
    scope: str = ""
    retry_after_s: float = 0.0

    @property
    def allowed(self) -> bool:
        return self.refusal is None


ADMITTED: Final = Verdict(None)


class DialCaps(Protocol):
    async def admit(self, call_id: str, caps: Sequence[Cap]) -> Verdict: ...

    async def ended(self, call_id: str, outcome: str, seconds: float) -> None: ...

    async def prune(self, scope: str, live: Collection[str]) -> int:
        """Free the live slots of ``scope`` held by calls not in ``live`` (older than
        ``PRUNE_GRACE_S``); returns how many."""
        ...


def minutes_of(outcome: str, seconds: float) -> int:
    """What a call costs: whole minutes, rounded up; none for a call never placed."""
    if outcome == NOT_PLACED:
        return 0
    return max(1, math.ceil(max(0.0, seconds) / 60))


def utc_day(now: float) -> str:
    return time.strftime("%Y%m%d", time.gmtime(now))


def until_utc_midnight(now: float) -> float:
    return 86400 - now % 86400


class InProcessDialCaps:
    """The caps in this process (one replica, or a fallback while Redis is down)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: WallClock = time.time,
        prune_grace_s: float = PRUNE_GRACE_S,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._grace_s = prune_grace_s
        self._dials: defaultdict[str, deque[float]] = defaultdict(deque)
        self._live: defaultdict[str, dict[str, float]] = defaultdict(dict)
        self._minutes: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._calls: dict[str, tuple[str, ...]] = {}

    async def admit(self, call_id: str, caps: Sequence[Cap]) -> Verdict:
        now = self._clock()
        day = utc_day(self._wall())
        for cap in caps:
            dials = self._dials[cap.scope]
            while dials and dials[0] <= now - WINDOW_S:
                dials.popleft()
            live = self._live[cap.scope]
            for stale in [c for c, at in live.items() if at <= now - LEASE_S]:
                del live[stale]
            if cap.per_minute is not None and len(dials) >= cap.per_minute:
                return Verdict(CapRefusal.RATE, cap.scope, dials[0] + WINDOW_S - now)
            if cap.concurrent is not None and len(live) >= cap.concurrent:
                return Verdict(CapRefusal.CONCURRENT, cap.scope, 5.0)
            used = self._minutes.get((cap.scope, day), 0)
            if cap.minutes_per_day is not None and used >= cap.minutes_per_day:
                return Verdict(CapRefusal.MINUTES, cap.scope, until_utc_midnight(self._wall()))
        for cap in caps:
            self._dials[cap.scope].append(now)
            self._live[cap.scope][call_id] = now
        self._calls[call_id] = tuple(cap.scope for cap in caps)
        return ADMITTED

    async def ended(self, call_id: str, outcome: str, seconds: float) -> None:
        scopes = self._calls.pop(call_id, None)
        if scopes is None:
            return
        day = utc_day(self._wall())
        for scope in scopes:
            self._live[scope].pop(call_id, None)
            self._minutes[(scope, day)] += minutes_of(outcome, seconds)

    async def prune(self, scope: str, live: Collection[str]) -> int:
        horizon = self._clock() - self._grace_s
        held = self._live[scope]
        stale = [c for c, at in held.items() if c not in live and at <= horizon]
        for call_id in stale:
            del held[call_id]
        return len(stale)


_ADMIT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window, lease, n = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
for i = 0, n - 1 do
  local rate, live, minutes = KEYS[2 + i * 4], KEYS[4 + i * 4], KEYS[5 + i * 4]
  local per_minute = tonumber(ARGV[6 + i * 3])
  local concurrent = tonumber(ARGV[7 + i * 3])
  local cap_minutes = tonumber(ARGV[8 + i * 3])
  redis.call('ZREMRANGEBYSCORE', rate, '-inf', now - window)
  redis.call('ZREMRANGEBYSCORE', live, '-inf', now - lease)
  if per_minute > 0 and redis.call('ZCARD', rate) >= per_minute then
    local oldest = redis.call('ZRANGE', rate, 0, 0, 'WITHSCORES')
    return {0, i, 'rate', tonumber(oldest[2]) + window - now}
  end
  if concurrent > 0 and redis.call('ZCARD', live) >= concurrent then
    return {0, i, 'concurrent', 5000}
  end
  if cap_minutes > 0 and tonumber(redis.call('GET', minutes) or '0') >= cap_minutes then
    return {0, i, 'minutes', 0}
  end
end
for i = 0, n - 1 do
  local rate, seq, live = KEYS[2 + i * 4], KEYS[3 + i * 4], KEYS[4 + i * 4]
  local member = redis.call('INCR', seq)
  redis.call('ZADD', rate, now, member)
  redis.call('PEXPIRE', rate, window)
  redis.call('PEXPIRE', seq, window)
  redis.call('ZADD', live, now, ARGV[1])
  redis.call('PEXPIRE', live, lease)
end
redis.call('SET', KEYS[1], ARGV[4], 'PX', lease)
return {1, -1, '', 0}
"""
"""KEYS: the call's key, then per scope its dial log, log counter, live set and day's minutes.
ARGV: call id, window ms, lease ms, the scopes (JSON, kept under the call's key), the number
of scopes, then per scope: dials per minute, live calls, minutes per day (0: not capped).
Returns {admitted, refusing scope's index, cap, retry after ms}."""

_ENDED: Final = """
if redis.call('DEL', KEYS[1]) == 0 then
  return 0
end
local n = (#KEYS - 1) / 2
for i = 0, n - 1 do
  redis.call('ZREM', KEYS[2 + i * 2], ARGV[1])
  redis.call('INCRBY', KEYS[3 + i * 2], ARGV[2])
  redis.call('EXPIRE', KEYS[3 + i * 2], ARGV[3])
end
return 1
"""
"""KEYS: the call's key, then per scope its live set and day's minutes. ARGV: call id,
minutes, the day counter's TTL (s). Only the first end of a call counts (the call's key)."""

_PRUNE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local keep = {}
for i = 2, #ARGV do keep[ARGV[i]] = true end
local removed = 0
local held = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
for _, call_id in ipairs(held) do
  if not keep[call_id] then
    redis.call('ZREM', KEYS[1], call_id)
    removed = removed + 1
  end
end
return removed
"""
"""KEYS: a scope's live set. ARGV: grace ms, then the live call ids."""


def _tag(scope: str) -> str:
    return hashlib.sha256(scope.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class RedisDialCaps:
    """The caps in Redis under ``prefix``, shared by every replica; each operation is bounded
    by ``timeout_s`` and raises ``StateUnavailable`` when Redis fails."""

    def __init__(
        self,
        client: RedisClient,
        prefix: str,
        *,
        timeout_s: float = REDIS_TIMEOUT_S,
        wall: WallClock = time.time,
        prune_grace_s: float = PRUNE_GRACE_S,
    ) -> None:
        self._client = client
        self._grace_ms = int(prune_grace_s * 1000)
        # One hash tag for every key: a script's keys share one Redis Cluster slot.
        self._base = f"{prefix}dialcaps:{{caps}}:"
        self._timeout_s = timeout_s
        self._wall = wall
        self._admit = client.register_script(_ADMIT)
        self._ended = client.register_script(_ENDED)
        self._prune = client.register_script(_PRUNE)

    def _scope_keys(self, scope: str, day: str) -> tuple[str, str, str, str]:
        base = self._base + _tag(scope)
        return f"{base}:dials", f"{base}:seq", f"{base}:live", f"{base}:minutes:{day}"

    def _call_key(self, call_id: str) -> str:
        return f"{self._base}call:{call_id}"

    async def admit(self, call_id: str, caps: Sequence[Cap]) -> Verdict:
        now = self._wall()
        day = utc_day(now)
        keys = [self._call_key(call_id)]
        args: list[str | int] = [
            call_id,
            int(WINDOW_S * 1000),
            int(LEASE_S * 1000),
            orjson.dumps([cap.scope for cap in caps]).decode(),
            len(caps),
        ]
        for cap in caps:
            keys.extend(self._scope_keys(cap.scope, day))
            args.extend((cap.per_minute or 0, cap.concurrent or 0, cap.minutes_per_day or 0))
        try:
            async with asyncio.timeout(self._timeout_s):
                allowed, index, which, retry_ms = await self._admit(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable("dial caps unavailable") from exc
        if int(allowed):
            return ADMITTED
        refusal = CapRefusal(which.decode() if isinstance(which, bytes) else str(which))
        retry_s = until_utc_midnight(now) if refusal is CapRefusal.MINUTES else int(retry_ms) / 1000
        return Verdict(refusal, caps[int(index)].scope, max(0.0, retry_s))

    async def ended(self, call_id: str, outcome: str, seconds: float) -> None:
        call_key = self._call_key(call_id)
        day = utc_day(self._wall())
        try:
            async with asyncio.timeout(self._timeout_s):
                raw = await self._client.get(call_key)
                if raw is None:
                    return  # not a placed call, or its end was already counted
                keys = [call_key]
                for scope in orjson.loads(raw):
                    _, _, live, minutes = self._scope_keys(str(scope), day)
                    keys.extend((live, minutes))
                await self._ended(
                    keys=keys, args=[call_id, minutes_of(outcome, seconds), DAY_TTL_S]
                )
        except (RedisError, OSError, TimeoutError, orjson.JSONDecodeError) as exc:
            raise StateUnavailable("dial caps unavailable") from exc

    async def prune(self, scope: str, live: Collection[str]) -> int:
        _, _, live_key, _ = self._scope_keys(scope, "")
        try:
            async with asyncio.timeout(self._timeout_s):
                removed = await self._prune(keys=[live_key], args=[self._grace_ms, *live])
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable("dial caps unavailable") from exc
        return int(removed)


class FallbackDialCaps:
    """Redis while it answers, the process while it does not. Counts taken by one side are
    not copied to the other: a call admitted in Redis and ended during an outage keeps its
    Redis slot until ``prune`` or the lease frees it."""

    def __init__(
        self, primary: DialCaps, fallback: DialCaps, *, degradation: Degradation | None = None
    ) -> None:
        self._primary = primary
        self._fallback = fallback
        self.degradation = Degradation("dial_caps") if degradation is None else degradation

    @property
    def degraded(self) -> bool:
        return self.degradation.degraded

    async def admit(self, call_id: str, caps: Sequence[Cap]) -> Verdict:
        if self.degradation.use_primary():
            try:
                verdict = await self._primary.admit(call_id, caps)
            except StateUnavailable as exc:
                self.degradation.primary_failed(exc)
            else:
                self.degradation.primary_succeeded()
                return verdict
        self.degradation.fell_back()
        return await self._fallback.admit(call_id, caps)

    async def ended(self, call_id: str, outcome: str, seconds: float) -> None:
        await self._fallback.ended(call_id, outcome, seconds)
        if self.degradation.use_primary():
            try:
                await self._primary.ended(call_id, outcome, seconds)
            except StateUnavailable as exc:
                self.degradation.primary_failed(exc)
            else:
                self.degradation.primary_succeeded()

    async def prune(self, scope: str, live: Collection[str]) -> int:
        removed = await self._fallback.prune(scope, live)
        if self.degradation.use_primary():
            try:
                removed += await self._primary.prune(scope, live)
            except StateUnavailable as exc:
                self.degradation.primary_failed(exc)
        return removed


def build_dial_caps(redis: RedisClient | None, prefix: str) -> DialCaps:
    """Shared through Redis with an in-process fallback, or in process only."""
    if redis is None:
        return InProcessDialCaps()
    return FallbackDialCaps(RedisDialCaps(redis, prefix), InProcessDialCaps())
