"""Agents that act, end to end: per-number profiles reach each provider, tool calls reach the
customer's endpoint signed and their answers reach the model, and the built-in tools transfer
and end calls through the carriers' REST APIs.

The ``echo`` agent calls the n-th declared tool when the caller presses DTMF ``n`` (see
``providers.ai.echo``); the OpenAI, Deepgram and Gemini fakes call tools as their servers do.
Tool order in a profile: its own tools, then ``transfer_call``, then ``end_call``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from standardwebhooks import Webhook

from gateway.agents.http_tools import new_tool_secret
from gateway.records.base import AuditQuery, CallRecord
from providers.ai.echo import EchoSession
from tests.agents.endpoint import Answer, Endpoint
from tests.conftest import UNIT
from tests.e2e.carrier import Gateway, Leg, caller_audio, eventually, metric, place_call
from tests.e2e.test_dtmf import dtmf_frame

pytestmark = pytest.mark.e2e

SUPPORT, SALES, LEGAL = "+14155550199", "+14155550100", "+14155550111"
BILLING = "+14155550123"
ORDER_ID = (
    '{ type = "object", properties = { order_id = { type = "string" } }, required = ["order_id"] }'
)
WHEN = '{ type = "object", properties = { when = { type = "string" } }, required = ["when"] }'


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    server = Endpoint()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def handler_module(tmp_path: Path) -> str:
    """A Python tool handler next to the agents file (its directory listed in
    VOICEGW_TOOL_MODULES_PATH); a fresh module name per test (a module once imported is not
    imported again)."""
    name = f"e2e_tools_{secrets.token_hex(4)}"
    (tmp_path / f"{name}.py").write_text(
        "async def lookup_order(arguments, context):\n"
        "    return {'order': arguments['order_id'] or 'A1', 'agent': context.agent,\n"
        "            'status': 'shipped', 'caller': context.caller}\n"
    )
    return f"{name}:lookup_order"


def echo_agents(tmp_path: Path, endpoint: Endpoint) -> Path:
    path = tmp_path / "agents.toml"
    path.write_text(
        f"""
[agents.support]
default = true
numbers = ["{SUPPORT}"]
providers = ["echo"]
instructions = "You answer the support line."
transfer = {{ billing = "{BILLING}", desk = "sip:desk@pbx.example.com" }}

[[agents.support.tools]]
name = "lookup_order"
description = "Find an order"
parameters = {ORDER_ID}
handler = "{handler_module(tmp_path)}"

[[agents.support.tools]]
name = "book_callback"
description = "Book a callback"
parameters = {WHEN}
url = "{endpoint.url}"
send_caller = true
timeout_s = 1
"""
    )
    return path


async def echo_gateway(make_gateway, tmp_path: Path, endpoint: Endpoint) -> tuple[Gateway, str]:
    secret = new_tool_secret()
    gw = await make_gateway(
        "echo",
        VOICEGW_AGENTS_FILE=str(echo_agents(tmp_path, endpoint)),
        VOICEGW_TOOL_MODULES_PATH=str(tmp_path),  # the handler module's directory
        VOICEGW_TOOLS_SECRET=secret,
    )
    return gw, secret


def echo_of(gw: Gateway, leg: Leg) -> EchoSession:
    """The echo agent session of ``leg``'s call (in process)."""
    for bridge in gw.runtime.lifecycle:
        if bridge.call.carrier_call_id == leg.ticket.call_id:
            assert isinstance(bridge.agent, EchoSession)
            return bridge.agent
    raise AssertionError("no live bridge for the call")


async def record_of(gw: Gateway, call_id: str) -> CallRecord:
    """The call's durable record once it is closed (written just after the call ends)."""
    async with asyncio.timeout(5 * UNIT):
        for _ in itertools.count():
            record = await gw.runtime.store.get_call(call_id)
            if record is not None and record.outcome is not None:
                return record
            await asyncio.sleep(0.02)
    raise AssertionError("unreachable")


async def press(gw: Gateway, leg: Leg, digit: str, results: int) -> dict[str, Any]:
    """Press ``digit``; the tool output the echo agent got as its ``results``-th result."""
    echo = echo_of(gw, leg)
    await leg.send_raw(dtmf_frame(leg, digit))
    await eventually(lambda: len(echo.agent.tool_results) >= results, 5 * UNIT, "tool result")
    output: dict[str, Any] = orjson.loads(echo.agent.tool_results[results - 1].output)
    return output


