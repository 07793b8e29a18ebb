"""DTMF through the real Bridge: keys the caller presses reach the agent as its protocol
allows (OpenAI: a user text item ``"DTMF: <digit>"`` and ``response.create``; Deepgram:
``InjectUserMessage``; Gemini: realtime text), in order, whether pressed in the call or
while the provider is still connecting (the frames wait in the stream until the Bridge reads
them). A stream that never sends ``start`` is closed after ``START_TIMEOUT_S``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.media import endpoints
from tests.conftest import UNIT
from tests.e2e.carrier import (
    Leg,
    answer,
    caller_audio,
    dumps,
    eventually,
    open_stream,
    place_call,
)

pytestmark = pytest.mark.e2e

DIGITS = ["5", "#", "0", "*"]


def dtmf_frame(leg: Leg, digit: str) -> str:
    """A carrier's ``dtmf`` message on ``leg``'s stream, as Twilio / Telnyx send it."""
    header = leg.frames._header()  # stream id and the next sequence number
    if leg.ticket.carrier == "twilio":
        return dumps(
            {"event": "dtmf", **header, "dtmf": {"track": "inbound_track", "digit": digit}}
        )
    return dumps({"event": "dtmf", **header, "dtmf": {"digit": digit}})


def digits_received(fake: Any, provider: str) -> list[str]:
    """The DTMF digits ``fake`` received, in order, in its provider's protocol."""
    found: list[str] = []
    for i, msg in enumerate(fake.received):
        if not isinstance(msg, dict):
            continue
        text: object = None
        if provider == "openai" and msg.get("type") == "conversation.item.create":
            [content] = msg["item"]["content"]
            text = content["text"]
            # Each key press asks for an answer to it.
            follows = fake.received[i + 1] if i + 1 < len(fake.received) else None
            assert isinstance(follows, dict) and follows.get("type") == "response.create"
        elif provider == "deepgram" and msg.get("type") == "InjectUserMessage":
            text = msg["content"]
        elif provider == "gemini" and "text" in msg.get("realtimeInput", {}):
            text = msg["realtimeInput"]["text"]
        if isinstance(text, str) and text.startswith("DTMF: "):
            found.append(text.removeprefix("DTMF: "))
    return found


@pytest.fixture
def fakes(openai_fake, deepgram_fake, gemini_fake) -> dict[str, Any]:
    return {"openai": openai_fake, "deepgram": deepgram_fake, "gemini": gemini_fake}


async def wait_digits(fake: Any, provider: str, digits: list[str]) -> None:
    await eventually(
        lambda: len(digits_received(fake, provider)) >= len(digits), 5 * UNIT, f"{digits}"
    )
    assert digits_received(fake, provider) == digits


@pytest.mark.parametrize("provider", ["openai", "deepgram", "gemini"])
@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
async def test_dtmf_in_call_reaches_the_provider(make_gateway, fakes, carrier, provider):
    fake = fakes[provider]
    gw = await make_gateway(provider)
    leg = await place_call(gw, carrier)
    await leg.play(caller_audio(25), realtime=False)
    async with asyncio.timeout(5 * UNIT):
        await fake.wait_until(lambda: len(fake.audio) >= 1)  # the call is up
    for digit in DIGITS:
        await leg.send_raw(dtmf_frame(leg, digit))
    await wait_digits(fake, provider, DIGITS)
    # The call goes on.
    before = len(fake.audio)
    await leg.play(caller_audio(25), realtime=False)
    async with asyncio.timeout(5 * UNIT):
        await fake.wait_until(lambda: len(fake.audio) > before)
    await leg.stop()
    await gw.wait_ended(leg.ticket)


async def test_dtmf_while_the_provider_connects_reaches_it_once_ready(make_gateway, openai_fake):
    """Keys pressed after ``start`` while the provider has not yet confirmed its session wait
    in the stream and reach it after its set-up, in order."""
    openai_fake.answer_setup = False
    gw = await make_gateway("openai")
    leg = await place_call(gw, "twilio")
    async with asyncio.timeout(5 * UNIT):
        await openai_fake.wait_until(
            lambda: any(
                isinstance(m, dict) and m.get("type") == "session.update"
                for m in openai_fake.received
            )
        )
    for digit in ("7", "8"):
        await leg.send_raw(dtmf_frame(leg, digit))
    # The provider confirms its session only now.
    await openai_fake.send_json(
        {
            "type": "session.updated",
            "event_id": openai_fake.next_id("event"),
            "session": {"id": "sess_fake", "object": "realtime.session", **openai_fake.session},
        }
    )
    await wait_digits(openai_fake, "openai", ["7", "8"])
    kinds = [m.get("type") for m in openai_fake.received if isinstance(m, dict)]
    assert kinds.index("session.update") < kinds.index("conversation.item.create")
    await leg.stop()
    await gw.wait_ended(leg.ticket)


@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
async def test_a_stream_without_start_is_closed_after_the_start_timeout(
    make_gateway, monkeypatch, carrier
):
    monkeypatch.setattr(endpoints, "START_TIMEOUT_S", 0.5 * UNIT)
    gw = await make_gateway("echo")
    ticket = await answer(gw, carrier)
    leg = await open_stream(gw, ticket, send_start=False)
    connected, _ = leg.frames.opening()
    await leg.send_raw(dumps(connected))
    for _ in range(3):  # key presses do not stand in for start
        await leg.send_raw(dtmf_frame(leg, "9"))
    assert await leg.wait_closed(within=10 * UNIT) == 1008
    assert not len(gw.runtime.lifecycle)
