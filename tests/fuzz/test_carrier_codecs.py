"""Twilio and Telnyx media codecs under hostile frames.

Invariants, for any sequence of frames (recorded ones mutated, random JSON, text and bytes):

* ``feed`` raises nothing but ``ProtocolError``, and a rejected frame leaves the codec's state
  exactly as it was (the media path counts the frame and carries on);
* every event is well-formed: audio payloads are strict base64 within the size cap, digits
  are DTMF keys, identifiers are bounded strings;
* Telnyx's reorder buffer never holds more than its window, and no frame is released twice;
* ``encode`` of any outbound event gives JSON in the documented shape, or ``ProtocolError``.
"""

from __future__ import annotations

import base64
import binascii
import copy
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers.events import (
    DTMF_DIGITS,
    PCM16_16K,
    PCMA_8K,
    PCMU_8K,
    AudioChunk,
    CarrierEvent,
    Clear,
    Dtmf,
    Error,
    Mark,
    StreamConnected,
    StreamStarted,
    StreamStopped,
)
from providers.exceptions import ProtocolError
from providers.telephony import telnyx, twilio
from providers.telephony.fields import MAX_FIELD_CHARS
from providers.telephony.telnyx import TelnyxCodec
from providers.telephony.twilio import TwilioCodec
from tests.fuzz.profile import FUZZ, tally
from tests.fuzz.strategies import dumps, frames_from, leaf_swaps, mutated_json
from tests.providers.telephony.recorded import load_json, load_jsonl

TWILIO_CALL = load_jsonl("twilio_call.jsonl")
TELNYX_CALL = load_jsonl("telnyx_call.jsonl")
TELNYX_EXTRA = [
    orjson.dumps(load_json("telnyx_error.json")).decode(),
    orjson.dumps(load_json("telnyx_start_pcma.json")).decode(),
]

Codec = TwilioCodec | TelnyxCodec


def snapshot(codec: Codec) -> dict[str, Any]:
    return {name: copy.copy(getattr(codec, name)) for name in type(codec).__slots__}


def check_event(event: CarrierEvent, max_payload: int) -> None:
    match event:
        case AudioChunk(payload=payload):
            assert 0 < len(payload) <= max_payload
            assert base64.b64decode(payload, validate=True)
        case Dtmf(digit=digit):
            assert digit in DTMF_DIGITS
        case Mark(name=name):
            assert 0 < len(name) <= MAX_FIELD_CHARS
        case StreamStarted():
            assert 0 < len(event.stream_id) <= MAX_FIELD_CHARS
            assert 0 < len(event.call_id) <= MAX_FIELD_CHARS
            assert all(type(v) is str for v in event.custom_parameters.values())
            assert "token" not in event.custom_parameters or isinstance(event.auth_token, str)
        case Error(code=code):
            assert isinstance(code, str) and 0 < len(code) <= 32
        case StreamConnected() | StreamStopped():
            pass
        case _:
            raise AssertionError(f"not a carrier event: {event!r}")


def feed_all(codec: Codec, frames: list[str | bytes], max_payload: int) -> list[CarrierEvent]:
    """Feed every frame; check each outcome against the invariants; return the events."""
    events: list[CarrierEvent] = []
    for frame in frames:
        before = snapshot(codec)
        try:
            got = codec.feed(frame)
        except ProtocolError as exc:
            assert exc.reason and len(exc.reason) < 64  # short, fixed, never the payload
            assert snapshot(codec) == before, "a rejected frame changed the codec's state"
            tally("rejected")
            continue
        tally("accepted")
        for event in got:
            check_event(event, max_payload)
        events.extend(got)
    return events


def streams(recorded: list[str], extra: Sequence[str] = ()) -> st.SearchStrategy[list[str | bytes]]:
    """The recorded stream's opening (sometimes) followed by hostile frames."""
    hostile = st.lists(frames_from([*recorded, *extra]), max_size=8)
    opening = st.sampled_from([[], recorded[:1], recorded[:2], recorded[:4]])
    return st.tuples(opening, hostile).map(lambda parts: [*parts[0], *parts[1]])


@FUZZ
@given(frames=streams(TWILIO_CALL))
def test_twilio_feed(frames):
    feed_all(TwilioCodec(), frames, twilio.MAX_PAYLOAD_CHARS)


@FUZZ
@given(frames=streams(TELNYX_CALL, TELNYX_EXTRA), window=st.integers(0, 5))
def test_telnyx_feed(frames, window):
    codec = TelnyxCodec(reorder_window=window)
    feed_all(codec, frames, telnyx.MAX_PAYLOAD_CHARS)
    assert len(codec._held) <= window


