"""Tools end to end over real loopback sockets: the session declares the tools, the fake model
calls one, the session reports the ToolCall, the ToolResult goes back and the fake sees the
provider's output frame."""

from __future__ import annotations

import asyncio
import json

import pytest
from deepgram.agent.v1.types import AgentV1FunctionCallCancelled, AgentV1FunctionCallRequest
from google.genai import types
from websockets.asyncio.client import connect as ws_connect

from providers.ai.config import Function
from providers.events import ResponseDone, ResumptionHandle, ToolCall, ToolCancelled, ToolResult
from tests.conftest import UNIT
from tests.fakes.deepgram_agent import FakeDeepgramAgent
from tests.fakes.gemini_live import FakeGeminiLive
from tests.fakes.openai_realtime import FakeOpenAIRealtime
from tests.providers.ai.test_openai_realtime import SERVER_EVENT
from tests.providers.ai.test_session import config, connected, events_until, recv_until

pytestmark = pytest.mark.usefixtures("ws_client")

LOOKUP = Function(
    "lookup_order",
    "Find an order by its number.",
    {
        "type": "object",
        "properties": {"order": {"type": "string", "description": "The order number."}},
        "required": ["order"],
    },
)
HANG_UP = Function("hang_up", "End the call politely.")
TOOLS = (LOOKUP, HANG_UP)


async def test_openai_tool_round_trip() -> None:
    async with FakeOpenAIRealtime(api_key="sk-test") as fake:
        session = await connected(config("openai", fake.url, "sk-test", tools=TOOLS))
        try:
            assert [(t["name"], t["parameters"]) for t in fake.tools] == [
                ("lookup_order", LOOKUP.parameters),
                ("hang_up", HANG_UP.parameters),
            ]
            assert fake.session["tool_choice"] == "auto"
            call_id = await fake.call_tool("lookup_order", '{"order": "A-17"}')
            assert await recv_until(session, ToolCall) == ToolCall(
                call_id, "lookup_order", '{"order": "A-17"}'
            )
            # Reported once although the fake announced it twice (arguments.done, item.done).
            events = await events_until(session, ResponseDone)
            assert not any(isinstance(e, ToolCall) for e in events)
            created = len(fake.created)
            await session.send(ToolResult(call_id, "lookup_order", '{"status": "shipped"}'))
            async with asyncio.timeout(5 * UNIT):
                assert await fake.wait_tool_output(call_id) == '{"status": "shipped"}'
                await fake.wait_until(lambda: len(fake.created) > created)
            kinds = [m.get("type") for m in fake.received if isinstance(m, dict)]
            assert kinds[-2:] == ["conversation.item.create", "response.create"]
            assert fake.errors_sent == []
            # The model goes on speaking.
            await recv_until(session, ResponseDone)
        finally:
            await session.close()


async def test_openai_fake_refuses_an_output_for_a_call_never_made() -> None:
    async with FakeOpenAIRealtime(api_key="sk-test") as fake:
        session = await connected(config("openai", fake.url, "sk-test", tools=TOOLS))
        try:
            await session.send(ToolResult("call_nope", "hang_up", "{}"))
            async with asyncio.timeout(5 * UNIT):
                await fake.wait_until(lambda: "invalid_value" in fake.errors_sent)
            assert fake.tool_outputs == {}
        finally:
            await session.close()


async def test_deepgram_tool_round_trip() -> None:
    async with FakeDeepgramAgent(api_key="dg-test") as fake:
        session = await connected(config("deepgram", fake.url, "dg-test", tools=TOOLS))
        try:
            assert [(f["name"], f["parameters"]) for f in fake.tools] == [
                ("lookup_order", LOOKUP.parameters),
                ("hang_up", HANG_UP.parameters),
            ]
            # A server-side call is the server's business: no ToolCall for it.
            await fake.call_tool("hang_up", "{}", client_side=False)
            call_id = await fake.call_tool("lookup_order", '{"order": "A-17"}')
            assert await recv_until(session, ToolCall) == ToolCall(
                call_id, "lookup_order", '{"order": "A-17"}'
            )
            await session.send(ToolResult(call_id, "lookup_order", '{"status": "shipped"}'))
            async with asyncio.timeout(5 * UNIT):
                assert await fake.wait_tool_output(call_id) == '{"status": "shipped"}'
            await fake.cancel_tools(["fc_other"])
            assert await recv_until(session, ToolCancelled) == ToolCancelled(("fc_other",))
        finally:
            await session.close()


