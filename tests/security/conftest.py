"""Fixtures for the security tests: every state-backed layer runs on both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from security.ratelimit import InProcessLimiter, Limiter, RedisLimiter
from security.rediskeys import RedisClient
from security.replay import InProcessReplayCache, RedisReplayCache, ReplayCache
from security.streamtokens import InProcessStreamTokens, RedisStreamTokens, StreamTokens
from tests.conftest import (
    DEAD_REDIS_URL,
    UNIT,
    FakeClock,
    open_test_redis,
    redis_url_for,
    remove_keys,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "redis", "cluster"])
def backend(request: pytest.FixtureRequest) -> str:
    """In process, on one Redis server, or on a Redis Cluster."""
    return str(request.param)


@pytest.fixture
async def shared_redis(
    request: pytest.FixtureRequest, backend: str, redis_prefix: str
) -> AsyncIterator[RedisClient | None]:
    """The test Redis of the backend (keys under the test prefix removed after)."""
    if backend == "memory":
        yield None
        return
    mode = "cluster" if backend == "cluster" else "standalone"
    client = await open_test_redis(redis_url_for(request, mode), mode)
    yield client
    await remove_keys(client, redis_prefix)
    await client.aclose()


@pytest.fixture
async def other_replica_redis(
    request: pytest.FixtureRequest, backend: str
) -> AsyncIterator[RedisClient]:
    """A second client (another replica's) of the ``redis`` or ``cluster`` backend's Redis."""
    assert backend != "memory", "parametrize the test with the redis backends"
    mode = "cluster" if backend == "cluster" else "standalone"
    client = await open_test_redis(redis_url_for(request, mode), mode)
    yield client
    await client.aclose()


@pytest.fixture
def make_replay(shared_redis: RedisClient | None, redis_prefix: str) -> Callable[[], ReplayCache]:
    def make() -> ReplayCache:
        if shared_redis is None:
            return InProcessReplayCache()
        return RedisReplayCache(shared_redis, redis_prefix, timeout_s=2 * UNIT)

    return make


@pytest.fixture
def make_limiter(shared_redis: RedisClient | None, redis_prefix: str) -> Callable[..., Limiter]:
    def make(limit: int, window_s: float = 60.0) -> Limiter:
        if shared_redis is None:
            return InProcessLimiter(limit, window_s)
        return RedisLimiter(shared_redis, redis_prefix, limit, window_s, timeout_s=2 * UNIT)

    return make


@pytest.fixture
def make_tokens(shared_redis: RedisClient | None, redis_prefix: str) -> Callable[[], StreamTokens]:
    def make() -> StreamTokens:
        if shared_redis is None:
            return InProcessStreamTokens()
        return RedisStreamTokens(shared_redis, redis_prefix, timeout_s=2 * UNIT)

    return make


@pytest.fixture
async def dead_redis() -> AsyncIterator[aioredis.Redis]:
    """A client pointed at a closed port, with short timeouts."""
    client = aioredis.Redis.from_url(
        DEAD_REDIS_URL,
        socket_connect_timeout=0.5 * UNIT,
        socket_timeout=0.5 * UNIT,
        retry=Retry(NoBackoff(), 0),
    )
    yield client
    await client.aclose()
