"""Facts the review learns from the running deployment rather than from settings: the replicas
the call registry's heartbeats show alive (real Redis), and forwarded requests from a reverse
proxy on this host that no setting declares (a running ``Runtime``)."""

from __future__ import annotations

import dataclasses

import redis.asyncio as aioredis
from starlette.requests import Request

from gateway.app import start_runtime
from gateway.calls.redis_registry import RedisCallRegistry
from gateway.review.checks import review
from gateway.review.facts import runtime_facts
from gateway.review.model import Status
from gateway.settings import Settings
from tests.review.conftest import not_passing, review_of


async def test_replicas_seen_by_their_heartbeats_need_a_shared_store(baseline: Settings) -> None:
    assert baseline.redis_url is not None and baseline.replicas == 1  # VOICEGW_REPLICAS unset
    client = aioredis.Redis.from_url(baseline.redis_url.get())
    prefix = baseline.redis_key_prefix + "calls:"
    try:
        a = RedisCallRegistry(client, prefix, replica_id="pod-a")
        b = RedisCallRegistry(client, prefix, replica_id="pod-b")
        assert await a.live_replicas() == 0
        await a.heartbeat()
        await b.heartbeat()
        await a.heartbeat()  # beating again counts once
        assert await a.live_replicas() == 2
        assert await b.live_replicas() == 2
        report = await review_of(baseline)
    finally:
        await client.delete(f"{prefix}{{calls}}:replicas")
        await client.aclose()
    assert not_passing(report) == {"store.shared": Status.FAIL}, report.render()
    assert "2 replicas (live heartbeats)" in report.get("store.shared").finding
    assert "2 replica(s), from live heartbeats" in report.get("redis.configured").finding
    # VOICEGW_REPLICAS still overrides upwards (replicas not started yet).
    more = await review_of(dataclasses.replace(baseline, replicas=5))
    assert "5 replicas (VOICEGW_REPLICAS)" in more.get("store.shared").finding


def _request(peer: str, forwarded: str | None) -> Request:
    headers = [] if forwarded is None else [(b"x-forwarded-for", forwarded.encode())]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers,
                    "client": (peer, 41000)})  # fmt: skip


async def test_a_forwarded_request_from_an_undeclared_local_proxy_is_a_finding(
    baseline: Settings,
) -> None:
    runtime = await start_runtime(baseline)  # production: the start-up review passes
    try:
        quiet = review(runtime.settings, await runtime_facts(runtime))
        assert not_passing(quiet) == {}, quiet.render()
        runtime.clients.address(_request("127.0.0.1", None))  # a local client: nothing to say
        runtime.clients.address(_request("203.0.113.7", "198.51.100.9"))  # remote: ignored
        assert not_passing(review(runtime.settings, await runtime_facts(runtime))) == {}
        runtime.clients.address(_request("127.0.0.1", "198.51.100.9"))
        report = review(runtime.settings, await runtime_facts(runtime))
    finally:
        await runtime.stop()
    assert not_passing(report) == {"proxies.forwarded": Status.FAIL}, report.render()
    finding = report.get("proxies.forwarded")
    assert "198.51.100.9" not in finding.finding and "127.0.0.1/32" in finding.fix
