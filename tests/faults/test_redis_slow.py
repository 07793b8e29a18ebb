"""A slow Redis: every reply delayed by a proxy, first 200 ms, then 2 s, then none.

The gateway bounds each Redis round trip (0.25 s for the security state, a 0.5 s socket
timeout on its client, 1 s for the readiness ping; ``security/replay.py`` and
``gateway/services.py`` ``REDIS_TIMEOUT_S``) and its client does not retry, so a webhook costs at
most a handful of bounded round trips. At 200 ms every delivery is still accepted, only
slower; at 2 s the timeouts fire and every delivery that needs the call registry is refused
with 503 + ``Retry-After`` (promptly: the refusal itself proves the timeouts applied, since
with no timeout the same requests would have succeeded seconds later); when the delay goes,
the gateway is ready again by itself and the carriers' retries are processed in full. A live
call's media does not touch Redis: it flows throughout.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest
import redis.asyncio as aioredis

from security.replay import Degradation, FallbackReplayCache, RedisReplayCache
from tests.conftest import FakeClock
from tests.e2e.carrier import (
    Gateway,
    metric,
    place_call,
    post_twilio,
    send_telnyx,
    start_gateway,
    telnyx_event,
    twilio_params,
)
from tests.faults.latency import LatencyProxy
from tests.faults.probes import bounded, readiness, wait_ready

pytestmark = [pytest.mark.e2e]

VOICE = "/webhooks/twilio/voice"
STATUS = "/webhooks/twilio/status"
QUIET = bytes([0xFE]) * 160
CALLS = 3


def new_call() -> dict[str, str]:
    return twilio_params("CA" + secrets.token_hex(16), "AC" + secrets.token_hex(16))


class Phase:
    """The webhooks one phase sent: statuses and the slowest answer (reported, not asserted)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.statuses: list[int] = []
        self.slowest_s = 0.0
        self.voice: list[dict[str, str]] = []

    async def send(self, request: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
        began = time.monotonic()
        response = await bounded(request())
        self.slowest_s = max(self.slowest_s, time.monotonic() - began)
        self.statuses.append(response.status_code)
        return response

    async def burst(self, gw: Gateway, calls: int) -> list[httpx.Response]:
        """For each of ``calls`` new calls, at once: a voice webhook, a status callback for
        it, and a Telnyx event, as carriers deliver them: concurrently."""
        requests: list[Callable[[], Awaitable[httpx.Response]]] = []
        for _ in range(calls):
            params = new_call()
            self.voice.append(params)
            completed = {**params, "CallStatus": "completed"}
            hangup = telnyx_event("call.hangup", "v3:" + secrets.token_urlsafe(24))
            requests += [
                functools.partial(post_twilio, gw, VOICE, params),
                functools.partial(post_twilio, gw, STATUS, completed),
                functools.partial(send_telnyx, gw.url, gw.keys, hangup),
            ]
        return list(await asyncio.gather(*(self.send(r) for r in requests)))

    def report(self) -> str:
        accepted = sum(1 for s in self.statuses if s == 200)
        return (
            f"{self.name}: {len(self.statuses)} tried, {len(self.statuses) - accepted} refused, "
            f"{accepted} accepted, slowest answer {self.slowest_s * 1000:.0f} ms"
        )


async def test_a_slow_redis_costs_bounded_time_per_webhook(tmp_path, rest, redis_server):
    async with (
        LatencyProxy(redis_server.port) as proxy,
        start_gateway(
            tmp_path,
            rest,
            VOICEGW_REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0",
            VOICEGW_PROVIDERS="echo",
        ) as gw,
    ):
        leg = await place_call(gw, "twilio")  # a live call through every phase
        await leg.play(QUIET * 3, realtime=False)
        await leg.wait_audio(3)

        proxy.delay_s = 0.2
        slow = Phase("200 ms per Redis reply")
        replies = await slow.burst(gw, CALLS)
        assert [r.status_code for r in replies] == [200] * len(replies), [r.text for r in replies]
        assert all("<Stream" in r.text for r in replies[::3])

        proxy.delay_s = 2.0
        stalled = Phase("2 s per Redis reply")
        fallbacks = metric("voicegw_state_fallback_total", component="replay")
        for response in await stalled.burst(gw, CALLS):
            assert response.status_code == 503, response.text
            assert response.json() == {"error": "temporarily unavailable"}
            assert int(response.headers["retry-after"]) > 0
        status_code, report = await readiness(gw.url)
        assert status_code == 503 and report["redis"] == "unreachable" and report["degraded"]
        assert metric("voicegw_state_fallback_total", component="replay") > fallbacks
        # The live call does not wait for Redis.
        received = len(leg.payloads)
        await leg.play(QUIET * 25)
        await leg.wait_audio(received + 25)
        assert leg.close_code is None

        proxy.delay_s = 0.0
        await wait_ready(gw.url)
        recovered = Phase("after the delay went")
        for params in stalled.voice:  # the carrier retries what was refused, in order
            reply = await recovered.send(functools.partial(post_twilio, gw, VOICE, params))
            assert reply.status_code == 200 and "<Stream" in reply.text, reply.text
            completed = {**params, "CallStatus": "completed"}
            reply = await recovered.send(functools.partial(post_twilio, gw, STATUS, completed))
            assert reply.status_code == 200
            call = await gw.call("twilio", params["CallSid"])  # processed, not a "duplicate"
            assert call is not None and call.ended_reason == "twilio_completed", call
        await leg.stop()
        assert (await gw.wait_ended(leg.ticket)).ended_reason == "carrier_hangup"
        print("", slow.report(), stalled.report(), recovered.report(), sep="\n")


async def test_a_delivery_refused_while_redis_is_slow_is_new_when_retried(redis_server):
    """The replay cache's write times out but lands in Redis; processing then fails (503) and
    the delivery is forgotten while Redis still cannot be told. When Redis is back the
    carrier's retry must be processed, not dropped as a duplicate (a lost hang-up)."""
    prefix = f"voicegw-faults:{secrets.token_hex(6)}:"
    key = "telnyx\x00" + secrets.token_hex(16)
    clock = FakeClock()
    direct = aioredis.Redis.from_url(redis_server.url())
    stored = RedisReplayCache(direct, prefix).redis_key(key)
    async with LatencyProxy(redis_server.port) as proxy:
        slow = aioredis.Redis.from_url(f"redis://127.0.0.1:{proxy.port}/0")
        try:
            cache = FallbackReplayCache(
                RedisReplayCache(slow, prefix), degradation=Degradation("replay", clock=clock)
            )
            await slow.ping()  # a warm connection: the write leaves at once, its reply is late
            proxy.delay_s = 2.0
            assert await bounded(cache.first_seen(key, 60))  # answered by the fallback
            assert cache.degraded
            assert await direct.exists(stored)  # ...but the write reached Redis
            await bounded(cache.forget(key))  # processing failed: forget the delivery

            proxy.delay_s = 0.0
            clock.advance(5)  # the next operation probes Redis again
            assert not await bounded(cache.seen(key)), "the retry was taken for a duplicate"
            assert not await direct.exists(stored)
            assert await bounded(cache.first_seen(key, 60))  # processed, remembered in Redis
            assert not cache.degraded and await direct.exists(stored)
        finally:
            await slow.aclose()
            await direct.delete(stored)
            await direct.aclose()
