"""Shared fixtures. Redis-backed tests use the real server at VOICEGW_TEST_REDIS_URL and are
never skipped: if it does not answer, they fail (``scripts/test`` starts one when it can)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from security.rediskeys import RedisClient
from tests.redis_cluster import LocalCluster, connect

# Fails the session if any log line shows a phone number, email or IP in clear.
pytest_plugins = ["tests.pii_scan"]

REDIS_URL = os.environ.get("VOICEGW_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

# A Redis URL on a port nothing listens on: connections are refused at once.
DEAD_REDIS_URL = "redis://127.0.0.1:1/15"


class FakeClock:
    """Seconds (unix time by default) that tests move by hand; pass it where code takes a
    ``clock`` callable."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# One time unit every test timeout is a multiple of; raise it on slow machines.
UNIT = float(os.environ.get("VOICEGW_TEST_TIMEOUT_UNIT", "1.0"))


@pytest.fixture
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:  # pragma: no cover - the failure message is the point
        pytest.fail(
            f"Redis at {REDIS_URL} does not answer ({exc}); run ./scripts/test, which starts one, "
            "or set VOICEGW_TEST_REDIS_URL"
        )
    yield client
    await client.aclose()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix unique to this test, so tests sharing one Redis never collide."""
    return f"voicegw-test:{uuid.uuid4().hex[:12]}:"


# The two kinds of Redis the shared-state suites run on: one server (VOICEGW_TEST_REDIS_URL)
# and a local three-node Redis Cluster started once per session, on first use.
REDIS_MODES = ("standalone", "cluster")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster"), UNIT)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.directory, ignore_errors=True)


def redis_url_for(request: pytest.FixtureRequest, mode: str) -> str:
    """The test Redis of ``mode``: the shared server, or the session's local cluster."""
    if mode == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    return REDIS_URL


async def open_test_redis(url: str, mode: str, **options: Any) -> RedisClient:
    """A client of the test Redis at ``url`` that answers (the test fails otherwise)."""
    client = connect(url, mode, **options)
    try:
        await client.ping()
    except Exception as exc:  # pragma: no cover - the failure message is the point
        await client.aclose()
        pytest.fail(f"Redis ({mode}) at {url} does not answer ({exc})")
    return client


async def remove_keys(client: RedisClient, prefix: str) -> None:
    """Delete every key under ``prefix`` (on a cluster: on every node)."""
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
    if keys:
        await client.delete(*keys)
