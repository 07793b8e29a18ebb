"""A replica killed with SIGKILL mid-call: its calls leave the shared registry within the call
TTL, the other replica's calls stay."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import redis.asyncio as aioredis

from gateway import devkeys
from gateway.calls.redis_registry import RedisCallRegistry
from gateway.settings import Settings
from tests.conftest import UNIT
from tests.e2e.carrier import (
    TELNYX_API_KEY,
    TWILIO_TOKEN,
    Gateway,
    answer,
    free_port,
    open_stream,
)
from tests.e2e.processes import PROCESSES, SHARED_REDIS, clear_gateway_keys, serve_process

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

CALL_TTL_S = 2
QUIET = bytes([0xFE]) * 160


async def test_a_killed_replicas_calls_expire_from_the_shared_registry(tmp_path, rest):
    await clear_gateway_keys()
    ports = free_port(), free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "VOICEGW_DATA_DIR": str(tmp_path / "data"),
        "VOICEGW_PUBLIC_URL": f"http://127.0.0.1:{ports[0]}",
        "VOICEGW_REDIS_URL": SHARED_REDIS,
        "VOICEGW_CALL_TTL_S": str(CALL_TTL_S),
        "VOICEGW_TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "VOICEGW_TELNYX_API_KEY": TELNYX_API_KEY,
        "VOICEGW_TELNYX_API_URL": rest.base_url,
        "VOICEGW_TWILIO_API_URL": rest.base_url,
        "VOICEGW_PROVIDERS": "echo",
        "VOICEGW_LOG_LEVEL": "WARNING",
        "VOICEGW_DRAIN_SECONDS": "1",
    }
    devkeys.load_or_create(tmp_path / "data")
    settings = devkeys.apply(Settings.from_env(env))
    client = aioredis.Redis.from_url(SHARED_REDIS)
    registry = RedisCallRegistry(client, "voicegw:calls:")
    try:
        async with (
            serve_process(env, ports[0], tmp_path / "a.log") as url_a,
            serve_process(env, ports[1], tmp_path / "b.log") as url_b,
        ):
            a = Gateway(url_a, settings, None, rest)  # type: ignore[arg-type]
            b = Gateway(url_b, settings, None, rest)  # type: ignore[arg-type]
            leg_a = await open_stream(a, await answer(a, "twilio"))
            leg_b = await open_stream(b, await answer(b, "twilio"))
            for leg in (leg_a, leg_b):
                await leg.play(QUIET * 3, realtime=False)
                await leg.wait_audio(3)
            active = await registry.list_active()
            assert {c.carrier_call_id for c in active} == {
                leg_a.ticket.call_id,
                leg_b.ticket.call_id,
            }
            replica_a = next(c.replica for c in active if c.carrier_call_id == leg_a.ticket.call_id)

            # SIGKILL: no drain, no clean-up, no last heartbeat.
            PROCESSES[ports[0]].send_signal(signal.SIGKILL)
            killed = time.monotonic()
            deadline = killed + CALL_TTL_S + 5 * UNIT
            while True:
                ids = {c.carrier_call_id for c in await registry.list_active()}
                if leg_a.ticket.call_id not in ids:
                    break
                assert time.monotonic() < deadline, "the dead replica's call did not expire"
                await asyncio.sleep(0.1)
            # The live replica keeps its call (its heartbeat goes on).
            assert leg_b.ticket.call_id in ids
            assert all(c.replica != replica_a for c in await registry.list_active())
            await leg_b.play(QUIET * 3, realtime=False)
            await leg_b.stop()
    finally:
        await client.aclose()
        await clear_gateway_keys()
