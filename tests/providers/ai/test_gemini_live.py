"""Gemini Live codec: recorded frames in, frames out checked against google-genai's types."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from google.genai import types

from providers.ai.config import AgentConfig, AgentOptions
from providers.ai.gemini_live import GeminiLiveCodec, endpoint
from providers.events import (
    PCM16_16K,
    PCM16_24K,
    PCMU_8K,
    AgentReady,
    AudioChunk,
    Dtmf,
    GoAway,
    Hangup,
    Interrupt,
    KeepAlive,
    ResponseDone,
    ResumptionHandle,
    SpeechStarted,
    Transcript,
)
from providers.exceptions import ProtocolError

PCM = base64.b64encode(b"\x01\x00\xff\x7f" * 8).decode()
SETUP_COMPLETE: dict[str, Any] = {"setupComplete": {}}
MODEL_AUDIO = {
    "serverContent": {
        "modelTurn": {"parts": [{"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": PCM}}]}
    }
}
INTERRUPTED = {"serverContent": {"interrupted": True}}
TURN_COMPLETE = {"serverContent": {"turnComplete": True}, "usageMetadata": {"totalTokenCount": 9}}
INPUT_TEXT = {"serverContent": {"inputTranscription": {"text": "my order number"}}}
OUTPUT_TEXT = {"serverContent": {"outputTranscription": {"text": "Sure."}}}
GO_AWAY = {"goAway": {"timeLeft": "9.5s"}}
RESUMPTION = {"sessionResumptionUpdate": {"newHandle": "Cg0KC2hhbmRsZS0x", "resumable": True}}
NOT_RESUMABLE = {"sessionResumptionUpdate": {"resumable": False}}
RECORDED = [
    SETUP_COMPLETE,
    MODEL_AUDIO,
    INTERRUPTED,
    TURN_COMPLETE,
    INPUT_TEXT,
    OUTPUT_TEXT,
    GO_AWAY,
    RESUMPTION,
    NOT_RESUMABLE,
]


def codec(**kw: Any) -> GeminiLiveCodec:
    return GeminiLiveCodec(
        model="gemini-2.5-flash-native-audio-preview-12-2025",
        voice="Puck",
        instructions="Be brief.",
        **kw,
    )


def wire(frame: str | bytes) -> dict[str, Any]:
    """Validate a client frame with google-genai (extra fields forbidden) and check that it
    uses the camelCase wire names (a snake_case key would not survive the round trip)."""
    msg: dict[str, Any] = json.loads(frame)
    parsed = types.LiveClientMessage.model_validate(msg)
    dumped = json.loads(parsed.model_dump_json(by_alias=True, exclude_none=True))
    assert shape(dumped) == shape(msg)
    return msg


def shape(value: Any) -> Any:
    """The keys of nested objects, leaves blanked (the SDK re-encodes bytes url-safe)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return None


