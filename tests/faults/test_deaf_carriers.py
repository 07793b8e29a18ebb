"""Carrier sockets that stop reading, among healthy calls on the same gateway.

Each deaf stream sends audio that the provider echoes back but never reads what the gateway
sends, so the gateway's sends to it block once the socket buffers are full. The send watchdog
ends exactly those calls (``carrier_stalled``, the phone line hung up over REST); the healthy
calls beside them lose no frame. ``tests/e2e/test_hostile.py`` proves it for one deaf stream
and one bystander; this runs several of each at once.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gateway.media import inbound, outbound
from tests.conftest import UNIT
from tests.e2e.carrier import (
    DeafStream,
    Leg,
    answer,
    caller_audio,
    eventually,
    frames_of,
    place_call,
)
from tests.faults.probes import bounded

pytestmark = pytest.mark.e2e

DEAF = 3
HEALTHY = 5


async def test_deaf_carriers_end_only_their_own_calls(make_gateway, openai_fake, rest, monkeypatch):
    # The gateway sends far ahead of real time and gives up on a blocked send soon (a few
    # times a busy machine's scheduling delay of a healthy reader), so a deaf carrier's
    # buffers fill in milliseconds rather than minutes.
    monkeypatch.setattr(outbound, "OUTBOUND_LEAD_S", 600.0)
    monkeypatch.setattr(outbound, "CARRIER_SEND_TIMEOUT_S", 2 * UNIT)
    gw = await make_gateway("openai", sndbuf=8192)
    healthy: list[Leg] = list(
        await bounded(asyncio.gather(*(place_call(gw, "twilio") for _ in range(HEALTHY))))
    )
    tickets = [await answer(gw, "twilio") for _ in range(DEAF)]
    deaf = [await DeafStream.connect(gw, ticket) for ticket in tickets]
    try:
        # Echoed back: ~300 kB to each deaf peer, far more than the socket buffers and the
        # server's write buffer hold together, so its sends block whatever the kernel tunes.
        # A burst the flood limit admits, then the rest below its sustained rate.
        speech = frames_of(caller_audio(400))

        async def shout(stream: DeafStream) -> None:
            with contextlib.suppress(OSError):  # the gateway may close it mid-way
                for chunk in speech:
                    await stream.send_audio(chunk)
                for chunk in speech:
                    await asyncio.sleep(1 / (inbound.MAX_FRAMES_PER_S * 0.8))
                    await stream.send_audio(chunk)

        async def speak(leg: Leg) -> None:
            await leg.play(caller_audio(50))  # one second at a phone line's pace

        await bounded(
            asyncio.gather(*(shout(s) for s in deaf), *(speak(leg) for leg in healthy)),
            15 * UNIT,
        )
        for ticket in tickets:
            call = await gw.wait_ended(ticket, within=10 * UNIT)
            assert call.ended_reason == "carrier_stalled"
        # Each deaf call's phone line was hung up over the carrier's REST API.
        await eventually(
            lambda: (
                {r.call_id for r in rest.requests if r.action == "update"}
                >= {t.call_id for t in tickets}
            ),
            5 * UNIT,
            "REST hang-ups",
        )
        # The healthy calls got every frame back, unchanged, and are still up.
        for leg in healthy:
            await leg.wait_audio(len(leg.sent))
            assert leg.audio == leg.sent_audio
            assert leg.close_code is None
    finally:
        for stream in deaf:
            stream.close()
    await asyncio.gather(*(leg.stop() for leg in healthy))
    for leg in healthy:
        assert (await gw.wait_ended(leg.ticket)).ended_reason == "carrier_hangup"
    await eventually(lambda: not len(gw.runtime.lifecycle), 5 * UNIT, "every bridge gone")
    assert await gw.runtime.registry.list_active() == []
    async with asyncio.timeout(5 * UNIT):
        await openai_fake.wait_until(lambda: not openai_fake.connections)
    print(f"\ndeaf carriers: {DEAF} stalled calls ended, {HEALTHY} healthy calls lost 0 frames")
