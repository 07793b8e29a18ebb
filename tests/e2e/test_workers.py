"""``voicegw serve --workers 2`` with Redis: two worker processes on one socket act as one
gateway (one rate limit, one replay window, one metrics exposition), serve calls on both
workers, drain together on SIGTERM, and a worker that dies is replaced.

Which worker takes a request is the kernel's choice, so each test first finds a kept-alive
connection to each worker (``/readyz`` names the worker that answered) and sends through those.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from twilio.request_validator import RequestValidator

from gateway import devkeys
from gateway.settings import Settings
from tests.conftest import REDIS_URL, UNIT
from tests.e2e.carrier import (
    TELNYX_API_KEY,
    TWILIO_TOKEN,
    Gateway,
    Leg,
    free_port,
    place_call,
    twilio_params,
)
from tests.e2e.processes import PROCESSES, clear_gateway_keys, serve_process, tail
from tests.metrics.test_exposition import promtool

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

WORKERS = 2
LIMIT = 4  # verified webhooks per minute in the rate-limit test
CALLS_LIMIT = 120  # elsewhere: room for the calls it takes to reach every worker
QUIET = bytes([0xFE]) * 160  # 20 ms of near-silence: the echo agent echoes it all
STATUS = "/webhooks/twilio/status"
VOICE = "/webhooks/twilio/voice"


@dataclass
class Group:
    url: str
    proc: asyncio.subprocess.Process
    log: Path
    gw: Gateway
    env: dict[str, str]
    workers: dict[int, httpx.AsyncClient]  # a kept-alive connection to each worker, by pid

    def output(self) -> str:
        return tail(self.log)


async def readyz(client: httpx.AsyncClient) -> dict[str, Any]:
    reply = await client.get("/readyz")
    report: dict[str, Any] = reply.json()
    return report


async def connect_to_each_worker(url: str, *, exclude: set[int] = frozenset()) -> dict[int, Any]:
    """New connections until each of the ``WORKERS`` ready workers (but ``exclude``) holds one;
    those connections, by worker pid."""
    found: dict[int, httpx.AsyncClient] = {}
    deadline = time.monotonic() + 30 * UNIT
    while len(found) < WORKERS:
        client = httpx.AsyncClient(
            base_url=url, timeout=5 * UNIT, limits=httpx.Limits(max_connections=1)
        )
        with contextlib.suppress(httpx.TransportError):
            reply = await client.get("/readyz")
            pid = reply.json()["worker"]["pid"]
            if reply.status_code == 200 and pid not in found and pid not in exclude:
                found[pid] = client
                continue
        await client.aclose()
        assert time.monotonic() < deadline, f"found only workers {sorted(found)}"
        await asyncio.sleep(0.02)
    return found


@contextlib.asynccontextmanager
async def workers_group(
    tmp_path: Path, rest, *, drain_seconds: int = 1, rate_limit: int = CALLS_LIMIT
) -> AsyncIterator[Group]:
    port = free_port()
    prefix = f"voicegw-workers:{uuid.uuid4().hex[:12]}:"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "VOICEGW_DATA_DIR": str(tmp_path / "data"),
        "VOICEGW_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "VOICEGW_REDIS_URL": REDIS_URL,
        "VOICEGW_REDIS_KEY_PREFIX": prefix,
        "VOICEGW_RATE_LIMIT_PER_MINUTE": str(rate_limit),
        "VOICEGW_TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "VOICEGW_TWILIO_API_URL": rest.base_url,
        "VOICEGW_TELNYX_API_URL": rest.base_url,
        "VOICEGW_TELNYX_API_KEY": TELNYX_API_KEY,
        "VOICEGW_PROVIDERS": "echo",
        "VOICEGW_LOG_LEVEL": "WARNING",
        "VOICEGW_DRAIN_SECONDS": str(drain_seconds),
    }
    log = tmp_path / "workers.log"
    try:
        async with serve_process(env, port, log, ["--workers", str(WORKERS)]) as url:
            settings = devkeys.apply(Settings.from_env(env))
            gw = Gateway(url, settings, None, rest)  # type: ignore[arg-type]
            workers = await connect_to_each_worker(url)
            try:
                yield Group(url, PROCESSES[port], log, gw, env, workers)
            finally:
                for client in workers.values():
                    await client.aclose()
    finally:
        await clear_gateway_keys(REDIS_URL, prefix)


@pytest.fixture
async def group(tmp_path, rest) -> AsyncIterator[Group]:
    async with workers_group(tmp_path, rest) as running:
        yield running


async def signed_post(
    group: Group, client: httpx.AsyncClient, path: str, params: dict[str, str]
) -> httpx.Response:
    """A Twilio webhook signed over the public URL, sent on ``client``'s connection; checks the
    connection still reaches the same worker."""
    pid = (await readyz(client))["worker"]["pid"]
    public = group.gw.settings.public_url
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(public + path, params)
    reply = await client.post(path, data=params, headers={"X-Twilio-Signature": signature})
    assert (await readyz(client))["worker"]["pid"] == pid, "the connection moved to another worker"
    return reply


async def scrape(client: httpx.AsyncClient) -> str:
    reply = await client.get("/metrics")
    assert reply.status_code == 200, reply.text
    return reply.text


def total(text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


async def calls_on_every_worker(group: Group) -> list[Leg]:
    """Calls placed (each streaming quiet audio) until every worker holds one; their legs.
    The kernel picks the worker of each media connection, so this takes a few calls."""
    legs: list[Leg] = []
    clients = list(group.workers.values())
    while True:
        leg = await place_call(group.gw, "twilio")
        legs.append(leg)
        await leg.play(QUIET * 5, realtime=False)
        await leg.wait_audio(1)
        live = [(await readyz(client))["live_calls"] for client in clients]
        if all(count >= 1 for count in live):
            return legs
        assert len(legs) < 24, f"every call landed on one worker: {live}"


# -- refusal ----------------------------------------------------------------------------------


def test_more_than_one_worker_is_refused_without_redis(tmp_path):
    env = {"PATH": os.environ.get("PATH", ""), "VOICEGW_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--workers", "2", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("voicegw: --workers 2 needs VOICEGW_REDIS_URL"), done.stderr


# -- one gateway --------------------------------------------------------------------------------


async def test_readyz_names_the_worker_count_and_the_worker(group: Group):
    reports = [await readyz(client) for client in group.workers.values()]
    assert [r["workers"] for r in reports] == [WORKERS] * WORKERS
    assert sorted(r["worker"]["index"] for r in reports) == list(range(WORKERS))
    assert sorted(r["worker"]["pid"] for r in reports) == sorted(group.workers)
    assert group.proc.pid not in group.workers  # the parent only supervises


async def test_the_workers_share_one_rate_limit(tmp_path, rest):
    statuses = []
    async with workers_group(tmp_path, rest, rate_limit=LIMIT) as group:
        clients = list(group.workers.values())
        for i in range(LIMIT + 2):
            params = twilio_params("CA" + secrets.token_hex(16), "AC" + secrets.token_hex(16))
            params["CallStatus"] = "completed"
            reply = await signed_post(group, clients[i % WORKERS], STATUS, params)
            statuses.append(reply.status_code)
    # LIMIT accepted in total, whichever worker took them; the next one is refused by both.
    assert statuses == [200] * LIMIT + [429, 429]


async def test_a_replayed_webhook_is_a_duplicate_on_the_other_worker(group: Group):
    first, second = group.workers.values()
    params = twilio_params("CA" + secrets.token_hex(16), "AC" + secrets.token_hex(16))
    # The same signed request on each worker, as a carrier retry or a captured replay would be.
    for client in (first, second):
        reply = await signed_post(group, client, VOICE, params)
        assert reply.status_code == 200, reply.text
    text = await scrape(first)
    assert total(text, "voicegw_webhook_requests_total", carrier="twilio", outcome="accepted") == 1
    assert total(text, "voicegw_webhook_duplicates_total", carrier="twilio") == 1


async def test_metrics_add_up_the_workers_and_pass_promtool(group: Group):
    forged = {"X-Twilio-Signature": "AAAAAAAAAAAAAAAAAAAAAAAAAAA="}
    params = twilio_params("CA" + secrets.token_hex(16), "AC" + secrets.token_hex(16))
    for client in group.workers.values():  # one rejection counted in each worker
        reply = await client.post(VOICE, data=params, headers=forged)
        assert reply.status_code == 403, reply.text
    texts = [await scrape(client) for client in group.workers.values()]
    for text in texts:  # whichever worker is scraped, it shows the whole group
        assert total(text, "voicegw_webhook_rejections_total", layer="signature") == WORKERS
        assert total(text, "voicegw_build_info") == 1
        assert total(text, "voicegw_asyncio_tasks") > 0
    # Every sample of the group's exposition is well-formed for Prometheus.
    checked = await asyncio.to_thread(
        subprocess.run,
        [promtool(), "check", "metrics"],
        input=texts[0],
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        check=False,
    )
    findings = (checked.stdout + checked.stderr).strip()
    assert checked.returncode == 0 and not findings, f"promtool check metrics:\n{findings}"


async def test_both_workers_append_to_one_verifiable_audit_chain(group: Group):
    """The embedded store: one SQLite file, both workers writing at once (rejected webhooks
    are audited); ``voicegw audit verify`` then walks an unbroken chain."""
    forged = {"X-Twilio-Signature": "AAAAAAAAAAAAAAAAAAAAAAAAAAA="}

    async def reject(client: httpx.AsyncClient) -> int:
        params = twilio_params("CA" + secrets.token_hex(16), "AC" + secrets.token_hex(16))
        return (await client.post(VOICE, data=params, headers=forged)).status_code

    per_worker = 15
    jobs = [reject(client) for client in group.workers.values() for _ in range(per_worker)]
    assert await asyncio.gather(*jobs) == [403] * (per_worker * WORKERS)
    text = await scrape(next(iter(group.workers.values())))
    assert total(text, "voicegw_audit_write_failures_total") == 0
    verified = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway.cli", "audit", "verify"],
        env={"PATH": os.environ.get("PATH", ""), **group.env},
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


async def test_calls_are_served_on_both_workers(group: Group):
    legs = await calls_on_every_worker(group)
    text = await scrape(next(iter(group.workers.values())))
    assert total(text, "voicegw_active_calls") == len(legs)  # live workers' gauges summed
    for leg in legs:
        await leg.stop()
    client = next(iter(group.workers.values()))
    deadline = time.monotonic() + 10 * UNIT
    while total(await scrape(client), "voicegw_calls_total") < len(legs):
        assert time.monotonic() < deadline, await scrape(client)
        await asyncio.sleep(0.05)
    assert total(await scrape(client), "voicegw_active_calls") == 0


# -- stopping ---------------------------------------------------------------------------------


async def _stream_for(leg: Leg, seconds: float) -> None:
    with contextlib.suppress(websockets.ConnectionClosed):
        await leg.play(QUIET * int(seconds * 50), realtime=True)


async def test_sigterm_drains_every_worker(tmp_path, rest):
    async with workers_group(tmp_path, rest, drain_seconds=30) as group:
        legs = await calls_on_every_worker(group)
        group.proc.send_signal(signal.SIGTERM)
        before = [len(leg.payloads) for leg in legs]
        # Every worker's live call carries on after SIGTERM...
        await asyncio.gather(*(_stream_for(leg, 1.0) for leg in legs))
        for leg, count in zip(legs, before, strict=True):
            await leg.wait_audio(count + 25)
            assert leg.close_code is None
        # ...while the group is not ready for new calls.
        async with httpx.AsyncClient(base_url=group.url, timeout=5 * UNIT) as http:
            assert (await http.get("/readyz")).status_code == 503
        assert group.proc.returncode is None
        # The callers hang up: every drain ends and the group exits cleanly.
        for leg in legs:
            await leg.stop()
        async with asyncio.timeout(30 * UNIT):
            assert await group.proc.wait() == 0, group.output()
        assert "Traceback" not in group.output()


async def test_a_worker_that_dies_is_replaced(group: Group):
    pids = list(group.workers)
    lost = pids[0]
    index = (await readyz(group.workers[lost]))["worker"]["index"]
    os.kill(lost, signal.SIGKILL)
    # The other worker serves on; a new one takes the lost one's place.
    replaced = await connect_to_each_worker(group.url, exclude={lost})
    try:
        assert pids[1] in replaced
        (new_pid,) = set(replaced) - {pids[1]}
        assert (await readyz(replaced[new_pid]))["worker"]["index"] == index
        assert group.proc.returncode is None
    finally:
        for client in replaced.values():
            await client.aclose()
