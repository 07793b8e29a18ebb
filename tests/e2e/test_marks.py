"""Marks on the outbound audio, end to end: one after every ``MARK_EVERY_S`` of audio sent, and
one at the end of the audio once it pauses, so what the caller heard is always known. The
echo agent answers each caller frame at once, so the bridge plays most chunks straight from
``from_agent`` (nothing queued ahead) and the closing mark comes from the pause timer."""

from __future__ import annotations

import base64

import pytest

from gateway.media.audio import silence
from gateway.media.outbound import MARK_EVERY_S
from providers.events import PCMU_8K
from tests.conftest import UNIT
from tests.e2e.carrier import FRAME, Leg, eventually, place_call

pytestmark = pytest.mark.e2e

# Silence (the echo agent's level detector never starts an utterance: no barge-in), 48 frames:
# not a whole number of MARK_EVERY_S, so only the pause can mark the end.
QUIET_S = 0.96


def mark_positions(leg: Leg) -> list[int]:
    """Bytes of audio the carrier had received when each mark arrived (8 bytes per ms)."""
    received, positions = 0, []
    for event in list(leg.events):
        if event.get("event") == "media":
            received += len(base64.b64decode(event["media"]["payload"]))
        elif event.get("event") == "mark":
            positions.append(received)
    return positions


async def test_marks_every_interval_and_at_the_end_of_each_stretch_of_audio(make_gateway):
    gw = await make_gateway("echo")
    leg = await place_call(gw, "twilio")
    audio = silence(PCMU_8K, int(QUIET_S * 1000))
    frames = len(audio) // FRAME
    for stretch in (1, 2):
        await leg.play(audio, realtime=True)
        await leg.wait_audio(stretch * frames)
        # The pause after the stretch gets a mark at the very end of the audio.
        await eventually(
            lambda s=stretch: mark_positions(leg)[-1:] == [s * len(audio)],
            2 * UNIT,
            "a mark at the end of the audio",
        )
    positions = mark_positions(leg)
    assert positions == sorted(set(positions)), "marks out of order or repeated"
    # They keep coming while audio flows: one per MARK_EVERY_S of audio (a hiccup of the
    # machine may add one where the audio paused, never remove one).
    per_stretch = round(QUIET_S / MARK_EVERY_S)
    assert len([p for p in positions if p <= len(audio)]) >= per_stretch
    assert len([p for p in positions if p > len(audio)]) >= per_stretch
    await leg.stop()