def test_setup() -> None:
    c = codec()
    (frame,) = c.start()
    setup = wire(frame)["setup"]
    assert setup["model"] == "models/gemini-2.5-flash-native-audio-preview-12-2025"
    assert setup["generationConfig"] == {
        "responseModalities": ["AUDIO"],
        "speechConfig": {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "Puck"}}},
    }
    assert setup["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert setup["sessionResumption"] == {}
    assert setup["contextWindowCompression"] == {"slidingWindow": {}}
    assert setup["inputAudioTranscription"] == {} == setup["outputAudioTranscription"]


@pytest.mark.parametrize("transcripts", [True, False])
def test_transcription_is_requested_only_for_transcripts(transcripts: bool) -> None:
    options = AgentOptions(transcripts=transcripts)
    config = AgentConfig.for_provider("gemini", api_key="k", options=options)
    setup = wire(GeminiLiveCodec.from_config(config).start()[0])["setup"]
    assert ("inputAudioTranscription" in setup) is transcripts
    assert ("outputAudioTranscription" in setup) is transcripts


def test_model_prefix_is_not_doubled() -> None:
    c = GeminiLiveCodec(model="models/x", voice="v", instructions="i")
    assert wire(c.start()[0])["setup"]["model"] == "models/x"


def test_setup_with_resumption_handle() -> None:
    assert wire(codec().start(resume_handle="h-1")[0])["setup"]["sessionResumption"] == {
        "handle": "h-1"
    }
    assert wire(codec(resume_handle="h-2").start()[0])["setup"]["sessionResumption"] == {
        "handle": "h-2"
    }


def test_latest_handle_is_used_on_restart() -> None:
    c = codec()
    c.start()
    assert c.feed(json.dumps(RESUMPTION)) == [ResumptionHandle("Cg0KC2hhbmRsZS0x")]
    assert c.feed(json.dumps(NOT_RESUMABLE)) == []
    assert c.resume_handle == "Cg0KC2hhbmRsZS0x"
    setup = wire(c.start()[0])["setup"]
    assert setup["sessionResumption"] == {"handle": "Cg0KC2hhbmRsZS0x"}
    assert c.feed(json.dumps(SETUP_COMPLETE)) == [AgentReady()]


def test_greeting_is_a_complete_client_turn_once() -> None:
    c = codec(greeting="Thanks for calling Acme.")
    c.start()
    assert c.feed(json.dumps(SETUP_COMPLETE)) == [AgentReady()]
    (frame,) = c.after_ready()
    content = wire(frame)["clientContent"]
    assert content["turnComplete"] is True
    (turn,) = content["turns"]
    assert turn["role"] == "user"
    assert turn["parts"][0]["text"].endswith('"Thanks for calling Acme."')
    # A resumed session (same codec, new connection) has greeted already.
    c.start(resume_handle="h-1")
    assert c.feed(json.dumps(SETUP_COMPLETE)) == [AgentReady()]
    assert c.after_ready() == []
    assert codec().after_ready() == []  # no greeting configured


def test_audio_out() -> None:
    (frame,) = codec().encode(AudioChunk(PCM, PCM16_16K))
    msg = wire(frame)
    assert msg == {"realtimeInput": {"audio": {"data": PCM, "mimeType": "audio/pcm;rate=16000"}}}


def test_audio_in_another_format_is_a_caller_bug() -> None:
    with pytest.raises(ValueError):
        codec().encode(AudioChunk("AAAA", PCMU_8K))


def test_dtmf_is_realtime_text() -> None:
    (frame,) = codec().encode(Dtmf("7"))
    assert wire(frame) == {"realtimeInput": {"text": "DTMF: 7"}}
    assert codec().encode(Dtmf("?")) == []


def test_interrupt_keepalive_hangup_send_nothing() -> None:
    for event in (Interrupt(item_id="i", played_ms=5), KeepAlive(), Hangup()):
        assert codec().encode(event) == []


@pytest.mark.parametrize("frame", RECORDED)
def test_recorded_frames_are_valid_server_messages(frame: dict[str, Any]) -> None:
    types.LiveServerMessage.model_validate(frame)


@pytest.mark.parametrize("as_bytes", [False, True])
def test_feed_accepts_text_and_binary_json(as_bytes: bool) -> None:
    c = codec()
    c.start()
    data = json.dumps(SETUP_COMPLETE)
    assert c.feed(data.encode() if as_bytes else data) == [AgentReady()]
    assert c.feed(data) == []


def test_feed_server_content() -> None:
    c = codec()
    assert c.feed(json.dumps(MODEL_AUDIO)) == [AudioChunk(PCM, PCM16_24K)]
    assert c.feed(json.dumps(INTERRUPTED)) == [SpeechStarted()]
    assert c.feed(json.dumps(TURN_COMPLETE)) == [ResponseDone()]
    assert c.feed(json.dumps(INPUT_TEXT)) == [Transcript("user", "my order number")]
    assert c.feed(json.dumps(OUTPUT_TEXT)) == [Transcript("agent", "Sure.")]


def test_combined_server_content_keeps_order() -> None:
    frame = {
        "serverContent": {
            "interrupted": True,
            "modelTurn": {
                "parts": [
                    {"text": "thinking"},
                    MODEL_AUDIO["serverContent"]["modelTurn"]["parts"][0],
                ]
            },
            "turnComplete": True,
        }
    }
    assert codec().feed(json.dumps(frame)) == [
        SpeechStarted(),
        AudioChunk(PCM, PCM16_24K),
        ResponseDone(),
    ]


@pytest.mark.parametrize(
    ("time_left", "ms"), [("9.5s", 9500), ("10s", 10000), ("0s", 0), (None, None), ("soon", None)]
)
def test_go_away(time_left: str | None, ms: int | None) -> None:
    body = {} if time_left is None else {"timeLeft": time_left}
    assert codec().feed(json.dumps({"goAway": body})) == [GoAway(ms)]


@pytest.mark.parametrize("type_", ["usageMetadata", "somethingNew"])
def test_unknown_keys_are_ignored(type_: str) -> None:
    assert codec().feed(json.dumps({type_: {}})) == []


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        b"\xff\xfe",
        "[]",
        '"setupComplete"',
        json.dumps({"serverContent": []}),
        json.dumps({"serverContent": {"modelTurn": {"parts": {}}}}),
        json.dumps({"serverContent": {"modelTurn": {"parts": ["x"]}}}),
        json.dumps({"serverContent": {"modelTurn": {"parts": [{"inlineData": {"data": 1}}]}}}),
        json.dumps(
            {
                "serverContent": {
                    "modelTurn": {
                        "parts": [{"inlineData": {"mimeType": "audio/pcm;rate=16000", "data": PCM}}]
                    }
                }
            }
        ),
        json.dumps({"goAway": "now"}),
        json.dumps({"sessionResumptionUpdate": 3}),
    ],
)
def test_hostile_frames_raise_and_codec_stays_usable(frame: str | bytes) -> None:
    c = codec()
    with pytest.raises(ProtocolError):
        c.feed(frame)
    assert c.feed(json.dumps(INTERRUPTED)) == [SpeechStarted()]


def test_oversized_frame() -> None:
    c = codec(max_frame_bytes=1024)
    with pytest.raises(ProtocolError):
        c.feed(json.dumps({"serverContent": {"outputTranscription": {"text": "x" * 2048}}}))


def test_endpoint_puts_the_key_in_a_header() -> None:
    config = AgentConfig.for_provider("gemini", api_key="g-secret")
    target = endpoint(config)
    assert target.url.endswith("GenerativeService.BidiGenerateContent")
    assert "g-secret" not in target.url
    assert target.headers == {"x-goog-api-key": "g-secret"}
