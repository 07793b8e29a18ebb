"""OpenAI Realtime GA codec: recorded frames in, frames out checked against the openai SDK."""

from __future__ import annotations

import inspect
import json
import re
import typing
from typing import Any

import pydantic
import pytest
from openai.types.realtime import (
    RealtimeClientEvent,
    RealtimeClientEventParam,
    RealtimeServerEvent,
    RealtimeSessionCreateRequest,
    SessionUpdateEvent,
)

from providers.ai.config import DEFAULTS, AgentConfig, AgentOptions, Provider
from providers.ai.openai_realtime import TRANSCRIPTION_MODEL, OpenAIRealtimeCodec, endpoint
from providers.events import (
    PCM16_16K,
    PCMU_8K,
    AgentReady,
    AudioChunk,
    Dtmf,
    Error,
    Hangup,
    Interrupt,
    KeepAlive,
    ResponseDone,
    SpeechStarted,
    Transcript,
)
from providers.exceptions import ProtocolError
from tests.providers.ai.sdk_types import assert_conforms

CLIENT_EVENT = pydantic.TypeAdapter(RealtimeClientEvent)
SERVER_EVENT = pydantic.TypeAdapter(RealtimeServerEvent)

# Server frames in the documented GA shapes (API reference, "Realtime server events").
SESSION_CREATED: dict[str, Any] = {
    "type": "session.created",
    "event_id": "event_C9G5RJeJ2gF77mV7f2B1j",
    "session": {
        "type": "realtime",
        "object": "realtime.session",
        "id": "sess_C9G5QPteg4UIbotdKLoYQ",
        "model": "gpt-realtime-2025-08-28",
        "output_modalities": ["audio"],
        "instructions": "Your knowledge cutoff is 2023-10.",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 200,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"},
        },
    },
}
SESSION_UPDATED: dict[str, Any] = {
    "type": "session.updated",
    "event_id": "event_C9G8mqI3IucaojlVKE8Cs",
    "session": {
        "type": "realtime",
        "object": "realtime.session",
        "id": "sess_C9G5QPteg4UIbotdKLoYQ",
        "model": "gpt-realtime",
        "output_modalities": ["audio"],
        "instructions": "Be brief.",
        "audio": {
            "input": {
                "format": {"type": "audio/pcmu"},
                "turn_detection": {"type": "server_vad", "create_response": True},
            },
            "output": {"format": {"type": "audio/pcmu"}, "voice": "marin", "speed": 1.0},
        },
    },
}
AUDIO_DELTA: dict[str, Any] = {
    "type": "response.output_audio.delta",
    "event_id": "event_CCXGSizgEppa2d4XbKA7K",
    "response_id": "resp_CCXGRxbY0n6WE4EszhvH5",
    "item_id": "item_CCXGRxbY0n6WE4EszhvH6",
    "output_index": 0,
    "content_index": 0,
    "delta": "//7+/v7+fn5+/w==",
}
SPEECH_STARTED: dict[str, Any] = {
    "type": "input_audio_buffer.speech_started",
    "event_id": "event_B1lE2ulDBpmv1cWU3sJ9y",
    "audio_start_ms": 1000,
    "item_id": "item_B1lE2uSAXqzXq3QLk3rYq",
}
RESPONSE_CREATED: dict[str, Any] = {
    "type": "response.created",
    "event_id": "event_CCXGRvNTwDFhwxZB0JmGO",
    "response": {
        "object": "realtime.response",
        "id": "resp_CCXGRxbY0n6WE4EszhvH5",
        "status": "in_progress",
        "status_details": None,
        "output": [],
    },
}
RESPONSE_DONE: dict[str, Any] = {
    "type": "response.done",
    "event_id": "event_CCXHxcMy86rrKhBLDdqCh",
    "response": {
        "object": "realtime.response",
        "id": "resp_CCXHw0UJld10EzIUXQCNh",
        "status": "completed",
        "status_details": None,
        "output": [],
    },
}
AGENT_TRANSCRIPT: dict[str, Any] = {
    "type": "response.output_audio_transcript.done",
    "event_id": "event_CCXGTdkYkmnhuw5l6ecDY",
    "response_id": "resp_CCXGRxbY0n6WE4EszhvH5",
    "item_id": "item_CCXGRxbY0n6WE4EszhvH6",
    "output_index": 0,
    "content_index": 0,
    "transcript": "Hello, how can I help?",
}
USER_TRANSCRIPT: dict[str, Any] = {
    "type": "conversation.item.input_audio_transcription.completed",
    "event_id": "event_CCXGRvtUVrax5SJAnNOWZ",
    "item_id": "item_CCXGQ4e1ht4cOraEYcuR2",
    "content_index": 0,
    "transcript": "I'd like to check my order.",
    "usage": {"type": "duration", "seconds": 2.1},
}
ERROR: dict[str, Any] = {
    "type": "error",
    "event_id": "event_890",
    "error": {
        "type": "invalid_request_error",
        "code": "response_cancel_not_active",
        "message": "Cancellation failed: no active response found.",
        "param": None,
        "event_id": None,
    },
}


