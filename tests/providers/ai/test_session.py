"""Sessions over real loopback sockets against the provider fakes in tests/fakes."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from typing import Any

import pytest

from providers.ai.config import AgentConfig, AgentOptions
from providers.ai.echo import EchoSession
from providers.ai.gemini_live import GeminiLiveCodec
from providers.ai.gemini_live import endpoint as gemini_endpoint
from providers.ai.openai_realtime import OpenAIRealtimeCodec
from providers.ai.openai_realtime import endpoint as openai_endpoint
from providers.ai.session import GeminiLiveSession, WebSocketAgentSession, open_session
from providers.codec import Frame
from providers.events import (
    PCM16_16K,
    PCM16_24K,
    PCMU_8K,
    AgentEvent,
    AgentReady,
    AudioChunk,
    Dtmf,
    Error,
    GoAway,
    Interrupt,
    ResponseDone,
    ResumptionHandle,
    SpeechStarted,
    Transcript,
)
from providers.exceptions import ConnectError, SessionClosed
from tests.conftest import UNIT
from tests.fakes.deepgram_agent import FakeDeepgramAgent
from tests.fakes.gemini_live import FakeGeminiLive
from tests.fakes.openai_realtime import FakeOpenAIRealtime
from tests.providers.ai import clients

ULAW_20MS = [base64.b64encode(bytes([i]) * 160).decode() for i in (0x00, 0x55, 0xAA)]
PCM16_20MS = base64.b64encode(b"\x01\x02" * 320).decode()


# Every test here (and in test_tool_sessions) runs once per WebSocket client.
pytestmark = pytest.mark.usefixtures("ws_client")


def config(provider: str, url: str, key: str, **kw: Any) -> AgentConfig:
    timeouts = {"connect_timeout_s": 2 * UNIT, "send_timeout_s": UNIT, "close_timeout_s": UNIT}
    kw = {"ws_client": clients.current} | timeouts | kw
    return AgentConfig.for_provider(provider, api_key=key, url=url, **kw)


async def recv_until(session: Any, kind: type[AgentEvent]) -> AgentEvent:
    async with asyncio.timeout(5 * UNIT):
        while True:
            event = await session.recv()
            if isinstance(event, kind):
                return event


async def connected(cfg: AgentConfig) -> Any:
    session = open_session(cfg)
    async with asyncio.timeout(5 * UNIT):
        await session.connect()
        assert await session.recv() == AgentReady()
    return session


async def events_until(session: Any, kind: type[AgentEvent]) -> list[AgentEvent]:
    """Every event up to and including the first ``kind``."""
    events: list[AgentEvent] = []
    async with asyncio.timeout(5 * UNIT):
        while not isinstance(events[-1] if events else None, kind):
            events.append(await session.recv())
    return events


GREETING = "Thanks for calling Acme. How can I help?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- OpenAI --------------------------------------------------------------------------------


async def test_openai_setup_and_audio_round_trip_fast_path() -> None:
    async with FakeOpenAIRealtime(api_key="sk-test") as fake:
        session = await connected(config("openai", fake.url, "sk-test"))
        assert (session.input_format, session.output_format) == (PCMU_8K, PCMU_8K)
        assert fake.received[0]["type"] == "session.update"
        assert fake.session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        for payload in ULAW_20MS:
            await session.send(AudioChunk(payload, PCMU_8K))
        echoed: list[str] = []
        async with asyncio.timeout(5 * UNIT):
            while len(echoed) < len(ULAW_20MS):
                event = await session.recv()
                if isinstance(event, AudioChunk):
                    assert event.item_id is not None
                    echoed.append(event.payload)
        assert fake.audio == ULAW_20MS  # the bytes the provider received are ours
        assert echoed == ULAW_20MS
        assert await recv_until(session, ResponseDone) == ResponseDone()
        assert fake.requests[-1][0] == "/v1/realtime?model=gpt-realtime-2.1"
        await session.close()


async def test_openai_barge_in_cancels_and_truncates() -> None:
    async with FakeOpenAIRealtime(response_done_every=0) as fake:
        session = await connected(config("openai", fake.url, "sk-test"))
        await session.send(AudioChunk(ULAW_20MS[0], PCMU_8K))
        chunk = await recv_until(session, AudioChunk)
        await fake.speech_started()
        assert await recv_until(session, SpeechStarted) == SpeechStarted()
        assert isinstance(chunk, AudioChunk)
        await session.send(Interrupt(item_id=chunk.item_id, played_ms=20))
        await session.send(Dtmf("5"))
        async with asyncio.timeout(5 * UNIT):
            await fake.wait_until(lambda: len(fake.received) >= 6)
        kinds = [m["type"] for m in fake.received]
        assert kinds[2:] == [
            "response.cancel",
            "conversation.item.truncate",
            "conversation.item.create",
            "response.create",
        ]
        # Server VAD had ended the response already (interrupt_response): the fake answered
        # the cancel with response_cancel_not_active, which is no error of ours. The second
        # ResponseDone ends the DTMF's response: everything before it has been read.
        events = await events_until(session, ResponseDone)
        events += await events_until(session, ResponseDone)
        assert fake.errors_sent == ["response_cancel_not_active"]
        assert not [e for e in events if isinstance(e, Error)]
        await session.close()


async def test_openai_barge_in_with_no_response_in_progress_cancels_nothing() -> None:
    async with FakeOpenAIRealtime() as fake:  # every echo is a whole response
        session = await connected(config("openai", fake.url, "sk-test"))
        await session.send(AudioChunk(ULAW_20MS[0], PCMU_8K))
        chunk = await recv_until(session, AudioChunk)
        assert await recv_until(session, ResponseDone) == ResponseDone()
        # The answer may still be playing at the carrier: its item is truncated, no more.
        await fake.speech_started()
        assert await recv_until(session, SpeechStarted) == SpeechStarted()
        assert isinstance(chunk, AudioChunk)
        await session.send(Interrupt(item_id=chunk.item_id, played_ms=10))
        await session.send(Dtmf("1"))  # a marker: the server has read what came before it
        events = await events_until(session, ResponseDone)
        kinds = [m["type"] for m in fake.received]
        assert "response.cancel" not in kinds
        assert kinds[-3:] == [
            "conversation.item.truncate",
            "conversation.item.create",
            "response.create",
        ]
        assert fake.errors_sent == []
        assert not [e for e in events if isinstance(e, Error)]
        await session.close()


async def test_openai_speaks_the_greeting_first() -> None:
    async with FakeOpenAIRealtime() as fake:
        cfg = config("openai", fake.url, "sk-test", options=AgentOptions(greeting=GREETING))
        session = await connected(cfg)
        events = await events_until(session, ResponseDone)
        assert [type(e) for e in events] == [AudioChunk] * fake.reply_frames + [ResponseDone]
        assert [m["type"] for m in fake.received] == ["session.update", "response.create"]
        (response,) = fake.created
        assert response["instructions"].endswith(f'"{GREETING}"')
        assert fake.audio == []  # before the caller said anything
        await session.close()


async def test_openai_fake_rejects_the_beta_shape() -> None:
    class BetaCodec(OpenAIRealtimeCodec):
        def start(self) -> list[Frame]:
            beta = {"type": "session.update", "session": {"input_audio_format": "g711_ulaw"}}
            return [json.dumps(beta)]

    async with FakeOpenAIRealtime() as fake:
        cfg = config("openai", fake.url, "sk-test")
        session = WebSocketAgentSession(BetaCodec.from_config(cfg), cfg, openai_endpoint(cfg))
        with pytest.raises(ConnectError, match=r"missing_required_parameter|unknown_parameter"):
            await session.connect()


async def test_openai_wrong_key_is_a_connect_error() -> None:
    async with FakeOpenAIRealtime(api_key="right") as fake:
        session = open_session(config("openai", fake.url, "wrong"))
        with pytest.raises(ConnectError, match="HTTP 401"):
            await session.connect()


async def test_refused_connection_is_a_connect_error() -> None:
    session = open_session(config("openai", f"ws://127.0.0.1:{free_port()}/v1/realtime", "k"))
    with pytest.raises(ConnectError, match="could not connect"):
        await session.connect()


async def test_connect_times_out_when_setup_is_never_answered() -> None:
    async with FakeOpenAIRealtime(answer_setup=False) as fake:
        session = open_session(config("openai", fake.url, "sk-test", connect_timeout_s=0.2 * UNIT))
        async with asyncio.timeout(5 * UNIT):
            with pytest.raises(ConnectError, match="not ready"):
                await session.connect()
        await fake.wait_until(lambda: not fake.connections)  # the socket was not left open


async def test_abnormal_close_is_reported_as_abnormal() -> None:
    async with FakeOpenAIRealtime() as fake:
        session = await connected(config("openai", fake.url, "sk-test"))
        await fake.close_abnormally()
        async with asyncio.timeout(5 * UNIT):
            with pytest.raises(SessionClosed) as info:
                await session.recv()
        assert info.value.abnormal
        await session.close()


async def test_normal_close_by_peer() -> None:
    async with FakeOpenAIRealtime() as fake:
        session = await connected(config("openai", fake.url, "sk-test"))
        await fake.close(1000)
        async with asyncio.timeout(5 * UNIT):
            with pytest.raises(SessionClosed) as info:
                await session.recv()
        assert not info.value.abnormal


async def test_a_peer_that_stops_reading_cannot_hang_send() -> None:
    async with FakeOpenAIRealtime(echo_audio=False) as fake:
        session = await connected(config("openai", fake.url, "sk-test", send_timeout_s=0.2 * UNIT))
        fake.stall = True
        big = AudioChunk(base64.b64encode(b"\xff" * 256 * 1024).decode(), PCMU_8K)
        async with asyncio.timeout(30 * UNIT):
            with pytest.raises(SessionClosed) as info:
                while True:
                    await session.send(big)
        assert info.value.abnormal
        with pytest.raises(SessionClosed):
            await session.send(big)
        async with asyncio.timeout(5 * UNIT):
            await session.close()


async def test_unparsable_frames_are_counted_and_skipped() -> None:
    async with FakeOpenAIRealtime() as fake:
        session = await connected(config("openai", fake.url, "sk-test"))
        await fake.send_raw("this is not json")
        await fake.send_raw(b"\x00\x01")
        await fake.speech_started()
        assert await recv_until(session, SpeechStarted) == SpeechStarted()
        assert session.protocol_errors == 2
        await session.close()


async def test_close_is_idempotent_and_ends_recv_and_send() -> None:
    async with FakeOpenAIRealtime() as fake:
        session = await connected(config("openai", fake.url, "sk-test"))
        receiver = asyncio.create_task(session.recv())
        await asyncio.sleep(0)
        async with asyncio.timeout(5 * UNIT):
            await session.close()
            await session.close()
            with pytest.raises(SessionClosed) as info:
                await receiver
        assert not info.value.abnormal
        with pytest.raises(SessionClosed):
            await session.send(AudioChunk(ULAW_20MS[0], PCMU_8K))


async def test_error_events_reach_the_caller() -> None:
    async with FakeOpenAIRealtime() as fake:
        session = await connected(config("openai", fake.url, "sk-test"))
        await fake.send_error("session_expired", "Your session hit the maximum duration.")
        event = await recv_until(session, Error)
        assert isinstance(event, Error) and event.fatal and event.code == "session_expired"
        await fake.transcript("hello there")
        assert await recv_until(session, Transcript) == Transcript("agent", "hello there")
        await session.close()


# -- Deepgram ------------------------------------------------------------------------------


async def test_deepgram_setup_and_binary_audio_round_trip() -> None:
    async with FakeDeepgramAgent(api_key="dg-test") as fake:
        session = await connected(config("deepgram", fake.url, "dg-test"))
        assert fake.settings is not None and fake.settings["type"] == "Settings"
        for payload in ULAW_20MS:
            await session.send(AudioChunk(payload, PCMU_8K))
        echoed: list[str] = []
        async with asyncio.timeout(5 * UNIT):
            while len(echoed) < len(ULAW_20MS):
                event = await session.recv()
                if isinstance(event, AudioChunk):
                    echoed.append(event.payload)
        assert fake.audio == [base64.b64decode(p) for p in ULAW_20MS]
        assert echoed == ULAW_20MS
        await fake.user_started_speaking()
        assert await recv_until(session, SpeechStarted) == SpeechStarted()
        await fake.conversation_text("assistant", "Hi!")
        assert await recv_until(session, Transcript) == Transcript("agent", "Hi!")
        await fake.send_error("FAILED_TO_SPEAK", "TTS failed")
        error = await recv_until(session, Error)
        assert isinstance(error, Error) and error.fatal
        await session.close()


async def test_deepgram_speaks_the_greeting_first() -> None:
    async with FakeDeepgramAgent() as fake:
        cfg = config("deepgram", fake.url, "dg-test", options=AgentOptions(greeting=GREETING))
        session = await connected(cfg)
        events = await events_until(session, ResponseDone)
        assert events[0] == Transcript("agent", GREETING)
        assert [type(e) for e in events[1:]] == [AudioChunk] * fake.greeting_frames + [ResponseDone]
        assert fake.settings is not None and fake.settings["agent"]["greeting"] == GREETING
        assert len(fake.received) == 1  # the greeting travelled in Settings
        await session.close()


async def test_deepgram_keepalive_when_idle() -> None:
    async with FakeDeepgramAgent() as fake:
        session = await connected(config("deepgram", fake.url, "dg-test", idle_keepalive_s=0.05))
        async with asyncio.timeout(5 * UNIT):
            await fake.wait_until(lambda: fake.keepalives >= 2)
        assert {"type": "KeepAlive"} in fake.received
        await session.close()


async def test_deepgram_connect_timeout() -> None:
    async with FakeDeepgramAgent(answer_setup=False) as fake:
        cfg = config("deepgram", fake.url, "dg-test", connect_timeout_s=0.2 * UNIT)
        with pytest.raises(ConnectError, match="not ready"):
            await open_session(cfg).connect()


async def test_deepgram_wrong_key() -> None:
    async with FakeDeepgramAgent(api_key="right") as fake:
        with pytest.raises(ConnectError, match="HTTP 401"):
            await open_session(config("deepgram", fake.url, "wrong")).connect()


# -- Gemini --------------------------------------------------------------------------------


async def test_gemini_setup_and_audio_round_trip() -> None:
    async with FakeGeminiLive(api_key="g-test") as fake:
        session = await connected(config("gemini", fake.url, "g-test"))
        assert isinstance(session, GeminiLiveSession)
        assert (session.input_format, session.output_format) == (PCM16_16K, PCM16_24K)
        assert fake.setups[0]["model"].startswith("models/")
        assert await recv_until(session, ResumptionHandle) == ResumptionHandle("handle-1")
        await session.send(AudioChunk(PCM16_20MS, PCM16_16K))
        chunk = await recv_until(session, AudioChunk)
        assert isinstance(chunk, AudioChunk) and chunk.format == PCM16_24K
        assert len(chunk.to_bytes()) == len(base64.b64decode(PCM16_20MS)) * 3 // 2
        assert fake.audio == [PCM16_20MS]
        assert await recv_until(session, ResponseDone) == ResponseDone()
        await fake.interrupted()
        assert await recv_until(session, SpeechStarted) == SpeechStarted()
        await session.close()


async def test_gemini_speaks_the_greeting_first_and_not_again_on_resumption() -> None:
    async with FakeGeminiLive() as fake:
        cfg = config("gemini", fake.url, "g-test", options=AgentOptions(greeting=GREETING))
        session = await connected(cfg)
        events = await events_until(session, ResponseDone)
        audio = [e for e in events if isinstance(e, AudioChunk)]
        assert len(audio) == fake.reply_chunks and audio[0].format == PCM16_24K
        (turn,) = fake.turns
        assert turn["role"] == "user" and turn["parts"][0]["text"].endswith(f'"{GREETING}"')
        await fake.go_away("5s")
        receiver = asyncio.create_task(recv_until(session, ResponseDone))
        async with asyncio.timeout(5 * UNIT):
            await fake.wait_until(lambda: len(fake.setups) == 2)
        await session.send(AudioChunk(PCM16_20MS, PCM16_16K))  # held or sent: the new socket
        async with asyncio.timeout(5 * UNIT):
            assert await receiver == ResponseDone()
        assert fake.resumed_with == [None, "handle-1"]
        assert session.resumptions == 1
        assert len(fake.turns) == 1  # the resumed session was not greeted again
        await session.close()


async def test_gemini_wrong_key_closes_during_setup() -> None:
    async with FakeGeminiLive(api_key="right") as fake:
        with pytest.raises(ConnectError, match="1008"):
            await open_session(config("gemini", fake.url, "wrong")).connect()


async def test_gemini_go_away_resumes_transparently() -> None:
    async with FakeGeminiLive() as fake:
        session = await connected(config("gemini", fake.url, "g-test"))
        assert await recv_until(session, ResumptionHandle) == ResumptionHandle("handle-1")
        fake.answer_setup = False  # hold the new connection's setup until we say so
        await fake.go_away("5s")
        receiver = asyncio.create_task(session.recv())
        async with asyncio.timeout(5 * UNIT):
            await fake.wait_until(lambda: len(fake.setups) == 2)
        # The switch-over is under way: this audio is held and flushed to the new socket.
        await session.send(AudioChunk(PCM16_20MS, PCM16_16K))
        assert fake.audio == []
        await fake.send_json({"setupComplete": {}}, fake.current)
        async with asyncio.timeout(5 * UNIT):
            event = await receiver
            assert not isinstance(event, GoAway | AgentReady)
            await fake.wait_until(lambda: fake.audio == [PCM16_20MS])
        assert fake.resumed_with == [None, "handle-1"]
        assert session.resumptions == 1
        # The echo of the held audio arrives on the new connection.
        chunk = event if isinstance(event, AudioChunk) else await recv_until(session, AudioChunk)
        assert isinstance(chunk, AudioChunk) and chunk.format == PCM16_24K
        async with asyncio.timeout(5 * UNIT):
            await fake.wait_until(lambda: len(fake.connections) == 1)  # the old one is closed
        await session.close()


async def test_gemini_failed_resume_ends_the_session_abnormally() -> None:
    async with FakeGeminiLive() as fake:
        session = await connected(config("gemini", fake.url, "g-test"))
        await recv_until(session, ResumptionHandle)
        fake.handles.clear()  # the server forgot the handle: the resume is refused
        await fake.go_away("5s")
        async with asyncio.timeout(5 * UNIT):
            with pytest.raises(SessionClosed) as info:
                await session.recv()
        assert info.value.abnormal
        await session.close()


async def test_gemini_go_away_without_handle_is_passed_on() -> None:
    async with FakeGeminiLive(issue_handles=False) as fake:
        session = await connected(config("gemini", fake.url, "g-test"))
        await fake.go_away("2.5s", close_after=False)
        assert await recv_until(session, GoAway) == GoAway(2500)
        await session.close()


async def test_gemini_codec_restart_uses_the_given_handle() -> None:
    async with FakeGeminiLive() as fake:
        first = await connected(config("gemini", fake.url, "g-test"))
        await recv_until(first, ResumptionHandle)
        await first.close()
        cfg = config("gemini", fake.url, "g-test")
        codec = GeminiLiveCodec.from_config(cfg)
        codec.resume_handle = "handle-1"
        session = GeminiLiveSession(codec, cfg, gemini_endpoint(cfg))
        async with asyncio.timeout(5 * UNIT):
            await session.connect()
        assert fake.resumed_with == [None, "handle-1"]
        await session.close()


# -- factory -------------------------------------------------------------------------------


def test_open_session_picks_the_session_type() -> None:
    assert isinstance(open_session(AgentConfig.for_provider("echo")), EchoSession)
    openai = open_session(AgentConfig.for_provider("openai", api_key="k"))
    assert isinstance(openai, WebSocketAgentSession) and openai.provider == "openai"
    deepgram = open_session(AgentConfig.for_provider("deepgram", api_key="k"))
    assert isinstance(deepgram, WebSocketAgentSession) and deepgram.provider == "deepgram"
    assert isinstance(
        open_session(AgentConfig.for_provider("gemini", api_key="k")), GeminiLiveSession
    )
    with pytest.raises(ValueError):
        AgentConfig.for_provider("nope")
