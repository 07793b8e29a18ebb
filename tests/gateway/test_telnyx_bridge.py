"""The real Bridge on a Telnyx stream, where the carrier codec, the framing of agent audio and
the audio conversion meet.

Telnyx plays only whole frames of 20 ms to 30 s; OpenAI and Deepgram promise no chunk size.
An agent that speaks in 10 ms deltas must be heard to the end of the call: on an A-law leg
(agent audio converted to A-law, the codec sending what ``start`` announced) and on the mu-law
fast path (deltas joined into whole frames, the rest padded with silence at the end of the
response). The call is set up as Telnyx does it (signed webhooks, ``streaming_start`` read
back from the fake Call Control API), the stream is a scripted carrier socket, and the agent a
scripted session.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway.calls.state import Call, EndReason
from gateway.media.audio import alaw_encode, ulaw_decode
from gateway.media.bridge import Bridge
from gateway.media.endpoints import bridge_services
from providers.events import (
    PCMA_8K,
    PCMU_8K,
    AgentEvent,
    AudioChunk,
    AudioFormat,
    Interrupt,
    ResponseDone,
    SpeechStarted,
    StreamStarted,
)
from providers.telephony.telnyx import TelnyxCodec
from tests.conftest import UNIT
from tests.fakes.carrier_rest import FakeCarrierRest
from tests.gateway.conftest import Gateway, GatewayFactory, call_control_id, telnyx_event

TEN_MS = 80  # bytes of 8 kHz G.711
FRAME = 160
STREAM_ID = "1edb94f9-7ef0-4150-b502-e0ebadfd9491"


class Carrier:
    """A Telnyx media socket: frames pushed by the test are read by the Bridge; what the
    Bridge sends is recorded (media payloads decoded, marks acknowledged at once)."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.media: list[bytes] = []
        self.messages: list[dict[str, Any]] = []
        self.close_codes: list[int] = []
        self.changed = asyncio.Condition()

    def push(self, message: dict[str, Any]) -> None:
        self.inbox.put_nowait({"type": "websocket.receive", "text": orjson.dumps(message).decode()})

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def send_text(self, text: str) -> None:
        message = orjson.loads(text)
        self.messages.append(message)
        match message["event"]:
            case "media":
                self.media.append(base64.b64decode(message["media"]["payload"]))
            case "mark":
                self.push({"event": "mark", "stream_id": STREAM_ID, "mark": message["mark"]})
        async with self.changed:
            self.changed.notify_all()

    async def close(self, code: int = 1000) -> None:
        self.close_codes.append(code)

    @property
    def audio(self) -> bytes:
        return b"".join(self.media)

    async def wait_audio(self, size: int) -> None:
        async with asyncio.timeout(5 * UNIT), self.changed:
            await self.changed.wait_for(lambda: len(self.audio) >= size)


class DeltaAgent:
    """An agent session that says what the test scripts (``say``), as deltas of any size."""

    provider = "openai"
    input_format = PCMU_8K
    output_format = PCMU_8K

    def __init__(self) -> None:
        self.events: asyncio.Queue[AgentEvent] = asyncio.Queue()
        self.received: list[object] = []
        self.interrupted = asyncio.Event()
        self.closed = False

    def say(self, *events: AgentEvent) -> None:
        for event in events:
            self.events.put_nowait(event)

    async def connect(self) -> None:
        pass

    async def send(self, event: object) -> None:
        self.received.append(event)
        if isinstance(event, Interrupt):
            self.interrupted.set()

    async def recv(self) -> AgentEvent:
        return await self.events.get()

    async def close(self) -> None:
        self.closed = True


def deltas(audio: bytes, size: int = TEN_MS) -> list[AgentEvent]:
    return [
        AudioChunk.from_bytes(audio[i : i + size], PCMU_8K, item_id="item_1")
        for i in range(0, len(audio), size)
    ]


def alaw(ulaw: bytes) -> bytes:
    return alaw_encode(ulaw_decode(ulaw))


def speech(ms: int) -> bytes:
    """``ms`` of mu-law audio that is not silence and not constant (each byte counts)."""
    return bytes((0x10 + i % 0x60) for i in range(8 * ms))


@pytest.fixture
async def fake_rest() -> AsyncIterator[FakeCarrierRest]:
    async with FakeCarrierRest(telnyx_api_key="KEYtest") as fake:
        yield fake


@pytest.fixture
async def telnyx_gw(make_gateway: GatewayFactory, fake_rest: FakeCarrierRest) -> Gateway:
    return await make_gateway(
        {"VOICEGW_TELNYX_API_URL": fake_rest.base_url, "VOICEGW_TELNYX_API_KEY": "KEYtest"}
    )


async def streaming_call(
    gw: Gateway, rest: FakeCarrierRest, encoding: str
) -> tuple[Call, StreamStarted, TelnyxCodec]:
    """A Telnyx call answered through the webhooks, its stream opened with ``encoding`` and
    claimed as the media endpoint does."""
    ccid = call_control_id()
    for event in ("call.initiated", "call.answered"):
        assert (await gw.telnyx(telnyx_event(event, ccid))).status_code == 200
    await gw.settle()
    (command,) = [r for r in rest.requests if r.action == "streaming_start"]
    token = command.json()["stream_auth_token"]
    codec = TelnyxCodec()
    codec.feed(orjson.dumps({"event": "connected", "version": "1.0.0"}).decode())
    start = {
        "event": "start",
        "sequence_number": "1",
        "stream_id": STREAM_ID,
        "start": {
            "call_control_id": ccid,
            "media_format": {"encoding": encoding, "sample_rate": 8000, "channels": 1},
        },
    }
    (started,) = codec.feed(orjson.dumps(start).decode())
    assert isinstance(started, StreamStarted)
    started = dataclasses.replace(started, auth_token=token)
    return await gw.runtime.admission.claim("telnyx", started), started, codec


