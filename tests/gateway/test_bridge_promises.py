"""Two promises of the Bridge, driven through the real Bridge and Runtime with a scripted
carrier socket and scripted agent sessions (so the order of events is the test's, not the
scheduler's):

* **held audio on failover**: caller audio that arrives while a call moves to another
  provider is held (up to ``FAILOVER_BUFFER_FRAMES``, 1 s) and reaches the new provider in
  order, before any later audio; nothing within the hold is lost;
* **the outbound queue cap**: agent audio waiting for the carrier is capped at
  ``OUTBOUND_QUEUE_S``; past it the *oldest* waiting audio is dropped and counted
  (``voicegw_media_frames_dropped_total{reason="queue_full"}``), and what is kept plays in order.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
from typing import Any

import orjson
import pytest

from gateway.calls.state import EndReason
from gateway.media import outbound
from gateway.media.bridge import Bridge
from gateway.media.endpoints import bridge_services
from providers.events import PCMU_8K, AudioChunk
from providers.exceptions import SessionClosed, SessionError
from tests.conftest import UNIT
from tests.e2e.carrier import eventually, metric
from tests.gateway.conftest import Gateway
from tests.gateway.test_app import STREAM_SID
from tests.gateway.test_bridge_endings import streaming_call

FRAME = 160  # 20 ms of mu-law


def media_frame(seq: int, audio: bytes) -> str:
    payload = base64.b64encode(audio).decode()
    return orjson.dumps(
        {
            "event": "media",
            "sequenceNumber": str(seq + 2),
            "streamSid": STREAM_SID,
            "media": {
                "track": "inbound",
                "chunk": str(seq + 1),
                "timestamp": str(seq * 20),
                "payload": payload,
            },
        }
    ).decode()


def numbered(n: int, size: int = FRAME) -> bytes:
    """Audio whose every byte says which chunk it is."""
    return bytes([n % 256]) * size


class ScriptedCarrier:
    """A carrier socket: ``feed`` queues frames for the Bridge to read; ``read`` counts the
    frames it has taken; every media payload the Bridge sends is kept (decoded) in ``played``."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[str] = asyncio.Queue()
        self.read = 0
        self.played: list[bytes] = []
        self.close_codes: list[int] = []

    def feed(self, frame: str) -> None:
        self.inbox.put_nowait(frame)

    async def receive(self) -> dict[str, Any]:
        text = await self.inbox.get()
        self.read += 1
        return {"type": "websocket.receive", "text": text}

    async def send_text(self, text: str) -> None:
        message = orjson.loads(text)
        if message["event"] == "media":
            self.played.append(base64.b64decode(message["media"]["payload"]))

    async def close(self, code: int = 1000) -> None:
        self.close_codes.append(code)


class ScriptedAgent:
    """An agent session: keeps the audio it is sent; ``recv`` yields ``says`` in order, then
    waits until ``fail`` is set (then raises an abnormal close, and every later send
    fails) or forever. ``waiting`` is set each time it has nothing left to say."""

    input_format = PCMU_8K
    output_format = PCMU_8K

    def __init__(self, provider: str, says: list[AudioChunk] | None = None) -> None:
        self.provider = provider
        self.says = list(says or [])
        self.heard: list[bytes] = []
        self.fail = asyncio.Event()
        self.waiting = asyncio.Event()
        self.closed = False

    async def connect(self) -> None:
        pass

    async def send(self, event: object) -> None:
        if self.fail.is_set() or self.closed:
            raise SessionError("gone")
        if isinstance(event, AudioChunk):
            self.heard.append(event.to_bytes())

    async def recv(self) -> AudioChunk:
        if self.says:
            return self.says.pop(0)
        self.waiting.set()
        await self.fail.wait()
        raise SessionClosed("reset", abnormal=True)

    async def close(self) -> None:
        self.closed = True


async def run_bridge(gw: Gateway, carrier: ScriptedCarrier, agent: ScriptedAgent):
    call, started, codec = await streaming_call(gw)
    profile = gw.runtime.agents.profile(call.agent)
    bridge = Bridge(
        bridge_services(gw.runtime), carrier, codec, agent, call, started, profile=profile
    )  # type: ignore[arg-type]
    return bridge, asyncio.create_task(bridge.run([]))


