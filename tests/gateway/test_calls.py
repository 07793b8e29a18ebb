"""gateway.calls.registry: the state machine, and one registry suite run against both backends
(Redis is the real server)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
import redis.asyncio as aioredis

from gateway.calls.redis_registry import RedisCallRegistry
from gateway.calls.registry import (
    CallRegistry,
    InProcessCallRegistry,
    keep_alive,
)
from gateway.calls.state import (
    CARRIERS,
    Call,
    CallError,
    CallNotFoundError,
    CallState,
    CallStateError,
    can_transition,
    new_call_id,
)
from providers.events import CallId
from security.rediskeys import RedisClient
from tests.conftest import UNIT, open_test_redis, redis_url_for, remove_keys
from tests.redis_cluster import connect

RINGING, CONNECTING, STREAMING, ENDED = CallState


# -- the state machine, no backend -------------------------------------------------------------

LEGAL = {
    (RINGING, CONNECTING),
    (CONNECTING, STREAMING),
    (RINGING, ENDED),
    (CONNECTING, ENDED),
    (STREAMING, ENDED),
}


@pytest.mark.parametrize(("current", "new"), list(itertools.product(CallState, CallState)))
def test_can_transition(current, new):
    assert can_transition(current, new) is ((current, new) in LEGAL)


def test_call_record_holds_no_personal_data():
    names = {f.name for f in dataclasses.fields(Call)}
    assert names == {
        "call_id",
        "carrier",
        "carrier_call_id",
        "provider",
        "state",
        "created_at",
        "updated_at",
        "replica",
        "ended_reason",
        "account_id",  # the carrier account (Twilio AccountSid): an identifier, no person's
        "agent",  # the agent profile's name (chosen by the dialled number, never the number)
    }


def test_call_ids_are_random():
    ids = {new_call_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("call_") and len(i) > 20 for i in ids)


# -- both backends -----------------------------------------------------------------------------


class Backend:
    """Makes registries that are replicas of one deployment (in process, or sharing one Redis
    server or one Redis Cluster)."""

    def __init__(self, kind: str, redis_url: str, prefix: str) -> None:
        self.kind = kind
        self.mode = "cluster" if kind == "cluster" else "standalone"
        self.redis_url = redis_url
        self.prefix = prefix
        self.clients: list[RedisClient] = []
        self.first: InProcessCallRegistry | None = None

    def registry(
        self, replica_id: str, *, ended_ttl: float = 3600.0, active_ttl: float = 60.0
    ) -> CallRegistry:
        if self.kind == "in_process":
            if self.first is None:
                self.first = InProcessCallRegistry(replica_id, ended_ttl=ended_ttl)
                return self.first
            return self.first.sibling(replica_id)
        client = connect(self.redis_url, self.mode)  # one connection pool per replica
        self.clients.append(client)
        return RedisCallRegistry(
            client, self.prefix, replica_id=replica_id, ended_ttl=ended_ttl, active_ttl=active_ttl
        )

    async def close(self) -> None:
        if self.clients:
            await remove_keys(self.clients[0], self.prefix)
        for client in self.clients:
            await client.aclose()


async def _open(request: pytest.FixtureRequest, kind: str, prefix: str) -> Backend:
    mode = "cluster" if kind == "cluster" else "standalone"
    url = redis_url_for(request, mode)
    b = Backend(kind, url, prefix)
    if kind != "in_process":
        b.clients.append(await open_test_redis(url, mode))
    return b


@pytest.fixture(
    params=[
        "in_process",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("cluster", marks=pytest.mark.redis),
    ]
)
async def backend(request, redis_prefix) -> AsyncIterator[Backend]:
    b = await _open(request, request.param, redis_prefix)
    yield b
    await b.close()


@pytest.fixture(params=["redis", "cluster"])
async def redis_backend(request, redis_prefix) -> AsyncIterator[Backend]:
    b = await _open(request, request.param, redis_prefix)
    yield b
    await b.close()


@pytest.fixture
def reg(backend: Backend) -> CallRegistry:
    return backend.registry("replica-a")


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` until it holds, failing after 5 time units."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5 * UNIT
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"not within {5 * UNIT} s: {what}")
        await asyncio.sleep(0.02 * UNIT)


async def test_lifecycle(reg):
    call, created = await reg.create("twilio", "CA1", "openai")
    assert created
    assert call.state is RINGING
    assert (call.carrier, call.carrier_call_id, call.provider) == ("twilio", "CA1", "openai")
    assert call.replica == "replica-a"
    assert call.ended_reason is None
    assert call.active
    assert await reg.get(call.call_id) == call
    assert await reg.by_carrier_id("twilio", "CA1") == call

    connecting = await reg.transition(call.call_id, CONNECTING)
    streaming = await reg.transition(call.call_id, STREAMING)
    assert streaming.state is STREAMING
    assert streaming.created_at == call.created_at
    assert streaming.updated_at >= connecting.updated_at >= call.created_at
    assert await reg.get(call.call_id) == streaming

    ended = await reg.transition(call.call_id, ENDED, reason="hangup")
    assert (ended.state, ended.ended_reason, ended.active) == (ENDED, "hangup", False)
    assert await reg.get(call.call_id) == ended
    assert await reg.by_carrier_id("twilio", "CA1") == ended


@pytest.mark.parametrize("path", [[], [CONNECTING], [CONNECTING, STREAMING]])
async def test_end_from_any_state(reg, path):
    call, _ = await reg.create("telnyx", "v3:abc", "gemini")
    for state in path:
        await reg.transition(call.call_id, state)
    ended = await reg.transition(call.call_id, ENDED)
    assert ended.ended_reason == "normal"


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ([], STREAMING),
        ([], RINGING),
        ([CONNECTING], CONNECTING),
        ([CONNECTING], RINGING),
        ([CONNECTING, STREAMING], CONNECTING),
        ([CONNECTING, STREAMING], STREAMING),
        ([ENDED], ENDED),
        ([ENDED], CONNECTING),
        ([CONNECTING, ENDED], STREAMING),
    ],
)
async def test_illegal_transitions_raise(reg, path, illegal):
    call, _ = await reg.create("twilio", "CA2", "openai")
    for state in path:
        await reg.transition(call.call_id, state)
    before = await reg.get(call.call_id)
    with pytest.raises(CallStateError) as info:
        await reg.transition(call.call_id, illegal)
    assert info.value.call_id == call.call_id
    assert info.value.current is before.state
    assert isinstance(info.value, CallError)
    assert await reg.get(call.call_id) == before


async def test_create_is_idempotent_per_carrier_call(backend, reg):
    first, created = await reg.create("twilio", "CA3", "openai")
    again, created_again = await reg.create("twilio", "CA3", "deepgram")
    assert created and not created_again
    assert again == first
    other = backend.registry("replica-b")
    from_b, created_b = await other.create("twilio", "CA3", "openai")
    assert not created_b
    assert from_b == first
    # The same id at another carrier is another call.
    telnyx, created_t = await reg.create("telnyx", "CA3", "openai")
    assert created_t and telnyx.call_id != first.call_id
    # Late webhooks after the end get the ended call back.
    await reg.transition(first.call_id, ENDED)
    late, created_late = await reg.create("twilio", "CA3", "openai")
    assert not created_late
    assert late.state is ENDED


async def test_create_under_a_call_id_made_beforehand(backend, reg):
    # An outbound call's stream URL names its call id before the carrier names the call.
    made = new_call_id()
    call, created = await reg.create("twilio", "CA7", "echo", agent="reminders", call_id=made)
    assert created and call.call_id == made and call.agent == "reminders"
    other = backend.registry("replica-b")
    assert await other.get(made) == call
    assert await other.by_carrier_id("twilio", "CA7") == call
    # Idempotent per carrier call: the first call id stays.
    again, created_again = await reg.create("twilio", "CA7", "echo", call_id=new_call_id())
    assert not created_again and again.call_id == made


async def test_concurrent_creates_make_one_call(backend):
    replicas = [backend.registry(f"replica-{i}") for i in range(4)]
    results = await asyncio.gather(*(r.create("twilio", "CA4", "openai") for r in replicas))
    assert sorted(created for _, created in results) == [False, False, False, True]
    assert len({call.call_id for call, _ in results}) == 1
    assert await replicas[0].count_active() == 1


async def test_bad_input(reg):
    with pytest.raises(ValueError, match="carrier"):
        await reg.create("vonage", "x", "openai")
    with pytest.raises(ValueError):
        await reg.create("twilio", "", "openai")
    with pytest.raises(ValueError):
        await reg.create("twilio", "CA5", "")
    assert CARRIERS == {"twilio", "telnyx"}
    missing = CallId("call_missing")
    assert await reg.get(missing) is None
    assert await reg.by_carrier_id("twilio", "nope") is None
    with pytest.raises(CallNotFoundError) as info:
        await reg.transition(missing, ENDED)
    assert isinstance(info.value, LookupError)
    with pytest.raises(CallNotFoundError):
        await reg.set_provider(missing, "gemini")


async def test_set_provider(reg):
    call, _ = await reg.create("twilio", "CA6", "openai")
    await reg.transition(call.call_id, CONNECTING)
    moved = await reg.set_provider(call.call_id, "gemini")
    assert (moved.provider, moved.state) == ("gemini", CONNECTING)
    assert await reg.get(call.call_id) == moved
    await reg.transition(call.call_id, ENDED)
    with pytest.raises(CallStateError):
        await reg.set_provider(call.call_id, "deepgram")


async def test_conflicting_transitions_one_wins(backend):
    a, b = backend.registry("replica-a"), backend.registry("replica-b")
    call, _ = await a.create("twilio", "CA7", "openai")
    results = await asyncio.gather(
        a.transition(call.call_id, CONNECTING),
        b.transition(call.call_id, CONNECTING),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, Call)]
    losses = [r for r in results if isinstance(r, CallStateError)]
    assert (len(wins), len(losses)) == (1, 1)
    assert await a.get(call.call_id) == wins[0]
    assert losses[0].current is CONNECTING


async def test_many_concurrent_ends_one_wins(backend):
    replicas = [backend.registry(f"replica-{i}") for i in range(3)]
    call, _ = await replicas[0].create("telnyx", "v3:race", "openai")
    await replicas[0].transition(call.call_id, CONNECTING)
    await replicas[1].transition(call.call_id, STREAMING)
    results = await asyncio.gather(
        *(replicas[i % 3].transition(call.call_id, ENDED, reason=f"r{i}") for i in range(12)),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, Call)]
    assert len(wins) == 1
    assert all(isinstance(r, CallStateError) for r in results if r is not wins[0])
    final = await replicas[2].get(call.call_id)
    assert final == wins[0]
    assert final.replica == "replica-1"  # ending does not move the call


async def test_replicas_see_each_others_calls(backend):
    a, b = backend.registry("replica-a"), backend.registry("replica-b")
    c1, _ = await a.create("twilio", "CA8", "openai")
    c2, _ = await b.create("telnyx", "v3:8", "gemini")
    c3, _ = await b.create("twilio", "CA9", "openai")
    await b.transition(c3.call_id, ENDED)
    for registry in (a, b):
        active = await registry.list_active()
        assert [c.call_id for c in active] == [c1.call_id, c2.call_id]  # oldest first
        assert await registry.count_active() == 2
    assert (await a.get(c2.call_id)).replica == "replica-b"


async def test_streaming_replica_holds_the_call(backend):
    webhook, media = backend.registry("replica-a"), backend.registry("replica-b")
    call, _ = await webhook.create("twilio", "CA10", "openai")
    assert (await webhook.transition(call.call_id, CONNECTING)).replica == "replica-a"
    assert (await media.transition(call.call_id, STREAMING)).replica == "replica-b"
    assert await webhook.heartbeat() == 0
    assert await media.heartbeat() == 1


async def test_remove_replica(backend):
    a, b = backend.registry("replica-a"), backend.registry("replica-b")
    held_by_a = []
    for n in range(3):
        call, _ = await a.create("twilio", f"CA-a{n}", "openai")
        await a.transition(call.call_id, CONNECTING)
        held_by_a.append(call.call_id)
    await a.transition(held_by_a[2], ENDED)
    mine, _ = await b.create("telnyx", "v3:b", "openai")
    ended = await b.remove_replica("replica-a")
    assert sorted(c.call_id for c in ended) == sorted(held_by_a[:2])
    assert all(c.state is ENDED and c.ended_reason == "replica_lost" for c in ended)
    assert (await b.get(held_by_a[2])).ended_reason == "normal"  # already ended: untouched
    assert [c.call_id for c in await a.list_active()] == [mine.call_id]
    assert await b.remove_replica("replica-a") == []
    assert await b.remove_replica("never-existed") == []


async def test_ended_calls_expire(backend):
    reg = backend.registry("replica-a", ended_ttl=0.1)
    call, _ = await reg.create("twilio", "CA11", "openai")
    keep, _ = await reg.create("twilio", "CA12", "openai")
    await reg.transition(call.call_id, ENDED)

    async def gone() -> bool:
        return await reg.get(call.call_id) is None

    await eventually(gone, "ended call expires")
    assert await reg.by_carrier_id("twilio", "CA11") is None
    assert await reg.get(keep.call_id) == keep  # active calls stay
    again, created = await reg.create("twilio", "CA11", "openai")
    assert created and again.call_id != call.call_id


# -- Redis only (marked so) -----------------------------------------------------------------


@pytest.mark.redis
async def test_killed_replicas_calls_expire(redis_backend):
    killed = redis_backend.registry("replica-a", active_ttl=0.2)
    alive = redis_backend.registry("replica-b")
    call, _ = await killed.create("twilio", "CA13", "openai")
    await killed.transition(call.call_id, CONNECTING)
    survivor, _ = await alive.create("twilio", "CA14", "openai")
    # No heartbeat from replica-a any more.

    async def only_survivor() -> bool:
        return [c.call_id for c in await alive.list_active()] == [survivor.call_id]

    await eventually(only_survivor, "a silent replica's calls leave the active list")
    assert await alive.count_active() == 1
    assert await alive.get(call.call_id) is None
    assert await alive.by_carrier_id("twilio", "CA13") is None


@pytest.mark.redis
async def test_keep_alive_keeps_calls(
    redis_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    ttl = UNIT
    reg = redis_backend.registry("replica-a", active_ttl=ttl)
    call, _ = await reg.create("twilio", "CA17", "openai")
    # Counted beats, not a sleep, say when several TTLs have passed (one beat per quarter of
    # the TTL): on a busy machine the beats come late and the test waits for them.
    beats = asyncio.Semaphore(0)
    beat = reg.heartbeat

    async def counted() -> int:
        refreshed = await beat()
        beats.release()
        return refreshed

    monkeypatch.setattr(reg, "heartbeat", counted)
    beating = asyncio.create_task(keep_alive(reg))
    try:
        async with asyncio.timeout(30 * UNIT):
            for _ in range(12):  # three TTLs: only the heartbeats keep the call
                await beats.acquire()
        assert await reg.get(call.call_id) == call
    finally:
        beating.cancel()
        with pytest.raises(asyncio.CancelledError):
            await beating

    async def gone() -> bool:
        return await reg.count_active() == 0

    await eventually(gone, "the call expires once the beats stop")


async def test_keep_alive_reports_failed_beats():
    class Flaky(InProcessCallRegistry):
        heartbeat_interval = 0.0
        beats = 0

        async def heartbeat(self) -> int:
            self.beats += 1
            if self.beats < 3:
                raise aioredis.ConnectionError("down")
            return 0

    reg, errors = Flaky("replica-a"), list[Exception]()
    beating = asyncio.create_task(keep_alive(reg, errors.append))

    async def recovered() -> bool:
        return reg.beats >= 4

    await eventually(recovered, "beats continue after failures")
    beating.cancel()
    with pytest.raises(asyncio.CancelledError):
        await beating
    assert [str(e) for e in errors] == ["down", "down"]


@pytest.mark.redis
async def test_heartbeat_refreshes_ttls(redis_backend):
    reg = redis_backend.registry("replica-a", active_ttl=1000.0)
    assert isinstance(reg, RedisCallRegistry)
    assert reg.heartbeat_interval == 250.0
    other = redis_backend.registry("replica-b", active_ttl=1000.0)
    call, _ = await reg.create("telnyx", "v3:hb", "openai")
    theirs, _ = await other.create("telnyx", "v3:other", "openai")
    client = redis_backend.clients[0]
    prefix = redis_backend.prefix + "{calls}:"
    call_key, carrier_key = prefix + f"call:{call.call_id}", prefix + "carrier:telnyx:v3:hb"
    for key in (call_key, carrier_key, prefix + f"call:{theirs.call_id}"):
        await client.pexpire(key, 5000)
    assert await reg.heartbeat() == 1
    assert await client.pttl(call_key) > 5000
    assert await client.pttl(carrier_key) > 5000
    assert await client.pttl(prefix + f"call:{theirs.call_id}") <= 5000  # not ours
    await reg.transition(call.call_id, ENDED)
    assert await reg.heartbeat() == 0


@pytest.mark.redis
async def test_stored_record_is_plain_json(redis_backend):
    reg = redis_backend.registry("replica-a")
    call, _ = await reg.create("twilio", "CA15", "openai", account_id="AC1")
    raw = await redis_backend.clients[0].get(redis_backend.prefix + "{calls}:call:" + call.call_id)
    record = orjson.loads(raw)
    assert record == {
        "v": 1,
        "call_id": call.call_id,
        "carrier": "twilio",
        "carrier_call_id": "CA15",
        "provider": "openai",
        "state": "ringing",
        "created_at": call.created_at,
        "updated_at": call.updated_at,
        "replica": "replica-a",
        "ended_reason": None,
        "account_id": "AC1",
        "agent": "default",
    }
    assert await reg.get(call.call_id) == call


@pytest.mark.redis
async def test_malformed_record_raises_call_error(redis_backend):
    reg = redis_backend.registry("replica-a")
    await redis_backend.clients[0].set(redis_backend.prefix + "{calls}:call:call_bad", b"{")
    with pytest.raises(CallError, match="malformed"):
        await reg.get(CallId("call_bad"))


@pytest.mark.redis
async def test_decoding_client_works(redis_backend):
    client = connect(redis_backend.redis_url, redis_backend.mode, decode_responses=True)
    redis_backend.clients.append(client)
    reg = RedisCallRegistry(client, redis_backend.prefix, replica_id="replica-d")
    call, _ = await reg.create("twilio", "CA16", "openai")
    assert (await reg.create("twilio", "CA16", "openai"))[0] == call
    assert await reg.by_carrier_id("twilio", "CA16") == call
    await reg.transition(call.call_id, CONNECTING)
    assert [c.call_id for c in await reg.list_active()] == [call.call_id]
    assert [c.call_id for c in await reg.remove_replica("replica-d")] == [call.call_id]


async def test_redis_ttls_must_be_positive():
    client = aioredis.Redis()
    with pytest.raises(ValueError):
        RedisCallRegistry(client, "x:", active_ttl=0)
    await client.aclose()
