from __future__ import annotations

import base64
import json
import random
from typing import Any

import pytest

from providers.codec import CarrierCodec
from providers.events import (
    PCM16_8K,
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
from providers.telephony.telnyx import (
    MAX_CHUNK_JUMP,
    MAX_FRAME_CHARS,
    ReorderStats,
    TelnyxCodec,
    TelnyxState,
    UnsupportedMediaFormat,
)
from tests.providers.telephony.recorded import FRAME_BYTES, caller_ulaw, load_json, load_jsonl

STREAM_ID = "32de0dea-53cb-4b21-89a4-9e1819c043bc"
CALL_CONTROL_ID = "v3:MdI91X4lWFEs7IgbBEOT9M4AigoY08M0WWZFISt1Yw2axZ_IiE4pqg"
USER_ID = "3e6f995f-85f7-4705-9741-53b116d28237"
TOKEN = "tx_6b1d0c9e58a2"


def recorded() -> list[str]:
    return load_jsonl("telnyx_call.jsonl")


def media_frames() -> list[str]:
    return [f for f in recorded() if json.loads(f)["event"] == "media"]


def started(**options: Any) -> TelnyxCodec:
    codec = TelnyxCodec(**options)
    codec.feed(recorded()[0])
    codec.feed(recorded()[1])
    return codec


def media(n: int = 1, payload: str = "1dXV1Q==", **fields: Any) -> str:
    body = {"track": "inbound", "chunk": str(n), "timestamp": str(20 * n)} | fields
    body.setdefault("payload", payload)
    return json.dumps(
        {"event": "media", "sequence_number": str(n + 1), "media": body, "stream_id": STREAM_ID}
    )


def chunks(events: list[CarrierEvent]) -> list[int | None]:
    """The timestamps of the audio events, /20: the chunk numbers of ``media()`` frames."""
    return [e.timestamp_ms // 20 for e in events if isinstance(e, AudioChunk) and e.timestamp_ms]


def reason(codec: TelnyxCodec, data: str | bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        codec.feed(data)
    return info.value.reason


# -- the recorded call -------------------------------------------------------------------------


def test_is_a_carrier_codec() -> None:
    codec: CarrierCodec = TelnyxCodec()
    assert codec.carrier == "telnyx"


def test_recorded_call_decodes_to_the_expected_events() -> None:
    codec = TelnyxCodec()
    events = [event for f in recorded() for event in codec.feed(f)]

    assert events[0] == StreamConnected(auth_token=TOKEN)
    assert events[1] == StreamStarted(
        stream_id=STREAM_ID,
        call_id=CALL_CONTROL_ID,
        format=PCMU_8K,
        account_id=USER_ID,
        from_number="+13122010094",
        to_number="+13122123456",
        custom_parameters={"customer_id": "customer_123"},
        auth_token=TOKEN,
    )
    audio = [e for e in events[2:-3] if isinstance(e, AudioChunk)]
    assert len(audio) == len(events[2:-3]) == 50
    assert b"".join(a.to_bytes() for a in audio) == caller_ulaw()[: 50 * FRAME_BYTES]
    assert all(a.format == PCMU_8K and a.duration_ms == 20 for a in audio)
    assert events[-3:] == [Dtmf("7"), Mark("agent-turn-1"), StreamStopped()]
    assert codec.state is TelnyxState.STOPPED
    assert codec.reorder_stats == ReorderStats()


def test_connected_without_token() -> None:
    codec = TelnyxCodec()
    assert codec.feed('{"event": "connected", "version": "1.0.0"}') == [StreamConnected()]
    (start,) = codec.feed(recorded()[1])
    assert isinstance(start, StreamStarted) and start.auth_token is None


def test_payload_is_passed_through_untouched() -> None:
    codec = started()
    for f in media_frames():
        (chunk,) = codec.feed(f)
        assert isinstance(chunk, AudioChunk)
        assert chunk.payload == json.loads(f)["media"]["payload"]


def test_pcma_stream_is_decoded_as_pcma() -> None:
    codec = TelnyxCodec()
    (start,) = codec.feed(json.dumps(load_json("telnyx_start_pcma.json")))
    assert isinstance(start, StreamStarted) and start.format == PCMA_8K
    alaw_silence = base64.b64encode(b"\xd5" * FRAME_BYTES).decode()
    (chunk,) = codec.feed(media(1, alaw_silence))
    assert chunk == AudioChunk(alaw_silence, PCMA_8K, 20)
    assert codec.format == PCMA_8K


@pytest.mark.parametrize("track", ["outbound", "outbound_track"])
def test_outbound_track_is_ignored(track: str) -> None:
    codec = started()
    assert codec.feed(media(1, track=track)) == []
    assert chunks(codec.feed(media(1))) == [1]


def test_inbound_track_suffix_form_is_accepted() -> None:
    assert chunks(started().feed(media(1, track="inbound_track"))) == [1]


def test_stream_id_may_be_absent_but_not_different() -> None:
    codec = started()
    message = json.loads(media(1))
    del message["stream_id"]
    assert chunks(codec.feed(json.dumps(message))) == [1]
    message["stream_id"] = "another"
    assert reason(codec, json.dumps(message)) == "stream_id mismatch"


# -- reordering --------------------------------------------------------------------------------


def test_in_order_frames_are_released_at_once() -> None:
    codec = started()
    for n in range(1, 20):
        assert chunks(codec.feed(media(n))) == [n]
    assert codec.reorder_stats == ReorderStats()


def test_swapped_frames_are_released_in_order() -> None:
    codec = started()
    assert chunks(codec.feed(media(1))) == [1]
    assert codec.feed(media(3)) == []
    assert chunks(codec.feed(media(2))) == [2, 3]
    assert chunks(codec.feed(media(4))) == [4]
    assert codec.reorder_stats == ReorderStats(reordered=1)


def test_recorded_frames_shuffled_within_the_window_come_out_in_order() -> None:
    frames = media_frames()
    rng = random.Random(7)
    # Shuffle inside blocks of 3 (the first frame stays first: it sets the base).
    shuffled = frames[:1]
    rest = frames[1:]
    for i in range(0, len(rest), 3):
        block = rest[i : i + 3]
        rng.shuffle(block)
        shuffled += block
    codec = started()
    out = [e for f in shuffled for e in codec.feed(f)]
    out += codec.feed(recorded()[-1])  # stop flushes
    audio = [e for e in out if isinstance(e, AudioChunk)]
    assert [a.payload for a in audio] == [json.loads(f)["media"]["payload"] for f in frames]
    assert codec.reorder_stats.gaps == 0
    assert codec.reorder_stats.dropped == 0


def test_duplicates_are_dropped() -> None:
    codec = started()
    assert chunks(codec.feed(media(1))) == [1]
    assert codec.feed(media(1)) == []
    assert codec.feed(media(3)) == []
    assert codec.feed(media(3)) == []  # duplicate of a held frame
    assert chunks(codec.feed(media(2))) == [2, 3]
    assert codec.feed(media(2)) == []
    assert codec.reorder_stats == ReorderStats(reordered=1, dropped=3)


def test_buffer_is_bounded_and_gaps_are_skipped() -> None:
    codec = started(reorder_window=3)
    assert chunks(codec.feed(media(1))) == [1]
    # Chunk 2 is lost: 3, 4, 5 are held, the fourth frame ahead releases everything.
    for n in (3, 4, 5):
        assert codec.feed(media(n)) == []
    assert chunks(codec.feed(media(6))) == [3, 4, 5, 6]
    assert codec.reorder_stats == ReorderStats(reordered=3, gaps=1)
    # The lost frame turning up late is dropped, not played out of order.
    assert codec.feed(media(2)) == []
    assert codec.reorder_stats.dropped == 1
    assert chunks(codec.feed(media(7))) == [7]


def test_never_holds_more_than_the_window() -> None:
    codec = started(reorder_window=3)
    codec.feed(media(1))
    held_max = 0
    released: list[int | None] = []
    # Every other frame lost: the codec must keep releasing, holding at most 3.
    for n in range(3, 200, 2):
        released += chunks(codec.feed(media(n)))
        held_max = max(held_max, (n - 1) // 2 - len(released))
    assert held_max <= 3
    assert released == list(range(3, 200, 2))[: len(released)]
    assert len(released) >= len(range(3, 200, 2)) - 3


def test_window_zero_never_holds() -> None:
    codec = started(reorder_window=0)
    codec.feed(media(1))
    assert chunks(codec.feed(media(3))) == [3]
    assert codec.feed(media(2)) == []
    assert codec.reorder_stats == ReorderStats(gaps=1, dropped=1)


def test_flush_releases_held_frames_in_order() -> None:
    codec = started()
    codec.feed(media(1))
    codec.feed(media(4))
    codec.feed(media(3))
    assert chunks(codec.flush()) == [3, 4]
    assert codec.reorder_stats.gaps == 1
    assert codec.flush() == []
    assert chunks(codec.feed(media(5))) == [5]


def test_stop_flushes_before_stopping() -> None:
    codec = started()
    codec.feed(media(1))
    codec.feed(media(3))
    events = codec.feed(recorded()[-1])
    assert chunks(events) == [3]
    assert events[-1] == StreamStopped()


def test_far_jump_is_rejected_not_buffered() -> None:
    codec = started()
    codec.feed(media(1))
    assert reason(codec, media(3 + MAX_CHUNK_JUMP)) == "chunk out of range"
    assert chunks(codec.feed(media(2))) == [2]


def test_first_frame_sets_the_base() -> None:
    codec = started()
    assert chunks(codec.feed(media(40))) == [40]
    assert chunks(codec.feed(media(41))) == [41]


def test_bad_window_is_refused() -> None:
    with pytest.raises(ValueError):
        TelnyxCodec(reorder_window=-1)
    with pytest.raises(ValueError):
        TelnyxCodec(outbound_format=PCM16_8K)


# -- errors ------------------------------------------------------------------------------------


def test_error_frame_is_fatal_by_default_and_flushes() -> None:
    codec = started()
    codec.feed(media(1))
    codec.feed(media(3))
    events = codec.feed(json.dumps(load_json("telnyx_error.json")))
    assert chunks(events) == [3]
    assert events[-1] == Error(
        code="100002", message="Unknown error: An unknown error occurred.", fatal=True
    )


@pytest.mark.parametrize("code", [100003, "100004", 100005])
def test_error_about_a_frame_we_sent_is_not_fatal(code: int | str) -> None:
    codec = started()
    message = load_json("telnyx_error.json")
    message["payload"] = {"code": code, "title": "Malformed frame"}
    assert codec.feed(json.dumps(message)) == [
        Error(code=str(code), message="Malformed frame", fatal=False)
    ]
    assert codec.state is TelnyxState.STREAMING


def test_error_before_start_is_surfaced() -> None:
    codec = TelnyxCodec()
    message = load_json("telnyx_error.json")
    del message["stream_id"]
    (error,) = codec.feed(json.dumps(message))
    assert isinstance(error, Error) and error.fatal


@pytest.mark.parametrize(
    "payload", [None, "boom", {"title": "x"}, {"code": None}, {"code": 1.5}, {"code": "x" * 40}]
)
def test_malformed_error_frame(payload: Any) -> None:
    message = load_json("telnyx_error.json") | {"payload": payload}
    with pytest.raises(ProtocolError):
        started().feed(json.dumps(message))


# -- encode ------------------------------------------------------------------------------------


def test_encode_media_mark_clear() -> None:
    codec = started()
    payload = base64.b64encode(caller_ulaw()[:FRAME_BYTES]).decode()
    assert json.loads(codec.encode(AudioChunk(payload, PCMU_8K))) == {
        "event": "media",
        "media": {"payload": payload},
    }
    assert json.loads(codec.encode(Mark("agent-turn-1"))) == {
        "event": "mark",
        "mark": {"name": "agent-turn-1"},
    }
    assert json.loads(codec.encode(Clear())) == {"event": "clear"}


def test_encoded_mark_comes_back_as_the_same_mark() -> None:
    codec = started()
    sent = json.loads(codec.encode(Mark("m-1")))
    echoed = sent | {"sequence_number": "60", "stream_id": STREAM_ID}
    assert codec.feed(json.dumps(echoed)) == [Mark("m-1")]


def test_encode_works_before_start() -> None:
    # Telnyx frames name no stream: nothing to learn first.
    assert json.loads(TelnyxCodec().encode(Clear())) == {"event": "clear"}


def test_encode_enforces_format_and_frame_length() -> None:
    codec = started()
    ten_ms = base64.b64encode(b"\xff" * 80).decode()
    twenty_ms = base64.b64encode(b"\xff" * 160).decode()
    with pytest.raises(ProtocolError):
        codec.encode(AudioChunk(ten_ms, PCMU_8K))
    with pytest.raises(ProtocolError):
        codec.encode(AudioChunk(twenty_ms, PCMA_8K))
    with pytest.raises(ProtocolError):
        codec.encode(AudioChunk("", PCMU_8K))
    pcma = TelnyxCodec(outbound_format=PCMA_8K)
    assert json.loads(pcma.encode(AudioChunk(twenty_ms, PCMA_8K)))["media"] == {
        "payload": twenty_ms
    }


# -- hostile and malformed input ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x80\x00\x00\x01", "binary frame"),
        ("{not json", "invalid json"),
        ("null", "not an object"),
        ('{"event": "ping"}', "unknown event"),
        ('{"event": ["media"]}', "unknown event"),
        ('{"event": "connected", "sequence_number": -1}', "bad sequence_number"),
        ('{"event": "connected", "sequence_number": "x"}', "bad sequence_number"),
        ('{"event": "connected", "connected": "token"}', "bad connected"),
        (
            '{"event": "connected", "connected": {"x-telnyx-streaming-auth-token": 5}}',
            "bad auth token",
        ),
    ],
)
def test_unparsable_frames(data: str | bytes, expected: str) -> None:
    assert reason(TelnyxCodec(), data) == expected


def test_huge_and_deep_frames() -> None:
    codec = started()
    assert reason(codec, media(1, "A" * MAX_FRAME_CHARS)) == "frame too large"
    assert reason(codec, '{"a":' * 3000 + "1" + "}" * 3000) == "invalid json"
    assert chunks(codec.feed(media(1))) == [1]


def test_media_before_start_and_second_start() -> None:
    codec = TelnyxCodec()
    codec.feed(recorded()[0])
    assert reason(codec, media(1)) == "frame before start"
    assert reason(codec, recorded()[-2]) == "frame before start"  # mark
    codec.feed(recorded()[1])
    assert reason(codec, recorded()[1]) == "unexpected start"
    assert reason(codec, recorded()[0]) == "unexpected connected"
    assert codec.stream_id == STREAM_ID


def test_frames_after_stop() -> None:
    codec = TelnyxCodec()
    for f in recorded():
        codec.feed(f)
    assert reason(codec, media(99)) == "frame after stop"
    assert reason(codec, json.dumps(load_json("telnyx_error.json"))) == "frame after stop"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"payload": 5}, "missing payload"),
        ({"payload": "%%%%"}, "bad payload"),
        ({"payload": "A" * 20000}, "bad payload"),
        ({"chunk": None}, "missing chunk"),
        ({"chunk": "one"}, "bad chunk"),
        ({"chunk": -3}, "bad chunk"),
        ({"timestamp": {}}, "bad timestamp"),
        ({"track": "sideways"}, "bad media track"),
    ],
)
def test_malformed_media(fields: dict[str, Any], expected: str) -> None:
    codec = started()
    assert reason(codec, media(1, **fields)) == expected
    assert codec.reorder_stats == ReorderStats()


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
        ({"start__media_format__encoding": "G722"}, "unsupported media format"),
        ({"start__media_format__encoding": "L16"}, "unsupported media format"),
        ({"start__media_format__encoding": "pcmu"}, "unsupported media format"),
        ({"start__media_format__encoding": None}, "unsupported media format"),
        ({"start__media_format__sample_rate": 16000}, "unsupported media format"),
        ({"start__media_format__sample_rate": "8000"}, "unsupported media format"),
        ({"start__media_format__channels": 2}, "unsupported media format"),
        ({"start__media_format": KeyError}, "missing media_format"),
        ({"stream_id": KeyError}, "missing stream_id"),
        ({"stream_id": 42}, "bad stream_id"),
        ({"start__call_control_id": KeyError}, "missing call_control_id"),
        ({"start__from": 13122010094}, "bad from"),
        ({"start__custom_parameters": {"a": {"b": "c"}}}, "bad custom_parameters"),
        ({"start": KeyError}, "missing start"),
    ],
)
def test_malformed_start(changes: dict[str, Any], expected: str) -> None:
    codec = TelnyxCodec()
    assert reason(codec, start_with(**changes)) == expected
    assert codec.state is TelnyxState.AWAITING_START
    assert codec.format is None


