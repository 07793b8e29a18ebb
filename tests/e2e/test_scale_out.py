"""Two gateway processes sharing one Redis act as one gateway at the front door."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway import devkeys
from gateway.cli.simulate import post_telnyx
from tests.conftest import UNIT
from tests.e2e.carrier import (
    TELNYX_API_KEY,
    TWILIO_TOKEN,
    eventually,
    free_port,
    post_twilio,
    telnyx_event,
    twilio_params,
)
from tests.e2e.processes import SHARED_REDIS, clear_gateway_keys, serve_process

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

LIMIT = 4


@pytest.fixture
async def pair(tmp_path, rest) -> AsyncIterator[tuple[str, str, devkeys.DevKeys]]:
    """Two gateways, one public URL (as behind a load balancer), one Redis."""
    await clear_gateway_keys()
    keys = devkeys.load_or_create(tmp_path / "data")
    ports = free_port(), free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "VOICEGW_DATA_DIR": str(tmp_path / "data"),
        "VOICEGW_PUBLIC_URL": f"http://127.0.0.1:{ports[0]}",
        "VOICEGW_REDIS_URL": SHARED_REDIS,
        "VOICEGW_RATE_LIMIT_PER_MINUTE": str(LIMIT),
        "VOICEGW_TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "VOICEGW_TELNYX_PUBLIC_KEY": keys.telnyx_public_key,
        "VOICEGW_TELNYX_API_KEY": TELNYX_API_KEY,
        "VOICEGW_TELNYX_API_URL": rest.base_url,
        "VOICEGW_TWILIO_API_URL": rest.base_url,
        "VOICEGW_PROVIDERS": "echo",
        "VOICEGW_LOG_LEVEL": "WARNING",
        "VOICEGW_DRAIN_SECONDS": "1",
    }
    async with (
        serve_process(env, ports[0], tmp_path / "a.log") as a,
        serve_process(env, ports[1], tmp_path / "b.log") as b,
    ):
        yield a, b, keys
    await clear_gateway_keys()


async def test_rate_limit_is_shared_across_processes(pair):
    a, b, _ = pair
    public = a  # both sign over the one public URL
    statuses = []
    for i in range(LIMIT + 2):
        target = (a, b)[i % 2]
        params = twilio_params("CA" + secrets.token_hex(16), "AC" + secrets.token_hex(16))
        params["CallStatus"] = "completed"
        reply = await post_twilio(target, "/webhooks/twilio/status", params, public_url=public)
        statuses.append(reply.status_code)
    # LIMIT accepted in total, whichever process took them; the next one is refused on both.
    assert statuses == [200] * LIMIT + [429, 429]


async def test_a_telnyx_webhook_is_processed_once_across_processes(pair, rest):
    a, b, keys = pair
    call_control_id = "v3:" + secrets.token_urlsafe(24)
    body = telnyx_event("call.initiated", call_control_id)
    timestamp = int(time.time())
    async with httpx.AsyncClient(base_url=a, timeout=5 * UNIT) as http:
        first = await post_telnyx(http, keys, body, timestamp)
    async with httpx.AsyncClient(base_url=b, timeout=5 * UNIT) as http:
        again = await post_telnyx(http, keys, body, timestamp)  # the carrier's retry
    assert (first.status_code, again.status_code) == (200, 200)

    def answers() -> list:
        return [r for r in rest.requests if r.call_id == call_control_id and r.action == "answer"]

    await eventually(answers, 5 * UNIT, "the gateway answers the call")
    await asyncio.sleep(0.5 * UNIT)  # a second answer would have been sent by now
    assert len(answers()) == 1
