"""Fixtures for session tests: both state backends (in-process and the real Redis), with every
Redis key under the test's own prefix removed afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis


@pytest.fixture
async def redis_clean(
    redis_client: aioredis.Redis, redis_prefix: str
) -> AsyncIterator[aioredis.Redis]:
    yield redis_client
    keys = [k async for k in redis_client.scan_iter(match=redis_prefix + "*", count=500)]
    if keys:
        await redis_client.delete(*keys)


@pytest.fixture(params=["in-process", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def state_redis(backend: str, redis_clean: aioredis.Redis) -> aioredis.Redis | None:
    """None for the in-process backend, the real Redis (cleaned up) for the Redis one."""
    return None if backend == "in-process" else redis_clean
