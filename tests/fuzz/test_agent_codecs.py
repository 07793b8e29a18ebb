"""AI-provider codecs (OpenAI Realtime, Deepgram Voice Agent, Gemini Live) and the echo agent
under hostile frames.

A provider is a peer we call, not one we trust: its frames cross the network and are parsed
on the call's hot path. Invariants, for any frame sequence (recorded frames mutated, random
JSON, text and bytes):

* ``feed`` raises nothing but ``ProtocolError``, and a rejected frame changes no state;
* every ``AudioChunk`` it emits is in the codec's output format with a payload that decodes as
  strict base64 (the Bridge, the transcoder and the recorder decode it);
* ``encode`` of any event for the agent gives text frames that are JSON objects, or bytes;
  it raises only ``ValueError``, and only for audio in the wrong format;
* the echo agent, fed any events at any times, echoes exactly the audio it was given, in
  order, except what a barge-in dropped, and ends with nothing pending.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers.ai.deepgram_agent import DeepgramAgentCodec
from providers.ai.echo import EchoAgent
from providers.ai.gemini_live import GeminiLiveCodec
from providers.ai.openai_realtime import OpenAIRealtimeCodec
from providers.events import (
    PCM16_16K,
    PCMU_8K,
    AgentEvent,
    AgentReady,
    AudioChunk,
    Dtmf,
    Error,
    GoAway,
    Hangup,
    Interrupt,
    KeepAlive,
    ResponseDone,
    ResumptionHandle,
    SpeechStarted,
    ToolCall,
    ToolCancelled,
    Transcript,
)
from providers.exceptions import ProtocolError
from tests.fuzz.profile import FUZZ, tally
from tests.fuzz.strategies import dumps, frames_from, leaf_swaps, mutated_json
from tests.providers.ai import test_deepgram_agent as deepgram_recorded
from tests.providers.ai import test_deepgram_tools as deepgram_tools
from tests.providers.ai import test_gemini_live as gemini_recorded
from tests.providers.ai import test_gemini_tools as gemini_tools
from tests.providers.ai import test_openai_realtime as openai_recorded
from tests.providers.ai import test_openai_tools as openai_tools

AgentCodec = OpenAIRealtimeCodec | DeepgramAgentCodec | GeminiLiveCodec

RECORDED: dict[str, list[str]] = {
    "openai": [
        dumps(frame)
        for frame in (
            openai_recorded.SESSION_CREATED,
            openai_recorded.SESSION_UPDATED,
            openai_recorded.AUDIO_DELTA,
            openai_recorded.SPEECH_STARTED,
            openai_recorded.RESPONSE_DONE,
            openai_recorded.AGENT_TRANSCRIPT,
            openai_recorded.USER_TRANSCRIPT,
            openai_recorded.ERROR,
            openai_tools.ARGUMENTS_DONE,
            openai_tools.OUTPUT_ITEM_DONE,
        )
    ],
    "deepgram": [
        *(dumps(frame) for frame, _ in deepgram_recorded.RECORDED),
        dumps(deepgram_tools.REQUEST),
        dumps(deepgram_tools.CANCELLED),
    ],
    "gemini": [
        *(dumps(frame) for frame in gemini_recorded.RECORDED),
        dumps(gemini_tools.TOOL_CALL),
        dumps(gemini_tools.CANCELLATION),
    ],
}


def make(provider: str) -> AgentCodec:
    match provider:
        case "openai":
            return OpenAIRealtimeCodec(model="gpt-realtime", voice="marin", instructions="Hi.")
        case "deepgram":
            return DeepgramAgentCodec(model="gpt-4o-mini", voice="aura-2", instructions="Hi.")
        case _:
            return GeminiLiveCodec(model="gemini-live", voice="Puck", instructions="Hi.")


def state(codec: AgentCodec) -> dict[str, Any]:
    return copy.deepcopy(vars(codec))


def check_event(codec: AgentCodec, event: AgentEvent) -> None:
    match event:
        case AudioChunk(payload=payload, format=fmt):
            assert fmt == codec.output_format
            assert base64.b64decode(payload, validate=True)
        case Error(code=code, message=message):
            assert isinstance(code, str) and code and isinstance(message, str)
        case Transcript(role=role, text=text):
            assert isinstance(role, str) and isinstance(text, str)
        case ResumptionHandle(handle=handle):
            assert isinstance(handle, str) and handle
        case GoAway(time_left_ms=left):
            assert left is None or (isinstance(left, int) and left >= 0)
        case ToolCall(call_id=call_id, name=name, arguments=arguments):
            # What the Bridge relies on: a bounded id, a declarable name, JSON text arguments.
            assert isinstance(call_id, str) and 0 < len(call_id) <= 128
            assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name)
            assert isinstance(arguments, str) and len(arguments.encode()) <= 16 * 1024
        case ToolCancelled(call_ids=ids):
            assert ids and all(isinstance(i, str) and 0 < len(i) <= 128 for i in ids)
        case AgentReady() | SpeechStarted() | ResponseDone() | Hangup():
            pass
        case _:
            raise AssertionError(f"not an agent event: {event!r}")


def frame_streams(provider: str) -> st.SearchStrategy[list[str | bytes]]:
    return st.lists(frames_from(RECORDED[provider]), max_size=6)


@FUZZ
@pytest.mark.parametrize("provider", ["openai", "deepgram", "gemini"])
@given(data=st.data())
def test_feed(provider, data):
    codec = make(provider)
    codec.start()
    for frame in data.draw(frame_streams(provider)):
        before = state(codec)
        try:
            events = codec.feed(frame)
        except ProtocolError:
            assert state(codec) == before, "a rejected frame changed the codec's state"
            # Only a frame the provider could not have sent is refused: never one of its
            # recorded frames, whatever came before it.
            assert frame not in RECORDED[provider], f"a recorded frame was refused: {frame!r}"
            tally("rejected")
            continue
        tally("accepted")
        for event in events:
            check_event(codec, event)


# Audio frames of each protocol whose payload (or sample rate) is the mutated part.
AUDIO_FRAMES = {
    "openai": lambda payload: {**openai_recorded.AUDIO_DELTA, "delta": payload},
    "gemini": lambda payload: {
        "serverContent": {
            "modelTurn": {
                "parts": [{"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": payload}}]
            }
        }
    },
}
payloads = st.one_of(
    st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
    st.text(alphabet="ABCab+/=", max_size=12),
    st.text(max_size=12),
)


@FUZZ
@pytest.mark.parametrize("provider", ["openai", "gemini"])
@given(payload=payloads)
def test_audio_payloads_are_strict_base64(provider, payload):
    codec = make(provider)
    try:
        strict: bytes | None = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):  # not base64, or not ASCII at all
        strict = None
    if strict is not None and base64.b64encode(strict).decode() != payload:
        strict = None  # not canonical (stray padding): refused too
    try:
        events = codec.feed(dumps(AUDIO_FRAMES[provider](payload)))
    except ProtocolError:
        # Refused exactly when the payload is not strict base64.
        assert strict is None, f"valid base64 refused: {payload!r}"
        tally("rejected")
        return
    assert strict is not None, f"not base64, yet accepted: {payload!r}"
    tally("accepted")
    for event in events:
        check_event(codec, event)
        if isinstance(event, AudioChunk):
            assert event.to_bytes() == strict  # the audio is what was sent, untouched


@FUZZ
@given(frame=st.sampled_from(gemini_recorded.RECORDED).flatmap(mutated_json), binary=st.booleans())
def test_gemini_binary_frames(frame, binary):
    """Gemini sends JSON in binary frames too; both spellings are parsed alike."""
    text = dumps(frame)
    outcomes: list[object] = []
    for wire in (text, text.encode()):
        codec = make("gemini")
        try:
            outcomes.append(codec.feed(wire))
        except ProtocolError:
            outcomes.append("rejected")
    assert outcomes[0] == outcomes[1]
    tally("rejected" if outcomes[0] == "rejected" else "accepted")


@st.composite
def combined_gemini_messages(draw: st.DrawFn) -> dict[str, Any]:
    """One Gemini server message carrying several parts at once (setupComplete with
    serverContent, a resumption update with goAway...), then mutated."""
    message: dict[str, Any] = {}
    for part in draw(st.lists(st.sampled_from(gemini_recorded.RECORDED), min_size=2, max_size=3)):
        message.update(copy.deepcopy(part))
    mutated: dict[str, Any] = draw(mutated_json(message))
    return mutated


@FUZZ
@given(message=combined_gemini_messages())
def test_gemini_combined_messages(message):
    codec = make("gemini")
    codec.start()
    before = state(codec)
    try:
        events = codec.feed(dumps(message))
    except ProtocolError:
        assert state(codec) == before, "a rejected frame changed the codec's state"
        tally("rejected")
        return
    tally("accepted")
    for event in events:
        check_event(codec, event)


# -- encode ----------------------------------------------------------------------------------

to_agent = st.one_of(
    st.builds(
        AudioChunk.from_bytes, st.binary(max_size=1000), st.sampled_from([PCMU_8K, PCM16_16K])
    ),
    st.builds(Dtmf, st.text(max_size=3)),
    st.builds(
        Interrupt,
        st.none() | st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
        st.integers(-(2**40), 2**40),
    ),
    st.just(KeepAlive()),
    st.builds(Hangup, st.text(max_size=10)),
)


@FUZZ
@pytest.mark.parametrize("provider", ["openai", "deepgram", "gemini"])
@given(event=to_agent)
def test_encode(provider, event):
    codec = make(provider)
    try:
        frames = codec.encode(event)
    except ValueError:
        assert isinstance(event, AudioChunk) and event.format != codec.input_format
        tally("rejected")
        return
    tally("accepted")
    for frame in frames:
        if isinstance(frame, bytes):
            assert isinstance(event, AudioChunk) and frame == event.to_bytes()
        else:
            assert isinstance(orjson.loads(frame), dict)


# -- echo ------------------------------------------------------------------------------------

echo_inputs = st.lists(
    st.tuples(
        st.floats(0, 2),  # seconds since the previous input
        st.one_of(
            st.builds(AudioChunk.from_bytes, st.binary(max_size=320), st.just(PCMU_8K)),
            st.builds(AudioChunk, st.text(max_size=20), st.just(PCMU_8K)),
            st.just(Interrupt()),
            st.builds(Dtmf, st.sampled_from("0123456789*#")),
            st.just(KeepAlive()),
        ),
    ),
    max_size=40,
)


@FUZZ
@given(inputs=echo_inputs)
def test_echo_agent(inputs):
    agent = EchoAgent(delay_ms=500)
    now = 0.0
    out: list[AgentEvent] = []
    sent: list[str] = []
    for delay, event in inputs:
        now += delay
        out.extend(agent.poll(now))
        if isinstance(event, Interrupt):
            sent.clear()  # what was queued may be dropped; only later audio is checked
            out.clear()
        elif isinstance(event, AudioChunk):
            sent.append(event.payload)
        out.extend(agent.receive(event, now))
    out.extend(agent.poll(now + 3600))
    assert agent.pending == 0 and agent.next_due() is None
    echoed = [e.payload for e in out if isinstance(e, AudioChunk)]
    assert echoed[-len(sent) :] == sent if sent else True
    assert sum(isinstance(e, SpeechStarted) for e in out) <= len(inputs)
    tally("accepted")


@pytest.mark.parametrize("provider", ["openai", "deepgram", "gemini"])
def test_every_field_with_every_awkward_value(provider):
    """Each field of each recorded frame, replaced by each awkward value, fed to a session
    that has just started."""
    for frame in RECORDED[provider]:
        for variant in leaf_swaps(orjson.loads(frame)):
            codec = make(provider)
            codec.start()
            before = state(codec)
            try:
                events = codec.feed(dumps(variant))
            except ProtocolError:
                assert state(codec) == before
                tally("rejected")
                continue
            tally("accepted")
            for event in events:
                check_event(codec, event)
