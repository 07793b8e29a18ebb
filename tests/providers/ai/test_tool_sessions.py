"""Tools end to end over real loopback sockets: the session declares the tools, the fake model
calls one, the session reports the ToolCall, the ToolResult goes back and the fake sees the
provider's output frame."""

from __future__ import annotations

import asyncio

from providers.ai.config import Function
from providers.events import ResponseDone, ToolCall, ToolCancelled, ToolResult
from tests.conftest import UNIT
from tests.fakes.deepgram_agent import FakeDeepgramAgent
from tests.fakes.openai_realtime import FakeOpenAIRealtime
from tests.providers.ai.test_session import config, connected, events_until, recv_until

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
