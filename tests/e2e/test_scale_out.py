"""Two gateway processes sharing one Redis act as one gateway at the front door."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from gateway import devkeys
from gateway.simulate import post_telnyx
from tests.conftest import REDIS_URL, UNIT
from tests.e2e.carrier import (
    TELNYX_API_KEY,
    TWILIO_TOKEN,
    eventually,
    free_port,
    post_twilio,
    telnyx_event,
    twilio_params,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

LIMIT = 4
# The gateway's Redis keys have a fixed prefix, so these processes get a database of their own.
REDIS_DB = int(os.environ.get("VOICEGW_TEST_E2E_REDIS_DB", "14"))
SHARED_REDIS = REDIS_URL.rsplit("/", 1)[0] + f"/{REDIS_DB}"


async def clear_gateway_keys() -> None:
    client = aioredis.Redis.from_url(SHARED_REDIS)
    try:
        keys = [key async for key in client.scan_iter(match="voicegw:*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


PROCESSES: dict[int, asyncio.subprocess.Process] = {}
"""The running ``serve_process`` subprocesses by port (for tests that kill one)."""


@contextlib.asynccontextmanager
async def serve_process(env: dict[str, str], port: int, log: Path) -> AsyncIterator[str]:
    """``voicegw serve`` in a subprocess on ``port``; killed on exit."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--port",
            str(port),
            env=env,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    PROCESSES[port] = proc
    try:
        deadline = time.monotonic() + 20 * UNIT
        async with httpx.AsyncClient(base_url=url, timeout=UNIT) as http:
            while True:
                assert proc.returncode is None, tail(log)
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/readyz")).status_code == 200:
                        break
                assert time.monotonic() < deadline, "gateway did not start:\n" + tail(log)
                await asyncio.sleep(0.05)
        yield url
    finally:
        PROCESSES.pop(port, None)
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(10 * UNIT):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


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