# -- tools on the customer's side --------------------------------------------------------------


@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
async def test_tool_calls_reach_the_handler_and_the_signed_endpoint(
    make_gateway, tmp_path, endpoint, carrier
):
    gw, secret = await echo_gateway(make_gateway, tmp_path, endpoint)
    endpoint.answer = Answer(body=b'{"booked": "tomorrow 10:00"}')
    leg = await place_call(gw, carrier, to=SUPPORT)
    await leg.play(caller_audio(5))
    ok = metric("voicegw_tool_calls_total", agent="support", tool="book_callback", outcome="ok")

    # 1: the Python handler, in process; the caller's number is not given to it.
    assert await press(gw, leg, "1", 1) == {
        "order": "A1",
        "agent": "support",
        "status": "shipped",
        "caller": None,
    }
    # 2: the HTTP tool: a signed POST, the endpoint's JSON back to the model.
    assert await press(gw, leg, "2", 2) == {"booked": "tomorrow 10:00"}
    (request,) = endpoint.requests
    body = Webhook(secret).verify(request.body, request.headers)  # an independent verifier
    call = await gw.call(carrier, leg.ticket.call_id)
    assert call is not None
    assert body["type"] == "tool.call" and body["tool"] == "book_callback"
    assert body["agent"] == "support" and body["call_id"] == call.call_id
    assert body["arguments"] == {"when": ""}
    assert body["caller"] == "+15550100001"  # send_caller = true for this tool
    assert (
        metric("voicegw_tool_calls_total", agent="support", tool="book_callback", outcome="ok")
        == ok + 1
    )
    # The call went on: audio still comes back, the line is still up.
    heard = len(leg.payloads)
    await leg.play(caller_audio(10))
    await leg.wait_audio(heard + 1)
    assert (await gw.call(carrier, leg.ticket.call_id)).active  # type: ignore[union-attr]
    audited = await gw.runtime.store.query_audit(AuditQuery(action="call.tool"))
    tools = [(e.entity_id, e.detail["tool"], e.detail["outcome"]) for e in audited]
    assert (call.call_id, "book_callback", "ok") in tools
    assert all("arguments" not in e.detail and "output" not in e.detail for e in audited)
    await leg.stop()


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (Answer(delay_s=3.0), "timeout"),  # the tool's timeout_s is 1
        (Answer(status=500, body=b"{}"), "http_error"),
        (
            Answer(status=302, body=b"", headers={"location": "http://169.254.169.254/"}),
            "http_error",
        ),
        (Answer(body=b"<html>not json</html>"), "bad_answer"),
        (Answer(body=b'{"x": "' + b"y" * 20_000 + b'"}'), "too_large"),
    ],
    ids=["slow", "failing", "redirect", "not-json", "oversized"],
)
async def test_a_bad_endpoint_gives_the_model_an_error_and_the_call_goes_on(
    make_gateway, tmp_path, endpoint, answer, outcome
):
    gw, _ = await echo_gateway(make_gateway, tmp_path, endpoint)
    endpoint.answer = answer
    leg = await place_call(gw, "twilio", to=SUPPORT)
    await leg.play(caller_audio(5))
    output = await press(gw, leg, "2", 1)
    assert output["error"] == outcome
    assert len(endpoint.requests) == 1  # a redirect is not followed
    # The call goes on: the caller is still heard and the agent's next tool call works.
    heard = len(leg.payloads)
    await leg.play(caller_audio(10))
    await leg.wait_audio(heard + 1)
    assert (await press(gw, leg, "1", 2))["status"] == "shipped"
    assert leg.close_code is None
    await leg.stop()
    assert (await gw.wait_ended(leg.ticket)).ended_reason == "carrier_hangup"


# -- the built-in tools ------------------------------------------------------------------------