def codec(**kw: Any) -> OpenAIRealtimeCodec:
    return OpenAIRealtimeCodec(
        model="gpt-realtime-2.1", voice="marin", instructions="Be brief.", **kw
    )


def ready_codec(**kw: Any) -> OpenAIRealtimeCodec:
    c = codec(**kw)
    c.start()
    assert c.feed(json.dumps(SESSION_UPDATED)) == [AgentReady()]
    return c


def extra_fields(model: pydantic.BaseModel, path: str = "") -> list[str]:
    """Fields the (permissive) SDK model kept as extras: names the API does not define."""
    found = [f"{path}.{key}" for key in (model.model_extra or {})]
    for name in type(model).model_fields:
        value = getattr(model, name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, pydantic.BaseModel):
                found += extra_fields(item, f"{path}.{name}")
    return found


def sdk_client_event(frame: str | bytes) -> Any:
    assert isinstance(frame, str)
    assert_conforms(json.loads(frame), RealtimeClientEventParam)
    event = CLIENT_EVENT.validate_python(json.loads(frame))
    assert extra_fields(event) == []
    return event


# -- start -------------------------------------------------------------------------------------


def test_start_is_a_ga_session_update() -> None:
    (frame,) = codec().start()
    msg = json.loads(frame)
    assert_conforms(msg, RealtimeClientEventParam)
    event = SessionUpdateEvent.model_validate(msg)
    assert extra_fields(event) == []
    session = msg["session"]
    assert session["type"] == "realtime"
    assert session["model"] == "gpt-realtime-2.1"
    assert session["instructions"] == "Be brief."
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"]["voice"] == "marin"
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    # None of the retired beta fields.
    for beta in ("input_audio_format", "output_audio_format", "voice", "modalities"):
        assert beta not in session


def test_extra_field_check_catches_beta_shape() -> None:
    beta = {"type": "session.update", "session": {"type": "realtime", "voice": "alloy"}}
    assert extra_fields(SessionUpdateEvent.model_validate(beta)) == [".session.voice"]


def test_transcription_model_is_requested_when_configured() -> None:
    c = OpenAIRealtimeCodec(
        model="m", voice="v", instructions="i", transcription_model="gpt-4o-mini-transcribe"
    )
    event = sdk_client_event(c.start()[0])
    assert event.session.audio.input.transcription.model == "gpt-4o-mini-transcribe"


@pytest.mark.parametrize("transcripts", [True, False])
def test_input_transcription_is_requested_only_for_transcripts(transcripts: bool) -> None:
    options = AgentOptions(transcripts=transcripts)
    config = AgentConfig.for_provider("openai", api_key="k", options=options)
    event = sdk_client_event(OpenAIRealtimeCodec.from_config(config).start()[0])
    transcription = event.session.audio.input.transcription
    if transcripts:
        assert transcription.model == TRANSCRIPTION_MODEL
    else:
        assert transcription is None


# -- encode ------------------------------------------------------------------------------------


def test_audio_payload_passes_through_untouched() -> None:
    payload = "//7+/v7+fn5+/w=="
    (frame,) = codec().encode(AudioChunk(payload, PCMU_8K, timestamp_ms=20))
    event = sdk_client_event(frame)
    assert event.type == "input_audio_buffer.append"
    assert event.audio == payload


def test_audio_in_another_format_is_a_caller_bug() -> None:
    with pytest.raises(ValueError):
        codec().encode(AudioChunk("AAAA", PCM16_16K))


def responding_codec() -> OpenAIRealtimeCodec:
    c = ready_codec()
    assert c.feed(json.dumps(RESPONSE_CREATED)) == []
    return c


def test_interrupt_cancels_a_response_in_progress_and_truncates() -> None:
    cancel, truncate = responding_codec().encode(Interrupt(item_id="item_1", played_ms=640))
    assert sdk_client_event(cancel).type == "response.cancel"
    event = sdk_client_event(truncate)
    assert event.type == "conversation.item.truncate"
    assert (event.item_id, event.content_index, event.audio_end_ms) == ("item_1", 0, 640)


def test_interrupt_without_item_only_cancels() -> None:
    (cancel,) = responding_codec().encode(Interrupt())
    assert sdk_client_event(cancel).type == "response.cancel"


