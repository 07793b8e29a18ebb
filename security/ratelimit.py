"""Rolling-window rate limits: at most ``limit`` accepted hits per scope in any ``window_s``.

An exact sliding log, not a fixed window or a token bucket: a hit is accepted when fewer than
``limit`` hits were accepted in the ``window_s`` seconds before it, and refused hits are never
counted, so a refused flood does not extend anyone's wait. ``InProcessLimiter`` keeps the log
in this process; ``RedisLimiter`` keeps it in a Redis sorted set and decides with one atomic
Lua script on the Redis server's clock, so replicas share one limit; ``FallbackLimiter``
uses Redis while it answers and an in-process limiter while it does not.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Final, Protocol

from redis.exceptions import RedisError

from security.exceptions import ConfigError, StateUnavailable
from security.rediskeys import RedisClient, namespace, slot_tag, tagged
from security.replay import REDIS_TIMEOUT_S, Clock, Degradation


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one hit.

    ``remaining`` is how many more hits the window would accept now; ``reset_s`` is how long
    until the oldest counted hit leaves the window (0 when none is counted); ``retry_after_s``
    equals ``reset_s`` for a refused hit and is 0 for an accepted one.
    """

    allowed: bool
    limit: int
    remaining: int
    retry_after_s: float
    reset_s: float

    def headers(self) -> dict[str, str]:
        """``RateLimit-*`` headers, plus ``Retry-After`` when refused; whole seconds."""
        result = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_s)),
        }
        if not self.allowed:
            result["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return result


class Limiter(Protocol):
    """A rate limit shared by every caller of ``hit`` with the same scope."""

    @property
    def limit(self) -> int: ...

    @property
    def window_s(self) -> float: ...

    async def hit(self, scope: str) -> Decision:
        """Count one hit on ``scope`` if the window has room; say whether it had."""
        ...


def _validate(limit: int, window_s: float) -> None:
    if limit < 1:
        raise ConfigError("rate limit: limit must be at least 1")
    if not window_s > 0:
        raise ConfigError("rate limit: window must be positive")


class InProcessLimiter:
    """A sliding-log limiter in this process; O(1) amortised per hit, O(limit) per scope.

    At most ``max_scopes`` scopes are tracked; the least recently used is forgotten first.
    """

    __slots__ = ("_clock", "_limit", "_logs", "_max_scopes", "_window_s")

    def __init__(
        self,
        limit: int,
        window_s: float = 60.0,
        *,
        clock: Clock = time.monotonic,
        max_scopes: int = 10_000,
    ) -> None:
        _validate(limit, window_s)
        self._limit = limit
        self._window_s = float(window_s)
        self._clock = clock
        self._max_scopes = max_scopes
        self._logs: OrderedDict[str, deque[float]] = OrderedDict()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def window_s(self) -> float:
        return self._window_s

    async def hit(self, scope: str) -> Decision:
        now = self._clock()
        log = self._logs.get(scope)
        if log is None:
            log = self._logs[scope] = deque()
            while len(self._logs) > self._max_scopes:
                self._logs.popitem(last=False)
        else:
            self._logs.move_to_end(scope)
        horizon = now - self._window_s
        while log and log[0] <= horizon:
            log.popleft()
        allowed = len(log) < self._limit
        if allowed:
            log.append(now)
        reset_s = log[0] + self._window_s - now if log else 0.0
        return Decision(
            allowed=allowed,
            limit=self._limit,
            remaining=max(0, self._limit - len(log)),
            retry_after_s=0.0 if allowed else reset_s,
            reset_s=reset_s,
        )


SLIDING_LOG_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', log_key, '-inf', now - window)
local count = redis.call('ZCARD', log_key)
local allowed = 0
if count < limit then
  local member = redis.call('INCR', seq_key)
  redis.call('ZADD', log_key, now, member)
  redis.call('PEXPIRE', log_key, window)
  redis.call('PEXPIRE', seq_key, window)
  count = count + 1
  allowed = 1
end
local reset = 0
local oldest = redis.call('ZRANGE', log_key, 0, 0, 'WITHSCORES')
if oldest[2] then
  reset = tonumber(oldest[2]) + window - now
end
local remaining = limit - count
if remaining < 0 then
  remaining = 0
end
"""
"""The sliding log's decision, as Lua to embed in a script that defines ``log_key`` (sorted
set of accepted hits, score = Redis time in ms), ``seq_key`` (member counter), ``limit`` and
``window`` (ms); it leaves ``allowed`` (0/1), ``remaining`` and ``reset`` (ms) defined.
TIME is the Redis server's clock, so replicas with skewed clocks still share one window;
members come from INCR, so two hits in the same millisecond are both counted."""

# KEYS: log_key, seq_key; ARGV: limit, window ms. Returns {allowed, remaining, reset_ms}.
_SLIDING_LOG: Final = (
    """