@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
async def test_transfer_call_moves_the_caller_to_the_configured_destination(
    make_gateway, tmp_path, endpoint, carrier
):
    gw, _ = await echo_gateway(make_gateway, tmp_path, endpoint)
    leg = await place_call(gw, carrier, to=SUPPORT)
    await leg.play(caller_audio(10))
    before = metric("voicegw_transfers_total", agent="support", outcome="ok")
    # 3: transfer_call; the echo agent picks the first key of the enum ("billing").
    await leg.send_raw(dtmf_frame(leg, "3"))
    ended = await gw.wait_ended(leg.ticket, 10 * UNIT)
    assert ended.ended_reason == "transferred"
    await leg.wait_closed()
    assert leg.close_code == 1000
    commands = gw.rest.requests_for(carrier)
    if carrier == "twilio":
        (update,) = [r for r in commands if r.call_id == leg.ticket.call_id]
        twiml = update.form()["Twiml"]
        assert f"<Dial><Number>{BILLING}</Number></Dial>" in twiml
        assert "Status" not in update.form()  # moved on, not hung up
    else:
        actions = [r.action for r in commands if r.call_id == leg.ticket.call_id]
        assert actions == ["answer", "streaming_start", "transfer"]
        transfer = next(r for r in commands if r.action == "transfer")
        assert transfer.json() == {"to": BILLING}
    assert metric("voicegw_transfers_total", agent="support", outcome="ok") == before + 1
    record = await record_of(gw, ended.call_id)
    assert (record.outcome, record.transfer_to, record.agent) == (
        "transferred",
        "billing",
        "support",
    )


async def test_end_call_hangs_up_after_the_last_words_are_played(make_gateway, tmp_path, endpoint):
    gw, _ = await echo_gateway(make_gateway, tmp_path, endpoint)
    leg = await place_call(gw, "twilio", to=SUPPORT)
    # The echo agent is still "talking" (the echo of this audio) when the caller presses 4.
    await leg.play(caller_audio(25))
    await leg.send_raw(dtmf_frame(leg, "4"))
    ended = await gw.wait_ended(leg.ticket, 10 * UNIT)
    assert ended.ended_reason == "agent_ended"
    # The agent's last words (the echo of that speech, less the quiet it drops) all reached
    # the caller, and the carrier confirmed playing them (a mark after the last frame,
    # acknowledged) before the hang-up.
    assert len(leg.payloads) >= 20
    assert leg.marks and leg.acked_ms == len(leg.payloads) * 20
    await eventually(
        lambda: any(r.form().get("Status") == "completed" for r in gw.rest.requests_for("twilio")),
        5 * UNIT,
        "REST hang-up",
    )
    record = await record_of(gw, ended.call_id)
    assert record.outcome == "agent_ended"


async def test_a_transfer_that_fails_is_told_to_the_model_and_the_call_goes_on(
    make_gateway, tmp_path, endpoint
):
    gw, _ = await echo_gateway(make_gateway, tmp_path, endpoint)
    from tests.fakes.carrier_rest import Behavior

    gw.rest.set_response("twilio", Behavior.SERVER_ERROR)
    leg = await place_call(gw, "twilio", to=SUPPORT)
    await leg.play(caller_audio(5))
    output = await press(gw, leg, "3", 1)
    assert output == {"error": "transfer_failed"}
    call = await gw.call("twilio", leg.ticket.call_id)
    assert call is not None and call.active
    assert leg.close_code is None
    gw.rest.set_response("twilio", Behavior.OK)
    await leg.stop()


# -- profiles per number at the real protocols -------------------------------------------------


def three_agents(tmp_path: Path, endpoint: Endpoint) -> Path:
    path = tmp_path / "agents.toml"
    tool = f"""
parameters = {ORDER_ID}
url = "{endpoint.url}"
"""
    path.write_text(
        f"""
[agents.support]
default = true
numbers = ["{SUPPORT}"]
providers = ["openai"]
instructions = "You are the SUPPORT line."
greeting = "Support here, hello."
[agents.support.openai]
voice = "cedar"
[[agents.support.tools]]
name = "lookup_order"
description = "Find an order"
{tool}

[agents.sales]
numbers = ["{SALES}"]
providers = ["deepgram"]
instructions = "You are the SALES line."
greeting = "Sales here, hello."
end_call = false
[agents.sales.deepgram]
voice = "aura-2-andromeda-en"
[[agents.sales.tools]]
name = "quote"
description = "Price a product"
{tool}

[agents.legal]
numbers = ["{LEGAL}"]
providers = ["gemini"]
instructions = "You are the LEGAL line."
transfer = {{ counsel = "sip:counsel@example.com" }}
[agents.legal.gemini]
voice = "Kore"
[[agents.legal.tools]]
name = "find_case"
description = "Find a case"
{tool}
"""
    )
    return path


