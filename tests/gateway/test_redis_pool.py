"""The gateway's Redis connection pool: bounded, and a burst beyond it waits rather than fails.

Found by the soak: 68 calls ending at once needed more than the default 100 pooled
connections and nine registry updates failed at once with ``MaxConnectionsError``.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from gateway.calls.state import CallState
from tests.gateway.conftest import GatewayFactory, call_sid
from tests.gateway.test_webhooks import VOICE, twilio_params

POOL = 4


async def named_connections(client: aioredis.Redis, name: str) -> int:
    """How many connections Redis has from clients named ``name``."""
    return sum(1 for c in await client.client_list() if c.get("name") == name)


async def test_a_burst_beyond_the_pool_waits_for_a_connection(
    make_gateway: GatewayFactory, redis_client: aioredis.Redis
):
    gw = await make_gateway({"VOICEGW_REDIS_MAX_CONNECTIONS": str(POOL)}, redis=True)
    name = f"voicegw:{gw.runtime.registry.replica_id}"

    replies = await asyncio.gather(*(gw.runtime.redis.ping() for _ in range(300)))

    assert replies == [True] * 300  # none failed for want of a connection
    assert 1 <= await named_connections(redis_client, name) <= POOL


async def test_calls_set_up_and_ended_in_a_burst_all_reach_the_registry(
    make_gateway: GatewayFactory, redis_client: aioredis.Redis
):
    gw = await make_gateway({"VOICEGW_REDIS_MAX_CONNECTIONS": str(POOL)}, redis=True)
    sids = [call_sid() for _ in range(40)]

    answered = await asyncio.gather(*(gw.twilio(VOICE, twilio_params(sid)) for sid in sids))
    assert [r.status_code for r in answered] == [200] * len(sids)
    calls = [await gw.runtime.registry.by_carrier_id("twilio", sid) for sid in sids]
    await asyncio.gather(
        *(gw.runtime.records.end_call_eventually(c, "carrier_hangup") for c in calls if c)
    )

    ended = [await gw.runtime.registry.get(c.call_id) for c in calls if c]
    assert len(ended) == len(sids)
    assert all(c is not None and c.state is CallState.ENDED for c in ended)
    assert "end-call" not in {t.get_name() for t in asyncio.all_tasks()}  # no retry was needed
    name = f"voicegw:{gw.runtime.registry.replica_id}"
    assert await named_connections(redis_client, name) <= POOL
