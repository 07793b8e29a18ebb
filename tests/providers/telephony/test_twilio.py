from __future__ import annotations

import base64
import json
from typing import Any

import orjson
import pytest

from providers.codec import CarrierCodec
from providers.events import (
    PCM16_16K,
    PCMA_8K,
    PCMU_8K,
    AudioChunk,
    Clear,
    Dtmf,
    Mark,
    StreamConnected,
    StreamStarted,
    StreamStopped,
)
from providers.exceptions import ProtocolError
from providers.telephony.twilio import MAX_FRAME_CHARS, TwilioCodec, TwilioState
from tests.providers.telephony.recorded import FRAME_BYTES, caller_ulaw, load_jsonl

STREAM_SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
CALL_SID = "CA3ae75ffe1c5d8847e478556c07d07103"
ACCOUNT_SID = "AC5ef8732a3c49700934481addd5ce1659"


def recorded() -> list[str]:
    return load_jsonl("twilio_call.jsonl")


def started() -> TwilioCodec:
    codec = TwilioCodec()
    frames = recorded()
    codec.feed(frames[0])
    codec.feed(frames[1])
    return codec


def frame(**message: Any) -> str:
    return json.dumps(message)


def media(payload: str = "//79/A==", *, sid: Any = STREAM_SID, **fields: Any) -> str:
    body = {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": payload} | fields
    return frame(event="media", sequenceNumber="2", media=body, streamSid=sid)


def reason(codec: TwilioCodec, data: str | bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        codec.feed(data)
    return info.value.reason


# -- the recorded call -------------------------------------------------------------------------


def test_is_a_carrier_codec() -> None:
    codec: CarrierCodec = TwilioCodec()
    assert codec.carrier == "twilio"


def test_recorded_call_decodes_to_the_expected_events() -> None:
    codec = TwilioCodec()
    events = [event for f in recorded() for event in codec.feed(f)]

    assert events[0] == StreamConnected()
    start = events[1]
    assert start == StreamStarted(
        stream_id=STREAM_SID,
        call_id=CALL_SID,
        format=PCMU_8K,
        account_id=ACCOUNT_SID,
        tracks=("inbound",),
        custom_parameters={"tenant": "acme"},
        auth_token="st_9f2c1e7a4b",
    )
    audio = events[2:-3]
    assert len(audio) == 50
    assert all(isinstance(a, AudioChunk) and a.format == PCMU_8K for a in audio)
    assert [a.timestamp_ms for a in audio if isinstance(a, AudioChunk)] == [
        20 * i + 5 for i in range(50)
    ]
    assert events[-3:] == [Dtmf("5"), Mark("agent-turn-1"), StreamStopped()]
    assert codec.state is TwilioState.STOPPED


def test_media_payload_is_passed_through_untouched() -> None:
    codec = started()
    frames = recorded()[2:52]
    chunks = [codec.feed(f)[0] for f in frames]
    for f, chunk in zip(frames, chunks, strict=True):
        assert isinstance(chunk, AudioChunk)
        # The very string from the wire, not a re-encoding of decoded bytes.
        assert chunk.payload == json.loads(f)["media"]["payload"]
        assert chunk.duration_ms == 20
    audio = b"".join(c.to_bytes() for c in chunks if isinstance(c, AudioChunk))
    assert audio == caller_ulaw()[: 50 * FRAME_BYTES]


def test_token_is_not_left_in_custom_parameters() -> None:
    codec = TwilioCodec()
    codec.feed(recorded()[0])
    (start,) = codec.feed(recorded()[1])
    assert isinstance(start, StreamStarted)
    assert "token" not in start.custom_parameters
    with pytest.raises(TypeError):
        start.custom_parameters["tenant"] = "other"  # type: ignore[index]


def test_start_without_custom_parameters_or_connected() -> None:
    message = json.loads(recorded()[1])
    del message["start"]["customParameters"]
    codec = TwilioCodec()
    (start,) = codec.feed(json.dumps(message))
    assert isinstance(start, StreamStarted)
    assert start.auth_token is None
    assert dict(start.custom_parameters) == {}
    assert codec.stream_sid == STREAM_SID


def test_outbound_track_media_is_ignored() -> None:
    codec = started()
    assert codec.feed(media(track="outbound")) == []


def test_media_without_timestamp_is_accepted() -> None:
    codec = started()
    message = json.loads(media())
    del message["media"]["timestamp"]
    (chunk,) = codec.feed(json.dumps(message))
    assert chunk == AudioChunk("//79/A==", PCMU_8K, None)


def test_numeric_timestamp_is_accepted() -> None:
    codec = started()
    (chunk,) = codec.feed(media(timestamp=40))
    assert isinstance(chunk, AudioChunk) and chunk.timestamp_ms == 40


def test_bytes_on_the_wire_can_be_fed_as_text_of_the_same_json() -> None:
    # Key order and whitespace do not matter; orjson output parses the same.
    codec = started()
    message = orjson.loads(recorded()[2])
    (chunk,) = codec.feed(orjson.dumps(message, option=orjson.OPT_SORT_KEYS).decode())
    assert isinstance(chunk, AudioChunk)


# -- encode ------------------------------------------------------------------------------------


def test_encode_media_mark_clear_round_trip() -> None:
    codec = started()
    payload = base64.b64encode(caller_ulaw()[:FRAME_BYTES]).decode()

    assert json.loads(codec.encode(AudioChunk(payload, PCMU_8K))) == {
        "event": "media",
        "streamSid": STREAM_SID,
        "media": {"payload": payload},
    }
    assert json.loads(codec.encode(Mark("agent-turn-1"))) == {
        "event": "mark",
        "streamSid": STREAM_SID,
        "mark": {"name": "agent-turn-1"},
    }
    assert json.loads(codec.encode(Clear())) == {"event": "clear", "streamSid": STREAM_SID}


def test_encoded_mark_comes_back_as_the_same_mark() -> None:
    codec = started()
    sent = json.loads(codec.encode(Mark("m-1")))
    echoed = frame(**(sent | {"sequenceNumber": "9"}))
    assert codec.feed(echoed) == [Mark("m-1")]


def test_encode_before_start_is_refused() -> None:
    codec = TwilioCodec()
    codec.feed(recorded()[0])
    with pytest.raises(ProtocolError, match="before start"):
        codec.encode(Clear())


@pytest.mark.parametrize("fmt", [PCMA_8K, PCM16_16K])
def test_encode_refuses_audio_twilio_cannot_play(fmt: Any) -> None:
    codec = started()
    with pytest.raises(ProtocolError):
        codec.encode(AudioChunk("AAAA", fmt))


# -- hostile and malformed input ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"event":"connected","protocol":"Call","version":"1.0.0"}', "binary frame"),
        ("not json", "invalid json"),
        ("", "invalid json"),
        ('{"event": "media"', "invalid json"),
        ("[1, 2]", "not an object"),
        ('"media"', "not an object"),
        ("{}", "unknown event"),
        ('{"event": "hello"}', "unknown event"),
        ('{"event": 7}', "unknown event"),
        ('{"event": null}', "unknown event"),
        ("\ud800", "invalid json"),
    ],
)
def test_unparsable_frames(data: str | bytes, expected: str) -> None:
    assert reason(TwilioCodec(), data) == expected


