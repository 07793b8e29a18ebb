"""Admission of verified deliveries: the same semantics step by step (any backends), as one
Redis script, and on the in-process fallback while Redis is down."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot

from metrics.registry import REGISTRY
from security.admission import (
    FallbackAdmitter,
    RedisAdmitter,
    StepwiseAdmitter,
    admitter_for,
)
from security.exceptions import StateUnavailable
from security.ratelimit import FallbackLimiter, InProcessLimiter, RedisLimiter
from security.replay import (
    Degradation,
    FallbackReplayCache,
    InProcessReplayCache,
    RedisReplayCache,
)
from tests.conftest import UNIT, FakeClock, remove_keys
from tests.faults.redis_server import private_redis
from tests.redis_cluster import connect

TTL = 60


def fallbacks(component: str) -> float:
    value = REGISTRY.get_sample_value("voicegw_state_fallback_total", {"component": component})
    return value or 0.0


@pytest.fixture
def make_state(make_replay, make_limiter):
    """A replay cache, a limiter and the admitter ``admitter_for`` picks for them."""

    def make(limit: int) -> tuple[Any, Any, Any]:
        replay, limiter = make_replay(), make_limiter(limit)
        return replay, limiter, admitter_for(replay, limiter)

    return make


async def test_all_redis_state_gets_the_one_round_trip_admitter(make_state, backend):
    _, _, admitter = make_state(5)
    expected = StepwiseAdmitter if backend == "memory" else RedisAdmitter
    assert type(admitter) is expected


async def test_duplicate_spends_no_budget(make_state):
    _, _, admitter = make_state(1)
    first = await admitter.admit("telnyx", "telnyx\x00delivery-1", TTL)
    assert first.admitted and not first.duplicate
    assert first.decision.remaining == 0
    for _ in range(3):
        again = await admitter.admit("telnyx", "telnyx\x00delivery-1", TTL)
        assert again.duplicate and not again.admitted
    # The one unit of budget went to the first delivery: a new one is refused.
    refused = await admitter.admit("telnyx", "telnyx\x00delivery-2", TTL)
    assert not refused.duplicate and not refused.admitted
    assert refused.decision.retry_after_s > 0


async def test_duplicates_spend_a_budget_of_their_own(make_state):
    """Replays of one delivery are bounded (refused once over the limit) on a scope of their
    own: they never take new deliveries' budget."""
    _, _, admitter = make_state(2)
    assert (await admitter.admit("twilio", "twilio\x00captured", TTL)).admitted
    for _ in range(2):
        again = await admitter.admit("twilio", "twilio\x00captured", TTL)
        assert again.duplicate and not again.refused
    over = await admitter.admit("twilio", "twilio\x00captured", TTL)
    assert over.duplicate and over.refused
    assert over.decision.retry_after_s > 0
    # The deliveries' limit still has the unit the duplicates did not touch.
    assert (await admitter.admit("twilio", "twilio\x00new", TTL)).admitted
    assert not (await admitter.admit("twilio", "twilio\x00newer", TTL)).admitted


async def test_refused_delivery_is_not_remembered(make_state):
    replay, _, admitter = make_state(1)
    assert (await admitter.admit("telnyx", "telnyx\x00first", TTL)).admitted
    refused = await admitter.admit("telnyx", "telnyx\x00second", TTL)
    assert not refused.admitted and not refused.duplicate
    # Not recorded, so the carrier's retry is not taken for a duplicate once there is room.
    assert not await replay.seen("telnyx\x00second")
    assert await replay.seen("telnyx\x00first")
    # The limit is per scope.
    assert (await admitter.admit("twilio", "twilio\x00second", TTL)).admitted


async def test_forget_undoes_the_record(make_state):
    """The gateway forgets a delivery whose processing failed; its retry is then admitted."""
    replay, _, admitter = make_state(10)
    assert (await admitter.admit("twilio", "twilio\x00delivery", TTL)).admitted
    await replay.forget("twilio\x00delivery")
    retry = await admitter.admit("twilio", "twilio\x00delivery", TTL)
    assert retry.admitted and not retry.duplicate
    assert (await admitter.admit("twilio", "twilio\x00delivery", TTL)).duplicate


async def test_concurrent_copies_admit_one_and_spend_one_unit(make_state):
    _, _, admitter = make_state(5)
    results = await asyncio.gather(
        *(admitter.admit("telnyx", "telnyx\x00same", TTL) for _ in range(10))
    )
    assert sum(result.admitted for result in results) == 1
    assert sum(result.duplicate for result in results) == 9
    after = await admitter.admit("telnyx", "telnyx\x00other", TTL)
    assert after.admitted and after.decision.remaining == 3


async def test_record_is_kept_for_its_ttl(make_state):
    replay, _, admitter = make_state(10)
    assert (await admitter.admit("telnyx", "telnyx\x00short-lived", 1)).admitted
    assert await replay.seen("telnyx\x00short-lived")
    if isinstance(replay, RedisReplayCache):
        ttl = await replay.client.ttl(replay.redis_key("telnyx\x00short-lived"))
        assert 0 < ttl <= 1


