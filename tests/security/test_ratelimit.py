from __future__ import annotations

import asyncio
import logging
import time

import pytest
from redis.crc import key_slot

from metrics.registry import REGISTRY
from security.exceptions import ConfigError, StateUnavailable
from security.ratelimit import (
    Decision,
    FallbackLimiter,
    InProcessLimiter,
    RedisLimiter,
)
from security.replay import Degradation, RedisReplayCache
from tests.conftest import UNIT
from tests.security.conftest import FakeClock


def fallbacks(component: str) -> float:
    value = REGISTRY.get_sample_value("voicegw_state_fallback_total", {"component": component})
    return value or 0.0


async def test_exact_at_the_boundary(make_limiter):
    limiter = make_limiter(limit=5, window_s=60)
    decisions = [await limiter.hit("twilio") for _ in range(5)]
    assert all(d.allowed for d in decisions)
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0]
    refused = await limiter.hit("twilio")
    assert not refused.allowed
    assert refused.remaining == 0
    assert 0 < refused.retry_after_s <= 60
    assert refused.headers()["Retry-After"] in {str(n) for n in range(1, 61)}
    assert refused.headers()["RateLimit-Limit"] == "5"
    assert refused.headers()["RateLimit-Remaining"] == "0"


async def test_scopes_are_independent(make_limiter):
    limiter = make_limiter(limit=1)
    assert (await limiter.hit("twilio")).allowed
    assert (await limiter.hit("telnyx")).allowed
    assert not (await limiter.hit("twilio")).allowed


async def test_concurrent_hits_never_exceed_the_limit(make_limiter):
    limiter = make_limiter(limit=7)
    decisions = await asyncio.gather(*(limiter.hit("scope") for _ in range(30)))
    assert sum(d.allowed for d in decisions) == 7


async def test_refused_hits_are_not_counted(make_limiter):
    window = UNIT
    limiter = make_limiter(limit=2, window_s=window)
    assert (await limiter.hit("s")).allowed
    assert (await limiter.hit("s")).allowed
    accepted = time.monotonic()
    # The flood comes well inside the window (a busy machine has most of it to spare) and
    # well after the accepted hits, so it would still fill the window once they leave it.
    await asyncio.sleep(0.2 * window)
    for _ in range(10):
        assert not (await limiter.hit("s")).allowed
    # Once the two accepted hits leave the window, the refused flood leaves nothing behind.
    await asyncio.sleep(max(0.0, accepted + 1.1 * window - time.monotonic()))
    assert (await limiter.hit("s")).allowed
    assert (await limiter.hit("s")).allowed


async def test_in_process_rolling_window_is_exact():
    clock = FakeClock()
    limiter = InProcessLimiter(3, 10, clock=clock)
    for _ in range(2):
        assert (await limiter.hit("s")).allowed
    clock.advance(5)
    assert (await limiter.hit("s")).allowed
    refused = await limiter.hit("s")
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(5)
    clock.advance(4.999)
    assert not (await limiter.hit("s")).allowed
    clock.advance(0.001)
    # The first two hits left the window together; the one at t=5 is still inside it.
    first = await limiter.hit("s")
    second = await limiter.hit("s")
    assert first.allowed and second.allowed
    assert not (await limiter.hit("s")).allowed


async def test_in_process_scopes_are_bounded():
    limiter = InProcessLimiter(1, 60, max_scopes=2)
    for scope in ("a", "b", "c"):
        assert (await limiter.hit(scope)).allowed
    # "a" was the least recently used scope and was forgotten.
    assert (await limiter.hit("a")).allowed
    assert not (await limiter.hit("c")).allowed


def test_decision_headers_when_allowed():
    headers = Decision(True, 10, 9, 0.0, 59.2).headers()
    assert headers == {"RateLimit-Limit": "10", "RateLimit-Remaining": "9", "RateLimit-Reset": "60"}


@pytest.mark.parametrize(("limit", "window"), [(0, 60), (-1, 60), (1, 0), (1, -5)])
def test_bad_configuration(limit, window):
    with pytest.raises(ConfigError):
        InProcessLimiter(limit, window)


@pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)
async def test_two_replicas_share_one_limit(shared_redis, other_replica_redis, redis_prefix):
    first = RedisLimiter(shared_redis, redis_prefix, limit=4, timeout_s=2 * UNIT)
    second = RedisLimiter(other_replica_redis, redis_prefix, limit=4, timeout_s=2 * UNIT)
    decisions = await asyncio.gather(*(limiter.hit("twilio") for limiter in [first, second] * 5))
    assert sum(d.allowed for d in decisions) == 4
    assert not (await first.hit("twilio")).allowed
    assert not (await second.hit("twilio")).allowed


@pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)
async def test_redis_keys_expire_and_hide_the_scope(shared_redis, redis_prefix):
    limiter = RedisLimiter(shared_redis, redis_prefix, limit=3, window_s=30, timeout_s=2 * UNIT)
    await limiter.hit("203.0.113.9")
    keys = [key async for key in shared_redis.scan_iter(match=f"{redis_prefix}*")]
    assert len(keys) == 2
    for key in keys:
        assert b"203.0.113.9" not in key
        assert 0 < await shared_redis.pttl(key) <= 30_000


@pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)
async def test_scopes_of_one_namespace_share_a_hash_slot(shared_redis, redis_prefix):
    """A scope and the scopes under it (a carrier and its duplicates) share the slot of the
    namespace's replay keys, so one script may touch them all on Redis Cluster."""
    limiter = RedisLimiter(shared_redis, redis_prefix, limit=3, timeout_s=2 * UNIT)
    replay = RedisReplayCache(shared_redis, redis_prefix, timeout_s=2 * UNIT)
    keys = [
        *limiter.keys("twilio"),
        *limiter.keys("twilio\x00duplicate"),
        replay.redis_key("twilio\x00delivery"),
    ]
    assert len(set(keys)) == len(keys)
    assert len({key_slot(key.encode()) for key in keys}) == 1
    assert key_slot(limiter.keys("telnyx")[0].encode()) != key_slot(keys[0].encode())
    assert (await limiter.hit("twilio\x00duplicate")).allowed
    assert (await limiter.hit("twilio")).remaining == 2  # a scope of its own


async def test_redis_down_raises_state_unavailable(dead_redis, redis_prefix):
    limiter = RedisLimiter(dead_redis, redis_prefix, limit=3, timeout_s=2 * UNIT)
    with pytest.raises(StateUnavailable):
        await limiter.hit("twilio")


async def test_fallback_engages_when_redis_is_down(dead_redis, redis_prefix, caplog):
    limiter = FallbackLimiter(
        RedisLimiter(dead_redis, redis_prefix, limit=2, timeout_s=2 * UNIT),
        degradation=Degradation("ratelimit", probe_interval_s=0.0),
    )
    before = fallbacks("ratelimit")
    with caplog.at_level(logging.WARNING, logger="security.replay"):
        assert (await limiter.hit("twilio")).allowed
        assert (await limiter.hit("twilio")).allowed
        assert not (await limiter.hit("twilio")).allowed  # the fallback still limits
    assert limiter.degraded
    assert (limiter.limit, limiter.window_s) == (2, 60)
    assert fallbacks("ratelimit") == before + 3
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1


class Switchable:
    def __init__(self, limit: int) -> None:
        self.up = True
        self.inner = InProcessLimiter(limit)

    @property
    def limit(self) -> int:
        return self.inner.limit

    @property
    def window_s(self) -> float:
        return self.inner.window_s

    async def hit(self, scope: str) -> Decision:
        if not self.up:
            raise StateUnavailable("down")
        return await self.inner.hit(scope)


async def test_fallback_recovers_when_redis_answers_again():
    clock = FakeClock()
    primary = Switchable(limit=10)
    limiter = FallbackLimiter(
        primary, degradation=Degradation("ratelimit", probe_interval_s=1.0, clock=clock)
    )
    primary.up = False
    await limiter.hit("s")
    assert limiter.degraded
    primary.up = True
    await limiter.hit("s")  # inside the probe interval: still on the fallback
    assert limiter.degraded
    clock.advance(1.0)
    decision = await limiter.hit("s")
    assert not limiter.degraded
    assert decision.remaining == 9  # counted by the primary, which saw only this hit
