"""Breakers over real sockets, and SIGTERM draining a real ``voicegw serve`` process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets

from gateway import devkeys
from gateway.settings import Settings
from providers.breakers import BreakerState
from tests.conftest import UNIT
from tests.e2e.carrier import (
    TELNYX_API_KEY,
    TWILIO_TOKEN,
    Gateway,
    answer,
    free_port,
    metric,
    open_stream,
    place_call,
    post_twilio,
    twilio_params,
)
from tests.e2e.processes import PROCESSES, serve_process, tail
from tests.fakes.refuser import Refuser

pytestmark = pytest.mark.e2e

QUIET = bytes([0xFE]) * 160  # 20 ms of near-silence: the echo agent echoes it all


async def test_a_refusing_provider_trips_its_breaker_after_exactly_five_calls(make_gateway):
    async with Refuser() as refuser:
        gw = await make_gateway("openai,echo", VOICEGW_OPENAI_REALTIME_URL=refuser.url)
        breaker = gw.runtime.breakers.get("openai")
        for n in range(1, 7):
            leg = await place_call(gw, "twilio")
            await leg.play(QUIET * 3, realtime=False)
            await leg.wait_audio(3)  # the call works: echo took it
            await leg.stop()
            await gw.wait_ended(leg.ticket)
            expected_attempts = min(n, 5)
            assert refuser.attempts == expected_attempts
        snapshot = await breaker.snapshot()
        assert snapshot.state is BreakerState.OPEN
        assert snapshot.last_failure == "ConnectError"
        assert metric("voicegw_breaker_state", provider="openai") == 1
        assert metric("voicegw_provider_up", provider="openai") == 0
        async with httpx.AsyncClient(base_url=gw.url) as http:
            report = (await http.get("/readyz")).json()
        assert report["providers"]["openai"]["state"] == "open"


# -- SIGTERM -------------------------------------------------------------------------------


class Process:
    def __init__(self, proc: asyncio.subprocess.Process, url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log

    def output(self) -> str:
        return tail(self.log)


async def _serve(tmp_path, rest, drain_seconds: int) -> AsyncIterator[tuple[Process, Gateway]]:
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "VOICEGW_DATA_DIR": str(tmp_path / "data"),
        "VOICEGW_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "VOICEGW_TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "VOICEGW_TWILIO_API_URL": rest.base_url,
        "VOICEGW_TELNYX_API_URL": rest.base_url,
        "VOICEGW_TELNYX_API_KEY": TELNYX_API_KEY,
        "VOICEGW_PROVIDERS": "echo",
        "VOICEGW_DRAIN_SECONDS": str(drain_seconds),
        "VOICEGW_LOG_LEVEL": "WARNING",
    }
    log = tmp_path / "serve.log"
    async with serve_process(env, port, log) as url:
        settings = devkeys.apply(Settings.from_env(env))
        process = Process(PROCESSES[port], url, log)
        yield process, Gateway(url, settings, None, rest)  # type: ignore[arg-type]


@pytest.fixture
async def serve_drain_30(tmp_path, rest):
    async for pair in _serve(tmp_path, rest, drain_seconds=30):
        yield pair


@pytest.fixture
async def serve_drain_1(tmp_path, rest):
    async for pair in _serve(tmp_path, rest, drain_seconds=1):
        yield pair


async def _stream_for(leg, seconds: float) -> None:
    """Send quiet caller audio at real-time pace (quiet: the echo agent echoes it all)."""
    frames = int(seconds * 50)
    with contextlib.suppress(websockets.ConnectionClosed):
        await leg.play(QUIET * frames, realtime=True)


async def test_sigterm_lets_a_live_call_finish_and_refuses_new_ones(serve_drain_30):
    process, gw = serve_drain_30
    leg = await open_stream(gw, await answer(gw, "twilio"))
    await _stream_for(leg, 0.5)
    process.proc.send_signal(signal.SIGTERM)
    before = len(leg.payloads)
    # The live call carries on after SIGTERM...
    await _stream_for(leg, 1.5)
    await leg.wait_audio(before + 50)
    assert leg.close_code is None
    async with httpx.AsyncClient(base_url=process.url, timeout=5 * UNIT) as http:
        # ...while the gateway says it is not ready and refuses new calls.
        assert (await http.get("/readyz")).status_code == 503
        reply = await post_twilio(
            gw, "/webhooks/twilio/voice", twilio_params("CA" + "1" * 32, "AC" + "2" * 32)
        )
        assert reply.status_code == 503
        assert reply.json() == {"error": "draining"}
    assert process.proc.returncode is None
    # The caller hangs up: the drain ends and the process exits cleanly.
    await leg.stop()
    started = time.monotonic()
    async with asyncio.timeout(20 * UNIT):
        code = await process.proc.wait()
    assert code in (0, -signal.SIGTERM), process.output()  # uvicorn re-raises the signal
    assert time.monotonic() - started < 20 * UNIT


async def _until_draining(url: str) -> None:
    """Wait (bounded) until the gateway reports it is draining."""
    async with httpx.AsyncClient(base_url=url, timeout=5 * UNIT) as http:
        async with asyncio.timeout(10 * UNIT):
            # The state lives in another process: asked for, not awaited.
            while (await http.get("/readyz")).status_code != 503:  # noqa: ASYNC110
                await asyncio.sleep(0.05 * UNIT)


async def test_the_drain_answers_its_last_calls_status_callback(serve_drain_30):
    """The drain's last stream ends; Twilio's status callback for that call comes a moment
    later and is still answered (new calls still refused), then the process exits."""
    process, gw = serve_drain_30
    ticket = await answer(gw, "twilio")
    leg = await open_stream(gw, ticket)
    await _stream_for(leg, 0.3)
    process.proc.send_signal(signal.SIGTERM)
    await _until_draining(process.url)
    await leg.stop()
    new_call = twilio_params("CA" + "3" * 32, "AC" + "2" * 32)
    refused = await post_twilio(gw, "/webhooks/twilio/voice", new_call)
    assert refused.status_code == 503 and refused.json() == {"error": "draining"}
    completed = twilio_params(ticket.call_id, ticket.account_id, "completed")
    reply = await post_twilio(gw, "/webhooks/twilio/status", completed)
    assert reply.status_code == 200 and reply.json() == {"status": "ok"}
    # Its last webhook arrived: the drain is over without waiting out its grace.
    async with asyncio.timeout(20 * UNIT):
        assert await process.proc.wait() in (0, -signal.SIGTERM), process.output()


async def test_the_drain_deadline_ends_remaining_calls_cleanly(serve_drain_1, rest):
    process, gw = serve_drain_1
    leg = await open_stream(gw, await answer(gw, "twilio"))
    await _stream_for(leg, 0.3)
    process.proc.send_signal(signal.SIGTERM)
    streaming = asyncio.create_task(_stream_for(leg, 10))
    try:
        code = await leg.wait_closed(15 * UNIT)
    finally:
        streaming.cancel()
    assert code == 1001  # going away: the gateway ended it at the deadline, not a crash
    # The carrier was told over REST too.
    requests = await rest.wait_for_requests(1)
    assert requests[-1].carrier == "twilio"
    async with asyncio.timeout(20 * UNIT):
        assert await process.proc.wait() in (0, -signal.SIGTERM), process.output()


async def test_ctrl_c_shuts_down_cleanly_without_a_traceback(serve_drain_1):
    process, _ = serve_drain_1
    process.proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(20 * UNIT):
        code = await process.proc.wait()
    assert code == 0, process.output()
    assert "Traceback" not in process.output()
    assert "KeyboardInterrupt" not in process.output()