async def test_each_number_gets_its_agent_at_its_provider(
    make_gateway, tmp_path, endpoint, openai_fake, deepgram_fake, gemini_fake
):
    secret = new_tool_secret()
    gw = await make_gateway(
        "openai",
        VOICEGW_AGENTS_FILE=str(three_agents(tmp_path, endpoint)),
        VOICEGW_TOOLS_SECRET=secret,
    )
    legs = [
        await place_call(gw, "twilio", to=SUPPORT),
        await place_call(gw, "telnyx", to=SALES),
        await place_call(gw, "twilio", to=LEGAL),
    ]
    for leg in legs:
        await leg.play(caller_audio(3))

    # OpenAI: the support agent's instructions, voice, greeting and tools.
    await openai_fake.wait_until(lambda: openai_fake.tools)
    session = openai_fake.session
    assert session["instructions"] == "You are the SUPPORT line."
    assert session["audio"]["output"]["voice"] == "cedar"
    assert [t["name"] for t in openai_fake.tools] == ["lookup_order", "end_call"]
    assert any("Support here, hello." in orjson.dumps(m).decode() for m in openai_fake.received)
    # Deepgram: the sales agent's (no end_call: its profile turns it off).
    await deepgram_fake.wait_until(lambda: deepgram_fake.settings is not None)
    agent = deepgram_fake.settings["agent"]
    assert agent["think"]["prompt"] == "You are the SALES line."
    assert agent["speak"]["provider"]["model"] == "aura-2-andromeda-en"
    assert agent["greeting"] == "Sales here, hello."
    assert [f["name"] for f in deepgram_fake.tools] == ["quote"]
    # Gemini: the legal agent's, with transfer_call limited to its table's keys.
    await gemini_fake.wait_until(lambda: gemini_fake.setups)
    setup = gemini_fake.setups[-1]
    assert setup["systemInstruction"]["parts"][0]["text"] == "You are the LEGAL line."
    voice = setup["generationConfig"]["speechConfig"]["voiceConfig"]["prebuiltVoiceConfig"]
    assert voice["voiceName"] == "Kore"
    declared = {d["name"]: d for d in gemini_fake.tools}
    assert list(declared) == ["find_case", "transfer_call", "end_call"]
    schema = declared["transfer_call"]["parametersJsonSchema"]
    assert schema["properties"]["destination"]["enum"] == ["counsel"]

    # A function call from each provider reaches the endpoint signed, and its answer goes back
    # to that provider as the function's output.
    endpoint.answer = Answer(body=b'{"found": true}')
    openai_id = await openai_fake.call_tool("lookup_order", '{"order_id": "A7"}')
    async with asyncio.timeout(5 * UNIT):
        assert orjson.loads(await openai_fake.wait_tool_output(openai_id)) == {"found": True}
    deepgram_id = await deepgram_fake.call_tool("quote", '{"order_id": "Q1"}')
    async with asyncio.timeout(5 * UNIT):
        assert orjson.loads(await deepgram_fake.wait_tool_output(deepgram_id)) == {"found": True}
    gemini_id = await gemini_fake.call_tool("find_case", {"order_id": "C3"})
    async with asyncio.timeout(5 * UNIT):
        assert await gemini_fake.wait_tool_output(gemini_id) == {"found": True}
    signed = [Webhook(secret).verify(r.body, r.headers) for r in endpoint.requests]
    assert [(b["agent"], b["tool"], b["arguments"]) for b in signed] == [
        ("support", "lookup_order", {"order_id": "A7"}),
        ("sales", "quote", {"order_id": "Q1"}),
        ("legal", "find_case", {"order_id": "C3"}),
    ]
    assert all("caller" not in b for b in signed)  # no tool here asked for the number
    for leg in legs:
        await leg.stop()
    calls = [await gw.wait_ended(leg.ticket) for leg in legs]
    assert [c.agent for c in calls] == ["support", "sales", "legal"]
    records = [await record_of(gw, c.call_id) for c in calls]
    assert [r.agent for r in records] == ["support", "sales", "legal"]