def stop() -> dict[str, Any]:
    return {"event": "stop", "sequence_number": "99", "stream_id": STREAM_ID, "stop": {}}


async def run_bridge(
    gw: Gateway, rest: FakeCarrierRest, encoding: str
) -> tuple[Carrier, DeltaAgent, asyncio.Task[EndReason], Call]:
    call, started, codec = await streaming_call(gw, rest, encoding)
    carrier, agent = Carrier(), DeltaAgent()
    services = bridge_services(gw.runtime)
    profile = gw.runtime.agents.profile(call.agent)
    bridge = Bridge(services, carrier, codec, agent, call, started, profile=profile)  # type: ignore[arg-type]
    return carrier, agent, asyncio.create_task(bridge.run([])), call


async def hang_up(carrier: Carrier, task: asyncio.Task[EndReason]) -> EndReason:
    carrier.push(stop())
    async with asyncio.timeout(5 * UNIT):
        return await task


def assert_whole_frames(carrier: Carrier) -> None:
    sizes = [len(m) for m in carrier.media]
    assert sizes and all(size and size % FRAME == 0 for size in sizes), sizes


async def test_agent_speaking_in_10_ms_deltas_is_heard_on_an_alaw_leg(
    telnyx_gw: Gateway, fake_rest: FakeCarrierRest
):
    """The issue's case: an A-law ``start``, an agent sending 10 ms deltas. Every word reaches
    the caller, in A-law, in whole frames, and the call ends when the caller hangs up (not
    ``carrier_error`` at the agent's first word)."""
    carrier, agent, task, call = await run_bridge(telnyx_gw, fake_rest, "PCMA")
    said = speech(250)  # 12.5 frames
    agent.say(*deltas(said), ResponseDone())
    await carrier.wait_audio(len(said) + TEN_MS)
    said_more = speech(30)
    agent.say(*deltas(said_more), ResponseDone())
    await carrier.wait_audio(len(said) + len(said_more) + 2 * TEN_MS)
    reason = await hang_up(carrier, task)

    assert reason is EndReason.CARRIER_HANGUP
    assert_whole_frames(carrier)
    # All of it, in A-law, each response's odd 10 ms padded with A-law silence.
    pad = b"\xd5" * TEN_MS
    assert carrier.audio == alaw(said) + pad + alaw(said_more) + pad
    ended = await telnyx_gw.runtime.registry.get(call.call_id)
    assert ended is not None and ended.ended_reason == "carrier_hangup"


async def test_10_ms_deltas_on_the_mulaw_fast_path_go_out_as_whole_frames(
    telnyx_gw: Gateway, fake_rest: FakeCarrierRest
):
    """Deltas are joined into whole 20 ms frames; the odd 10 ms at the end of the response
    is padded with mu-law silence rather than dropped or sent short."""
    carrier, agent, task, _ = await run_bridge(telnyx_gw, fake_rest, "PCMU")
    said = speech(50)  # five 10 ms deltas: two whole frames and a half
    agent.say(*deltas(said), ResponseDone())
    await carrier.wait_audio(len(said) + TEN_MS)
    assert await hang_up(carrier, task) is EndReason.CARRIER_HANGUP
    assert_whole_frames(carrier)
    assert carrier.audio == said + b"\xff" * TEN_MS


async def test_whole_frames_on_the_fast_path_are_forwarded_untouched(
    telnyx_gw: Gateway, fake_rest: FakeCarrierRest
):
    """A chunk of whole frames with nothing carried goes out as the agent sent it: the same
    base64 text, not decoded and re-encoded."""
    carrier, agent, task, _ = await run_bridge(telnyx_gw, fake_rest, "PCMU")
    chunks = deltas(speech(60), size=3 * FRAME)
    agent.say(*chunks)
    await carrier.wait_audio(3 * FRAME)
    await hang_up(carrier, task)
    sent = [m["media"]["payload"] for m in carrier.messages if m["event"] == "media"]
    assert sent == [c.payload for c in chunks if isinstance(c, AudioChunk)]


async def test_barge_in_drops_the_carried_part_of_a_frame(
    telnyx_gw: Gateway, fake_rest: FakeCarrierRest
):
    """The caller talked over the agent: the 10 ms carried for the next frame was talked
    over too, and must not lead the agent's next response."""
    carrier, agent, task, _ = await run_bridge(telnyx_gw, fake_rest, "PCMU")
    first = speech(30)  # one whole frame sent, 10 ms carried
    agent.say(*deltas(first))
    await carrier.wait_audio(FRAME)
    agent.say(SpeechStarted())
    async with asyncio.timeout(5 * UNIT):
        await agent.interrupted.wait()
    second = bytes(range(0x20, 0x20 + FRAME))
    agent.say(*deltas(second), ResponseDone())
    await carrier.wait_audio(FRAME + len(second))
    await hang_up(carrier, task)
    assert carrier.audio == first[:FRAME] + second


@pytest.mark.parametrize("fmt", [PCMU_8K, PCMA_8K])
async def test_a_response_that_ends_inside_a_frame_is_padded_with_that_codecs_silence(
    telnyx_gw: Gateway, fake_rest: FakeCarrierRest, fmt: AudioFormat
):
    carrier, agent, task, _ = await run_bridge(telnyx_gw, fake_rest, fmt.encoding.value.upper())
    agent.say(*deltas(b"\xff" * TEN_MS), ResponseDone())  # mu-law silence, 10 ms
    await carrier.wait_audio(FRAME)
    await hang_up(carrier, task)
    silence = b"\xff" if fmt == PCMU_8K else b"\xd5"
    assert carrier.audio == silence * FRAME