def test_interrupt_with_no_response_in_progress_cancels_nothing() -> None:
    # Before any response, and after response.done (the answer may still be playing at the
    # carrier: its item is truncated all the same).
    assert ready_codec().encode(Interrupt()) == []
    c = responding_codec()
    c.feed(json.dumps(RESPONSE_DONE))
    (truncate,) = c.encode(Interrupt(item_id="item_1", played_ms=300))
    assert sdk_client_event(truncate).type == "conversation.item.truncate"


def test_one_cancel_per_response() -> None:
    c = responding_codec()
    assert len(c.encode(Interrupt())) == 1
    assert c.encode(Interrupt()) == []  # a second speech_started in the same response
    c.feed(json.dumps(RESPONSE_DONE))
    c.feed(json.dumps(RESPONSE_CREATED))
    assert len(c.encode(Interrupt())) == 1


def test_a_cancel_that_crossed_the_response_end_reports_nothing() -> None:
    # Server VAD ends the response itself on speech_started; its response.done passes our
    # cancel on the wire and the server answers the cancel with response_cancel_not_active.
    c = responding_codec()
    c.feed(json.dumps(SPEECH_STARTED))
    assert len(c.encode(Interrupt())) == 1
    assert c.feed(json.dumps(RESPONSE_DONE)) == [ResponseDone()]
    assert c.feed(json.dumps(ERROR)) == []
    # One cancel, one answer: the next such error is not ours and is reported.
    (event,) = c.feed(json.dumps(ERROR))
    assert isinstance(event, Error) and event.code == "response_cancel_not_active"


def test_interrupt_clamps_negative_played_ms() -> None:
    (truncate,) = codec().encode(Interrupt(item_id="item_1", played_ms=-5))
    assert json.loads(truncate)["audio_end_ms"] == 0


def test_greeting_is_one_response_create_after_ready() -> None:
    c = ready_codec(greeting="Thanks for calling Acme, how can I help?")
    (frame,) = c.after_ready()
    event = sdk_client_event(frame)
    assert event.type == "response.create"
    assert event.response.instructions.endswith('"Thanks for calling Acme, how can I help?"')
    assert c.after_ready() == []
    assert ready_codec().after_ready() == []  # no greeting configured


def test_default_model_has_no_announced_shutdown() -> None:
    field = RealtimeSessionCreateRequest.model_fields["model"]
    named = {v for arg in typing.get_args(field.annotation) for v in typing.get_args(arg)}
    source = inspect.getsource(RealtimeSessionCreateRequest)
    deprecated = source[source.index("Deprecated values:") :].split('"""')[0]
    shutting_down = set(re.findall(r'"([^"]+)"', deprecated))
    assert "gpt-realtime" in shutting_down  # the check reads the SDK's notes
    default = DEFAULTS[Provider.OPENAI].model
    assert default in named
    assert default not in shutting_down


def test_dtmf_is_a_user_text_item_and_a_response() -> None:
    item, response = codec().encode(Dtmf("5"))
    event = sdk_client_event(item)
    assert event.item.role == "user"
    assert event.item.content[0].type == "input_text"
    assert event.item.content[0].text == "DTMF: 5"
    assert sdk_client_event(response).type == "response.create"


@pytest.mark.parametrize("digit", ["", "55", "x", '"', "\n"])
def test_invalid_dtmf_sends_nothing(digit: str) -> None:
    assert codec().encode(Dtmf(digit)) == []


def test_keepalive_and_hangup_send_nothing() -> None:
    assert codec().encode(KeepAlive()) == []
    assert codec().encode(Hangup()) == []


# -- feed --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        SESSION_CREATED,
        SESSION_UPDATED,
        AUDIO_DELTA,
        SPEECH_STARTED,
        RESPONSE_CREATED,
        RESPONSE_DONE,
        AGENT_TRANSCRIPT,
        USER_TRANSCRIPT,
        ERROR,
    ],
)
def test_recorded_frames_are_valid_server_events(frame: dict[str, Any]) -> None:
    SERVER_EVENT.validate_python(frame)


def test_ready_on_session_updated_once() -> None:
    c = codec()
    c.start()
    assert c.feed(json.dumps(SESSION_CREATED)) == []
    assert c.feed(json.dumps(SESSION_UPDATED)) == [AgentReady()]
    assert c.feed(json.dumps(SESSION_UPDATED)) == []


def test_session_not_in_pcmu_is_fatal() -> None:
    c = codec()
    updated = json.loads(json.dumps(SESSION_UPDATED))
    updated["session"]["audio"]["output"]["format"] = {"type": "audio/pcm", "rate": 24000}
    (event,) = c.feed(json.dumps(updated))
    assert isinstance(event, Error) and event.fatal and event.code == "format_mismatch"


