"""Fixtures for session tests: every state backend (in process, and the real Redis: one server
or a Redis Cluster), with every Redis key under the test's own prefix removed afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from security.rediskeys import RedisClient
from tests.conftest import open_test_redis, redis_url_for, remove_keys


@pytest.fixture
async def redis_clean(
    redis_client: aioredis.Redis, redis_prefix: str
) -> AsyncIterator[aioredis.Redis]:
    yield redis_client
    keys = [k async for k in redis_client.scan_iter(match=redis_prefix + "*", count=500)]
    if keys:
        await redis_client.delete(*keys)


@pytest.fixture(params=["in-process", "redis", "cluster"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def state_redis(
    request: pytest.FixtureRequest, backend: str, redis_prefix: str
) -> AsyncIterator[RedisClient | None]:
    """None for the in-process backend; for the others the real Redis (one server, or the
    local Redis Cluster), its keys under the test prefix removed afterwards."""
    if backend == "in-process":
        yield None
        return
    mode = "cluster" if backend == "cluster" else "standalone"
    client = await open_test_redis(redis_url_for(request, mode), mode)
    yield client
    await remove_keys(client, redis_prefix)
    await client.aclose()
