"""Redis killed mid-run and started again, under a real ``voicegw serve`` process.

The gateway shares state through a private Redis with append-only persistence (as a
production Redis would run). Each test kills that Redis, checks what every layer does while
it is gone, starts it again and checks that the gateway came back by itself, without a
restart. The policy per layer (README, "Reliability"):

* webhooks: the cheap layers still answer (a forged request is 403); rate limiting and the
  replay cache fall back to in-process state (a warning, ``voicegw_state_fallback_total``,
  ``/readyz`` degraded); the call registry has no fallback, so a delivery that needs it is
  refused with 503 + ``Retry-After`` and forgotten by the replay cache: the carrier's retry
  after the outage is processed in full;
* operator sessions: revocation and refresh rotation fail closed (503, never a guess); API
  keys live in the durable store and keep working; the live-call list is 503;
* live calls: media does not touch Redis and keeps flowing; a call that ends during the
  outage is ended in the registry once Redis answers; a stream that starts during it is
  closed with 1013 (stream tokens fail closed);
* recovery: ``/readyz`` is 200 and not degraded, and shared state is used again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway import devkeys
from gateway.calls.redis_registry import RedisCallRegistry
from gateway.calls.state import CallState
from gateway.cli.admin import add_user, create_api_key
from gateway.http.errors import CloseCode
from gateway.records.base import Role
from gateway.services import open_store
from gateway.settings import Settings
from tests.conftest import UNIT
from tests.e2e.carrier import (
    Gateway,
    answer,
    free_port,
    gateway_env,
    open_stream,
    post_twilio,
    send_telnyx,
    telnyx_event,
    twilio_params,
)
from tests.e2e.processes import serve_process
from tests.fakes.carrier_rest import FakeCarrierRest
from tests.faults.probes import bounded, log_lines, readiness, sample, scrape, wait_ready
from tests.faults.redis_server import PrivateRedis
from tests.sessions.harness import PASSWORD, TEST_HASHER

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

VOICE = "/webhooks/twilio/voice"
STATUS = "/webhooks/twilio/status"
QUIET = bytes([0xFE]) * 160  # 20 ms of near-silence: the echo agent echoes every frame
FALLBACKS = "voicegw_state_fallback_total"


@dataclass
class Deployment:
    """One gateway process, its Redis, and what a test needs to drive and inspect them."""

    gw: Gateway
    redis: PrivateRedis
    log: Path
    api_key: str
    client: aioredis.Redis
    registry: RedisCallRegistry

    @property
    def url(self) -> str:
        return self.gw.url

    def api(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url,
            timeout=5 * UNIT,
            headers={"Authorization": f"Bearer {self.api_key}"},
        )

    async def kill_redis(self) -> None:
        await asyncio.to_thread(self.redis.stop, signal.SIGKILL)

    async def start_redis(self) -> None:
        await asyncio.to_thread(self.redis.start)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: PrivateRedis,
    module_rest: FakeCarrierRest,
) -> AsyncIterator[Deployment]:
    tmp = tmp_path_factory.mktemp("outage")
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        **gateway_env(
            tmp,
            port,
            module_rest,
            VOICEGW_REDIS_URL=redis_server.url(),
            VOICEGW_PROVIDERS="echo",
            VOICEGW_LOG_LEVEL="INFO",
        ),
    }
    settings = devkeys.apply(Settings.from_env(env))
    store = open_store(settings)
    await store.open()
    try:
        await add_user(store, TEST_HASHER, "ada", Role.ADMIN, PASSWORD)
        key, _ = await create_api_key(store, "faults", Role.ADMIN)
    finally:
        await store.close()
    # The test's own client reconnects by itself after each restart.
    client = aioredis.Redis.from_url(
        redis_server.url(), socket_timeout=UNIT, retry=Retry(NoBackoff(), 3)
    )
    log = tmp / "serve.log"
    try:
        async with serve_process(env, port, log) as url:
            yield Deployment(
                gw=Gateway(url, settings, None, module_rest),  # type: ignore[arg-type]
                redis=redis_server,
                log=log,
                api_key=key.token,
                client=client,
                registry=RedisCallRegistry(client, settings.redis_key_prefix + "calls:"),
            )
    finally:
        await client.aclose()


@pytest.fixture(autouse=True)
def redis_back(redis_server: PrivateRedis) -> Iterator[None]:
    """Whatever a test did, the next one starts with Redis running."""
    yield
    if not redis_server.running:
        redis_server.start()


def new_call() -> dict[str, str]:
    return twilio_params("CA" + secrets.token_hex(16), "AC" + secrets.token_hex(16))


def assert_unavailable(response: httpx.Response) -> None:
    """Refused for now, in a way a carrier retries: 503, a short reason, ``Retry-After``."""
    assert response.status_code == 503, response.text
    assert response.json() == {"error": "temporarily unavailable"}
    assert int(response.headers["retry-after"]) > 0


async def replay_keys(d: Deployment) -> int:
    return len([k async for k in d.client.scan_iter(match="voicegw:replay:*", count=500)])


# -- webhooks ----------------------------------------------------------------------------------


async def test_webhooks_fail_closed_while_redis_is_down_and_recover_by_themselves(deployment):
    d = deployment
    before = await scrape(d.url)
    await d.kill_redis()

    refused: list[dict[str, str]] = []
    forged_count = 0
    for _ in range(5):
        params = new_call()
        assert_unavailable(await bounded(post_twilio(d.gw, VOICE, params)))
        refused.append(params)
        status = {**params, "CallStatus": "completed"}
        assert_unavailable(await bounded(post_twilio(d.gw, STATUS, status)))
        hangup = telnyx_event("call.hangup", "v3:" + secrets.token_urlsafe(24))
        assert_unavailable(await bounded(send_telnyx(d.url, d.gw.keys, hangup)))
        # The layers in front of shared state still refuse a forgery for what it is.
        async with httpx.AsyncClient(base_url=d.url, timeout=5 * UNIT) as http:
            signature = {"X-Twilio-Signature": "A" * 27 + "="}
            forged = await bounded(http.post(VOICE, data=new_call(), headers=signature))
        assert forged.status_code == 403 and forged.json() == {"error": "invalid signature"}
        forged_count += 1

    status_code, report = await readiness(d.url)
    assert status_code == 503
    assert report["redis"] == "unreachable"
    assert report["ready"] is False and report["degraded"] is True
    assert report["store"] == "ok"
    # Breakers answer from their in-process fallback meanwhile.
    assert report["providers"]["echo"]["state"] == "closed"
    during = await scrape(d.url)
    for component in ("replay", "ratelimit", "breaker"):
        assert sample(during, FALLBACKS, component=component) > sample(
            before, FALLBACKS, component=component
        ), component
    warnings = {
        line["event"].split(":")[0]
        for line in log_lines(d.log)
        if line["level"] == "warning" and "Redis unavailable" in line["event"]
    }
    assert {"replay", "ratelimit"} <= warnings

    await d.start_redis()
    assert (await wait_ready(d.url))["redis"] == "ok"
    keys_before = await replay_keys(d)  # those written before the outage survived it
    # Each refused delivery, retried by the carrier, is processed in full (the replay cache
    # forgot it), and shared state is used again: the calls are in Redis for every replica.
    for params in refused:
        reply = await bounded(post_twilio(d.gw, VOICE, params))
        assert reply.status_code == 200 and "<Stream" in reply.text, reply.text
        call = await d.registry.by_carrier_id("twilio", params["CallSid"])
        assert call is not None and call.state is CallState.CONNECTING
        ended = await bounded(post_twilio(d.gw, STATUS, {**params, "CallStatus": "completed"}))
        assert ended.status_code == 200
        call = await d.registry.by_carrier_id("twilio", params["CallSid"])
        assert call is not None and call.ended_reason == "twilio_completed", call
    assert await replay_keys(d) >= keys_before + 2 * len(refused)
    signed = 3 * len(refused)
    print(
        f"\nwebhooks while Redis was down: {signed + forged_count} tried, {signed} refused 503, "
        f"{forged_count} forged refused 403, 0 accepted; {len(refused)} of {len(refused)} "
        "retried after recovery processed in full"
    )


# -- operator sessions -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def browser(d: Deployment) -> AsyncIterator[httpx.AsyncClient]:
    """A logged-in browser: its cookie jar holds the session."""
    async with httpx.AsyncClient(base_url=d.url, timeout=5 * UNIT) as http:
        reply = await http.post(
            "/auth/login", json={"username": "ada", "password": PASSWORD}, headers=origin(d)
        )
        assert reply.status_code == 200, reply.text
        yield http


def origin(d: Deployment) -> dict[str, str]:
    return {"Origin": d.url}


def csrf(d: Deployment, http: httpx.AsyncClient) -> dict[str, str]:
    return {**origin(d), "X-CSRF-Token": http.cookies.get("voicegw_csrf") or ""}


async def session_of(d: Deployment, access_token: str) -> httpx.Response:
    """``GET /auth/session`` presenting ``access_token`` as a browser would."""
    async with httpx.AsyncClient(
        base_url=d.url, timeout=5 * UNIT, cookies={"voicegw_access": access_token}
    ) as http:
        return await bounded(http.get("/auth/session"))


async def test_sessions_fail_closed_while_redis_is_down_api_keys_keep_working(deployment):
    d = deployment
    async with browser(d) as live, browser(d) as gone, d.api() as api:
        # A session logged out before the outage must stay logged out after it.
        gone_token = gone.cookies.get("voicegw_access") or ""
        assert (await gone.post("/auth/logout", headers=csrf(d, gone))).status_code == 204
        assert (await live.get("/auth/session")).status_code == 200

        await d.kill_redis()
        unavailable = {"error": "session state unavailable"}
        for reply in (
            await bounded(live.get("/auth/session")),  # revocation unknown: refused
            await session_of(d, gone_token),  # revoked or not: unknown, so refused
            await bounded(live.post("/auth/refresh", headers=csrf(d, live))),
            await bounded(live.post("/auth/logout", headers=csrf(d, live))),
            await bounded(
                live.post(
                    "/auth/login", json={"username": "ada", "password": PASSWORD}, headers=origin(d)
                )
            ),
        ):
            assert reply.status_code == 503, reply.text
            assert reply.json() == unavailable
        # Service API keys are in the durable store: they keep working.
        providers = await bounded(api.get("/api/v1/providers"))
        assert providers.status_code == 200, providers.text
        assert (await bounded(api.get("/api/v1/audit?limit=5"))).status_code == 200
        calls = await bounded(api.get("/api/v1/calls"))
        assert calls.status_code == 503, calls.text
        assert calls.json() == {"error": "live calls unavailable"}

        await d.start_redis()
        await wait_ready(d.url)
        assert (await bounded(live.get("/auth/session"))).status_code == 200
        revoked = await session_of(d, gone_token)
        assert revoked.status_code == 401 and revoked.json() == {"error": "session revoked"}
        refreshed = await bounded(live.post("/auth/refresh", headers=csrf(d, live)))
        assert refreshed.status_code == 200, refreshed.text
        assert (await bounded(api.get("/api/v1/calls"))).status_code == 200
    print(
        "\nsessions while Redis was down: 5 tried, 5 refused 503, 0 accepted; API keys: 2 of 2 "
        "served; after recovery the logged-out token is still refused"
    )


# -- live calls --------------------------------------------------------------------------------


class LiveCalls:
    """The operator's live-call stream (``GET /api/v1/events``), read in the background:
    each ``calls`` event's call ids, and whether the stream has ended."""

    def __init__(self, response: httpx.Response) -> None:
        self.updates: list[set[str]] = []
        self.ended = asyncio.Event()
        self._reader = asyncio.create_task(self._read(response))

    async def _read(self, response: httpx.Response) -> None:
        event = ""
        try:
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: ") and event == "calls":
                    self.updates.append({c["call_id"] for c in orjson.loads(line[6:])})
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()

    async def wait_for(self, predicate: Callable[[set[str]], bool], within: float) -> None:
        async with asyncio.timeout(within):
            while not (self.updates and predicate(self.updates[-1])):
                assert not self.ended.is_set(), "the live-call stream ended"
                await asyncio.sleep(0.05)

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def live_calls(d: Deployment) -> AsyncIterator[LiveCalls]:
    async with d.api() as api, api.stream("GET", "/api/v1/events") as response:
        assert response.status_code == 200
        stream = LiveCalls(response)
        try:
            yield stream
        finally:
            await stream.close()


