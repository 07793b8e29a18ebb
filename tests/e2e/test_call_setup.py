"""``voicegw_call_setup_seconds``: every stage of a call's set-up observed once per call, from
the stream's upgrade to the first caller frame forwarded to the agent."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import UNIT
from tests.e2e.carrier import answer, caller_audio, metric, open_stream, place_call

pytestmark = pytest.mark.e2e

STAGES = ("start", "claim", "provider", "answer", "first_frame", "total")
NAME = "voicegw_call_setup_seconds"


def counts() -> dict[str, float]:
    return {stage: metric(f"{NAME}_count", stage=stage) for stage in STAGES}


def sums() -> dict[str, float]:
    return {stage: metric(f"{NAME}_sum", stage=stage) for stage in STAGES}


@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
async def test_each_stage_is_observed_once_per_call(make_gateway, openai_fake, carrier):
    gw = await make_gateway("openai")
    before_counts, before_sums = counts(), sums()
    leg = await place_call(gw, carrier)
    # Nothing counts as set up before a caller frame reached the agent.
    assert counts()["first_frame"] == before_counts["first_frame"]
    await leg.play(caller_audio(10))
    async with asyncio.timeout(5 * UNIT):
        await openai_fake.wait_until(lambda: len(openai_fake.audio) >= 10)
    await leg.stop()
    await gw.wait_ended(leg.ticket)
    after_counts, after_sums = counts(), sums()
    assert {s: after_counts[s] - before_counts[s] for s in STAGES} == dict.fromkeys(STAGES, 1)
    spent = {s: after_sums[s] - before_sums[s] for s in STAGES}
    assert all(v >= 0 for v in spent.values()), spent
    # The total is the stages end to end.
    parts = sum(spent[s] for s in STAGES if s != "total")
    assert spent["total"] == pytest.approx(parts, rel=1e-6, abs=1e-9)


async def test_a_refused_stream_ends_no_set_up(make_gateway):
    gw = await make_gateway("echo")
    before = counts()
    leg = await open_stream(gw, await answer(gw, "twilio"), token="not-the-token")
    await leg.wait_closed()
    after = counts()
    assert after["start"] == before["start"] + 1  # the start frame came
    assert after["claim"] == before["claim"] and after["total"] == before["total"]
