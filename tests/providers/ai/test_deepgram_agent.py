"""Deepgram Voice Agent V1 codec: recorded frames in, frames out checked against deepgram-sdk."""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest
from deepgram.agent.v1.requests import (
    AgentV1InjectUserMessageParams,
    AgentV1KeepAliveParams,
    AgentV1SettingsParams,
)
from deepgram.agent.v1.types import (
    AgentV1AgentAudioDone,
    AgentV1ConversationText,
    AgentV1Error,
    AgentV1InjectUserMessage,
    AgentV1KeepAlive,
    AgentV1Settings,
    AgentV1SettingsApplied,
    AgentV1UserStartedSpeaking,
    AgentV1Warning,
    AgentV1Welcome,
)

from providers.ai.config import AgentConfig
from providers.ai.deepgram_agent import DeepgramAgentCodec, endpoint
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
from tests.providers.ai.sdk_types import assert_conforms, problems

WELCOME = {"type": "Welcome", "request_id": "fc553ec9-5874-49ca-a47c-b670d525a4b1"}
SETTINGS_APPLIED = {"type": "SettingsApplied"}
USER_STARTED = {"type": "UserStartedSpeaking"}
AUDIO_DONE = {"type": "AgentAudioDone"}
USER_TEXT = {"type": "ConversationText", "role": "user", "content": "Where is my order?"}
AGENT_TEXT = {"type": "ConversationText", "role": "assistant", "content": "Let me check."}
ERROR = {"type": "Error", "description": "Failed to think", "code": "FAILED_TO_THINK"}
WARNING = {"type": "Warning", "description": "Slow LLM response", "code": "SLOW_THINK_REQUEST"}
RECORDED = [
    (WELCOME, AgentV1Welcome),
    (SETTINGS_APPLIED, AgentV1SettingsApplied),
    (USER_STARTED, AgentV1UserStartedSpeaking),
    (AUDIO_DONE, AgentV1AgentAudioDone),
    (USER_TEXT, AgentV1ConversationText),
    (AGENT_TEXT, AgentV1ConversationText),
    (ERROR, AgentV1Error),
    (WARNING, AgentV1Warning),
]


def codec(**kw: Any) -> DeepgramAgentCodec:
    return DeepgramAgentCodec(
        model="gpt-4o-mini", voice="aura-2-thalia-en", instructions="Be brief.", **kw
    )


def extra_fields(model: pydantic.BaseModel, path: str = "") -> list[str]:
    found = [f"{path}.{key}" for key in (model.model_extra or {})]
    for name in type(model).model_fields:
        value = getattr(model, name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, pydantic.BaseModel):
                found += extra_fields(item, f"{path}.{name}")
    return found


def test_start_is_v1_settings() -> None:
    (frame,) = codec(greeting="Hello!").start()
    assert isinstance(frame, str)
    msg = json.loads(frame)
    # The request type: every required key at every level (listen.provider.version...).
    assert_conforms(msg, AgentV1SettingsParams)
    settings = AgentV1Settings.model_validate(msg)
    assert extra_fields(settings) == []
    assert msg["type"] == "Settings"
    assert msg["audio"] == {
        "input": {"encoding": "mulaw", "sample_rate": 8000},
        "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"},
    }
    agent = msg["agent"]
    assert agent["listen"] == {"provider": {"version": "v1", "type": "deepgram", "model": "nova-3"}}
    assert agent["think"] == {
        "provider": {"type": "open_ai", "model": "gpt-4o-mini"},
        "prompt": "Be brief.",
    }
    assert agent["speak"] == {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}}
    assert agent["greeting"] == "Hello!"


def test_settings_without_greeting_omit_it() -> None:
    assert "greeting" not in json.loads(codec().start()[0])["agent"]
    assert codec(greeting="Hello!").after_ready() == []  # the greeting is in Settings


def test_request_check_catches_a_missing_listen_version_and_unknown_keys() -> None:
    msg = json.loads(codec().start()[0])
    del msg["agent"]["listen"]["provider"]["version"]
    msg["agent"]["voice"] = "x"
    assert problems(msg, AgentV1SettingsParams) == [
        "$.agent.voice: not defined by AgentV1SettingsAgentParams",
        "$.agent.listen.provider.version: required",
    ]
    # The SDK's pydantic model fills the default in: it alone would not notice.
    AgentV1Settings.model_validate(msg)


