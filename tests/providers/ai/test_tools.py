"""The shared tool checks, the echo provider's tool calls, and the declarations a failover
repeats: every session opened from one config declares the same tools."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from providers.ai.config import AgentConfig, AgentOptions, Function
from providers.ai.deepgram_agent import DeepgramAgentCodec
from providers.ai.echo import EchoAgent, EchoSession, sample_arguments
from providers.ai.gemini_live import GeminiLiveCodec
from providers.ai.openai_realtime import OpenAIRealtimeCodec
from providers.ai.tools import (
    MAX_ARGUMENTS_BYTES,
    SeenCalls,
    check_declared,
    output_object,
    tool_call,
)
from providers.events import AgentReady, Dtmf, ToolCall, ToolResult
from providers.exceptions import ProtocolError
from tests.conftest import UNIT

ORDER = Function(
    "lookup_order",
    "Find an order.",
    {
        "type": "object",
        "properties": {
            "order": {"type": "string"},
            "channel": {"type": "string", "enum": ["phone", "web"], "default": "web"},
            "count": {"type": "integer", "default": 3},
            "urgent": {"type": "boolean"},
            "ratio": {"type": "number"},
            "items": {"type": "array", "items": {"type": "string"}},
            "extra": {"type": "object"},
            "note": {"type": ["null", "string"]},
            "anything": {},
            "optional": {"type": "string", "default": "not sent"},
        },
        "required": [
            "order",
            "channel",
            "count",
            "urgent",
            "ratio",
            "items",
            "extra",
            "note",
            "anything",
        ],
    },
)
HANG_UP = Function("hang_up", "End the call.")
TRANSFER = Function(
    "transfer",
    "Transfer the call.",
    {"type": "object", "properties": {"to": {"enum": ["sales", "support"]}}, "required": ["to"]},
)


# -- shared checks -----------------------------------------------------------------------------


def test_tool_call_accepts_the_documented_shapes() -> None:
    assert tool_call("call_001", "get-weather_2", "{}") == ToolCall(
        "call_001", "get-weather_2", "{}"
    )
    assert tool_call("c" * 128, "n" * 64, "a" * MAX_ARGUMENTS_BYTES).name == "n" * 64


@pytest.mark.parametrize(
    ("call_id", "name", "arguments"),
    [
        (None, "f", "{}"),
        ("", "f", "{}"),
        ("c" * 129, "f", "{}"),
        ("a b", "f", "{}"),
        ("a\n", "f", "{}"),
        ("id", None, "{}"),
        ("id", "f.g", "{}"),
        ("id", "f" * 65, "{}"),
        ("id", "f", None),
        ("id", "f", {}),
        ("id", "f", "a" * (MAX_ARGUMENTS_BYTES + 1)),
    ],
)
def test_tool_call_refuses_hostile_fields(call_id: Any, name: Any, arguments: Any) -> None:
    with pytest.raises(ProtocolError):
        tool_call(call_id, name, arguments)


def test_output_object() -> None:
    assert output_object('{"a": 1}') == {"a": 1}
    assert output_object("[1]") == {"output": [1]}
    assert output_object("plain text") == {"output": "plain text"}


def test_seen_calls_reports_each_id_once_and_forgets_the_oldest() -> None:
    seen = SeenCalls(limit=2)
    a, b, c = (ToolCall(i, "f", "{}") for i in "abc")
    assert seen.first([a, a, b]) == [a, b]
    assert seen.first([a, c]) == [c]
    assert seen.first([a]) == [a]  # forgotten after two newer ids


def test_check_declared() -> None:
    assert check_declared([ORDER, HANG_UP]) == (ORDER, HANG_UP)
    for bad in ([HANG_UP, HANG_UP], [Function("a b", "d")], [Function("f", "d", {})]):
        with pytest.raises(ValueError):
            check_declared(bad)


# -- failover: the same tools wherever the call goes ------------------------------------------


def setup_tools(provider: str, config: AgentConfig) -> Any:
    match provider:
        case "openai":
            return json.loads(OpenAIRealtimeCodec.from_config(config).start()[0])["session"][
                "tools"
            ]
        case "deepgram":
            msg = json.loads(DeepgramAgentCodec.from_config(config).start()[0])
            return msg["agent"]["think"]["functions"]
        case _:
            return json.loads(GeminiLiveCodec.from_config(config).start()[0])["setup"]["tools"]


@pytest.mark.parametrize("provider", ["openai", "deepgram", "gemini"])
def test_two_sessions_from_one_config_declare_identical_tools(provider: str) -> None:
    options = AgentOptions(tools=(ORDER, HANG_UP))
    config = AgentConfig.for_provider(provider, api_key="k", options=options)
    first, second = setup_tools(provider, config), setup_tools(provider, config)
    assert first == second
    assert json.dumps(first, sort_keys=True).count('"lookup_order"') == 1
    assert len(first if provider != "gemini" else first[0]["functionDeclarations"]) == 2


def test_failover_target_declares_the_same_functions() -> None:
    # A call moved from OpenAI to Deepgram offers the model the same names and schemas.
    options = AgentOptions(tools=(ORDER, HANG_UP))
    openai = setup_tools("openai", AgentConfig.for_provider("openai", api_key="k", options=options))
    deepgram = setup_tools(
        "deepgram", AgentConfig.for_provider("deepgram", api_key="k", options=options)
    )
    gemini = setup_tools("gemini", AgentConfig.for_provider("gemini", api_key="k", options=options))
    as_pairs = [(t["name"], t["parameters"]) for t in openai]
    assert as_pairs == [(f["name"], f["parameters"]) for f in deepgram]
    assert as_pairs == [
        (d["name"], d["parametersJsonSchema"]) for d in gemini[0]["functionDeclarations"]
    ]


# -- echo --------------------------------------------------------------------------------------


def test_sample_arguments_fill_required_properties() -> None:
    assert sample_arguments(ORDER.parameters) == {
        "order": "",
        "channel": "phone",  # the first enum value wins over the default
        "count": 3,
        "urgent": False,
        "ratio": 0,
        "items": [],
        "extra": {},
        "note": "",
        "anything": None,
    }
    assert sample_arguments(HANG_UP.parameters) == {}
    assert sample_arguments({"type": "object", "required": "x"}) == {}
    assert sample_arguments({"type": "object", "properties": [], "required": ["x", 5]}) == {
        "x": None
    }


def test_echo_digit_n_calls_the_nth_tool() -> None:
    agent = EchoAgent(tools=(HANG_UP, TRANSFER, ORDER))
    assert agent.receive(Dtmf("2"), 0.0) == [ToolCall("echo_1", "transfer", '{"to":"sales"}')]
    assert agent.receive(Dtmf("1"), 0.0) == [ToolCall("echo_2", "hang_up", "{}")]
    (call,) = agent.receive(Dtmf("3"), 0.0)
    assert isinstance(call, ToolCall) and call.call_id == "echo_3"
    assert json.loads(call.arguments) == sample_arguments(ORDER.parameters)


@pytest.mark.parametrize("digit", ["0", "4", "9", "*", "#", "A", "", "12", "\uff11"])
def test_echo_digits_without_a_tool_do_nothing(digit: str) -> None:
    agent = EchoAgent(tools=(HANG_UP, TRANSFER, ORDER))
    assert agent.receive(Dtmf(digit), 0.0) == []
    assert agent.tool_calls == 0
    assert EchoAgent().receive(Dtmf("1"), 0.0) == []


def test_echo_remembers_tool_results() -> None:
    agent = EchoAgent(tools=(HANG_UP,))
    for n in range(70):
        assert agent.receive(ToolResult(f"echo_{n}", "hang_up", "ok"), 0.0) == []
    assert len(agent.tool_results) == 64
    assert agent.tool_results[-1] == ToolResult("echo_69", "hang_up", "ok")
    assert agent.pending == 0  # nothing echoed back


async def test_echo_session_tool_round_trip() -> None:
    config = AgentConfig.for_provider("echo", options=AgentOptions(tools=(HANG_UP, TRANSFER)))
    session = EchoSession(config)
    await session.connect()
    async with asyncio.timeout(5 * UNIT):
        assert await session.recv() == AgentReady()
        await session.send(Dtmf("2"))
        call = await session.recv()
    assert call == ToolCall("echo_1", "transfer", '{"to":"sales"}')
    await session.send(ToolResult("echo_1", "transfer", '{"ok": true}'))
    assert list(session.agent.tool_results) == [ToolResult("echo_1", "transfer", '{"ok": true}')]
    await session.close()
