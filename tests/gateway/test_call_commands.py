"""Commands on live calls between replicas, over the real Redis: the holder acts, a missing
holder is handled, and garbage on the command channel changes nothing."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from redis.asyncio.cluster import RedisCluster

from gateway.calls.commands import CallCommands, Outcome
from gateway.calls.state import Call, CallState, EndReason
from gateway.services import commands_client
from providers.events import CallId
from security.rediskeys import RedisClient
from tests.conftest import REDIS_MODES, UNIT, redis_url_for

pytestmark = pytest.mark.redis


@dataclass
class HeldBridge:
    call: Call
    ended: list[tuple[EndReason, str | None]] = field(default_factory=list)
    transfers: list[str] = field(default_factory=list)

    def end(self, reason: EndReason, *, transfer_to: str | None = None) -> None:
        self.ended.append((reason, transfer_to))

    async def transfer(self, destination: str) -> str:
        self.transfers.append(destination)
        return "ok" if destination == "billing" else "unknown_destination"


@dataclass
class Control:
    hung_up: list[str] = field(default_factory=list)

    def hang_up(self, call: Call, account_id: str | None) -> None:
        self.hung_up.append(call.call_id)


def call_on(replica: str, call_id: str = "call_x") -> Call:
    now = time.time()
    return Call(CallId(call_id), "twilio", "CA1", "echo", CallState.STREAMING, now, now, replica)


@pytest.fixture(params=REDIS_MODES)
async def clients(request: pytest.FixtureRequest) -> AsyncIterator[list[RedisClient]]:
    """Two replicas' command clients, of one Redis server or of a Redis Cluster."""
    url = redis_url_for(request, request.param)
    made = [commands_client(url, mode=request.param) for _ in range(2)]
    try:
        yield made
    finally:
        for client in made:
            await client.aclose()


async def subscribers(client: RedisClient, channel: str) -> int:
    """How many listen on ``channel`` (a shard channel on a cluster, asked of its node)."""
    if isinstance(client, RedisCluster):
        node = client.get_node_from_key(channel)
        counts = await client.pubsub_shardnumsub(channel, target_nodes=node)
    else:
        counts = await client.pubsub_numsub(channel)
    return int(counts[0][1])


async def publish(client: RedisClient, channel: str, message: bytes) -> None:
    if isinstance(client, RedisCluster):
        await client.spublish(channel, message)
    else:
        await client.publish(channel, message)


async def running(commands: CallCommands) -> asyncio.Task[None]:
    task = asyncio.create_task(commands.run())
    channel = commands._channel(commands.replica_id)
    assert commands.redis is not None
    await commands.redis.ping()  # a cluster client learns the slots
    async with asyncio.timeout(5 * UNIT):
        for _ in itertools.count():  # until the subscription is in place
            if await subscribers(commands.redis, channel):
                break
            await asyncio.sleep(0.01)
    return task


async def test_the_holder_carries_out_commands_given_elsewhere(clients):
    prefix = f"voicegw-test:{uuid.uuid4().hex[:8]}:"
    held = HeldBridge(call_on("a"))
    control = Control()
    holder = CallCommands(
        bridges=[held], control=control, replica_id="a", redis=clients[0], prefix=prefix
    )
    other = CallCommands(
        bridges=[], control=control, replica_id="b", redis=clients[1], prefix=prefix
    )
    task = await running(holder)
    try:
        # Garbage on the holder's channel first: ignored, and the holder still answers.
        channel = holder._channel("a")
        for junk in (b"", b"{", b"[]", b'{"call_id": 5, "reply": "r"}', b'{"cmd": "hangup"}'):
            await publish(clients[1], channel, junk)
        assert await other.transfer(held.call, "sales") is Outcome.UNKNOWN_DESTINATION
        assert await other.transfer(held.call, "billing") is Outcome.OK
        assert held.transfers == ["sales", "billing"]
        assert await other.hang_up(held.call) is Outcome.OK
        assert held.ended == [(EndReason.OPERATOR_HANGUP, None)]
        assert control.hung_up == []  # the holder ended it: no REST call from elsewhere
        # A call the holder does not (or no longer) bridge, yet still active: hung up by REST.
        stray = call_on("a", "call_stray")
        assert await other.hang_up(stray) is Outcome.OK
        assert control.hung_up == ["call_stray"]
        assert await other.transfer(stray, "billing") is Outcome.NOT_LIVE
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_holder_that_does_not_listen_is_unreachable(clients):
    prefix = f"voicegw-test:{uuid.uuid4().hex[:8]}:"
    control = Control()
    other = CallCommands(
        bridges=[], control=control, replica_id="b", redis=clients[1], prefix=prefix
    )
    gone = call_on("a-died")
    assert await other.transfer(gone, "billing") is Outcome.UNREACHABLE
    # A hang-up still happens: the carrier ends the call, and with it any stream.
    assert await other.hang_up(gone) is Outcome.OK
    assert control.hung_up == [gone.call_id]


async def test_without_redis_the_one_replica_holds_every_call():
    held = HeldBridge(call_on("solo"))
    control = Control()
    solo = CallCommands(bridges=[held], control=control, replica_id="solo")
    assert await solo.hang_up(held.call) is Outcome.OK
    assert held.ended == [(EndReason.OPERATOR_HANGUP, None)]
    await solo.run()  # nothing to listen to: returns at once
