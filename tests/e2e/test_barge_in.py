"""Barge-in: the caller talks over the agent; the carrier's buffer is cleared and the
provider is told how much of its answer the caller actually heard."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import UNIT
from tests.e2e.carrier import caller_audio, eventually, metric, place_call

pytestmark = pytest.mark.e2e

SENT = 50  # 1 s of caller audio, echoed back by the fake as the agent's answer
PROVIDER_ERRORS = "voicegw_provider_errors_total"


def sent_of(fake, kind: str) -> list[dict]:
    return [m for m in fake.received if isinstance(m, dict) and m.get("type") == kind]


@pytest.mark.parametrize("ack_marks", [True, False], ids=["acks-marks", "no-acks"])
@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
async def test_openai_barge_in_truncates_at_what_was_heard(
    make_gateway, openai_fake, carrier, ack_marks
):
    openai_fake.response_done_every = 0  # one long answer: a single item
    gw = await make_gateway("openai")
    leg = await place_call(gw, carrier, ack_marks=ack_marks)
    await leg.play(caller_audio(SENT), realtime=False)
    # The gateway paces the answer at real time: stop halfway through it.
    await leg.wait_audio(SENT // 2)
    assert not leg.clears
    if ack_marks:
        await eventually(lambda: leg.acked_ms > 0, 2 * UNIT, "a mark acknowledged")
    leg.ack_marks = False  # freeze what the caller is known to have heard
    # A barrier: the gateway reads the carrier's frames in order, so once one more caller
    # frame has reached the provider, every ack sent before it has been read.
    before = len(openai_fake.audio)
    await leg.play(caller_audio(1), realtime=False)
    async with asyncio.timeout(2 * UNIT):
        await openai_fake.wait_until(lambda: len(openai_fake.audio) == before + 1)
    acked_ms = leg.acked_ms
    item_id = openai_fake._responses[openai_fake.current][1]

    await openai_fake.speech_started()

    await eventually(lambda: leg.clears, 2 * UNIT, "clear sent to the carrier")
    async with asyncio.timeout(2 * UNIT):
        await openai_fake.wait_until(lambda: sent_of(openai_fake, "conversation.item.truncate"))
    assert len(sent_of(openai_fake, "response.cancel")) == 1
    [truncate] = sent_of(openai_fake, "conversation.item.truncate")
    assert truncate["item_id"] == item_id
    assert truncate["audio_end_ms"] <= len(leg.audio) // 8  # never more than was sent
    assert truncate["audio_end_ms"] == acked_ms  # exactly what the carrier acknowledged
    if ack_marks:
        assert acked_ms > 0
    # The rest of the interrupted answer is dropped, not played after the clear.
    await asyncio.sleep(0.3 * UNIT)
    assert len(leg.payloads) == leg.clears[0], "audio sent after the clear"
    assert len(leg.payloads) < SENT
    # The call goes on: new caller audio still reaches the provider.
    before = len(openai_fake.audio)
    await leg.play(caller_audio(3), realtime=False)
    async with asyncio.timeout(2 * UNIT):
        await openai_fake.wait_until(lambda: len(openai_fake.audio) == before + 3)
    await leg.stop()


@pytest.mark.parametrize("provider", ["deepgram", "gemini"])
async def test_barge_in_clears_the_carrier(make_gateway, deepgram_fake, gemini_fake, provider):
    gw = await make_gateway(provider)
    leg = await place_call(gw, "twilio")
    await leg.play(caller_audio(SENT), realtime=False)
    await leg.wait_audio(SENT // 4)
    assert not leg.clears

    if provider == "deepgram":
        await deepgram_fake.user_started_speaking()
    else:
        await gemini_fake.interrupted()

    await eventually(lambda: leg.clears, 2 * UNIT, "clear sent to the carrier")
    await asyncio.sleep(0.3 * UNIT)
    assert len(leg.payloads) == leg.clears[0], "audio sent after the clear"
    await leg.stop()


@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
async def test_openai_barge_in_after_the_answer_ended_cancels_nothing(
    make_gateway, openai_fake, carrier
):
    # Every echoed frame is a whole response (response.done follows each delta): when the
    # caller talks, the answer is still playing at the carrier but no response is in progress.
    gw = await make_gateway("openai")
    leg = await place_call(gw, carrier)
    errors = metric(PROVIDER_ERRORS, provider="openai", kind="error")
    await leg.play(caller_audio(SENT), realtime=False)
    await leg.wait_audio(SENT // 4)

    await openai_fake.speech_started()

    await eventually(lambda: leg.clears, 2 * UNIT, "clear sent to the carrier")
    async with asyncio.timeout(2 * UNIT):
        await openai_fake.wait_until(lambda: sent_of(openai_fake, "conversation.item.truncate"))
    # New caller audio reaches the provider after the barge-in: whatever it answered to the
    # barge-in has been read by the gateway by the time that audio is echoed back.
    before = len(leg.payloads)
    await leg.play(caller_audio(3), realtime=False)
    await leg.wait_audio(before + 3)
    assert metric(PROVIDER_ERRORS, provider="openai", kind="error") == errors
    assert openai_fake.errors_sent == []
    assert sent_of(openai_fake, "response.cancel") == []
    await leg.stop()