def test_deeply_nested_json_is_rejected() -> None:
    deep = '{"event": "media", "x": ' + "[" * 5000 + "]" * 5000 + "}"
    assert len(deep) < MAX_FRAME_CHARS
    assert reason(started(), deep) == "invalid json"


def test_huge_frame_is_rejected_before_parsing() -> None:
    huge = media("A" * MAX_FRAME_CHARS)
    assert reason(started(), huge) == "frame too large"


def test_frames_before_start() -> None:
    codec = TwilioCodec()
    codec.feed(recorded()[0])
    for f in recorded()[2:]:
        assert reason(codec, f) == "frame before start"
    assert codec.state is TwilioState.AWAITING_START


def test_second_start_and_late_connected_are_rejected() -> None:
    codec = started()
    assert reason(codec, recorded()[1]) == "unexpected start"
    assert reason(codec, recorded()[0]) == "unexpected connected"
    assert codec.stream_sid == STREAM_SID


def test_frames_after_stop_are_rejected() -> None:
    codec = TwilioCodec()
    for f in recorded():
        codec.feed(f)
    assert reason(codec, media()) == "frame after stop"


def test_missing_and_mismatched_stream_sid() -> None:
    codec = started()
    assert reason(codec, media(sid=None)) == "missing streamSid"
    assert reason(codec, media(sid="MZ00000000000000000000000000000000")) == "streamSid mismatch"
    assert reason(codec, media(sid=7)) == "streamSid mismatch"
    mark = frame(event="mark", streamSid="MZother", mark={"name": "x"})
    assert reason(codec, mark) == "streamSid mismatch"
    stop = frame(event="stop", stop={"accountSid": ACCOUNT_SID, "callSid": CALL_SID})
    assert reason(codec, stop) == "missing streamSid"
    assert codec.state is TwilioState.STREAMING


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"payload": None}, "missing payload"),
        ({"payload": 12}, "missing payload"),
        ({"payload": ""}, "bad payload"),
        ({"payload": "not base64!"}, "bad payload"),
        ({"payload": "AAA"}, "bad payload"),
        ({"payload": "AA=A"}, "bad payload"),
        ({"payload": "A" * 20000}, "bad payload"),
        ({"track": "both"}, "bad media track"),
        ({"track": None}, "bad media track"),
        ({"timestamp": "-5"}, "bad timestamp"),
        ({"timestamp": "5.5"}, "bad timestamp"),
        ({"timestamp": "١٢"}, "bad timestamp"),
        ({"timestamp": ["5"]}, "bad timestamp"),
        ({"timestamp": True}, "bad timestamp"),
        ({"timestamp": "9" * 40}, "bad timestamp"),
    ],
)
def test_malformed_media(fields: dict[str, Any], expected: str) -> None:
    assert reason(started(), media(**fields)) == expected


