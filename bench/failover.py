"""Failover gap: a provider dies mid-call; how long until caller audio reaches the next one,
and how long the caller hears nothing.

    python bench/failover.py [--runs 20] [--json out.json]

One in-process gateway (``VOICEGW_PROVIDERS=openai,deepgram``) with the protocol fakes of the
test suite as providers (real WebSocket servers on loopback). Each run places a Twilio call
streaming at real-time pace, waits until audio flows through OpenAI, then the OpenAI fake drops
the connection abnormally (TCP abort, no close frame). Measured per run:

* ``to_next_ms``: abort → first caller frame received by the Deepgram fake (the target:
  under 300 ms);
* ``caller_gap_ms``: longest silence the caller hears around the abort (audio back stops,
  then resumes from Deepgram).

Baseline, measured in the same run: a fresh call's set-up to Deepgram (webhook → stream →
first caller frame at the provider), which is the least any move to a new provider can cost
that also has to open a session. Nothing is asserted; figures are printed and written as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from providers.breakers import BreakerPolicy, BreakerRegistry
from tests.e2e.carrier import (
    DEEPGRAM_KEY,
    OPENAI_KEY,
    TELNYX_API_KEY,
    TWILIO_TOKEN,
    answer,
    open_stream,
    start_gateway,
)
from tests.fakes.carrier_rest import FakeCarrierRest
from tests.fakes.deepgram_agent import FakeDeepgramAgent
from tests.fakes.openai_realtime import FakeOpenAIRealtime

QUIET = bytes([0xFE]) * 160  # near-silence: nothing in the path treats it as speech
FRAME_S = 0.02


async def _wait(predicate: Any, within: float = 10.0, step: float = 0.0005) -> float:
    """Poll ``predicate`` until true; return the perf_counter time it became true."""
    deadline = time.perf_counter() + within
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(step)
    return time.perf_counter()


async def _stream(leg: Any, stop: asyncio.Event) -> None:
    t0 = time.perf_counter()
    i = 0
    while not stop.is_set():
        delay = t0 + i * FRAME_S - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        with contextlib.suppress(Exception):
            await leg.send_audio(QUIET)
        i += 1


async def _arrivals(leg: Any, times: list[float], stop: asyncio.Event) -> None:
    seen = 0
    while not stop.is_set():
        if len(leg.payloads) > seen:
            now = time.perf_counter()
            times.extend([now] * (len(leg.payloads) - seen))
            seen = len(leg.payloads)
        await asyncio.sleep(0.001)


async def one_failover(gw: Any, openai: FakeOpenAIRealtime, deepgram: FakeDeepgramAgent) -> dict:
    # Every run's abort counts against OpenAI's breaker; start each run with it closed so
    # the call starts on OpenAI (a fifth failure would rightly open it).
    gw.runtime.dialer.breakers = BreakerRegistry.in_process(BreakerPolicy())
    leg = await open_stream(gw, await answer(gw, "twilio"))
    stop = asyncio.Event()
    back: list[float] = []
    tasks = [
        asyncio.create_task(_stream(leg, stop)),
        asyncio.create_task(_arrivals(leg, back, stop)),
    ]
    try:
        before = len(openai.audio)
        await _wait(lambda: len(openai.audio) >= before + 25)  # 0.5 s through OpenAI
        dg_before = len(deepgram.audio)
        aborted = time.perf_counter()
        openai.current.transport.abort()
        reached = await _wait(lambda: len(deepgram.audio) > dg_before)
        resumed = await _wait(lambda: bool(back) and back[-1] > reached)
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await leg.stop()
    gaps = [b - a for a, b in itertools.pairwise(back) if b > aborted - 0.1]
    return {
        "to_next_ms": (reached - aborted) * 1000,
        "caller_gap_ms": max(gaps) * 1000 if gaps else (resumed - aborted) * 1000,
    }


async def fresh_setup(gw: Any, deepgram: FakeDeepgramAgent) -> float:
    began = time.perf_counter()
    leg = await open_stream(gw, await answer(gw, "twilio"))
    before = len(deepgram.audio)
    await leg.send_audio(QUIET)
    reached = await _wait(lambda: len(deepgram.audio) > before)
    await leg.stop()
    return (reached - began) * 1000


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
    }


async def main(runs: int, out: str | None) -> None:
    logging.disable(logging.WARNING)  # the gateway logs each failover; the table says it all
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            FakeCarrierRest(twilio_auth_token=TWILIO_TOKEN, telnyx_api_key=TELNYX_API_KEY) as rest,
            FakeOpenAIRealtime(api_key=OPENAI_KEY) as openai,
            FakeDeepgramAgent(api_key=DEEPGRAM_KEY) as deepgram,
        ):
            env = {
                "OPENAI_API_KEY": OPENAI_KEY,
                "VOICEGW_OPENAI_REALTIME_URL": openai.url,
                "DEEPGRAM_API_KEY": DEEPGRAM_KEY,
                "VOICEGW_DEEPGRAM_AGENT_URL": deepgram.url,
                "VOICEGW_LOG_LEVEL": "ERROR",
            }
            async with start_gateway(
                Path(tmp), rest, VOICEGW_PROVIDERS="openai,deepgram", **env
            ) as gw:
                failovers = [await one_failover(gw, openai, deepgram) for _ in range(runs)]
            async with start_gateway(
                Path(tmp) / "baseline", rest, VOICEGW_PROVIDERS="deepgram", **env
            ) as gw:
                setups = [await fresh_setup(gw, deepgram) for _ in range(runs)]
    report(runs, failovers, setups, out)


def report(runs: int, failovers: list[dict], setups: list[float], out: str | None) -> None:
    result = {
        "bench": "failover",
        "runs": runs,
        "to_next_ms": _summary([f["to_next_ms"] for f in failovers]),
        "caller_gap_ms": _summary([f["caller_gap_ms"] for f in failovers]),
        "baseline_fresh_setup_ms": _summary(setups),
    }
    base = result["baseline_fresh_setup_ms"]["p50"]
    print(f"{'measure':<34}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
    for key in ("to_next_ms", "caller_gap_ms", "baseline_fresh_setup_ms"):
        s = result[key]
        print(f"{key:<34}{s['p50']:>9.1f}{s['p95']:>9.1f}{s['max']:>9.1f}")
    ratio = result["to_next_ms"]["p50"] / base
    print(f"failover (to next provider) / fresh set-up, p50: {ratio:.2f}x")
    if out:
        Path(out).write_text(json.dumps(result, indent=2))
        print(f"JSON: {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.json))
