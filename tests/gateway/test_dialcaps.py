"""Dial caps per scope (calls per minute, calls in progress, minutes per UTC day) on both
backends; the Redis one shared by two instances as by two replicas."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway.calls.dialcaps import (
    Cap,
    CapRefusal,
    FallbackDialCaps,
    InProcessDialCaps,
    RedisDialCaps,
    minutes_of,
    until_utc_midnight,
)
from security.replay import Degradation
from tests.conftest import DEAD_REDIS_URL, UNIT, open_test_redis, redis_url_for, remove_keys

NOON = 1_750_000_000.0 - 1_750_000_000.0 % 86400 + 12 * 3600  # a UTC noon


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def redis_keys(redis_client, redis_prefix):
    """The test's prefix, its keys deleted afterwards."""
    yield redis_prefix
    async for key in redis_client.scan_iter(match=redis_prefix + "*"):
        await redis_client.delete(key)


@pytest.fixture
async def cluster_client(request):
    """A client of the session's local Redis Cluster (its keys removed afterwards)."""
    client = await open_test_redis(redis_url_for(request, "cluster"), "cluster")
    prefix = f"voicegw-test:{uuid.uuid4().hex[:12]}:"
    yield client, prefix
    await remove_keys(client, prefix)
    await client.aclose()


@pytest.fixture(params=["process", "redis", "cluster"])
def make_caps(request, redis_client, redis_keys):
    """``make_caps(wall)``: a caps backend; with Redis every one shares the same keys (on a
    Redis Cluster too: each script's keys share one hash slot)."""
    client, prefix = redis_client, redis_keys
    if request.param == "cluster":
        client, prefix = request.getfixturevalue("cluster_client")

    def make(wall=None, grace_s=120.0):
        wall = wall or Clock(NOON)
        if request.param == "process":
            return InProcessDialCaps(clock=Clock(0.0), wall=wall, prune_grace_s=grace_s)
        return RedisDialCaps(client, prefix, wall=wall, prune_grace_s=grace_s)

    make.backend = request.param
    return make


async def test_calls_per_minute(make_caps):
    caps = make_caps()
    key = Cap("key:k1", per_minute=2)
    assert (await caps.admit("call_a", [key])).allowed
    assert (await caps.admit("call_b", [key])).allowed
    verdict = await caps.admit("call_c", [key])
    assert verdict.refusal is CapRefusal.RATE and verdict.scope == "key:k1"
    assert 0 < verdict.retry_after_s <= 60
    # Another scope has its own allowance.
    assert (await caps.admit("call_d", [Cap("key:k2", per_minute=2)])).allowed


async def test_calls_in_progress_are_freed_when_they_end(make_caps):
    caps = make_caps()
    key = Cap("key:k1", concurrent=1)
    assert (await caps.admit("call_a", [key])).allowed
    verdict = await caps.admit("call_b", [key])
    assert verdict.refusal is CapRefusal.CONCURRENT and verdict.retry_after_s > 0
    await caps.ended("call_a", "hangup", 30)
    assert (await caps.admit("call_b", [key])).allowed


async def test_minutes_per_utc_day(make_caps):
    wall = Clock(NOON)
    caps = make_caps(wall)
    key = Cap("key:k1", minutes_per_day=3)
    assert (await caps.admit("call_a", [key])).allowed
    await caps.ended("call_a", "hangup", 61)  # two minutes, rounded up
    await caps.ended("call_a", "hangup", 61)  # counted once
    assert (await caps.admit("call_b", [key])).allowed
    await caps.ended("call_b", "dial_failed", 0)  # never placed: no minutes
    assert (await caps.admit("call_c", [key])).allowed
    await caps.ended("call_c", "twilio_no-answer", 1)  # placed: at least a minute
    verdict = await caps.admit("call_d", [key])
    assert verdict.refusal is CapRefusal.MINUTES
    assert verdict.retry_after_s == pytest.approx(12 * 3600, abs=1)
    # The next UTC day starts from zero.
    wall.now += until_utc_midnight(wall.now) + 1
    assert (await caps.admit("call_d", [key])).allowed


