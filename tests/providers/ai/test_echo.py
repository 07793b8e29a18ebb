"""The echo provider: the sans-I/O agent with explicit time, and its session on a real loop."""

from __future__ import annotations

import asyncio
import base64

import pytest

from providers.ai.config import AgentConfig
from providers.ai.echo import EchoAgent, EchoSession, mean_level
from providers.events import (
    PCMU_8K,
    AgentReady,
    AudioChunk,
    Dtmf,
    Hangup,
    Interrupt,
    KeepAlive,
    ResponseDone,
    SpeechStarted,
)
from providers.exceptions import SessionClosed
from tests.conftest import UNIT

LOUD = AudioChunk(base64.b64encode(b"\x00\x80" * 80).decode(), PCMU_8K)  # full scale, 20 ms
QUIET = AudioChunk(base64.b64encode(b"\xff" * 160).decode(), PCMU_8K)  # digital silence


def test_mu_law_levels() -> None:
    assert mean_level(b"\xff\x7f") == 0
    assert mean_level(b"\x00\x80") == 32124
    assert mean_level(b"") == 0


def test_silence_is_echoed_without_speech() -> None:
    agent = EchoAgent(delay_ms=500)
    assert agent.receive(QUIET, now=0.0) == []
    assert agent.next_due() == 0.5
    assert agent.poll(0.49) == []
    (echo,) = agent.poll(0.5)
    assert isinstance(echo, AudioChunk)
    assert echo.payload is QUIET.payload  # the same text: zero transcode
    assert agent.next_due() is None


def test_utterance_starts_with_speech_and_ends_with_response_done() -> None:
    agent = EchoAgent(delay_ms=500, silence_ms=400)
    assert agent.receive(LOUD, now=0.0) == [SpeechStarted()]
    assert agent.receive(LOUD, now=0.02) == []  # same utterance
    assert agent.receive(QUIET, now=0.04) == []
    events = agent.poll(0.6)
    assert [e.item_id for e in events if isinstance(e, AudioChunk)] == ["echo-1"] * 3
    assert ResponseDone() not in events
    assert agent.poll(0.52 + 0.4) == [ResponseDone()]
    assert agent.next_due() is None


def test_interrupt_drops_the_previous_utterance_only() -> None:
    agent = EchoAgent(delay_ms=500, silence_ms=150)
    assert agent.receive(LOUD, now=0.0) == [SpeechStarted()]
    assert agent.receive(LOUD, now=0.1) == []  # 80 ms of quiet: same utterance
    assert agent.receive(LOUD, now=0.4) == [SpeechStarted()]  # 280 ms of quiet: a new one
    assert agent.receive(Interrupt(item_id="echo-1", played_ms=0), now=0.41) == []
    events = agent.poll(1.0)
    assert [e.item_id for e in events if isinstance(e, AudioChunk)] == ["echo-2"]


def test_other_events() -> None:
    agent = EchoAgent()
    assert agent.receive(Dtmf("1"), now=0.0) == []
    assert agent.receive(KeepAlive(), now=0.0) == []
    assert agent.receive(Hangup(), now=0.0) == []
    assert agent.closed


def test_unmeasurable_payload_is_echoed_but_never_speech() -> None:
    agent = EchoAgent(delay_ms=0)
    odd = AudioChunk("not base64!", PCMU_8K)
    assert agent.receive(odd, now=0.0) == []
    assert agent.poll(0.0)[0] == AudioChunk("not base64!", PCMU_8K, item_id="echo-0")


async def test_session_round_trip() -> None:
    config = AgentConfig.for_provider("echo", echo_delay_ms=20)
    session = EchoSession(config)
    assert (session.provider, session.input_format, session.output_format) == (
        "echo",
        PCMU_8K,
        PCMU_8K,
    )
    async with asyncio.timeout(5 * UNIT):
        await session.connect()
        assert await session.recv() == AgentReady()
        await session.send(LOUD)
        assert await session.recv() == SpeechStarted()
        echo = await session.recv()
        assert isinstance(echo, AudioChunk) and echo.payload == LOUD.payload
        assert await session.recv() == ResponseDone()
        await session.send(Hangup())
        with pytest.raises(SessionClosed) as info:
            await session.recv()
        assert not info.value.abnormal
    await session.close()
    await session.close()


async def test_session_close_wakes_a_waiting_receiver() -> None:
    session = EchoSession(AgentConfig.for_provider("echo"))
    await session.connect()
    assert await session.recv() == AgentReady()
    receiver = asyncio.create_task(session.recv())
    await asyncio.sleep(0)
    await session.close()
    async with asyncio.timeout(5 * UNIT):
        with pytest.raises(SessionClosed):
            await receiver
    with pytest.raises(SessionClosed):
        await session.send(QUIET)