async def test_a_forged_answer_from_the_model_dials_nothing(
    make_gateway, tmp_path, endpoint, gemini_fake
):
    """The model may only name a key of the transfer table: a number of its choosing is
    refused before any carrier request."""
    gw = await make_gateway(
        "gemini",
        VOICEGW_AGENTS_FILE=str(three_agents(tmp_path, endpoint)),
        VOICEGW_TOOLS_SECRET=new_tool_secret(),
    )
    leg = await place_call(gw, "twilio", to=LEGAL)
    await leg.play(caller_audio(3))
    await gemini_fake.wait_until(lambda: gemini_fake.setups)
    before = len(gw.rest.requests)
    for forged in ({"destination": "+19005550100"}, {"destination": ""}, {}, {"to": "counsel"}):
        call_id = await gemini_fake.call_tool("transfer_call", forged)
        async with asyncio.timeout(5 * UNIT):
            assert await gemini_fake.wait_tool_output(call_id) == {"error": "unknown_destination"}
    assert len(gw.rest.requests) == before
    assert (await gw.call("twilio", leg.ticket.call_id)).active  # type: ignore[union-attr]
    await leg.stop()


# -- reloading the profiles --------------------------------------------------------------------


async def test_a_reload_changes_new_calls_and_refuses_a_bad_file(make_gateway, tmp_path, endpoint):
    gw, _ = await echo_gateway(make_gateway, tmp_path, endpoint)
    path = gw.settings.agents_file
    assert path is not None
    first = await place_call(gw, "twilio", to=SUPPORT)
    await first.play(caller_audio(3))
    old_digest = gw.runtime.agents.book.digest

    path.write_text(path.read_text() + "\n[agents.support.bogus]\n")
    refused = await gw.runtime.agents.reload()
    assert not refused.ok and any("bogus" in p for p in refused.problems)
    assert gw.runtime.agents.book.digest == old_digest  # the old profiles stay

    path.write_text(
        path.read_text()
        .replace("\n[agents.support.bogus]\n", "")
        .replace(
            'instructions = "You answer the support line."',
            'instructions = "You answer the support line."\nend_call = false',
        )
    )
    assert (await gw.runtime.agents.reload()).ok
    assert gw.runtime.agents.book.digest != old_digest
    # The call in progress keeps its profile (end_call still offered: digit 4 ends it) ...
    await first.send_raw(dtmf_frame(first, "4"))
    assert (await gw.wait_ended(first.ticket, 10 * UNIT)).ended_reason == "agent_ended"
    # ... a new call gets the new one (end_call gone: four tools became three).
    second = await place_call(gw, "twilio", to=SUPPORT)
    await second.play(caller_audio(3))
    assert [f.name for f in echo_of(gw, second).agent.tools] == [
        "lookup_order",
        "book_callback",
        "transfer_call",
    ]
    await second.stop()
    with contextlib.suppress(AssertionError):
        await first.wait_closed()


async def test_a_tool_the_agent_does_not_offer_is_refused(
    make_gateway, tmp_path, endpoint, openai_fake
):
    gw = await make_gateway(
        "openai",
        VOICEGW_AGENTS_FILE=str(three_agents(tmp_path, endpoint)),
        VOICEGW_TOOLS_SECRET=new_tool_secret(),
    )
    leg = await place_call(gw, "twilio", to=SUPPORT)
    await leg.play(caller_audio(3))
    await openai_fake.wait_until(lambda: bool(openai_fake.tools))
    before = metric("voicegw_tool_calls_total", agent="support", tool="unknown")
    # A made-up name, and another agent's tool: neither is this agent's to call.
    for name in ("rm_rf", "quote"):
        call_id = await openai_fake.call_tool(name, "{}")
        async with asyncio.timeout(5 * UNIT):
            output = await openai_fake.wait_tool_output(call_id)
        assert orjson.loads(output) == {"error": "unknown_tool"}
    assert endpoint.requests == []
    assert metric("voicegw_tool_calls_total", agent="support", tool="unknown") == before + 2
    await leg.stop()
