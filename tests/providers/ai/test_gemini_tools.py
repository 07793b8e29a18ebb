"""Gemini Live codec, tools: functionDeclarations in the setup, toolCall and
toolCallCancellation in, toolResponse out, all checked against google-genai's types."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.genai import types

from providers.ai.config import AgentConfig, Function
from providers.ai.gemini_live import GeminiLiveCodec
from providers.ai.tools import MAX_ARGUMENTS_BYTES, MAX_CALLS_PER_FRAME
from providers.events import AgentReady, ResponseDone, ToolCall, ToolCancelled, ToolResult
from providers.exceptions import ProtocolError
from tests.providers.ai.test_gemini_live import wire

WEATHER = Function(
    "get_weather",
    "The weather in a city.",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
)
HANG_UP = Function("hang_up", "End the call.")

# Documented shapes (ai.google.dev/api/live: BidiGenerateContentToolCall, ...Cancellation).
CALL = {"id": "function-call-4511", "name": "get_weather", "args": {"city": "Zurich"}}
TOOL_CALL: dict[str, Any] = {"toolCall": {"functionCalls": [CALL]}}
CANCELLATION: dict[str, Any] = {"toolCallCancellation": {"ids": ["function-call-4511"]}}
TURN_COMPLETE = {"serverContent": {"turnComplete": True}}


def codec(tools: tuple[Function, ...] = (WEATHER, HANG_UP)) -> GeminiLiveCodec:
    c = GeminiLiveCodec(model="m", voice="Puck", instructions="i", tools=tools)
    c.start()
    assert c.feed(json.dumps({"setupComplete": {}})) == [AgentReady()]
    return c


def tool_call(*calls: Any) -> str:
    return json.dumps({"toolCall": {"functionCalls": list(calls)}})


@pytest.mark.parametrize("frame", [TOOL_CALL, CANCELLATION])
def test_recorded_frames_are_valid_server_messages(frame: dict[str, Any]) -> None:
    types.LiveServerMessage.model_validate(frame)


def test_setup_declares_the_tools_as_json_schema() -> None:
    frame = GeminiLiveCodec(model="m", voice="v", instructions="i", tools=(WEATHER, HANG_UP))
    setup = wire(frame.start()[0])["setup"]
    assert setup["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "The weather in a city.",
                    "parametersJsonSchema": WEATHER.parameters,
                },
                {
                    "name": "hang_up",
                    "description": "End the call.",
                    "parametersJsonSchema": {"type": "object", "properties": {}},
                },
            ]
        }
    ]
    declaration = types.LiveClientMessage.model_validate(json.loads(frame.start()[0]))
    assert declaration.setup is not None and declaration.setup.tools is not None
    (tool,) = declaration.setup.tools
    assert tool.function_declarations is not None
    assert tool.function_declarations[0].parameters_json_schema == WEATHER.parameters


def test_no_tools_no_tools_field() -> None:
    assert (
        "tools"
        not in wire(GeminiLiveCodec(model="m", voice="v", instructions="i").start()[0])["setup"]
    )


def test_a_resumed_setup_declares_the_same_tools() -> None:
    c = codec()
    first = json.loads(c.start()[0])["setup"]["tools"]
    again = json.loads(c.start(resume_handle="h-1")[0])["setup"]
    assert again["tools"] == first and again["sessionResumption"] == {"handle": "h-1"}


def test_from_config_takes_the_tools() -> None:
    config = AgentConfig.for_provider("gemini", api_key="k", tools=(HANG_UP,))
    setup = json.loads(GeminiLiveCodec.from_config(config).start()[0])["setup"]
    assert [d["name"] for d in setup["tools"][0]["functionDeclarations"]] == ["hang_up"]


def test_tool_call_arguments_are_json_text_of_args() -> None:
    (event,) = codec().feed(json.dumps(TOOL_CALL))
    assert isinstance(event, ToolCall)
    assert (event.call_id, event.name) == ("function-call-4511", "get_weather")
    assert json.loads(event.arguments) == {"city": "Zurich"}


def test_parallel_calls_and_calls_without_args() -> None:
    assert codec().feed(tool_call(CALL, {"id": "fc-2", "name": "hang_up"})) == [
        ToolCall("function-call-4511", "get_weather", '{"city":"Zurich"}'),
        ToolCall("fc-2", "hang_up", "{}"),
    ]


def test_tool_calls_arrive_in_binary_frames_too() -> None:
    assert len(codec().feed(json.dumps(TOOL_CALL).encode())) == 1


def test_cancellation_is_tool_cancelled() -> None:
    frame = {"toolCallCancellation": {"ids": ["fc-1", "fc-2"]}}
    assert codec().feed(json.dumps(frame)) == [ToolCancelled(("fc-1", "fc-2"))]


@pytest.mark.parametrize(
    ("output", "response"),
    [
        ('{"temp": 21, "sky": "clear"}', {"temp": 21, "sky": "clear"}),
        ("[1, 2]", {"output": [1, 2]}),
        ('"sunny"', {"output": "sunny"}),
        ("21", {"output": 21}),
        ("null", {"output": None}),
        ("sunny, 21 degrees", {"output": "sunny, 21 degrees"}),
        ("", {"output": ""}),
    ],
)
def test_tool_result_is_a_tool_response(output: str, response: dict[str, Any]) -> None:
    (frame,) = codec().encode(ToolResult("function-call-4511", "get_weather", output))
    msg = wire(frame)
    assert msg == {
        "toolResponse": {
            "functionResponses": [
                {"id": "function-call-4511", "name": "get_weather", "response": response}
            ]
        }
    }


@pytest.mark.parametrize(
    "frame",
    [
        tool_call({**CALL, "id": None}),
        tool_call({k: v for k, v in CALL.items() if k != "id"}),
        tool_call({**CALL, "id": "f" * 129}),
        tool_call({**CALL, "name": "get weather"}),
        tool_call({k: v for k, v in CALL.items() if k != "name"}),
        tool_call({**CALL, "args": '{"city": "Zurich"}'}),
        tool_call({**CALL, "args": ["Zurich"]}),
        tool_call({**CALL, "args": {"city": "a" * MAX_ARGUMENTS_BYTES}}),
        tool_call(*[{**CALL, "id": f"fc-{n}"} for n in range(MAX_CALLS_PER_FRAME + 1)]),
        tool_call(),
        tool_call("fc-1"),
        json.dumps({"toolCall": {}}),
        json.dumps({"toolCall": []}),
        json.dumps({"toolCallCancellation": {"ids": "fc-1"}}),
        json.dumps({"toolCallCancellation": {"ids": [1]}}),
        json.dumps({"toolCallCancellation": {}}),
    ],
)
def test_hostile_tool_frames_raise_and_codec_stays_usable(frame: str) -> None:
    c = codec()
    with pytest.raises(ProtocolError):
        c.feed(frame)
    assert c.feed(json.dumps(TURN_COMPLETE)) == [ResponseDone()]
    assert len(c.feed(json.dumps(TOOL_CALL))) == 1
