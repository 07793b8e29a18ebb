"""Deepgram Voice Agent codec, tools: think.functions, FunctionCallRequest / Cancelled in,
FunctionCallResponse out, all checked against deepgram-sdk's types."""

from __future__ import annotations

import json
from typing import Any

import pytest
from deepgram.agent.v1.requests import (
    AgentV1SendFunctionCallResponseParams,
    AgentV1SettingsParams,
)
from deepgram.agent.v1.types import (
    AgentV1FunctionCallCancelled,
    AgentV1FunctionCallRequest,
    AgentV1SendFunctionCallResponse,
    AgentV1Settings,
)

from providers.ai.config import AgentConfig, Function
from providers.ai.deepgram_agent import DeepgramAgentCodec
from providers.ai.tools import MAX_ARGUMENTS_BYTES, MAX_CALLS_PER_FRAME
from providers.events import AgentReady, ResponseDone, ToolCall, ToolCancelled, ToolResult
from providers.exceptions import ProtocolError
from tests.providers.ai.sdk_types import assert_conforms
from tests.providers.ai.test_deepgram_agent import extra_fields

WEATHER = Function(
    "get_weather",
    "The weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
HANG_UP = Function("hang_up", "End the call.")

# Documented shapes (developers.deepgram.com "Function Call Request", "Function Call Response").
CALL = {
    "id": "fc_12345678-90ab-cdef-1234-567890abcdef",
    "name": "get_weather",
    "arguments": '{"city": "Fremont"}',
    "client_side": True,
}
REQUEST: dict[str, Any] = {"type": "FunctionCallRequest", "functions": [CALL]}
CANCELLED: dict[str, Any] = {
    "type": "FunctionCallCancelled",
    "functions": [{"id": CALL["id"], "name": "get_weather"}],
}


def codec(tools: tuple[Function, ...] = (WEATHER, HANG_UP)) -> DeepgramAgentCodec:
    c = DeepgramAgentCodec(
        model="gpt-4o-mini", voice="aura-2-thalia-en", instructions="i", tools=tools
    )
    c.start()
    assert c.feed(json.dumps({"type": "SettingsApplied"})) == [AgentReady()]
    return c


def request(*functions: dict[str, Any]) -> str:
    return json.dumps({"type": "FunctionCallRequest", "functions": list(functions)})


def test_recorded_frames_are_valid_server_messages() -> None:
    AgentV1FunctionCallRequest.model_validate(REQUEST)
    AgentV1FunctionCallCancelled.model_validate(CANCELLED)


def test_settings_declare_client_side_functions() -> None:
    msg = json.loads(
        DeepgramAgentCodec(
            model="m", voice="v", instructions="i", tools=(WEATHER, HANG_UP)
        ).start()[0]
    )
    assert_conforms(msg, AgentV1SettingsParams)
    assert extra_fields(AgentV1Settings.model_validate(msg)) == []
    assert msg["agent"]["think"]["functions"] == [
        {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": WEATHER.parameters,
        },
        {
            "name": "hang_up",
            "description": "End the call.",
            "parameters": {"type": "object", "properties": {}},
        },
    ]
    # Client-side: no endpoint.
    assert all("endpoint" not in f for f in msg["agent"]["think"]["functions"])


def test_no_tools_no_functions() -> None:
    msg = json.loads(DeepgramAgentCodec(model="m", voice="v", instructions="i").start()[0])
    assert "functions" not in msg["agent"]["think"]


def test_from_config_takes_the_tools() -> None:
    config = AgentConfig.for_provider("deepgram", api_key="k", tools=(HANG_UP,))
    msg = json.loads(DeepgramAgentCodec.from_config(config).start()[0])
    assert [f["name"] for f in msg["agent"]["think"]["functions"]] == ["hang_up"]


def test_function_call_request_is_a_tool_call() -> None:
    assert codec().feed(json.dumps(REQUEST)) == [
        ToolCall(CALL["id"], "get_weather", '{"city": "Fremont"}')
    ]


def test_only_client_side_functions_are_calls() -> None:
    server_side = {**CALL, "id": "fc_2", "client_side": False}
    other = {**CALL, "id": "fc_3", "name": "hang_up", "arguments": "{}"}
    assert codec().feed(request(CALL, server_side, other)) == [
        ToolCall(CALL["id"], "get_weather", '{"city": "Fremont"}'),
        ToolCall("fc_3", "hang_up", "{}"),
    ]
    assert codec().feed(request(server_side)) == []


def test_function_call_cancelled_is_tool_cancelled() -> None:
    two = {**CANCELLED, "functions": [*CANCELLED["functions"], {"id": "fc_2", "name": "hang_up"}]}
    assert codec().feed(json.dumps(two)) == [ToolCancelled((CALL["id"], "fc_2"))]


def test_tool_result_is_a_function_call_response() -> None:
    (frame,) = codec().encode(ToolResult(CALL["id"], "get_weather", '{"temp": 21}'))
    assert isinstance(frame, str)
    msg = json.loads(frame)
    assert_conforms(msg, AgentV1SendFunctionCallResponseParams)
    AgentV1SendFunctionCallResponse.model_validate(msg)
    assert msg == {
        "type": "FunctionCallResponse",
        "id": CALL["id"],
        "name": "get_weather",
        "content": '{"temp": 21}',
    }


@pytest.mark.parametrize(
    "frame",
    [
        request({**CALL, "id": None}),
        request({k: v for k, v in CALL.items() if k != "id"}),
        request({**CALL, "id": "f" * 129}),
        request({**CALL, "name": "get weather"}),
        request({**CALL, "name": ""}),
        request({**CALL, "arguments": {"city": "Fremont"}}),
        request({**CALL, "arguments": "a" * (MAX_ARGUMENTS_BYTES + 1)}),
        request({**CALL, "client_side": "yes"}),
        request({k: v for k, v in CALL.items() if k != "client_side"}),
        request(*[{**CALL, "id": f"fc_{n}"} for n in range(MAX_CALLS_PER_FRAME + 1)]),
        request(),
        request("fc_1"),
        json.dumps({"type": "FunctionCallRequest", "functions": {"0": CALL}}),
        json.dumps({"type": "FunctionCallRequest"}),
        json.dumps({"type": "FunctionCallCancelled", "functions": [{"id": 5}]}),
        json.dumps({"type": "FunctionCallCancelled", "functions": ["fc_1"]}),
        json.dumps({"type": "FunctionCallCancelled", "functions": []}),
    ],
)
def test_hostile_function_frames_raise_and_codec_stays_usable(frame: str) -> None:
    c = codec()
    with pytest.raises(ProtocolError):
        c.feed(frame)
    assert c.feed(json.dumps({"type": "AgentAudioDone"})) == [ResponseDone()]
    assert len(c.feed(json.dumps(REQUEST))) == 1


def test_most_calls_one_frame_may_carry() -> None:
    calls = [{**CALL, "id": f"fc_{n}"} for n in range(MAX_CALLS_PER_FRAME)]
    assert len(codec().feed(request(*calls))) == MAX_CALLS_PER_FRAME
