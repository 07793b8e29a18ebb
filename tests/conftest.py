"""Shared fixtures. Redis-backed tests use the real server at VOICEGW_TEST_REDIS_URL and are
never skipped: if it does not answer, they fail (``scripts/test`` starts one when it can)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

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
