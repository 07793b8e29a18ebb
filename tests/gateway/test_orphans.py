"""Call records whose process died mid-call are closed; live calls are never touched.

Runs against both registries (in-process and the real Redis) and the gateway's SQLite store.
The end-to-end case (a ``voicegw serve`` killed with SIGKILL, then restarted) is in
``tests/faults/test_sigkill.py``.
"""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from gateway.calls import orphans
from gateway.calls.orphans import close_orphans
from gateway.calls.redis_registry import RedisCallRegistry
from gateway.calls.state import CallState
from gateway.records.base import CallRecord
from metrics.registry import REGISTRY
from tests.gateway.conftest import Gateway, call_sid

TTL = 60.0


def closed_total() -> float:
    return REGISTRY.get_sample_value("voicegw_orphaned_calls_closed_total") or 0.0


async def record(gw: Gateway, call_id: str, started_at: float) -> None:
    await gw.runtime.store.put_call(
        CallRecord(call_id, "twilio", call_sid(), started_at, providers=("echo",))
    )


async def test_orphans_are_closed_and_live_calls_left_alone(state_gw: Gateway):
    gw = state_gw
    registry, store = gw.runtime.registry, gw.runtime.store
    now = time.time()
    live, _ = await registry.create("twilio", call_sid(), "echo")
    ended, _ = await registry.create("twilio", call_sid(), "echo")
    await registry.transition(ended.call_id, CallState.ENDED, reason="carrier_hangup")
    ended_at = (await registry.get(ended.call_id)).updated_at  # type: ignore[union-attr]
    await record(gw, live.call_id, now - 2 * TTL)  # old, but live on some replica
    await record(gw, ended.call_id, now - 2 * TTL)  # ended; its record was never completed
    await record(gw, "call_lost", now - 2 * TTL)  # the registry forgot it: its process died
    await record(gw, "call_new", now - TTL / 2)  # too recent to judge
    before = closed_total()

    assert await close_orphans(store, registry, older_than_s=TTL) == 2

    lost = await store.get_call("call_lost")
    assert lost is not None and lost.outcome == "replica_lost"
    assert lost.ended_at is not None and now <= lost.ended_at <= time.time()
    completed = await store.get_call(ended.call_id)
    assert completed is not None
    assert (completed.outcome, completed.ended_at) == ("carrier_hangup", ended_at)
    for untouched in (live.call_id, "call_new"):
        kept = await store.get_call(untouched)
        assert kept is not None and kept.ended_at is None and kept.outcome is None
    assert closed_total() - before == 2
    # A second scan finds nothing more to do.
    assert await close_orphans(store, registry, older_than_s=TTL) == 0


async def test_every_page_of_orphans_is_closed(gw: Gateway, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(orphans, "PAGE", 3)
    now = time.time()
    live, _ = await gw.runtime.registry.create("twilio", call_sid(), "echo")
    await record(gw, live.call_id, now - 10 * TTL)  # the first page starts with a live call
    for i in range(8):
        await record(gw, f"call_{i}", now - 9 * TTL + i)
    assert await close_orphans(gw.runtime.store, gw.runtime.registry, older_than_s=TTL) == 8
    assert [c.call_id for c in await gw.runtime.store.open_calls(now, 100)] == [live.call_id]


async def test_a_registry_that_cannot_answer_stops_the_scan(gw: Gateway, redis_prefix: str):
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    try:
        registry = RedisCallRegistry(dead, redis_prefix + "calls:")
        await record(gw, "call_unknown", time.time() - 2 * TTL)
        assert await close_orphans(gw.runtime.store, registry, older_than_s=TTL) == 0
        kept = await gw.runtime.store.get_call("call_unknown")
        assert kept is not None and kept.ended_at is None  # never closed on a guess
    finally:
        await dead.aclose()