async def end(bridge: Bridge, running: asyncio.Task[EndReason]) -> None:
    bridge.stop(EndReason.DRAINING)
    async with asyncio.timeout(5 * UNIT):
        assert await running is EndReason.DRAINING


@pytest.mark.parametrize("held", [1, 25, 50])  # up to 1 s of 20 ms frames
async def test_audio_held_during_failover_reaches_the_new_provider_in_order(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch, held: int
) -> None:
    first, second = ScriptedAgent("openai"), ScriptedAgent("deepgram")
    opening = asyncio.Event()  # the Bridge asked for the next provider
    connect = asyncio.Event()  # ...and it connects only when the test says so
    asked_after: list[str | None] = []

    async def open_agent(
        call: object, profile: object, *, after: str | None = None
    ) -> ScriptedAgent:
        asked_after.append(after)
        opening.set()
        await connect.wait()
        return second

    monkeypatch.setattr(gw.runtime.dialer, "open_agent", open_agent)
    carrier = ScriptedCarrier()
    bridge, running = await run_bridge(gw, carrier, first)
    seq = itertools.count()
    frames = [numbered(n) for n in range(5 + held + 5)]
    for audio in frames[:5]:
        carrier.feed(media_frame(next(seq), audio))
    await eventually(lambda: len(first.heard) == 5, 5 * UNIT, "first provider hears")

    first.fail.set()  # the provider resets mid-call
    async with asyncio.timeout(5 * UNIT):
        await opening.wait()
    # The caller goes on talking while the next provider connects: every frame is read.
    for audio in frames[5 : 5 + held]:
        carrier.feed(media_frame(next(seq), audio))
    await eventually(lambda: carrier.read == 5 + held, 5 * UNIT, "held frames read")
    assert second.heard == []
    connect.set()
    # Then later audio, after the held audio.
    for audio in frames[5 + held :]:
        carrier.feed(media_frame(next(seq), audio))
    await eventually(lambda: len(second.heard) == held + 5, 5 * UNIT, "second provider hears")

    assert asked_after == ["openai"]
    assert first.heard == frames[:5]
    assert second.heard == frames[5:]  # nothing lost, nothing reordered, nothing twice
    await end(bridge, running)


async def test_outbound_queue_drops_the_oldest_audio_past_its_cap(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1 s chunks; the cap is 120 s. The agent says 130 s at once, far faster than real time.
    chunks = [
        AudioChunk.from_bytes(numbered(n, 8000), PCMU_8K, item_id="item-1") for n in range(130)
    ]
    agent = ScriptedAgent("openai", chunks)
    carrier = ScriptedCarrier()
    before = metric("voicegw_media_frames_dropped_total", carrier="twilio", direction="to_carrier",
                    reason="queue_full")  # fmt: skip
    bridge, running = await run_bridge(gw, carrier, agent)
    async with asyncio.timeout(10 * UNIT):
        await agent.waiting.wait()  # the Bridge has taken all 130 s from the agent
    # Paced at real time, the carrier has had at most a few seconds of it.
    played_then = len(carrier.played)
    assert played_then < 10
    dropped = int(
        metric("voicegw_media_frames_dropped_total", carrier="twilio", direction="to_carrier",
               reason="queue_full") - before
    )  # fmt: skip
    # Down to the cap, not below it: 130 s said, at most 120 s waiting.
    cap = int(outbound.OUTBOUND_QUEUE_S)
    assert 130 - cap - played_then <= dropped <= 130 - cap
    # Let the rest play at once: what was kept plays, in order; what went was the oldest.
    monkeypatch.setattr(outbound, "OUTBOUND_LEAD_S", 1e9)
    await eventually(lambda: carrier.played[-1:] == [numbered(129, 8000)], 10 * UNIT, "played")
    order = [chunk[0] for chunk in carrier.played]
    assert len(order) == 130 - dropped
    assert order == sorted(order)
    missing = sorted(set(range(130)) - set(order))
    assert len(missing) == dropped
    assert missing == list(range(missing[0], missing[0] + dropped))  # one run...
    assert missing[0] <= played_then  # ...right after what had played: the oldest waiting
    await end(bridge, running)