async def test_calls_in_progress_survive_the_outage(deployment):
    async with live_calls(deployment) as console:
        await _calls_survive(deployment, console)


async def _calls_survive(d: Deployment, console: LiveCalls) -> None:
    ending = await open_stream(d.gw, await answer(d.gw, "twilio"))  # hangs up during the outage
    staying = await open_stream(d.gw, await answer(d.gw, "twilio"))  # outlives it
    late = await answer(d.gw, "twilio")  # answered now, its stream opens during the outage
    for leg in (ending, staying):
        await leg.play(QUIET * 3, realtime=False)
        await leg.wait_audio(3)
    ids = {}
    for leg in (ending, staying):
        call = await d.registry.by_carrier_id("twilio", leg.ticket.call_id)
        assert call is not None
        ids[leg.ticket.call_id] = call.call_id
    await console.wait_for(lambda live: set(ids.values()) <= live, 5 * UNIT)

    await d.kill_redis()
    # One second of audio on each call at a phone line's pace: every frame comes back.
    sent = {id(leg): len(leg.payloads) for leg in (ending, staying)}
    await asyncio.gather(*(leg.play(QUIET * 50) for leg in (ending, staying)))
    for leg in (ending, staying):
        await leg.wait_audio(sent[id(leg)] + 50)
        assert leg.close_code is None
    # A stream that starts now cannot spend its token: closed, "try again later".
    refused = await open_stream(d.gw, late)
    assert await refused.wait_closed() == CloseCode.TRY_AGAIN_LATER
    await ending.stop()  # the caller hangs up while Redis is down
    await asyncio.sleep(0.5 * UNIT)
    # The console's stream has polled the registry in vain at least once: it is still open.
    assert not console.ended.is_set(), "the live-call stream broke"

    await d.start_redis()
    await wait_ready(d.url)
    # The call that ended during the outage is ended in the registry, not kept as a ghost.
    deadline = asyncio.get_running_loop().time() + 10 * UNIT
    while True:
        call = await d.registry.by_carrier_id("twilio", ending.ticket.call_id)
        assert call is not None
        if call.state is CallState.ENDED:
            break
        assert asyncio.get_running_loop().time() < deadline, f"still {call.state} after recovery"
        await asyncio.sleep(0.1)
    assert call.ended_reason == "carrier_hangup"
    # The one that outlived the outage is still live, still held, and ends normally.
    active = {c.carrier_call_id for c in await d.registry.list_active()}
    assert staying.ticket.call_id in active and ending.ticket.call_id not in active
    # The console's live-call stream stayed open through the outage and shows it too.
    await console.wait_for(
        lambda live: ids[staying.ticket.call_id] in live and ids[ending.ticket.call_id] not in live,
        5 * UNIT,
    )
    received = len(staying.payloads)
    await staying.play(QUIET * 10, realtime=False)
    await staying.wait_audio(received + 10)
    await staying.stop()
    # The carrier ends the call whose stream never started.
    status = {**twilio_params(late.call_id, late.account_id), "CallStatus": "completed"}
    assert (await bounded(post_twilio(d.gw, STATUS, status))).status_code == 200
    deadline = asyncio.get_running_loop().time() + 5 * UNIT
    while await d.registry.list_active():
        assert asyncio.get_running_loop().time() < deadline, await d.registry.list_active()
        await asyncio.sleep(0.05)
    # The durable records were closed even though Redis was down when the call ended.
    async with d.api() as api:
        recent = (await bounded(api.get("/api/v1/calls?limit=50"))).json()["recent"]
    outcomes = {r["call_id"]: r["outcome"] for r in recent}
    assert outcomes[call.call_id] == "carrier_hangup"
    print(
        "\ncalls in progress: 2 of 2 survived the outage (100 of 100 frames echoed during it); "
        "1 stream opened during it refused 1013; 1 call ended during it, ended in the registry "
        "after recovery, its record closed"
    )