@pytest.mark.parametrize(
    ("media_format", "label"),
    [
        ({"encoding": "G722", "sample_rate": 16000, "channels": 1}, "G722/16000/1"),
        ({"encoding": "OPUS", "sample_rate": 48000, "channels": 1}, "OPUS/48000/1"),
        ({"encoding": "L16", "sample_rate": 16000, "channels": 1}, "L16/16000/1"),
        ({"encoding": "AMR-WB", "sample_rate": 16000}, "AMR-WB/16000/1"),
        ({"encoding": "PCMU", "sample_rate": 16000, "channels": 1}, "PCMU/16000/1"),
        ({"encoding": "PCMA", "sample_rate": 8000, "channels": 2}, "PCMA/8000/2"),
        ({"encoding": "<script>" * 9, "sample_rate": 10**40, "channels": -1}, "?/?/?"),
    ],
)
def test_a_start_the_gateway_cannot_carry_names_its_call(
    media_format: dict[str, Any], label: str
) -> None:
    """The error carries the call_control_id, so the media endpoint can end the call instead
    of leaving the caller on a silent line; the codec label holds no raw peer text."""
    codec = TelnyxCodec()
    with pytest.raises(UnsupportedMediaFormat) as info:
        codec.feed(start_with(start__media_format=media_format))
    assert (info.value.call_id, info.value.stream_id) == (CALL_CONTROL_ID, STREAM_ID)
    assert info.value.codec == label
    assert info.value.reason == "unsupported media format"
    assert codec.state is TelnyxState.AWAITING_START