async def test_gemini_tool_round_trip() -> None:
    async with FakeGeminiLive(api_key="g-test") as fake:
        session = await connected(config("gemini", fake.url, "g-test", tools=TOOLS))
        try:
            assert [(d["name"], d["parametersJsonSchema"]) for d in fake.tools] == [
                ("lookup_order", LOOKUP.parameters),
                ("hang_up", HANG_UP.parameters),
            ]
            call_id = await fake.call_tool("lookup_order", {"order": "A-17"})
            event = await recv_until(session, ToolCall)
            assert isinstance(event, ToolCall)
            assert (event.call_id, event.name) == (call_id, "lookup_order")
            assert json.loads(event.arguments) == {"order": "A-17"}
            await session.send(ToolResult(call_id, "lookup_order", '{"status": "shipped"}'))
            async with asyncio.timeout(5 * UNIT):
                assert await fake.wait_tool_output(call_id) == {"status": "shipped"}
            await recv_until(session, ResponseDone)  # the model goes on
            other = await fake.call_tool("hang_up", {})
            await fake.cancel_tools([other])
            assert await recv_until(session, ToolCancelled) == ToolCancelled((other,))
            assert fake.connections  # the fake found nothing to refuse
        finally:
            await session.close()


async def test_gemini_resumption_declares_the_same_tools() -> None:
    async with FakeGeminiLive(api_key="g-test") as fake:
        session = await connected(config("gemini", fake.url, "g-test", tools=TOOLS))
        try:
            await recv_until(session, ResumptionHandle)
            await fake.go_away("5s")
            # The session resumes while someone receives; the new socket's call arrives.
            receiver = asyncio.create_task(recv_until(session, ToolCall))
            async with asyncio.timeout(5 * UNIT):
                await fake.wait_until(lambda: len(fake.setups) == 2 and bool(fake.connections))
            assert fake.resumed_with == [None, "handle-1"]
            assert fake.setups[1]["tools"] == fake.setups[0]["tools"]
            assert len(fake.tools) == 2
            call_id = await fake.call_tool("hang_up", {})
            async with asyncio.timeout(5 * UNIT):
                assert await receiver == ToolCall(call_id, "hang_up", "{}")
        finally:
            await session.close()


async def test_fake_tool_call_frames_are_valid_server_messages() -> None:
    # What each fake sends for a call parses as its SDK's server message type.
    async with FakeOpenAIRealtime(api_key="sk-test") as fake:
        async with ws_connect(
            f"{fake.url}?model=m", additional_headers={"Authorization": "Bearer sk-test"}
        ) as ws:
            await ws.recv()  # session.created
            await fake.call_tool("hang_up", "{}")
            async with asyncio.timeout(5 * UNIT):
                frames = [json.loads(await ws.recv()) for _ in range(6)]
    assert [f["type"] for f in frames][-1] == "response.done"
    for frame in frames:
        SERVER_EVENT.validate_python(frame)
    async with FakeDeepgramAgent(api_key="dg-test") as fake:
        async with ws_connect(
            fake.url, additional_headers={"Authorization": "Token dg-test"}
        ) as ws:
            await ws.recv()  # Welcome
            await fake.call_tool("hang_up", "{}")
            await fake.cancel_tools(["fc_x"])
            async with asyncio.timeout(5 * UNIT):
                request, cancelled = [json.loads(await ws.recv()) for _ in range(2)]
    AgentV1FunctionCallRequest.model_validate(request)
    AgentV1FunctionCallCancelled.model_validate(cancelled)
    async with FakeGeminiLive(api_key="g-test") as fake:
        async with ws_connect(fake.url) as ws:
            await fake.wait_until(lambda: bool(fake.connections))
            await fake.call_tool("hang_up", {})
            await fake.cancel_tools(["x"])
            async with asyncio.timeout(5 * UNIT):
                for _ in range(2):
                    types.LiveServerMessage.model_validate(json.loads(await ws.recv()))