class CountingConnection(aioredis.Connection):
    """A real Redis connection that counts the commands it sends."""

    sent = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sent += 1
        await super().send_packed_command(command, check_health)


async def test_one_round_trip_per_delivery(redis_url, redis_prefix):
    pool = aioredis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    client = aioredis.Redis.from_pool(pool)
    try:
        admitter = RedisAdmitter(
            RedisReplayCache(client, redis_prefix), RedisLimiter(client, redis_prefix, 2)
        )
        await admitter.admit("telnyx", "telnyx\x00warm-up", TTL)  # connects and loads the script
        outcomes = []
        for key in ("new", "new", "newer", "newest"):
            before = CountingConnection.sent
            admission = await admitter.admit("telnyx", f"telnyx\x00{key}", TTL)
            outcomes.append("duplicate" if admission.duplicate else admission.admitted)
            assert CountingConnection.sent == before + 1
        assert outcomes == [True, "duplicate", False, False]
    finally:
        keys = [key async for key in client.scan_iter(match=f"{redis_prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_concurrent_deliveries_share_one_write(redis_url, redis_prefix):
    pool = aioredis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    client = aioredis.Redis.from_pool(pool)
    try:
        admitter = RedisAdmitter(
            RedisReplayCache(client, redis_prefix), RedisLimiter(client, redis_prefix, 5)
        )
        await admitter.admit("twilio", "twilio\x00warm-up", TTL)
        before = CountingConnection.sent
        keys = [f"delivery-{i}" for i in range(8)] + ["delivery-0"]
        results = await asyncio.gather(
            *(admitter.admit("telnyx", f"telnyx\x00{key}", TTL) for key in keys)
        )
        assert CountingConnection.sent == before + 1
        # Each script ran on its own, in order: the limit admitted the first five, the copy
        # of the first one is a duplicate, and the refused ones were not remembered.
        assert [r.admitted for r in results] == [True] * 5 + [False] * 4
        assert results[-1].duplicate and not any(r.duplicate for r in results[:-1])
        assert [r.decision.remaining for r in results[:5]] == [4, 3, 2, 1, 0]
        replay = RedisReplayCache(client, redis_prefix)
        assert [await replay.seen(f"telnyx\x00{key}") for key in keys[5:8]] == [False] * 3
    finally:
        keys_left = [key async for key in client.scan_iter(match=f"{redis_prefix}*")]
        if keys_left:
            await client.delete(*keys_left)
        await client.aclose()


async def test_script_reloaded_after_a_redis_restart(tmp_path, redis_prefix):
    """A fresh or restarted Redis has no cached script: it is loaded, and what was recorded
    before the restart still counts."""
    with private_redis(tmp_path / "redis") as server:
        client = aioredis.Redis.from_url(server.url(), socket_timeout=2 * UNIT)
        try:
            replay = RedisReplayCache(client, redis_prefix)
            admitter = RedisAdmitter(replay, RedisLimiter(client, redis_prefix, 10))
            assert (await admitter.admit("telnyx", "telnyx\x00before", TTL)).admitted
            server.stop()
            server.start()
            try:
                again = await admitter.admit("telnyx", "telnyx\x00before", TTL)
            except StateUnavailable:
                # The pooled connection from before the restart died (and was not retried:
                # the script might have run); the next admission gets a fresh one.
                again = await admitter.admit("telnyx", "telnyx\x00before", TTL)
            assert again.duplicate
            after = await admitter.admit("telnyx", "telnyx\x00after", TTL)
            assert after.admitted and after.decision.remaining == 8
        finally:
            await client.aclose()


async def test_admitter_for_needs_one_client_for_both(redis_client, redis_url, redis_prefix):
    other = aioredis.Redis.from_url(redis_url)
    try:
        replay = RedisReplayCache(redis_client, redis_prefix)
        split = admitter_for(replay, RedisLimiter(other, redis_prefix, 5))
        assert type(split) is StepwiseAdmitter
        assert type(admitter_for(replay, InProcessLimiter(5))) is StepwiseAdmitter
        with pytest.raises(ValueError):
            RedisAdmitter(replay, RedisLimiter(other, redis_prefix, 5))
        both = admitter_for(
            FallbackReplayCache(replay),
            FallbackLimiter(RedisLimiter(redis_client, redis_prefix, 5)),
        )
        assert type(both) is FallbackAdmitter
        half = admitter_for(FallbackReplayCache(replay), FallbackLimiter(InProcessLimiter(5)))
        assert type(half) is StepwiseAdmitter
    finally:
        await other.aclose()


# -- Redis down ------------------------------------------------------------------------------


def fallback_state(client: aioredis.Redis, prefix: str, limit: int, **degradation: Any):
    replay = FallbackReplayCache(
        RedisReplayCache(client, prefix, timeout_s=2 * UNIT),
        degradation=Degradation("replay", **degradation),
    )
    limiter = FallbackLimiter(
        RedisLimiter(client, prefix, limit, timeout_s=2 * UNIT),
        InProcessLimiter(limit),
        degradation=Degradation("ratelimit", **degradation),
    )
    return replay, limiter, admitter_for(replay, limiter)


async def test_redis_down_is_served_in_process_with_each_components_bookkeeping(
    dead_redis, redis_prefix, caplog
):
    replay, limiter, admitter = fallback_state(dead_redis, redis_prefix, 2, probe_interval_s=60)
    assert type(admitter) is FallbackAdmitter
    with pytest.raises(StateUnavailable):
        await RedisAdmitter(replay.primary, limiter.primary).admit("telnyx", "telnyx\x00k", TTL)
    before = {c: fallbacks(c) for c in ("replay", "ratelimit")}
    with caplog.at_level(logging.WARNING, logger="security.replay"):
        assert (await admitter.admit("telnyx", "telnyx\x00k", TTL)).admitted
        assert (await admitter.admit("telnyx", "telnyx\x00k", TTL)).duplicate
        assert (await admitter.admit("telnyx", "telnyx\x00k2", TTL)).admitted
        refused = await admitter.admit("telnyx", "telnyx\x00k3", TTL)
    assert replay.degraded and limiter.degraded
    # As the components count on their own: a read and a write of the replay cache per
    # admitted delivery, one read for a duplicate, one hit per delivery (the duplicate's on
    # the duplicates' limit).
    assert fallbacks("replay") == before["replay"] + 2 + 1 + 2 + 1
    assert fallbacks("ratelimit") == before["ratelimit"] + 4
    assert not refused.admitted and not await replay.seen("telnyx\x00k3")
    # One warning per component for the outage, not one per request.
    warnings = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 2
    assert await replay.seen("telnyx\x00k")
    await replay.forget("telnyx\x00k")  # reaches the fallback copy although Redis is down
    assert not await replay.seen("telnyx\x00k")


async def test_returns_to_redis_when_it_answers(redis_client, redis_prefix, caplog):
    clock = FakeClock()
    replay, limiter, admitter = fallback_state(
        redis_client, redis_prefix, 10, probe_interval_s=5.0, clock=clock
    )
    outage = StateUnavailable("outage")
    replay.degradation.primary_failed(outage)
    limiter.degradation.primary_failed(outage)
    primary = replay.primary
    assert isinstance(primary, RedisReplayCache)
    with caplog.at_level(logging.WARNING, logger="security.replay"):
        # Within the probe interval: served in process, Redis not written.
        assert (await admitter.admit("telnyx", "telnyx\x00during", TTL)).admitted
        assert not await primary.seen("telnyx\x00during")
        clock.advance(5.0)
        assert (await admitter.admit("telnyx", "telnyx\x00after", TTL)).admitted
    assert not replay.degraded and not limiter.degraded
    assert await primary.seen("telnyx\x00after")
    assert len([r for r in caplog.records if "answers again" in r.getMessage()]) == 2


async def test_in_process_pair_is_stepwise():
    replay = InProcessReplayCache()
    admitter = admitter_for(replay, InProcessLimiter(1))
    assert type(admitter) is StepwiseAdmitter
    assert (await admitter.admit("telnyx", "telnyx\x00a", TTL)).admitted
    assert await replay.seen("telnyx\x00a")


@pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)
async def test_a_key_outside_its_scope_is_refused(make_state):
    """On Redis Cluster a key of another namespace would sit in another hash slot."""
    _, _, admitter = make_state(5)
    with pytest.raises(ValueError, match="namespace"):
        await admitter.admit("telnyx", "twilio\x00delivery", TTL)


async def test_a_moved_slot_is_followed_without_falling_back(redis_cluster, redis_prefix):
    """A script a node redirected (its slot moved) did not run: it is sent once more to the
    slot's new node, and the delivery is admitted there, not served in process."""
    client = connect(redis_cluster.url, "cluster")
    try:
        replay = RedisReplayCache(client, redis_prefix, timeout_s=5 * UNIT)
        admitter = RedisAdmitter(replay, RedisLimiter(client, redis_prefix, 5))
        await client.ping()  # the client learns which node holds which slot
        scope = f"moved-{uuid.uuid4().hex}"
        key = f"{scope}\x00a"
        owner = client.get_node_from_key(replay.redis_key(key))
        target = next(port for port in redis_cluster.ports if port != int(owner.port))
        with redis.Redis(port=target) as node:
            target_id = node.cluster("MYID")
        # The new owner first (it bumps its epoch), then the others learn it.
        for port in sorted(redis_cluster.ports, key=lambda port: port != target):
            with redis.Redis(port=port) as node:
                node.cluster("SETSLOT", key_slot(replay.redis_key(key).encode()), "NODE", target_id)
        assert (await admitter.admit(scope, key, TTL)).admitted
        assert int(client.get_node_from_key(replay.redis_key(key)).port) == target
        assert (await admitter.admit(scope, key, TTL)).duplicate
        await remove_keys(client, redis_prefix)
    finally:
        await client.aclose()