def test_audio_goes_out_in_the_codec_start_announced() -> None:
    """An A-law ``start`` makes the codec send A-law (what the Bridge converts agent audio to),
    and refuse mu-law; a mu-law ``start`` the reverse."""
    twenty_ms_alaw = base64.b64encode(b"\xd5" * 160).decode()
    twenty_ms_ulaw = base64.b64encode(b"\xff" * 160).decode()
    pcma = TelnyxCodec()
    pcma.feed(json.dumps(load_json("telnyx_start_pcma.json")))
    assert pcma.outbound_format == PCMA_8K
    sent = json.loads(pcma.encode(AudioChunk(twenty_ms_alaw, PCMA_8K)))
    assert sent == {"event": "media", "media": {"payload": twenty_ms_alaw}}
    with pytest.raises(ProtocolError):
        pcma.encode(AudioChunk(twenty_ms_ulaw, PCMU_8K))

    pcmu = started()
    assert pcmu.outbound_format == PCMU_8K
    assert json.loads(pcmu.encode(AudioChunk(twenty_ms_ulaw, PCMU_8K)))["event"] == "media"
    with pytest.raises(ProtocolError):
        pcmu.encode(AudioChunk(twenty_ms_alaw, PCMA_8K))


def test_audio_before_start_is_refused() -> None:
    codec = TelnyxCodec()
    assert codec.outbound_format is None
    with pytest.raises(ProtocolError):
        codec.encode(AudioChunk(base64.b64encode(b"\xff" * 160).decode(), PCMU_8K))