def test_media_body_of_the_wrong_type() -> None:
    codec = started()
    assert reason(codec, frame(event="media", streamSid=STREAM_SID, media="AAAA")) == (
        "missing media"
    )
    assert reason(codec, frame(event="media", streamSid=STREAM_SID)) == "missing media"


def test_codec_stays_usable_after_rejected_frames() -> None:
    codec = started()
    for bad in (b"\x00\x01", "nope", media(sid="MZx"), media(payload="!!!!")):
        with pytest.raises(ProtocolError):
            codec.feed(bad)
    assert codec.feed(recorded()[2])[0] == AudioChunk(
        json.loads(recorded()[2])["media"]["payload"], PCMU_8K, 5
    )


def start_with(**changes: Any) -> str:
    message = json.loads(recorded()[1])
    for path, value in changes.items():
        node = message
        *parents, leaf = path.split("__")
        for key in parents:
            node = node[key]
        if value is KeyError:
            del node[leaf]
        else:
            node[leaf] = value
    return json.dumps(message)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"start__mediaFormat__encoding": "audio/x-alaw"}, "unsupported media format"),
        ({"start__mediaFormat__encoding": "audio/l16"}, "unsupported media format"),
        ({"start__mediaFormat__sampleRate": 16000}, "unsupported media format"),
        ({"start__mediaFormat__sampleRate": "8000"}, "unsupported media format"),
        ({"start__mediaFormat__channels": 2}, "unsupported media format"),
        ({"start__mediaFormat__channels": True}, "unsupported media format"),
        ({"start__mediaFormat": KeyError}, "missing mediaFormat"),
        ({"start__streamSid": KeyError}, "missing streamSid"),
        ({"start__streamSid": 5}, "bad streamSid"),
        ({"start__callSid": KeyError}, "missing callSid"),
        ({"start__callSid": ""}, "bad callSid"),
        ({"start__accountSid": ["AC"]}, "bad accountSid"),
        ({"start__tracks": "inbound"}, "bad tracks"),
        ({"start__tracks": [1]}, "bad tracks"),
        ({"start__customParameters": ["token"]}, "bad customParameters"),
        ({"start__customParameters": {"n": 1}}, "bad customParameters"),
        ({"start": KeyError}, "missing start"),
        ({"start": "yes"}, "missing start"),
        ({"streamSid": "MZ00000000000000000000000000000000"}, "streamSid mismatch"),
    ],
)
def test_malformed_start(changes: dict[str, Any], expected: str) -> None:
    codec = TwilioCodec()
    assert reason(codec, start_with(**changes)) == expected
    assert codec.state is TwilioState.AWAITING_START
    assert codec.stream_sid is None


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"event": "dtmf", "dtmf": {"digit": "x"}}, "bad dtmf digit"),
        ({"event": "dtmf", "dtmf": {"digit": "12"}}, "bad dtmf digit"),
        ({"event": "dtmf", "dtmf": {}}, "missing digit"),
        ({"event": "dtmf"}, "missing dtmf"),
        ({"event": "mark", "mark": {"name": 3}}, "bad name"),
        ({"event": "mark", "mark": {"name": "x" * 1000}}, "bad name"),
        ({"event": "mark", "mark": None}, "missing mark"),
    ],
)
def test_malformed_dtmf_and_mark(message: dict[str, Any], expected: str) -> None:
    assert reason(started(), json.dumps(message | {"streamSid": STREAM_SID})) == expected


def test_reasons_never_echo_payload_text() -> None:
    codec = started()
    secret = "SECRETSECRET"
    for bad in (
        media(payload=secret + "!"),
        media(track=secret),
        media(timestamp=secret),
        frame(event=secret),
        media(sid=secret),
    ):
        assert secret not in reason(codec, bad)
