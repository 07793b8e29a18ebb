"""Telnyx calls as real Telnyx behaves, end to end: a live gateway (real uvicorn), the signed
Call Control webhooks, the fake Call Control API, and a real media WebSocket.

* An A-law leg (``start`` announces PCMA although the gateway asked for PCMU): the caller's
  audio reaches the agent, the agent (the echo provider, answering each 10 ms frame with a
  10 ms delta) is played back in A-law in whole 20 ms frames to the end of the call, and the
  call is recorded, the recording decoding to what was said and heard.
* A ``start`` in a codec the gateway cannot carry ends the call with a REST hang-up and the
  outcome ``unsupported_codec``; a forged one ends nothing.
* ``streaming.failed`` mid-call ends the call with a hang-up within seconds.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.media.audio import Transcoder
from gateway.media.recorder import RECORDING_KEY_USE
from gateway.media.recording import Direction, RecordingReader
from gateway.records.base import CallRecord
from providers.events import PCMA_8K, PCMU_8K
from tests.conftest import UNIT
from tests.e2e.carrier import (
    Gateway,
    Leg,
    answer,
    caller_audio,
    dumps,
    eventually,
    free_port,
    metric,
    open_stream,
    rest_command,
    send_telnyx,
    telnyx_event,
)

pytestmark = pytest.mark.e2e

TEN_MS = 80
FRAME = 160


def translated(audio: bytes, src: Any, dst: Any) -> bytes:
    return Transcoder(src, dst).convert(audio)


async def telnyx_leg(gw: Gateway, encoding: str, *, token: str | None = None) -> Leg:
    """A Telnyx call answered through the webhooks, its stream opened with a ``start`` that
    announces ``encoding``."""
    ticket = await answer(gw, "telnyx")
    leg = await open_stream(gw, ticket, token=token, send_start=False)
    connected, start = leg.frames.opening()
    start["start"]["media_format"]["encoding"] = encoding
    if encoding == "G722":
        start["start"]["media_format"]["sample_rate"] = 16000
    for message in (connected, start):
        await leg.ws.send(dumps(message))
    return leg


async def test_alaw_leg_with_10_ms_agent_deltas_is_heard_and_recorded_to_the_end(make_gateway):
    gw = await make_gateway("echo", VOICEGW_RECORDING="on", VOICEGW_RECORDING_CONSENT="all")
    leg = await telnyx_leg(gw, "PCMA")
    said = translated(caller_audio(50), PCMU_8K, PCMA_8K)  # 1 s of caller speech, A-law
    for i in range(0, len(said), TEN_MS):  # 10 ms frames: the echo answers each with 10 ms
        await leg.send_audio(said[i : i + TEN_MS])
    # The agent's audio (caller -> mu-law -> echo -> A-law) comes back to its last word.
    echoed = translated(translated(said, PCMA_8K, PCMU_8K), PCMU_8K, PCMA_8K)
    last_word = echoed[-FRAME:]
    await eventually(lambda: last_word in leg.audio, 10 * UNIT, "the echo's last frame")
    assert leg.close_code is None  # still up: no carrier_error at the agent's first word
    await leg.stop()
    call = await gw.wait_ended(leg.ticket)
    assert call.ended_reason == "carrier_hangup"

    sizes = [len(chunk) for chunk in _decoded(leg)]
    assert sizes and all(size % FRAME == 0 for size in sizes), sizes  # Telnyx: 20 ms or more
    # The echo drops what it queued before the caller started speaking (its "response" was
    # talked over); from there on every 10 ms delta is heard, in A-law, then silence pads
    # the last frame.
    heard = leg.audio
    skipped = next(k for k in range(0, len(echoed), TEN_MS) if heard.startswith(echoed[k:]))
    assert skipped <= len(echoed) // 2
    assert set(heard[len(echoed) - skipped :]) <= {0xD5}  # A-law silence

    record = await closed_record(gw, call.call_id)
    assert record.outcome == "carrier_hangup"
    assert record.recording_path is not None
    reader = RecordingReader(
        Path(record.recording_path),
        lambda key_id: gw.runtime.data_keys.derive(key_id, RECORDING_KEY_USE),
    )
    chunks = list(reader)
    inbound = b"".join(c.audio for c in chunks if c.direction is Direction.FROM_CARRIER)
    outbound = b"".join(c.audio for c in chunks if c.direction is Direction.TO_CARRIER)
    # Recordings are mu-law whatever the leg: what the caller said and what they heard.
    assert inbound == translated(said, PCMA_8K, PCMU_8K)
    assert outbound == translated(leg.audio, PCMA_8K, PCMU_8K)


async def closed_record(gw: Gateway, call_id: str) -> CallRecord:
    """The call's durable record once the bridge has closed it (the registry ends the call
    just before)."""
    deadline = asyncio.get_running_loop().time() + 5 * UNIT
    while True:
        record = await gw.runtime.store.get_call(call_id)
        if record is not None and record.outcome is not None:
            return record
        assert asyncio.get_running_loop().time() < deadline, "record not closed"
        await asyncio.sleep(0.01)


def _decoded(leg: Leg) -> list[bytes]:
    import base64

    return [base64.b64decode(p) for p in leg.payloads]


async def test_start_in_a_codec_the_gateway_cannot_carry_ends_the_call(make_gateway):
    gw = await make_gateway("echo")
    before = metric(
        "voicegw_calls_total", carrier="telnyx", provider="none", outcome="unsupported_codec"
    )
    leg = await telnyx_leg(gw, "G722")
    hangup = await rest_command(gw.rest, leg.ticket.call_id, "hangup")
    assert hangup.json() == {}
    assert await leg.wait_closed() == 1003
    call = await gw.wait_ended(leg.ticket)
    assert call.ended_reason == "unsupported_codec"
    record = await closed_record(gw, call.call_id)
    assert record.outcome == "unsupported_codec" and record.ended_at is not None
    after = metric(
        "voicegw_calls_total", carrier="telnyx", provider="none", outcome="unsupported_codec"
    )
    assert after == before + 1


async def test_forged_start_in_an_unsupported_codec_ends_nothing(make_gateway):
    gw = await make_gateway("echo")
    leg = await telnyx_leg(gw, "G722", token="A" * 43)
    assert await leg.wait_closed() == 1008
    call = await gw.call("telnyx", leg.ticket.call_id)
    assert call is not None and call.active
    assert [r.action for r in gw.rest.requests if r.call_id == leg.ticket.call_id] == [
        "answer",
        "streaming_start",
    ]


async def test_streaming_failed_mid_call_hangs_up_within_seconds(make_gateway):
    gw = await make_gateway("echo")
    leg = await telnyx_leg(gw, "PCMU")
    await leg.play(caller_audio(10), realtime=False)
    await leg.wait_audio(1)
    event = telnyx_event(
        "streaming.failed",
        leg.ticket.call_id,
        failure_reason="connection_failed",
        stream_id=leg.frames.stream_id,
        stream_type="websocket",
    )
    assert (await send_telnyx(gw.url, gw.keys, event)).status_code == 200
    await rest_command(gw.rest, leg.ticket.call_id, "hangup", within=3 * UNIT)
    await leg.wait_closed()
    call = await gw.wait_ended(leg.ticket)
    assert call.ended_reason == "stream_failed"
    record = await closed_record(gw, call.call_id)
    assert record.outcome == "stream_failed"
    # Our own hang-up comes back as streaming.stopped: nothing more happens.
    stopped = telnyx_event("streaming.stopped", leg.ticket.call_id)
    assert (await send_telnyx(gw.url, gw.keys, stopped)).status_code == 200
    hangups = [r for r in gw.rest.requests if r.action == "hangup"]
    assert len(hangups) == 1
    record = await gw.runtime.store.get_call(call.call_id)
    assert record is not None and record.outcome == "stream_failed"


async def test_fallback_message_on_an_alaw_leg_is_played_in_alaw(make_gateway):
    """No provider answers: the fallback message (mu-law on disk) is played in the leg's
    codec, in whole frames, before the call ends."""
    dead = f"ws://127.0.0.1:{free_port()}/v1/realtime"
    gw = await make_gateway("openai", VOICEGW_OPENAI_REALTIME_URL=dead)
    leg = await telnyx_leg(gw, "PCMA")
    await rest_command(gw.rest, leg.ticket.call_id, "hangup")
    await leg.wait_closed()
    message = translated(gw.runtime.fallback, PCMU_8K, PCMA_8K)
    heard = leg.audio
    assert heard[: len(message)] == message
    assert set(heard[len(message) :]) <= {0xD5} and len(heard) % FRAME == 0
    assert all(len(chunk) % FRAME == 0 for chunk in _decoded(leg))
    record = await closed_record(gw, (await gw.wait_ended(leg.ticket)).call_id)
    assert record.outcome == "no_provider"
