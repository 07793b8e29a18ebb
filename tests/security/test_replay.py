from __future__ import annotations

import asyncio
import logging

import pytest

from metrics.registry import REGISTRY
from security.exceptions import StateUnavailable
from security.rediskeys import slot_tag
from security.replay import (
    Degradation,
    FallbackReplayCache,
    InProcessReplayCache,
    RedisReplayCache,
    digest_key,
)
from tests.conftest import UNIT
from tests.security.conftest import FakeClock


def fallbacks(component: str) -> float:
    value = REGISTRY.get_sample_value("voicegw_state_fallback_total", {"component": component})
    return value or 0.0


async def test_first_caller_only(make_replay):
    cache = make_replay()
    assert not await cache.seen("delivery-1")
    assert await cache.first_seen("delivery-1", 60)
    assert not await cache.first_seen("delivery-1", 60)
    assert await cache.seen("delivery-1")
    assert await cache.first_seen("delivery-2", 60)


async def test_forget_lets_the_next_delivery_through(make_replay):
    cache = make_replay()
    assert await cache.first_seen("delivery-1", 60)
    await cache.forget("delivery-1")
    assert not await cache.seen("delivery-1")
    assert await cache.first_seen("delivery-1", 60)
    await cache.forget("never-seen")  # forgetting an unknown key is not an error


async def test_concurrent_callers_one_winner(make_replay):
    cache = make_replay()
    results = await asyncio.gather(*(cache.first_seen("same", 60) for _ in range(20)))
    assert results.count(True) == 1


@pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)
async def test_two_replicas_see_each_other(shared_redis, other_replica_redis, redis_prefix):
    mine = RedisReplayCache(shared_redis, redis_prefix, timeout_s=2 * UNIT)
    theirs = RedisReplayCache(other_replica_redis, redis_prefix, timeout_s=2 * UNIT)
    assert await mine.first_seen("delivery", 60)
    assert not await theirs.first_seen("delivery", 60)
    assert await theirs.seen("delivery")


@pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)
async def test_redis_stores_only_hashes(shared_redis, redis_prefix):
    cache = RedisReplayCache(shared_redis, redis_prefix, timeout_s=2 * UNIT)
    secret = "twilio\x00https://x/y\x00c2lnbmF0dXJl"
    await cache.first_seen(secret, 60)
    keys = [key async for key in shared_redis.scan_iter(match=f"{redis_prefix}*")]
    # Tagged with the slot of the key's namespace (the twilio rate limit's), hashed too.
    tag = slot_tag("twilio")
    assert keys == [f"{redis_prefix}replay:{{{tag}}}:{digest_key(secret)}".encode()]
    assert 0 < await shared_redis.ttl(keys[0]) <= 60


async def test_in_process_entries_expire():
    clock = FakeClock()
    cache = InProcessReplayCache(clock=clock)
    assert await cache.first_seen("a", 10)
    clock.advance(9.9)
    assert not await cache.first_seen("a", 10)
    clock.advance(0.2)
    assert not await cache.seen("a")
    assert await cache.first_seen("a", 10)


async def test_in_process_is_bounded():
    clock = FakeClock()
    cache = InProcessReplayCache(max_entries=3, clock=clock)
    for key in "abcd":
        assert await cache.first_seen(key, 60)
    assert len(cache) == 3
    # The oldest was evicted to make room; the newest are still remembered.
    assert not await cache.seen("a")
    assert await cache.seen("d")


async def test_in_process_prunes_expired_entries():
    clock = FakeClock()
    cache = InProcessReplayCache(clock=clock)
    for index in range(100):
        await cache.first_seen(f"k{index}", 5)
    clock.advance(6)
    await cache.first_seen("fresh", 5)
    assert len(cache) == 1


def test_in_process_rejects_bad_size():
    with pytest.raises(ValueError):
        InProcessReplayCache(max_entries=0)


async def test_redis_down_raises_state_unavailable(dead_redis, redis_prefix):
    cache = RedisReplayCache(dead_redis, redis_prefix, timeout_s=2 * UNIT)
    with pytest.raises(StateUnavailable):
        await cache.first_seen("k", 60)
    with pytest.raises(StateUnavailable):
        await cache.seen("k")
    with pytest.raises(StateUnavailable):
        await cache.forget("k")


async def test_fallback_engages_when_redis_is_down(dead_redis, redis_prefix, caplog):
    cache = FallbackReplayCache(
        RedisReplayCache(dead_redis, redis_prefix, timeout_s=2 * UNIT),
        degradation=Degradation("replay", probe_interval_s=0.0),
    )
    before = fallbacks("replay")
    with caplog.at_level(logging.WARNING, logger="security.replay"):
        assert await cache.first_seen("k", 60)
        assert not await cache.first_seen("k", 60)
        assert await cache.seen("k")
    assert cache.degraded
    assert fallbacks("replay") == before + 3
    # One warning for the outage, not one per request.
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1
    await cache.forget("k")  # reaches the fallback copy although Redis is down
    assert await cache.first_seen("k", 60)


class Flaky:
    """A replay cache whose backend can be switched off and on."""

    def __init__(self) -> None:
        self.up = True
        self.inner = InProcessReplayCache()
        self.calls = 0

    async def seen(self, key: str) -> bool:
        self.calls += 1
        if not self.up:
            raise StateUnavailable("down")
        return await self.inner.seen(key)

    async def first_seen(self, key: str, ttl_s: int) -> bool:
        self.calls += 1
        if not self.up:
            raise StateUnavailable("down")
        return await self.inner.first_seen(key, ttl_s)


async def test_fallback_recovers_when_redis_answers_again(caplog):
    clock = FakeClock()
    primary = Flaky()
    cache = FallbackReplayCache(
        primary, degradation=Degradation("replay", probe_interval_s=5.0, clock=clock)
    )
    primary.up = False
    with caplog.at_level(logging.WARNING, logger="security.replay"):
        assert await cache.first_seen("during-outage", 60)
        assert cache.degraded
        # While degraded the primary is probed at most once per interval.
        calls = primary.calls
        assert await cache.first_seen("also-during-outage", 60)
        assert primary.calls == calls
        primary.up = True
        clock.advance(5.0)
        assert await cache.first_seen("after", 60)
    assert not cache.degraded
    assert await primary.inner.seen("after")
    assert any("answers again" in r.getMessage() for r in caplog.records)


async def test_fallback_read_path_engages_and_recovers():
    clock = FakeClock()
    primary = Flaky()
    cache = FallbackReplayCache(
        primary, degradation=Degradation("replay", probe_interval_s=0.0, clock=clock)
    )
    assert await primary.inner.first_seen("known", 60)
    primary.up = False
    assert not await cache.seen("known")  # the fallback never saw it
    assert cache.degraded
    primary.up = True
    assert await cache.seen("known")
    assert not cache.degraded
