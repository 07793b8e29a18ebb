"""Fixtures for the security tests: every state-backed layer runs on both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from security.ratelimit import InProcessLimiter, Limiter, RedisLimiter
from security.replay import InProcessReplayCache, RedisReplayCache, ReplayCache
from security.streamtokens import InProcessStreamTokens, RedisStreamTokens, StreamTokens
from tests.conftest import DEAD_REDIS_URL, UNIT, FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def shared_redis(
    backend: str, redis_url: str, redis_prefix: str
) -> AsyncIterator[aioredis.Redis | None]:
    """The test Redis for the ``redis`` backend (keys under the test prefix removed after)."""
    if backend == "memory":
        yield None
        return
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.ping()
    except Exception as exc:  # pragma: no cover - the failure message is the point
        await client.aclose()
        pytest.fail(f"Redis at {redis_url} does not answer ({exc})")
    yield client
    keys = [key async for key in client.scan_iter(match=f"{redis_prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def make_replay(
    shared_redis: aioredis.Redis | None, redis_prefix: str
) -> Callable[[], ReplayCache]:
    def make() -> ReplayCache:
        if shared_redis is None:
            return InProcessReplayCache()
        return RedisReplayCache(shared_redis, redis_prefix, timeout_s=2 * UNIT)

    return make


@pytest.fixture
def make_limiter(shared_redis: aioredis.Redis | None, redis_prefix: str) -> Callable[..., Limiter]:
    def make(limit: int, window_s: float = 60.0) -> Limiter:
        if shared_redis is None:
            return InProcessLimiter(limit, window_s)
        return RedisLimiter(shared_redis, redis_prefix, limit, window_s, timeout_s=2 * UNIT)

    return make


@pytest.fixture
def make_tokens(
    shared_redis: aioredis.Redis | None, redis_prefix: str
) -> Callable[[], StreamTokens]:
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
