"""Fixtures for the fault-injection suite: a private Redis per module (never the shared one),
the carrier REST fake for process-level modules, and the end-to-end fixtures (provider fakes,
``make_gateway``) re-exported from ``tests/e2e``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from tests.e2e.carrier import TELNYX_API_KEY, TWILIO_TOKEN
from tests.e2e.conftest import (
    deepgram_fake,
    gemini_fake,
    make_gateway,
    openai_fake,
    provider_env,
    rest,
)
from tests.fakes.carrier_rest import FakeCarrierRest
from tests.faults.redis_server import PrivateRedis, private_redis

__all__ = [
    "deepgram_fake",
    "gemini_fake",
    "make_gateway",
    "module_rest",
    "openai_fake",
    "provider_env",
    "redis_server",
    "rest",
]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """A redis-server of this module's own; the test that stops it starts it again."""
    with private_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_rest() -> AsyncIterator[FakeCarrierRest]:
    """The carrier REST fake for a module whose gateway process outlives one test."""
    async with FakeCarrierRest(
        twilio_auth_token=TWILIO_TOKEN, telnyx_api_key=TELNYX_API_KEY
    ) as fake:
        yield fake