def test_audio_delta_is_forwarded_untouched() -> None:
    (chunk,) = ready_codec().feed(json.dumps(AUDIO_DELTA))
    assert chunk == AudioChunk(AUDIO_DELTA["delta"], PCMU_8K, item_id=AUDIO_DELTA["item_id"])


def test_empty_audio_delta_yields_nothing() -> None:
    assert ready_codec().feed(json.dumps({**AUDIO_DELTA, "delta": ""})) == []


def test_turn_events() -> None:
    c = ready_codec()
    assert c.feed(json.dumps(SPEECH_STARTED)) == [SpeechStarted()]
    assert c.feed(json.dumps(RESPONSE_DONE)) == [ResponseDone()]
    assert c.feed(json.dumps(AGENT_TRANSCRIPT)) == [Transcript("agent", "Hello, how can I help?")]
    assert c.feed(json.dumps(USER_TRANSCRIPT)) == [
        Transcript("user", "I'd like to check my order.")
    ]


def test_error_after_ready_is_not_fatal() -> None:
    (event,) = ready_codec().feed(json.dumps(ERROR))
    assert event == Error("response_cancel_not_active", ERROR["error"]["message"], fatal=False)


def test_error_before_ready_is_fatal() -> None:
    c = codec()
    c.start()
    beta_rejected = {
        "type": "error",
        "event_id": "event_1",
        "error": {
            "type": "invalid_request_error",
            "code": "unknown_parameter",
            "message": "Unknown parameter: 'session.input_audio_format'.",
            "param": "session.input_audio_format",
            "event_id": None,
        },
    }
    (event,) = c.feed(json.dumps(beta_rejected))
    assert isinstance(event, Error) and event.fatal and event.code == "unknown_parameter"


def test_session_expired_is_fatal() -> None:
    expired = {**ERROR, "error": {**ERROR["error"], "code": "session_expired"}}
    (event,) = ready_codec().feed(json.dumps(expired))
    assert isinstance(event, Error) and event.fatal


@pytest.mark.parametrize(
    "type_",
    [
        "rate_limits.updated",
        "conversation.item.added",
        "output_audio_buffer.started",
        "some.future.event",
    ],
)
def test_unknown_and_unused_events_are_ignored(type_: str) -> None:
    assert ready_codec().feed(json.dumps({"type": type_, "event_id": "e"})) == []


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "",
        "[1, 2]",
        '"session.updated"',
        "{}",
        '{"type": 5}',
        json.dumps({**AUDIO_DELTA, "delta": 5}),
        json.dumps({**AUDIO_DELTA, "delta": "not base64!"}),
        json.dumps({k: v for k, v in AUDIO_DELTA.items() if k != "item_id"}),
        json.dumps({**AGENT_TRANSCRIPT, "transcript": None}),
        json.dumps({"type": "error", "error": "boom"}),
        json.dumps({"type": "session.updated", "session": []}),
        json.dumps({"type": "response.created", "event_id": "e"}),
        b'{"type": "session.updated"}',
    ],
)
def test_hostile_frames_raise_and_codec_stays_usable(frame: str | bytes) -> None:
    c = ready_codec()
    with pytest.raises(ProtocolError):
        c.feed(frame)
    assert c.feed(json.dumps(RESPONSE_DONE)) == [ResponseDone()]


def test_oversized_frame_is_rejected_before_parsing() -> None:
    c = OpenAIRealtimeCodec(model="m", voice="v", instructions="i", max_frame_bytes=1024)
    with pytest.raises(ProtocolError, match="too large"):
        c.feed(json.dumps({**AUDIO_DELTA, "delta": "A" * 2048}))


def test_endpoint_url_and_auth_header_never_in_repr() -> None:
    config = AgentConfig.for_provider("openai", api_key="sk-secret-1")
    target = endpoint(config)
    assert target.url == "wss://api.openai.com/v1/realtime?model=gpt-realtime-2.1"
    assert target.headers == {"Authorization": "Bearer sk-secret-1"}
    assert "OpenAI-Beta" not in target.headers
    assert "sk-secret-1" not in repr(target)
    assert "sk-secret-1" not in repr(config)


def test_endpoint_keeps_an_existing_query() -> None:
    config = AgentConfig.for_provider("openai", api_key="k", url="ws://127.0.0.1:9/v1/realtime?x=1")
    assert endpoint(config).url == "ws://127.0.0.1:9/v1/realtime?x=1&model=gpt-realtime-2.1"