local log_key, seq_key = KEYS[1], KEYS[2]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
"""
    + SLIDING_LOG_LUA
    + "return {allowed, remaining, reset}\n"
)


def sliding_log_decision(limit: int, allowed: int, remaining: int, reset_ms: int) -> Decision:
    """The ``Decision`` for the sliding log script's answer."""
    reset_s = max(0, reset_ms) / 1000
    return Decision(
        allowed=bool(allowed),
        limit=limit,
        remaining=remaining,
        retry_after_s=0.0 if allowed else reset_s,
        reset_s=reset_s,
    )


@functools.lru_cache(maxsize=1024)
def _scope_digest(scope: str) -> str:
    # Scopes repeat (one per carrier): hash each once.
    return hashlib.sha256(scope.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class RedisLimiter:
    """A sliding-log limiter in Redis, shared by every replica using the same prefix.

    Scopes are hashed into the key. Both keys of a scope carry the hash tag of the scope's
    namespace (``security.rediskeys``), so the script runs on Redis Cluster, and so do
    scripts that also touch that namespace's replay keys or another scope of it. Every call
    is bounded by ``timeout_s``; a timeout or Redis error raises ``StateUnavailable``.
    """

    __slots__ = ("_client", "_limit", "_prefix", "_script", "_timeout_s", "_window_ms")

    def __init__(
        self,
        client: RedisClient,
        prefix: str,
        limit: int,
        window_s: float = 60.0,
        *,
        timeout_s: float = REDIS_TIMEOUT_S,
    ) -> None:
        _validate(limit, window_s)
        self._window_ms = max(1, round(window_s * 1000))
        self._client = client
        self._prefix = prefix
        self._limit = limit
        self._timeout_s = timeout_s
        self._script = client.register_script(_SLIDING_LOG)

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def window_s(self) -> float:
        return self._window_ms / 1000

    @property
    def client(self) -> RedisClient:
        return self._client

    @property
    def window_ms(self) -> int:
        return self._window_ms

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    def keys(self, scope: str) -> tuple[str, str]:
        """The sorted set and the member counter of ``scope``, tagged with its namespace's
        hash slot (a scope that is its whole namespace is named by the tag alone)."""
        tag = slot_tag(scope)
        if namespace(scope) == scope:
            key = tagged(f"{self._prefix}ratelimit:", tag)
        else:
            key = tagged(f"{self._prefix}ratelimit:", tag, _scope_digest(scope))
        return key, f"{key}:seq"

    async def hit(self, scope: str) -> Decision:
        try:
            async with asyncio.timeout(self._timeout_s):
                result = await self._script(
                    keys=self.keys(scope), args=[self._limit, self._window_ms]
                )
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable("rate limiter unavailable") from exc
        allowed, remaining, reset_ms = (int(value) for value in result)
        return sliding_log_decision(self._limit, allowed, remaining, reset_ms)


class FallbackLimiter:
    """Redis while it answers, an in-process limiter while it does not.

    While degraded each replica enforces the whole limit on its own, so the cluster admits
    up to (replicas * limit) per window; that is the price of staying up.
    """

    __slots__ = ("_fallback", "_primary", "degradation")

    def __init__(
        self,
        primary: Limiter,
        fallback: Limiter | None = None,
        *,
        degradation: Degradation | None = None,
    ) -> None:
        self._primary = primary
        self._fallback: Limiter = (
            InProcessLimiter(primary.limit, primary.window_s) if fallback is None else fallback
        )
        self.degradation = Degradation("ratelimit") if degradation is None else degradation

    @property
    def limit(self) -> int:
        return self._primary.limit

    @property
    def window_s(self) -> float:
        return self._primary.window_s

    @property
    def degraded(self) -> bool:
        return self.degradation.degraded

    @property
    def primary(self) -> Limiter:
        return self._primary

    async def hit(self, scope: str) -> Decision:
        if self.degradation.use_primary():
            try:
                decision = await self._primary.hit(scope)
            except StateUnavailable as exc:
                self.degradation.primary_failed(exc)
            else:
                self.degradation.primary_succeeded()
                return decision
        self.degradation.fell_back()
        return await self._fallback.hit(scope)
