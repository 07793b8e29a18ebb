"""The two places a breaker's state lives: this process (``InProcessBreaker``) or Redis, shared
by every replica (``RedisBreaker``).

Why not pybreaker: pybreaker (1.4) is synchronous. Wrapping a coroutine function with it
records the success when the coroutine object is created, before the call has run, so a
provider that fails after connecting never trips it; it has no cap on half-open trial calls,
so a recovering provider gets every queued call at once; and its Redis storage uses the
blocking client, stalling the event loop on each call. voicegw's breakers are a small asyncio
state machine instead (``providers.breakers.policy``): an outcome is recorded when the caller
reports it, half-open admits a bounded number of concurrent trials, and the Redis backend is
one atomic Lua script run on the Redis server's clock.

``InProcessBreaker`` keeps state in this process. ``RedisBreaker`` keeps it in Redis: every
replica sees every transition as soon as Redis has applied it (staleness 0 while Redis
answers), and state outlives the process. When Redis errors or takes longer than
``timeout_s``, a ``RedisBreaker`` runs on its in-process fallback (``STATE_DEGRADED{component=
"breaker"}``, one warning) and returns to Redis by itself when Redis answers a probe.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Final

from redis.exceptions import RedisError

from metrics.registry import BREAKER_STATE, PROVIDER_UP
from providers.breakers.base import (
    BreakerOpen,
    BreakerSnapshot,
    Trial,
    safe_error_name,
    trial_scope,
)
from providers.breakers.policy import (
    DEFAULT_POLICY,
    NO_SLOT,
    BreakerMachine,
    BreakerPolicy,
    BreakerState,
    Outcome,
)
from security.rediskeys import RedisClient, tagged
from security.replay import REDIS_TIMEOUT_S, Clock, Degradation

logger = logging.getLogger("voicegw.providers.breakers")

_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_IDLE_TTL_S: Final = 7 * 24 * 3600
"""Redis forgets a breaker nobody has reported on for this long (it is then closed)."""


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError("breaker name must be 1-64 characters of [A-Za-z0-9_.-]")


class _Gauges:
    """Publishes the state this process last saw and logs transitions it sees."""

    __slots__ = ("_last", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._last: BreakerState | None = None

    def saw(self, state: BreakerState) -> None:
        BREAKER_STATE.labels(provider=self._name).set(int(state))
        PROVIDER_UP.labels(provider=self._name).set(0 if state is BreakerState.OPEN else 1)
        if state is self._last:
            return
        if self._last is not None:
            log = logger.warning if state is BreakerState.OPEN else logger.info
            log("breaker %s: %s -> %s", self._name, self._last.name, state.name)
        self._last = state


class InProcessBreaker:
    """A breaker whose state lives in this process. ``clock`` returns Unix seconds."""

    __slots__ = ("_clock", "_gauges", "_machine", "name", "policy")

    def __init__(
        self, name: str, policy: BreakerPolicy = DEFAULT_POLICY, *, clock: Clock = time.time
    ) -> None:
        _check_name(name)
        self.name = name
        self.policy = policy
        self._clock = clock
        self._machine = BreakerMachine(policy)
        self._gauges = _Gauges(name)
        self._gauges.saw(self._machine.state)

    async def acquire(self) -> Trial:
        admission = self._machine.admit(self._advance())
        if not admission.admitted:
            raise BreakerOpen(self.name, admission.retry_after_s)

        async def finish(outcome: Outcome, error: str) -> None:
            self._apply(outcome, error, admission.epoch, admission.slot)

        return Trial(finish)

    def trial(self) -> AbstractAsyncContextManager[Trial]:
        return trial_scope(self)

    async def record_failure(self, error: str) -> None:
        self._apply("failure", safe_error_name(error), None)

    async def record_success(self) -> None:
        self._apply("success", "", None)

    async def snapshot(self) -> BreakerSnapshot:
        self._advance()
        machine = self._machine
        return BreakerSnapshot(
            name=self.name,
            state=machine.state,
            consecutive_failures=machine.failures,
            opened_at=None if machine.state is BreakerState.CLOSED else machine.opened_at,
            last_failure=machine.last_failure,
            last_success_at=machine.last_success_at,
        )

    async def allows(self) -> bool:
        return self._machine.allows(self._advance())

    def _advance(self) -> float:
        """Bring the state machine to now and publish its state; return now."""
        now = self._clock()
        self._machine.advance(now)
        self._gauges.saw(self._machine.state)
        return now

    def _apply(self, outcome: Outcome, error: str, epoch: int | None, slot: int = NO_SLOT) -> None:
        now = self._advance()
        self._machine.apply(outcome, error, now, epoch=epoch, slot=slot)
        self._gauges.saw(self._machine.state)


# KEYS[1]: state hash; KEYS[2]: half-open trial slots (sorted set, score = expiry in ms).
# ARGV: op (acquire | success | failure | release | peek), clock offset ms (tests), failure
# threshold, open ms, max trials, success threshold, trial ttl ms, idle ttl ms, trial id ('' for
# none), trial epoch (-1: outside a trial, always counted), error name.
# Returns {state, failures, opened_at_ms, last_failure, last_success_ms, epoch, admitted,
# retry_ms, trials_in_flight}; -1 stands for "never".
# TIME is the Redis server's clock, so replicas with skewed clocks agree on the open period.
# Mirrors BreakerMachine.advance / admit / apply; change them together.
_BREAKER: Final = """
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
local failure_threshold = tonumber(ARGV[3])
local open_ms = tonumber(ARGV[4])
local max_trials = tonumber(ARGV[5])
local success_threshold = tonumber(ARGV[6])
local trial_ttl = tonumber(ARGV[7])
local h = redis.call('HMGET', KEYS[1], 'st', 'f', 's', 'oa', 'ep', 'lf', 'ls')
local st = tonumber(h[1]) or 0
local f = tonumber(h[2]) or 0
local s = tonumber(h[3]) or 0
local oa = tonumber(h[4]) or -1
local ep = tonumber(h[5]) or 0
local lf = h[6] or ''
local ls = tonumber(h[7]) or -1
local dirty = false

