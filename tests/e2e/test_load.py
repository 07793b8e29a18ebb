"""Fifty concurrent calls through one gateway process at real-time pace lose no frame."""

from __future__ import annotations

import asyncio
import logging
import random
import time

import pytest

from providers.ai.echo import ULAW_ABS
from tests.conftest import UNIT
from tests.e2e.carrier import FRAME, metric, metric_sum, place_call

pytestmark = pytest.mark.e2e

CALLS = 50
FRAMES = 150  # 3 s per call
# Quiet mu-law codes (|sample| < 300): the echo agent's VAD never hears speech in them, so it
# echoes every frame (no utterance starts, nothing is interrupted).
QUIET = bytes(b for b in range(256) if ULAW_ABS[b] < 300)

log = logging.getLogger(__name__)


def unique_audio(seed: int) -> bytes:
    """Random quiet audio, different for every call (so crossed streams would show)."""
    rng = random.Random(seed)
    return bytes(rng.choice(QUIET) for _ in range(FRAMES * FRAME))


async def test_fifty_concurrent_calls_lose_no_frame(make_gateway):
    gw = await make_gateway("echo")
    dropped = metric_sum("voicegw_media_frames_dropped_total")
    relayed = metric("voicegw_media_frames_total", carrier="twilio", direction="to_carrier")

    async def one_call(i: int) -> tuple[bytes, bytes, float]:
        audio = unique_audio(i)
        leg = await place_call(gw, "twilio")
        began = time.perf_counter()
        await leg.play(audio)
        await leg.wait_audio(FRAMES, within=5 * UNIT)
        took = time.perf_counter() - began
        await leg.stop()
        return audio, leg.audio, took

    began = time.perf_counter()
    async with asyncio.timeout(25 * UNIT):
        results = await asyncio.gather(*(one_call(i) for i in range(CALLS)))
    wall = time.perf_counter() - began

    for i, (sent, received, _) in enumerate(results):
        assert received == sent, f"call {i}: {len(received) // FRAME} of {FRAMES} frames back"
    assert metric_sum("voicegw_media_frames_dropped_total") == dropped
    assert (
        metric("voicegw_media_frames_total", carrier="twilio", direction="to_carrier")
        == relayed + CALLS * FRAMES
    )
    for _ in range(int(100 * UNIT)):
        if not await gw.runtime.registry.list_active():
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("calls still active after every stream ended")
    slowest = max(took for _, _, took in results)
    log.warning(
        "%d calls in %.2f s wall; slowest call %.2f s for 3 s of audio", CALLS, wall, slowest
    )
