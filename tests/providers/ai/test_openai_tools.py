"""OpenAI Realtime codec, tools: declarations, function calls in, outputs out, all checked
against the openai SDK's request types and models."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.realtime import RealtimeClientEventParam, SessionUpdateEvent

from providers.ai.config import AgentConfig, Function
from providers.ai.openai_realtime import MAX_CALLS_PER_RESPONSE, OpenAIRealtimeCodec
from providers.ai.tools import MAX_ARGUMENTS_BYTES
from providers.events import AgentReady, ResponseDone, ToolCall, ToolResult
from providers.exceptions import ProtocolError
from tests.providers.ai.sdk_types import assert_conforms
from tests.providers.ai.test_openai_realtime import (
    RESPONSE_CREATED,
    RESPONSE_DONE,
    SERVER_EVENT,
    SESSION_UPDATED,
    extra_fields,
    sdk_client_event,
)

WEATHER = Function(
    "get_weather",
    "The weather in a city.",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
)
HANG_UP = Function("hang_up", "End the call.")

# Server frames in the documented GA shapes (API reference, "Realtime server events").
ARGUMENTS_DONE: dict[str, Any] = {
    "type": "response.function_call_arguments.done",
    "event_id": "event_5152",
    "response_id": "resp_002",
    "item_id": "fc_001",
    "output_index": 0,
    "call_id": "call_001",
    "name": "get_weather",
    "arguments": '{"city": "Paris"}',
}
OUTPUT_ITEM_DONE: dict[str, Any] = {
    "type": "response.output_item.done",
    "event_id": "event_5153",
    "response_id": "resp_002",
    "output_index": 0,
    "item": {
        "id": "fc_001",
        "object": "realtime.item",
        "type": "function_call",
        "status": "completed",
        "name": "get_weather",
        "call_id": "call_001",
        "arguments": '{"city": "Paris"}',
    },
}
MESSAGE_ITEM_DONE: dict[str, Any] = {
    "type": "response.output_item.done",
    "event_id": "event_5154",
    "response_id": "resp_002",
    "output_index": 1,
    "item": {
        "id": "msg_002",
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_audio", "transcript": "Let me check."}],
    },
}


def codec(tools: tuple[Function, ...] = (WEATHER, HANG_UP)) -> OpenAIRealtimeCodec:
    c = OpenAIRealtimeCodec(model="gpt-realtime-2.1", voice="marin", instructions="i", tools=tools)
    c.start()
    assert c.feed(json.dumps(SESSION_UPDATED)) == [AgentReady()]
    c.feed(json.dumps(RESPONSE_CREATED))
    return c


def call(call_id: str = "call_001", name: str = "get_weather", **kw: Any) -> str:
    return json.dumps({**ARGUMENTS_DONE, "call_id": call_id, "name": name, **kw})


@pytest.mark.parametrize("frame", [ARGUMENTS_DONE, OUTPUT_ITEM_DONE, MESSAGE_ITEM_DONE])
def test_recorded_frames_are_valid_server_events(frame: dict[str, Any]) -> None:
    SERVER_EVENT.validate_python(frame)


# -- declarations ------------------------------------------------------------------------------


def test_session_update_declares_the_tools() -> None:
    frame = OpenAIRealtimeCodec(
        model="m", voice="v", instructions="i", tools=(WEATHER, HANG_UP)
    ).start()[0]
    msg = json.loads(frame)
    assert_conforms(msg, RealtimeClientEventParam)
    assert extra_fields(SessionUpdateEvent.model_validate(msg)) == []
    session = msg["session"]
    assert session["tool_choice"] == "auto"
    assert session["tools"] == [
        {
            "type": "function",
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": WEATHER.parameters,
        },
        {
            "type": "function",
            "name": "hang_up",
            "description": "End the call.",
            "parameters": {"type": "object", "properties": {}},
        },
    ]


def test_no_tools_no_tool_fields() -> None:
    session = json.loads(OpenAIRealtimeCodec(model="m", voice="v", instructions="i").start()[0])
    assert "tools" not in session["session"]
    assert "tool_choice" not in session["session"]


def test_from_config_takes_the_tools() -> None:
    config = AgentConfig.for_provider("openai", api_key="k", tools=(HANG_UP,))
    session = json.loads(OpenAIRealtimeCodec.from_config(config).start()[0])["session"]
    assert [tool["name"] for tool in session["tools"]] == ["hang_up"]


@pytest.mark.parametrize(
    "tools",
    [
        (Function("get weather", "d"),),
        (Function("", "d"),),
        (Function("x" * 65, "d"),),
        (HANG_UP, HANG_UP),
        (Function("f", "d", {"type": "string"}),),
    ],
)
def test_bad_declarations_are_our_bug(tools: tuple[Function, ...]) -> None:
    with pytest.raises(ValueError):
        OpenAIRealtimeCodec(model="m", voice="v", instructions="i", tools=tools)


# -- calls in ----------------------------------------------------------------------------------


def test_arguments_done_is_a_tool_call() -> None:
    assert codec().feed(json.dumps(ARGUMENTS_DONE)) == [
        ToolCall("call_001", "get_weather", '{"city": "Paris"}')
    ]


def test_function_call_item_is_a_tool_call() -> None:
    assert codec().feed(json.dumps(OUTPUT_ITEM_DONE)) == [
        ToolCall("call_001", "get_weather", '{"city": "Paris"}')
    ]


@pytest.mark.parametrize(
    "order", [(ARGUMENTS_DONE, OUTPUT_ITEM_DONE), (OUTPUT_ITEM_DONE, ARGUMENTS_DONE)]
)
def test_one_tool_call_per_call_id(order: tuple[dict[str, Any], ...]) -> None:
    c = codec()
    first, second = (c.feed(json.dumps(frame)) for frame in order)
    assert first == [ToolCall("call_001", "get_weather", '{"city": "Paris"}')]
    assert second == []
    assert c.feed(call("call_002")) == [ToolCall("call_002", "get_weather", '{"city": "Paris"}')]


def test_other_output_items_are_not_calls() -> None:
    assert codec().feed(json.dumps(MESSAGE_ITEM_DONE)) == []


def test_arguments_are_passed_on_unparsed() -> None:
    # The model wrote them: the agent side checks them against the schema, not the codec.
    (event,) = codec().feed(call(arguments="{not json"))
    assert isinstance(event, ToolCall) and event.arguments == "{not json"


# -- outputs out -------------------------------------------------------------------------------


def test_tool_result_is_an_output_item_then_a_response() -> None:
    c = codec()
    c.feed(json.dumps(ARGUMENTS_DONE))
    c.feed(json.dumps(RESPONSE_DONE))
    item, response = c.encode(ToolResult("call_001", "get_weather", '{"temp": 21}'))
    event = sdk_client_event(item)
    assert event.type == "conversation.item.create"
    assert json.loads(item)["item"] == {
        "type": "function_call_output",
        "call_id": "call_001",
        "output": '{"temp": 21}',
    }
    assert json.loads(response) == {"type": "response.create"}
    sdk_client_event(response)


def test_parallel_calls_get_one_response_after_the_last_output() -> None:
    c = codec()
    c.feed(call("call_a"))
    c.feed(call("call_b", name="hang_up", arguments="{}"))
    c.feed(json.dumps(RESPONSE_DONE))
    (item,) = c.encode(ToolResult("call_b", "hang_up", "ok"))
    assert json.loads(item)["item"]["call_id"] == "call_b"
    item, response = c.encode(ToolResult("call_a", "get_weather", "{}"))
    assert json.loads(item)["item"]["call_id"] == "call_a"
    assert json.loads(response)["type"] == "response.create"


def test_a_new_response_releases_unanswered_calls() -> None:
    c = codec()
    c.feed(call("call_a"))
    c.feed(call("call_b"))
    c.feed(json.dumps(RESPONSE_DONE))
    c.feed(json.dumps(RESPONSE_CREATED))  # the caller spoke: call_b's output never comes
    c.feed(json.dumps(RESPONSE_DONE))
    assert len(c.encode(ToolResult("call_a", "get_weather", "{}"))) == 2


def test_a_result_for_an_unknown_call_still_goes_out() -> None:
    # The server answers an unknown call_id with an error event; that is the server's call.
    item, response = codec().encode(ToolResult("call_zzz", "hang_up", ""))
    assert json.loads(item)["item"]["output"] == ""
    sdk_client_event(item)
    sdk_client_event(response)


# -- hostile -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        call(call_id=None),
        call(call_id=""),
        call(call_id="c" * 129),
        call(call_id="call 1"),
        call(call_id=7),
        call(name=None),
        call(name="get weather"),
        call(name="x" * 65),
        call(name="ÿ"),
        call(arguments={"city": "Paris"}),
        call(arguments=None),
        call(arguments='"' + "a" * MAX_ARGUMENTS_BYTES + '"'),
        call(arguments="é" * (MAX_ARGUMENTS_BYTES // 2 + 1)),  # short in chars, long in bytes
        json.dumps({**OUTPUT_ITEM_DONE, "item": "function_call"}),
        json.dumps({**OUTPUT_ITEM_DONE, "item": {**OUTPUT_ITEM_DONE["item"], "call_id": None}}),
        json.dumps({**OUTPUT_ITEM_DONE, "item": {**OUTPUT_ITEM_DONE["item"], "arguments": 5}}),
    ],
)
def test_hostile_tool_calls_raise_and_codec_stays_usable(frame: str) -> None:
    c = codec()
    with pytest.raises(ProtocolError) as raised:
        c.feed(frame)
    assert "Paris" not in raised.value.reason and "aaaa" not in raised.value.reason
    assert c.feed(json.dumps(ARGUMENTS_DONE)) == [
        ToolCall("call_001", "get_weather", '{"city": "Paris"}')
    ]
    assert c.feed(json.dumps(RESPONSE_DONE)) == [ResponseDone()]


def test_arguments_at_the_cap_are_accepted() -> None:
    arguments = '"' + "a" * (MAX_ARGUMENTS_BYTES - 2) + '"'
    (event,) = codec().feed(call(arguments=arguments))
    assert isinstance(event, ToolCall) and event.arguments == arguments


def test_a_flood_of_calls_is_refused_and_bounded() -> None:
    c = codec()
    for n in range(MAX_CALLS_PER_RESPONSE):
        assert len(c.feed(call(f"call_{n}"))) == 1
    with pytest.raises(ProtocolError, match="too many"):
        c.feed(call("call_more"))
    # The next response starts afresh; the ids remembered stay bounded.
    for r in range(10):
        c.feed(json.dumps(RESPONSE_CREATED))
        for n in range(MAX_CALLS_PER_RESPONSE):
            c.feed(call(f"call_{r}_{n}"))
    assert len(c._seen_calls._ids) <= c._seen_calls.limit
    c.feed(json.dumps(RESPONSE_CREATED))
    assert c.feed(call("call_0")) == [ToolCall("call_0", "get_weather", '{"city": "Paris"}')]