if st == 1 and now >= oa + open_ms then
  st = 2
  s = 0
  redis.call('DEL', KEYS[2])
  dirty = true
end
if st == 2 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end

local admitted = 0
local retry = 0
if op == 'acquire' then
  if st == 0 then
    admitted = 1
  elseif st == 1 then
    retry = oa + open_ms - now
  elseif redis.call('ZCARD', KEYS[2]) < max_trials then
    redis.call('ZADD', KEYS[2], now + trial_ttl, ARGV[9])
    redis.call('PEXPIRE', KEYS[2], trial_ttl)
    admitted = 1
  else
    local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    retry = tonumber(oldest[2]) - now
  end
elseif op == 'success' or op == 'failure' or op == 'release' then
  if ARGV[9] ~= '' then
    redis.call('ZREM', KEYS[2], ARGV[9])
  end
  local epoch = tonumber(ARGV[10])
  local counts = (epoch < 0 or epoch == ep) and st ~= 1
  if op == 'success' then
    ls = now
    dirty = true
    if counts then
      f = 0
      if st == 2 then
        s = s + 1
        if s >= success_threshold then
          st = 0
          s = 0
          redis.call('DEL', KEYS[2])
        end
      end
    end
  elseif op == 'failure' then
    lf = ARGV[11]
    dirty = true
    if counts then
      f = f + 1
      if st == 2 or f >= failure_threshold then
        st = 1
        oa = now
        s = 0
        ep = ep + 1
        redis.call('DEL', KEYS[2])
      end
    end
  end
end

if dirty then
  redis.call('HSET', KEYS[1], 'st', st, 'f', f, 's', s, 'oa', oa, 'ep', ep, 'lf', lf, 'ls', ls)
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[8]))
end
local in_flight = 0
if st == 2 then
  in_flight = redis.call('ZCARD', KEYS[2])