def test_audio_goes_out_as_binary() -> None:
    chunk = AudioChunk.from_bytes(b"\xff\x7f\x00\x80", PCMU_8K)
    assert codec().encode(chunk) == [b"\xff\x7f\x00\x80"]


def test_audio_in_another_format_is_a_caller_bug() -> None:
    with pytest.raises(ValueError):
        codec().encode(AudioChunk("AAAA", PCM16_16K))


def test_keepalive() -> None:
    (frame,) = codec().encode(KeepAlive())
    assert isinstance(frame, str)
    assert_conforms(json.loads(frame), AgentV1KeepAliveParams)
    AgentV1KeepAlive.model_validate(json.loads(frame))
    assert json.loads(frame) == {"type": "KeepAlive"}


def test_dtmf_is_an_injected_user_message() -> None:
    (frame,) = codec().encode(Dtmf("#"))
    assert isinstance(frame, str)
    assert_conforms(json.loads(frame), AgentV1InjectUserMessageParams)
    message = AgentV1InjectUserMessage.model_validate(json.loads(frame))
    assert message.content == "DTMF: #"
    assert codec().encode(Dtmf("nope")) == []


def test_interrupt_and_hangup_send_nothing() -> None:
    # Deepgram stops speaking by itself when it hears the caller (UserStartedSpeaking).
    assert codec().encode(Interrupt(item_id="x", played_ms=10)) == []
    assert codec().encode(Hangup()) == []


@pytest.mark.parametrize(("frame", "model"), RECORDED)
def test_recorded_frames_match_sdk_models(frame: dict[str, Any], model: Any) -> None:
    assert extra_fields(model.model_validate(frame)) == []


def test_feed_text_messages() -> None:
    c = codec()
    c.start()
    assert c.feed(json.dumps(WELCOME)) == []
    assert c.request_id == WELCOME["request_id"]
    assert c.feed(json.dumps(SETTINGS_APPLIED)) == [AgentReady()]
    assert c.feed(json.dumps(SETTINGS_APPLIED)) == []
    assert c.feed(json.dumps(USER_STARTED)) == [SpeechStarted()]
    assert c.feed(json.dumps(AUDIO_DONE)) == [ResponseDone()]
    assert c.feed(json.dumps(USER_TEXT)) == [Transcript("user", "Where is my order?")]
    assert c.feed(json.dumps(AGENT_TEXT)) == [Transcript("agent", "Let me check.")]
    assert c.feed(json.dumps(ERROR)) == [Error("FAILED_TO_THINK", "Failed to think", fatal=True)]
    assert c.feed(json.dumps(WARNING)) == [
        Error("SLOW_THINK_REQUEST", "Slow LLM response", fatal=False)
    ]


def test_feed_binary_is_agent_audio() -> None:
    (chunk,) = codec().feed(b"\x01\x02\x03")
    assert chunk == AudioChunk.from_bytes(b"\x01\x02\x03", PCMU_8K)
    assert codec().feed(b"") == []


@pytest.mark.parametrize(
    "type_", ["AgentThinking", "AgentStartedSpeaking", "PromptUpdated", "History", "NewThing"]
)
def test_unknown_and_unused_messages_are_ignored(type_: str) -> None:
    assert codec().feed(json.dumps({"type": type_})) == []


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[]",
        '{"role": "user"}',
        '{"type": null}',
        json.dumps({"type": "ConversationText", "role": "user"}),
        json.dumps({"type": "ConversationText", "role": 1, "content": "x"}),
    ],
)
def test_hostile_frames_raise_and_codec_stays_usable(frame: str) -> None:
    c = codec()
    with pytest.raises(ProtocolError):
        c.feed(frame)
    assert c.feed(json.dumps(USER_STARTED)) == [SpeechStarted()]


def test_oversized_frames_are_rejected() -> None:
    c = codec(max_frame_bytes=1024)
    with pytest.raises(ProtocolError):
        c.feed(b"\x00" * 2048)
    with pytest.raises(ProtocolError):
        c.feed(json.dumps({"type": "Warning", "description": "x" * 2048, "code": "c"}))


def test_endpoint_uses_token_auth() -> None:
    config = AgentConfig.for_provider("deepgram", api_key="dg-secret")
    target = endpoint(config)
    assert target.url == "wss://agent.deepgram.com/v1/agent/converse"
    assert target.headers == {"Authorization": "Token dg-secret"}
    assert "dg-secret" not in repr(target)