def test_format_is_taken_from_start_not_assumed() -> None:
    # Same media frame, two streams: the announced codec decides the event format.
    pcmu, pcma = TelnyxCodec(), TelnyxCodec()
    pcmu.feed(recorded()[1])
    pcma.feed(json.dumps(load_json("telnyx_start_pcma.json")))
    frame = media_frames()[0]
    (a,) = pcmu.feed(frame)
    (b,) = pcma.feed(frame)
    assert isinstance(a, AudioChunk) and isinstance(b, AudioChunk)
    assert (a.format, b.format) == (PCMU_8K, PCMA_8K)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"event": "dtmf", "dtmf": {"digit": "E"}}, "bad dtmf digit"),
        ({"event": "dtmf", "dtmf": []}, "missing dtmf"),
        ({"event": "mark", "mark": {}}, "missing name"),
        ({"event": "mark", "mark": {"name": ""}}, "bad name"),
    ],
)
def test_malformed_dtmf_and_mark(message: dict[str, Any], expected: str) -> None:
    assert reason(started(), json.dumps(message | {"stream_id": STREAM_ID})) == expected


def test_numbers_may_arrive_as_json_numbers() -> None:
    codec = started()
    message = json.loads(media(1))
    message["media"]["chunk"] = 1
    message["sequence_number"] = 2
    (chunk,) = codec.feed(json.dumps(message))
    assert isinstance(chunk, AudioChunk) and chunk.timestamp_ms == 20


def test_start_without_optional_fields() -> None:
    codec = TelnyxCodec()
    (start,) = codec.feed(
        start_with(
            start__custom_parameters=KeyError,
            start__from=KeyError,
            start__to=KeyError,
            start__user_id=KeyError,
            start__media_format__channels=KeyError,
        )
    )
    assert start == StreamStarted(stream_id=STREAM_ID, call_id=CALL_CONTROL_ID, format=PCMU_8K)


def test_more_malformed_frames() -> None:
    codec = started()
    no_media = json.dumps({"event": "media", "stream_id": STREAM_ID})
    assert reason(codec, no_media) == "missing media"
    error = load_json("telnyx_error.json") | {"stream_id": "another"}
    assert reason(codec, json.dumps(error)) == "stream_id mismatch"
    assert reason(TelnyxCodec(), start_with(start__custom_parameters="a=b")) == (
        "bad custom_parameters"
    )
