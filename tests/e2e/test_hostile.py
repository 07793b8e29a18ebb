"""Hostile or broken peers end only their own call and leak nothing.

Each test runs one misbehaving call next to a healthy one (the bystander) on the same gateway.
At the end the bystander must have had every frame it sent echoed back and end normally, the
registry must hold no active call, and the event loop must be back to the tasks it had before
either call started.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets

from gateway.http.errors import CloseCode
from gateway.media import inbound, outbound
from gateway.media.dialer import AgentDialer
from tests.conftest import UNIT
from tests.e2e.carrier import (
    FRAME,
    FRAME_S,
    DeafStream,
    Gateway,
    Leg,
    answer,
    caller_audio,
    dumps,
    eventually,
    frames_of,
    metric,
    place_call,
)

pytestmark = pytest.mark.e2e

DROPPED = "voicegw_media_frames_dropped_total"
PROVIDER_ERRORS = "voicegw_provider_errors_total"


async def settle_tasks(baseline: set[asyncio.Task[Any]], within: float = 5 * UNIT) -> None:
    """Wait until every task started since ``baseline`` has ended; fail listing the ones left.

    Tasks of the baseline may end meanwhile (a periodic job finishing a round); only new
    ones count as leaks."""
    deadline = asyncio.get_running_loop().time() + within
    while extra := asyncio.all_tasks() - baseline:
        if asyncio.get_running_loop().time() > deadline:
            names = sorted(t.get_name() + " " + repr(t.get_coro()) for t in extra)
            raise AssertionError(f"{len(names)} tasks outlived the call:\n" + "\n".join(names))
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def bystander(gw: Gateway) -> AsyncIterator[Leg]:
    """A healthy Twilio call talking at real-time pace for as long as the block runs."""
    baseline = asyncio.all_tasks()
    leg = await place_call(gw, "twilio")
    done = asyncio.Event()

    async def talk() -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i, chunk in enumerate(frames_of(caller_audio())):
            if done.is_set():
                return
            await asyncio.sleep(max(0.0, t0 + i * FRAME_S - loop.time()))
            await leg.send_audio(chunk)
        raise AssertionError("the bystander ran out of audio")

    talking = asyncio.create_task(talk(), name="e2e-bystander")
    try:
        await leg.wait_audio(5)
        yield leg
    finally:
        done.set()
        if not talking.done():
            talking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await talking
    await leg.wait_audio(len(leg.sent))
    assert leg.audio == leg.sent_audio, "the healthy call lost or changed audio"
    assert leg.close_code is None, "the healthy call was closed"
    await leg.stop()
    assert (await gw.wait_ended(leg.ticket)).ended_reason == "carrier_hangup"
    await eventually(lambda: not len(gw.runtime.lifecycle), 5 * UNIT, "bridges gone")
    assert await gw.runtime.registry.list_active() == []
    await settle_tasks(baseline)


def provider_sockets(fake) -> int:
    return len(fake.connections)


async def test_garbage_frames_are_counted_then_close_the_stream(make_gateway, openai_fake, rest):
    gw = await make_gateway("openai")
    async with bystander(gw):
        leg = await place_call(gw, "twilio")
        await leg.play(caller_audio(3), realtime=False)
        await leg.wait_audio(3)
        before = metric(DROPPED, carrier="twilio", direction="from_carrier", reason="malformed")
        garbage: list[str | bytes] = [
            "not json",
            b"\x00\x01binary",
            "[]",
            '{"event": "nonsense"}',
            '{"event": "media"}',
            dumps({"event": "media", "streamSid": "MZ" + "0" * 32, "media": {"payload": "AA=="}}),
            '{"event": "media", "media": {"payload": "!!!not base64!!!"}}',
            "{" * 10_000,
        ]
        for frame in garbage:
            await leg.send_raw(frame)
        # Counted and dropped; the call goes on.
        await leg.play(caller_audio(3), realtime=False)
        await leg.wait_audio(6)
        after = metric(DROPPED, carrier="twilio", direction="from_carrier", reason="malformed")
        assert after - before == len(garbage)
        assert leg.close_code is None

        # Past inbound.MAX_MALFORMED the stream is closed as a policy violation.
        with contextlib.suppress(websockets.ConnectionClosed):
            for _ in range(inbound.MAX_MALFORMED + 1):
                await leg.send_raw("garbage")
        assert await leg.wait_closed() == CloseCode.POLICY_VIOLATION
        assert (await gw.wait_ended(leg.ticket)).ended_reason == "flood"
        async with asyncio.timeout(5 * UNIT):
            await openai_fake.wait_until(lambda: provider_sockets(openai_fake) == 1)


async def test_a_flood_of_frames_closes_the_stream(make_gateway, openai_fake, rest):
    gw = await make_gateway("openai")
    async with bystander(gw):
        leg = await place_call(gw, "telnyx")
        before = metric(DROPPED, carrier="telnyx", direction="from_carrier", reason="flood")
        chunk = caller_audio(1)
        with contextlib.suppress(websockets.ConnectionClosed):
            for _ in range(int(inbound.FRAME_BURST) * 3):
                await leg.send_audio(chunk)
        assert await leg.wait_closed() == CloseCode.POLICY_VIOLATION
        assert (await gw.wait_ended(leg.ticket)).ended_reason == "flood"
        assert metric(DROPPED, carrier="telnyx", direction="from_carrier", reason="flood") > before
        async with asyncio.timeout(5 * UNIT):
            await openai_fake.wait_until(lambda: provider_sockets(openai_fake) == 1)
        # The gateway ended the stream, so it hangs up the phone call too.
        await eventually(
            lambda: any(r.action == "hangup" for r in rest.requests), 5 * UNIT, "REST hangup"
        )


async def test_a_carrier_that_stops_reading_is_dropped(
    make_gateway, openai_fake, rest, monkeypatch
):
    # Let the gateway send far ahead of real time and give up on a blocked send quickly, so
    # the carrier's buffers fill in milliseconds rather than minutes.
    monkeypatch.setattr(outbound, "OUTBOUND_LEAD_S", 600.0)
    monkeypatch.setattr(outbound, "CARRIER_SEND_TIMEOUT_S", 0.5 * UNIT)
    gw = await make_gateway("openai", sndbuf=8192)
    async with bystander(gw):
        ticket = await answer(gw, "twilio")
        deaf = await DeafStream.connect(gw, ticket)
        try:
            for chunk in frames_of(caller_audio(400)):  # echoed back: ~150 kB to a deaf peer
                await deaf.send_audio(chunk)
            call = await gw.wait_ended(ticket, within=10 * UNIT)
            assert call.ended_reason == "carrier_stalled"
            async with asyncio.timeout(5 * UNIT):
                await openai_fake.wait_until(lambda: provider_sockets(openai_fake) == 1)
            hangup = await eventually_request(rest, ticket.call_id)
            assert hangup.form() == {"Status": "completed"}
        finally:
            deaf.close()


async def eventually_request(rest, call_id: str):
    await eventually(
        lambda: any(r.call_id == call_id and r.action == "update" for r in rest.requests),
        5 * UNIT,
        "REST hang-up",
    )
    return next(r for r in rest.requests if r.call_id == call_id)


@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
async def test_a_carrier_that_vanishes_mid_call(make_gateway, openai_fake, rest, carrier):
    gw = await make_gateway("openai")
    async with bystander(gw):
        leg = await place_call(gw, carrier)
        await leg.play(caller_audio(10), realtime=False)
        await leg.wait_audio(2)
        leg.abort()
        call = await gw.wait_ended(leg.ticket)
        assert call.ended_reason == "carrier_disconnected"
        async with asyncio.timeout(5 * UNIT):
            await openai_fake.wait_until(lambda: provider_sockets(openai_fake) == 1)
        await leg.wait_closed()


@pytest.fixture
def quick_setup(monkeypatch):
    """Provider setup bounded by 1 unit instead of the production 10 s."""
    agent_config = AgentDialer.agent_config

    def shorter(self, provider, profile, **options):
        config = agent_config(self, provider, profile, **options)
        return dataclasses.replace(config, connect_timeout_s=1.0 * UNIT)

    monkeypatch.setattr(AgentDialer, "agent_config", shorter)


@pytest.mark.usefixtures("quick_setup")
async def test_a_provider_that_never_answers_setup_fails_over(make_gateway, openai_fake, rest):
    gw = await make_gateway("openai,echo")
    async with bystander(gw):
        openai_fake.answer_setup = False  # new sessions hang after session.update
        errors = metric(PROVIDER_ERRORS, provider="openai", kind="connect")
        failovers = metric("voicegw_failovers_total", from_provider="openai", to_provider="echo")
        leg = await place_call(gw, "twilio")
        await leg.play(caller_audio(75))  # 1.5 s at real-time pace, across the failover
        # The echo agent answers instead (it drops the echo of quiet before the first word).
        await leg.wait_audio(40)
        call = await gw.call("twilio", leg.ticket.call_id)
        assert call is not None and call.provider == "echo"
        assert metric(PROVIDER_ERRORS, provider="openai", kind="connect") == errors + 1
        assert (
            metric("voicegw_failovers_total", from_provider="openai", to_provider="echo")
            == failovers + 1
        )
        assert openai_fake.connection_count == 2
        async with asyncio.timeout(5 * UNIT):
            await openai_fake.wait_until(lambda: provider_sockets(openai_fake) == 1)
        await leg.stop()
        assert (await gw.wait_ended(leg.ticket)).ended_reason == "carrier_hangup"


@pytest.mark.usefixtures("quick_setup")
async def test_audio_queued_during_a_slow_setup_is_not_a_flood(
    make_gateway, openai_fake, rest, monkeypatch
):
    # Scaled down: setup takes 1 unit here instead of the production 10 s per provider that
    # does not answer, so the burst allowance is scaled down likewise (500 frames = 10 s of
    # Twilio's 50 frames/s; 25 frames = 0.5 s). Two silent providers in production (20 s,
    # 1000 queued frames) end the call as a "flood" right after the failover succeeded.
    monkeypatch.setattr(inbound, "FRAME_BURST", 25.0)
    gw = await make_gateway("openai,echo")
    async with bystander(gw):
        openai_fake.answer_setup = False
        leg = await place_call(gw, "twilio")
        with contextlib.suppress(websockets.ConnectionClosed):
            await leg.play(caller_audio(100))  # 2 s at real-time pace, across the failover
        ended = await gw.call("twilio", leg.ticket.call_id)
        assert leg.close_code is None, (
            f"closed {leg.close_code} after the failover, call {ended and ended.ended_reason}"
        )
        call = await gw.call("twilio", leg.ticket.call_id)
        assert call is not None and call.active, call
        await leg.stop()


@pytest.mark.usefixtures("quick_setup")
async def test_a_provider_that_never_answers_setup_ends_the_call(make_gateway, openai_fake, rest):
    gw = await make_gateway("openai")
    async with bystander(gw):
        openai_fake.answer_setup = False
        errors = metric(PROVIDER_ERRORS, provider="openai", kind="connect")
        leg = await place_call(gw, "telnyx")
        await leg.send_audio(caller_audio(1))
        # No provider left: the caller hears the fallback tones, then the stream closes.
        assert await leg.wait_closed() == CloseCode.NORMAL
        assert leg.audio == gw.runtime.fallback
        assert leg.marks == ["fallback-played"]
        assert (await gw.wait_ended(leg.ticket)).ended_reason == "no_provider"
        assert metric(PROVIDER_ERRORS, provider="openai", kind="connect") == errors + 1
        await eventually(
            lambda: any(r.action == "hangup" for r in rest.requests), 5 * UNIT, "REST hangup"
        )
        async with asyncio.timeout(5 * UNIT):
            await openai_fake.wait_until(lambda: provider_sockets(openai_fake) == 1)


@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
async def test_a_provider_that_drops_mid_call(make_gateway, openai_fake, rest, carrier):
    gw = await make_gateway("openai")
    async with bystander(gw):
        leg = await place_call(gw, carrier)  # the newest provider socket is this call's
        await leg.play(caller_audio(5), realtime=False)
        await leg.wait_audio(5)
        errors = metric(PROVIDER_ERRORS, provider="openai", kind="session")

        await openai_fake.close_abnormally()

        assert await leg.wait_closed() == CloseCode.INTERNAL_ERROR
        assert (await gw.wait_ended(leg.ticket)).ended_reason == "agent_failed"
        assert metric(PROVIDER_ERRORS, provider="openai", kind="session") == errors + 1
        action = "update" if carrier == "twilio" else "hangup"
        await eventually(
            lambda: any(
                r.call_id == leg.ticket.call_id and r.action == action for r in rest.requests
            ),
            5 * UNIT,
            "REST hang-up",
        )


async def test_a_provider_that_drops_mid_call_fails_over(make_gateway, openai_fake, rest):
    gw = await make_gateway("openai,echo")
    async with bystander(gw):
        leg = await place_call(gw, "twilio")
        await leg.play(caller_audio(5), realtime=False)
        await leg.wait_audio(5)
        failovers = metric("voicegw_failovers_total", from_provider="openai", to_provider="echo")

        await openai_fake.close_abnormally()

        # The call moves to echo; the carrier stream stays up and audio flows again.
        await eventually(
            lambda: (
                metric("voicegw_failovers_total", from_provider="openai", to_provider="echo")
                == failovers + 1
            ),
            5 * UNIT,
            "failover counted",
        )
        call = await gw.call("twilio", leg.ticket.call_id)
        assert call is not None and call.provider == "echo" and call.active
        received = len(leg.payloads)
        await leg.play(caller_audio(40)[20 * FRAME :])  # speech: echoed after 0.5 s
        await leg.wait_audio(received + 10)
        assert leg.close_code is None
        await leg.stop()
        assert (await gw.wait_ended(leg.ticket)).ended_reason == "carrier_hangup"