# Media frames of the recorded Telnyx call with their chunk numbers shuffled, repeated, jumped.
TELNYX_MEDIA = [orjson.loads(f) for f in TELNYX_CALL if '"event": "media"' in f][:8]


@st.composite
def reordered_media(draw: st.DrawFn) -> list[str]:
    frames = []
    for _ in range(draw(st.integers(1, 25))):
        frame = copy.deepcopy(draw(st.sampled_from(TELNYX_MEDIA)))
        chunk = draw(st.integers(0, 700) | st.sampled_from([2**31, 10**15, 10**16]))
        frame["media"]["chunk"] = draw(st.sampled_from([str(chunk), chunk]))
        frames.append(orjson.dumps(frame).decode())
    return frames


@FUZZ
@given(media=reordered_media(), window=st.integers(0, 5), stop=st.booleans())
def test_telnyx_reorder_window(media, window, stop):
    codec = TelnyxCodec(reorder_window=window)
    frames = [*TELNYX_CALL[:2], *media]
    if stop:
        frames.append(TELNYX_CALL[-1])
    events = feed_all(codec, frames, telnyx.MAX_PAYLOAD_CHARS)
    assert len(codec._held) <= window
    released = sum(isinstance(e, AudioChunk) for e in events)
    stats = codec.reorder_stats
    accepted_media = released + len(codec._held) + stats.dropped
    assert accepted_media <= len(media)  # nothing released twice
    if stop:
        assert not codec._held and isinstance(events[-1], StreamStopped)


# -- encode ----------------------------------------------------------------------------------

names = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=300)
outbound = st.one_of(
    st.builds(
        AudioChunk.from_bytes,
        st.binary(max_size=2000),
        st.sampled_from([PCMU_8K, PCMA_8K, PCM16_16K]),
    ),
    st.builds(Mark, names),
    st.just(Clear()),
)


def started(codec: Codec) -> Codec:
    opening = TWILIO_CALL[:2] if isinstance(codec, TwilioCodec) else TELNYX_CALL[:2]
    for frame in opening:
        codec.feed(frame)
    return codec


@FUZZ
@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
@given(event=outbound, pcma=st.booleans())
def test_encode(carrier, event, pcma):
    if carrier == "twilio":
        codec: Codec = started(TwilioCodec())
    else:
        codec = started(TelnyxCodec(outbound_format=PCMA_8K if pcma else PCMU_8K))
    try:
        text = codec.encode(event)
    except ProtocolError:
        tally("rejected")
        assert isinstance(event, AudioChunk)
        return
    tally("accepted")
    message = orjson.loads(text)
    match event:
        case AudioChunk():
            assert message["event"] == "media"
            assert binascii.a2b_base64(message["media"]["payload"]) == event.to_bytes()
        case Mark(name=name):
            assert message["event"] == "mark" and message["mark"] == {"name": name}
        case Clear():
            assert message["event"] == "clear"
    if isinstance(codec, TwilioCodec):
        assert message["streamSid"] == codec.stream_sid


@FUZZ
@given(start=st.sampled_from([orjson.loads(TWILIO_CALL[1])]).flatmap(mutated_json))
def test_twilio_start_fields(start):
    """A mutated ``start`` either is refused or yields a stream the codec can answer on."""
    codec = TwilioCodec()
    events = feed_all(codec, [dumps(start)], twilio.MAX_PAYLOAD_CHARS)
    if any(isinstance(e, StreamStarted) for e in events):
        assert codec.stream_sid is not None
        orjson.loads(codec.encode(Clear()))


def first_of_each_event(recorded: list[str]) -> list[int]:
    seen: dict[str, int] = {}
    for index, frame in enumerate(recorded):
        seen.setdefault(orjson.loads(frame)["event"], index)
    return sorted(seen.values())


@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
def test_every_field_with_every_awkward_value(carrier):
    """Each field of each kind of recorded frame, replaced by each awkward value, fed in
    place of the original (after the frames that preceded it)."""
    recorded = TWILIO_CALL if carrier == "twilio" else [*TELNYX_CALL, *TELNYX_EXTRA]
    max_payload = twilio.MAX_PAYLOAD_CHARS if carrier == "twilio" else telnyx.MAX_PAYLOAD_CHARS
    for index in first_of_each_event(recorded):
        for variant in leaf_swaps(orjson.loads(recorded[index])):
            codec: Codec = TwilioCodec() if carrier == "twilio" else TelnyxCodec()
            for frame in recorded[:index]:
                codec.feed(frame)
            feed_all(codec, [dumps(variant)], max_payload)
