"""A provider that stalls or resets while twenty calls are up at once.

``VOICEGW_PROVIDERS=openai,echo``: OpenAI Realtime (the fake) is preferred, the built-in echo
agent is the fallback. Whatever OpenAI does, every call gets audio (from the fallback), no
call hangs, every webhook is answered 200, and the breaker opens so later calls do not try
OpenAI at all. One-call versions of these faults are in ``tests/e2e/test_hostile.py`` and
``tests/e2e/test_resilience.py``; these add the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import pytest

from providers.breakers import BreakerState
from tests.conftest import UNIT
from tests.e2e.carrier import (
    Gateway,
    Leg,
    eventually,
    metric,
    place_call,
    post_twilio,
    twilio_params,
)
from tests.fakes.refuser import Refuser
from tests.faults.probes import bounded

pytestmark = pytest.mark.e2e

CALLS = 20
QUIET = bytes([0xFE]) * 160  # 20 ms of near-silence: both agents echo every frame
FAILOVERS = "voicegw_failovers_total"


async def place_calls(gw: Gateway, n: int) -> list[Leg]:
    """``n`` calls placed at once (each: signed webhook answered 200, stream opened)."""
    return list(await bounded(asyncio.gather(*(place_call(gw, "twilio") for _ in range(n)))))


async def talk(legs: list[Leg], frames: int) -> None:
    """Every leg sends ``frames`` frames at a phone line's pace, all at once; each must get
    every one of them back."""
    before = [len(leg.payloads) for leg in legs]
    await bounded(asyncio.gather(*(leg.play(QUIET * frames) for leg in legs)), 10 * UNIT)
    await asyncio.gather(
        *(leg.wait_audio(b + frames, within=10 * UNIT) for leg, b in zip(legs, before, strict=True))
    )


async def hang_up(gw: Gateway, legs: list[Leg]) -> None:
    await asyncio.gather(*(leg.stop() for leg in legs))
    for leg in legs:
        assert (await gw.wait_ended(leg.ticket)).ended_reason == "carrier_hangup"
    await eventually(lambda: not len(gw.runtime.lifecycle), 5 * UNIT, "every bridge gone")
    assert await gw.runtime.registry.list_active() == []


async def reconnected(gw: Gateway) -> None:
    """Wait until every connection in the gateway's Redis pool works again.

    A connection the pool held while Redis restarted is stale: its next command fails once
    with "Connection closed by server" (the pool does not retry), and the pool then opens a
    fresh one. The gateway's own work absorbs that (a webhook answers 503 and the carrier
    retries it); the test's reads of the registry below would not, so first use every pooled
    connection at once, round after round, until a whole round succeeds."""
    redis = gw.runtime.redis
    assert redis is not None
    width = gw.settings.redis_max_connections
    async with asyncio.timeout(10 * UNIT):
        while True:
            pings = await asyncio.gather(
                *(redis.ping() for _ in range(width)), return_exceptions=True
            )
            if all(p is True for p in pings):
                return
            await asyncio.sleep(0.05)


async def providers_of(gw: Gateway, legs: list[Leg]) -> set[str]:
    calls = [await gw.call("twilio", leg.ticket.call_id) for leg in legs]
    return {c.provider for c in calls if c is not None}


@pytest.mark.parametrize("fault", ["stall", "refuse"])
async def test_twenty_calls_while_the_provider_fails_set_up(make_gateway, openai_fake, fault):
    async with contextlib.AsyncExitStack() as stack:
        refuser = None
        if fault == "stall":
            openai_fake.answer_setup = False  # the handshake works; session.updated never comes
            url = openai_fake.url
        else:
            refuser = await stack.enter_async_context(Refuser())  # every connection reset
            url = refuser.url

        def attempts() -> int:
            return openai_fake.connection_count if refuser is None else refuser.attempts

        gw = await make_gateway(
            "openai,echo",
            VOICEGW_OPENAI_REALTIME_URL=url,
            VOICEGW_PROVIDER_CONNECT_TIMEOUT_S=str(1.0 * UNIT),
        )
        failovers = metric(FAILOVERS, from_provider="openai", to_provider="echo")
        legs = await place_calls(gw, CALLS)
        await talk(legs, 25)  # half a second each: it all comes back, from the fallback
        assert all(leg.close_code is None for leg in legs)
        assert await providers_of(gw, legs) == {"echo"}
        assert metric(FAILOVERS, from_provider="openai", to_provider="echo") - failovers == CALLS
        # Calls admitted before the breaker saw five failures tried OpenAI; none after.
        tried = attempts()
        assert 5 <= tried <= CALLS
        snapshot = await gw.runtime.breakers.get("openai").snapshot()
        assert snapshot.state is BreakerState.OPEN
        assert snapshot.last_failure == "ConnectError"

        # The breaker is open: the next calls go straight to the fallback.
        later = await place_calls(gw, 5)
        await talk(later, 10)
        assert attempts() == tried
        await hang_up(gw, legs + later)
        print(f"\n{fault}: {CALLS + 5} calls, {CALLS + 5} served, {tried} OpenAI attempts")


async def test_twenty_calls_when_the_provider_resets_them_all_mid_call(make_gateway, openai_fake):
    gw = await make_gateway("openai,echo")
    legs = await place_calls(gw, CALLS)
    await talk(legs, 10)
    assert await providers_of(gw, legs) == {"openai"}
    failovers = metric(FAILOVERS, from_provider="openai", to_provider="echo")

    for connection in list(openai_fake.connections):  # every session reset at once
        connection.transport.abort()

    # Each call moves to the fallback while its carrier stream stays open, and talks on.
    await eventually(
        lambda: metric(FAILOVERS, from_provider="openai", to_provider="echo") - failovers == CALLS,
        10 * UNIT,
        "every call failed over",
    )
    await talk(legs, 25)
    assert all(leg.close_code is None for leg in legs)
    assert await providers_of(gw, legs) == {"echo"}
    # Webhooks for these calls are answered as usual meanwhile.
    replies = await bounded(
        asyncio.gather(
            *(
                post_twilio(
                    gw,
                    "/webhooks/twilio/status",
                    twilio_params(leg.ticket.call_id, leg.ticket.account_id, "in-progress"),
                )
                for leg in legs
            )
        )
    )
    assert [r.status_code for r in replies] == [200] * CALLS
    # Twenty sessions died: the breaker is open and a new call does not try OpenAI.
    assert (await gw.runtime.breakers.get("openai").snapshot()).state is BreakerState.OPEN
    connections = openai_fake.connection_count
    later = await place_calls(gw, 1)
    await talk(later, 10)
    assert openai_fake.connection_count == connections
    await hang_up(gw, legs + later)
    print(f"\nreset mid-call: {CALLS} calls, {CALLS} failed over and kept talking, 0 dropped")


async def test_calls_fail_over_while_redis_is_down(make_gateway, openai_fake, redis_server):
    """The provider resets every call while shared state is down: each call still moves to
    the fallback and talks on (breakers use their in-process fallback; the registry learns
    the new provider once Redis answers)."""
    calls = 5
    gw = await make_gateway("openai,echo", VOICEGW_REDIS_URL=redis_server.url())
    legs = await place_calls(gw, calls)
    await talk(legs, 10)
    assert await providers_of(gw, legs) == {"openai"}
    failovers = metric(FAILOVERS, from_provider="openai", to_provider="echo")

    await asyncio.to_thread(redis_server.stop, signal.SIGKILL)
    try:
        for connection in list(openai_fake.connections):
            connection.transport.abort()
        await eventually(
            lambda: (
                metric(FAILOVERS, from_provider="openai", to_provider="echo") - failovers == calls
            ),
            10 * UNIT,
            "every call failed over",
        )
        await talk(legs, 25)
        assert all(leg.close_code is None for leg in legs)
    finally:
        await asyncio.to_thread(redis_server.start)

    # Once Redis answers, the registry shows where the calls went.
    async def moved() -> bool:
        with contextlib.suppress(Exception):
            return await providers_of(gw, legs) == {"echo"}
        return False

    deadline = asyncio.get_running_loop().time() + 15 * UNIT
    while not await moved():
        assert asyncio.get_running_loop().time() < deadline, "registry not updated"
        await asyncio.sleep(0.1)
    await reconnected(gw)
    await talk(legs, 10)
    await hang_up(gw, legs)
    print(f"\nfailover during a Redis outage: {calls} of {calls} calls moved and kept talking")
