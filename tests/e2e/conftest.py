"""Fixtures for end-to-end runs: provider fakes and the carrier REST fake as real loopback
servers, and a factory for gateways wired to them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.e2e.carrier import (
    DEEPGRAM_KEY,
    GEMINI_KEY,
    OPENAI_KEY,
    TELNYX_API_KEY,
    TWILIO_TOKEN,
    Gateway,
    start_gateway,
)
from tests.fakes.carrier_rest import FakeCarrierRest
from tests.fakes.deepgram_agent import FakeDeepgramAgent
from tests.fakes.gemini_live import FakeGeminiLive
from tests.fakes.openai_realtime import FakeOpenAIRealtime

MakeGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def rest() -> AsyncIterator[FakeCarrierRest]:
    async with FakeCarrierRest(
        twilio_auth_token=TWILIO_TOKEN, telnyx_api_key=TELNYX_API_KEY
    ) as fake:
        yield fake


@pytest.fixture
async def openai_fake() -> AsyncIterator[FakeOpenAIRealtime]:
    async with FakeOpenAIRealtime(api_key=OPENAI_KEY) as fake:
        yield fake


@pytest.fixture
async def deepgram_fake() -> AsyncIterator[FakeDeepgramAgent]:
    async with FakeDeepgramAgent(api_key=DEEPGRAM_KEY) as fake:
        yield fake


@pytest.fixture
async def gemini_fake() -> AsyncIterator[FakeGeminiLive]:
    async with FakeGeminiLive(api_key=GEMINI_KEY) as fake:
        yield fake


@pytest.fixture
def provider_env(
    openai_fake: FakeOpenAIRealtime,
    deepgram_fake: FakeDeepgramAgent,
    gemini_fake: FakeGeminiLive,
) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": OPENAI_KEY,
        "VOICEGW_OPENAI_REALTIME_URL": openai_fake.url,
        "DEEPGRAM_API_KEY": DEEPGRAM_KEY,
        "VOICEGW_DEEPGRAM_AGENT_URL": deepgram_fake.url,
        "GEMINI_API_KEY": GEMINI_KEY,
        "VOICEGW_GEMINI_LIVE_URL": gemini_fake.url,
    }


@pytest.fixture
async def make_gateway(
    tmp_path: Path, rest: FakeCarrierRest, provider_env: dict[str, str]
) -> AsyncIterator[MakeGateway]:
    """``await make_gateway("openai,echo", VOICEGW_X="...")``: a served gateway, stopped at
    teardown (before the fakes it talks to)."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(
            providers: str = "echo", *, sndbuf: int | None = None, **env: str
        ) -> Gateway:
            return await stack.enter_async_context(
                start_gateway(
                    tmp_path,
                    rest,
                    sndbuf=sndbuf,
                    VOICEGW_PROVIDERS=providers,
                    **{**provider_env, **env},
                )
            )

        yield make