end
return {st, f, oa, lf, ls, ep, admitted, retry, in_flight}
"""

_UNAVAILABLE: Final = (RedisError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class _Reply:
    state: BreakerState
    failures: int
    opened_at_ms: int
    last_failure: str
    last_success_ms: int
    epoch: int
    admitted: bool
    retry_ms: int
    in_flight: int

    @classmethod
    def parse(cls, raw: list[int | bytes | str]) -> _Reply:
        def text(value: int | bytes | str) -> str:
            return value.decode() if isinstance(value, bytes) else str(value)

        st, f, oa, lf, ls, ep, admitted, retry, in_flight = raw
        return cls(
            state=BreakerState(int(st)),
            failures=int(f),
            opened_at_ms=int(oa),
            last_failure=text(lf),
            last_success_ms=int(ls),
            epoch=int(ep),
            admitted=bool(int(admitted)),
            retry_ms=int(retry),
            in_flight=int(in_flight),
        )


class RedisBreaker:
    """A breaker whose state lives in Redis, shared by every replica using the same prefix.

    Keys: ``{prefix}breaker:{name}`` (hash) and ``{prefix}breaker:{name}:trials`` (sorted set),
    hash-tagged by name so the script runs on Redis Cluster; they expire after a week without
    reports. Every Redis call is bounded by ``timeout_s``; while Redis fails, ``fallback`` (an
    in-process breaker, created when not given) decides, and state it gathers is not copied
    back. ``clock_offset_for_tests`` returns seconds added to the Redis server's time, so tests
    can move past the open period without sleeping; leave it None otherwise.
    """

    __slots__ = (
        "_client",
        "_fallback",
        "_gauges",
        "_keys",
        "_offset",
        "_script",
        "_timeout_s",
        "degradation",
        "name",
        "policy",
    )

    def __init__(
        self,
        client: RedisClient,
        prefix: str,
        name: str,
        policy: BreakerPolicy = DEFAULT_POLICY,
        *,
        timeout_s: float = REDIS_TIMEOUT_S,
        fallback: InProcessBreaker | None = None,
        degradation: Degradation | None = None,
        clock_offset_for_tests: Callable[[], float] | None = None,
    ) -> None:
        _check_name(name)
        self.name = name
        self.policy = policy
        self._client = client
        self._timeout_s = timeout_s
        head = f"{prefix}breaker:"
        self._keys = [tagged(head, name), tagged(head, name, "trials")]
        self._script = client.register_script(_BREAKER)
        self._fallback = InProcessBreaker(name, policy) if fallback is None else fallback
        self.degradation = Degradation("breaker") if degradation is None else degradation
        self._offset = clock_offset_for_tests
        self._gauges = _Gauges(name)

    @property
    def degraded(self) -> bool:
        return self.degradation.degraded

    async def acquire(self) -> Trial:
        trial_id = secrets.token_hex(8)
        reply = await self._redis("acquire", trial_id=trial_id)
        if reply is None:
            return await self._fallback.acquire()
        if not reply.admitted:
            raise BreakerOpen(self.name, max(0, reply.retry_ms) / 1000)
        slot = trial_id if reply.state is BreakerState.HALF_OPEN else ""
        epoch = reply.epoch

        async def finish(outcome: Outcome, error: str) -> None:
            if await self._redis(outcome, trial_id=slot, epoch=epoch, error=error) is None:
                # Redis went away mid-call: the fallback learns the outcome instead.
                if outcome == "success":
                    await self._fallback.record_success()
                elif outcome == "failure":
                    await self._fallback.record_failure(error)

        return Trial(finish)

    def trial(self) -> AbstractAsyncContextManager[Trial]:
        return trial_scope(self)

    async def record_failure(self, error: str) -> None:
        error = safe_error_name(error)
        if await self._redis("failure", error=error) is None:
            await self._fallback.record_failure(error)

    async def record_success(self) -> None:
        if await self._redis("success") is None:
            await self._fallback.record_success()

    async def snapshot(self) -> BreakerSnapshot:
        reply = await self._redis("peek")
        if reply is None:
            return await self._fallback.snapshot()
        return BreakerSnapshot(
            name=self.name,
            state=reply.state,
            consecutive_failures=reply.failures,
            opened_at=(
                None
                if reply.state is BreakerState.CLOSED or reply.opened_at_ms < 0
                else reply.opened_at_ms / 1000
            ),
            last_failure=reply.last_failure or None,
            last_success_at=None if reply.last_success_ms < 0 else reply.last_success_ms / 1000,
        )

    async def allows(self) -> bool:
        reply = await self._redis("peek")
        if reply is None:
            return await self._fallback.allows()
        match reply.state:
            case BreakerState.CLOSED:
                return True
            case BreakerState.OPEN:
                return False
            case BreakerState.HALF_OPEN:
                return reply.in_flight < self.policy.half_open_max_trials

    async def _redis(
        self, op: str, *, trial_id: str = "", epoch: int = -1, error: str = ""
    ) -> _Reply | None:
        """Run one operation on Redis; None when the fallback must serve it instead."""
        if self.degradation.use_primary():
            policy = self.policy
            offset_ms = 0 if self._offset is None else round(self._offset() * 1000)
            args: list[str | int] = [
                op,
                offset_ms,
                policy.failure_threshold,
                max(1, round(policy.open_s * 1000)),
                policy.half_open_max_trials,
                policy.success_threshold,
                max(1, round(policy.trial_ttl_s * 1000)),
                _IDLE_TTL_S * 1000,
                trial_id,
                epoch,
                error,
            ]
            try:
                async with asyncio.timeout(self._timeout_s):
                    raw = await self._script(keys=self._keys, args=args)
            except _UNAVAILABLE as exc:
                self.degradation.primary_failed(exc)
            else:
                self.degradation.primary_succeeded()
                reply = _Reply.parse(raw)
                self._gauges.saw(reply.state)
                return reply
        self.degradation.fell_back()
        return None