async def test_one_decision_for_all_scopes(make_caps):
    caps = make_caps()
    agent = Cap("agent:reminders", per_minute=1)
    assert (await caps.admit("call_a", [Cap("key:k1"), agent])).allowed
    # The agent is at its cap: a dial of k2 for it is refused, and k2's allowance untouched.
    k2 = Cap("key:k2", per_minute=1)
    verdict = await caps.admit("call_b", [k2, agent])
    assert (verdict.refusal, verdict.scope) == (CapRefusal.RATE, "agent:reminders")
    assert (await caps.admit("call_c", [k2, Cap("agent:other", per_minute=1)])).allowed


async def test_prune_frees_slots_of_calls_no_longer_live(make_caps):
    caps = make_caps(grace_s=0.0)
    key = Cap("key:k1", concurrent=2)
    assert (await caps.admit("call_a", [key])).allowed
    assert (await caps.admit("call_b", [key])).allowed
    assert (await caps.admit("call_c", [key])).refusal is CapRefusal.CONCURRENT
    # call_a's replica died: the registry lists only call_b.
    assert await caps.prune("key:k1", {"call_b"}) == 1
    assert (await caps.admit("call_c", [key])).allowed


async def test_young_slots_are_never_pruned(make_caps):
    caps = make_caps(grace_s=3600.0)
    assert (await caps.admit("call_a", [Cap("key:k1", concurrent=1)])).allowed
    assert await caps.prune("key:k1", set()) == 0  # its dial may not be registered yet


def test_minutes_are_whole_and_rounded_up():
    assert minutes_of("hangup", 0.2) == 1
    assert minutes_of("hangup", 60) == 1
    assert minutes_of("hangup", 60.5) == 2
    assert minutes_of("dial_failed", 600) == 0


@pytest.mark.redis
async def test_two_replicas_share_the_caps(redis_client, redis_keys):
    redis_prefix = redis_keys
    first = RedisDialCaps(redis_client, redis_prefix)
    second = RedisDialCaps(redis_client, redis_prefix)
    key = Cap("key:k1", per_minute=1, concurrent=1, minutes_per_day=1)
    assert (await first.admit("call_a", [key])).allowed
    assert (await second.admit("call_b", [key])).refusal is CapRefusal.RATE
    other = Cap("key:k2", concurrent=1, minutes_per_day=1)
    assert (await first.admit("call_c", [other])).allowed
    assert (await second.admit("call_d", [other])).refusal is CapRefusal.CONCURRENT
    await second.ended("call_c", "hangup", 5)  # ended on the other replica
    assert (await second.admit("call_d", [other])).refusal is CapRefusal.MINUTES
    # Every key of the caps shares one hash tag (one Redis Cluster slot).
    keys = [k.decode() async for k in redis_client.scan_iter(match=redis_prefix + "*")]
    assert keys and all("{caps}" in k for k in keys)


async def test_the_fallback_keeps_capping_while_redis_is_down():
    dead = aioredis.Redis.from_url(
        DEAD_REDIS_URL,
        socket_connect_timeout=0.5 * UNIT,
        socket_timeout=0.5 * UNIT,
        retry=Retry(NoBackoff(), 0),
    )
    primary = RedisDialCaps(dead, "voicegw-test:dead:", timeout_s=UNIT)
    caps = FallbackDialCaps(primary, InProcessDialCaps(), degradation=Degradation("dial_caps"))
    key = Cap("key:k1", per_minute=1)
    assert (await caps.admit("call_a", [key])).allowed
    assert caps.degraded
    assert (await caps.admit("call_b", [key])).refusal is CapRefusal.RATE
    await dead.aclose()
