"""Circuit breakers: one suite, run on the in-process and on the Redis backend (real server)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from metrics.registry import REGISTRY
from providers.breakers import (
    BreakerOpen,
    BreakerPolicy,
    BreakerRegistry,
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
    InProcessBreaker,
    RedisBreaker,
    safe_error_name,
)
from providers.exceptions import ConnectError, ProviderError
from security.rediskeys import RedisClient
from security.replay import Degradation
from tests.conftest import (
    DEAD_REDIS_URL,
    REDIS_MODES,
    UNIT,
    FakeClock,
    open_test_redis,
    redis_url_for,
    remove_keys,
)


class Backend:
    """Makes breakers on one backend and moves their time forward without sleeping.

    In-process breakers read a fake clock; Redis breakers read the Redis server's clock plus
    an offset the test hook adds in the script.
    """

    def __init__(self, client: RedisClient | None, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.clock = FakeClock()
        self.offset = 0.0

    def make(self, name: str, policy: BreakerPolicy | None = None) -> CircuitBreaker:
        policy = BreakerPolicy() if policy is None else policy
        if self.client is None:
            return InProcessBreaker(name, policy, clock=self.clock)
        return RedisBreaker(
            self.client,
            self.prefix,
            name,
            policy,
            timeout_s=2 * UNIT,
            clock_offset_for_tests=lambda: self.offset,
        )

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        self.offset += seconds


@pytest.fixture(params=["memory", "redis", "cluster"])
async def backend(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[Backend]:
    """In process, on one Redis server, or on the local Redis Cluster."""
    if request.param == "memory":
        yield Backend(None, redis_prefix)
        return
    mode = "cluster" if request.param == "cluster" else "standalone"
    client = await open_test_redis(redis_url_for(request, mode), mode)
    before = fallbacks()
    yield Backend(client, redis_prefix)
    await remove_keys(client, redis_prefix)
    await client.aclose()
    # Every decision in the test came from Redis, none from the fallback.
    assert fallbacks() == before


async def _cleanup(client: aioredis.Redis, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)


@pytest.fixture
def name() -> str:
    """A provider name unique to this test, so metric samples never collide."""
    return f"prov-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def dead_redis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(
        DEAD_REDIS_URL,
        socket_connect_timeout=0.5 * UNIT,
        socket_timeout=0.5 * UNIT,
        retry=Retry(NoBackoff(), 0),
    )
    yield client
    await client.aclose()


@pytest.fixture(params=REDIS_MODES)
async def redis_pair(
    request: pytest.FixtureRequest, redis_prefix: str
) -> AsyncIterator[tuple[RedisClient, ...]]:
    """Two independent clients, as two replicas would have (of one server, or a cluster)."""
    url = redis_url_for(request, request.param)
    first = await open_test_redis(url, request.param)
    second = await open_test_redis(url, request.param)
    yield first, second
    await remove_keys(first, redis_prefix)
    await first.aclose()
    await second.aclose()


async def fail_times(breaker: CircuitBreaker, n: int, error: str = "ConnectError") -> None:
    for _ in range(n):
        trial = await breaker.acquire()
        await trial.fail(error)


async def open_then_half_open(backend: Backend, breaker: CircuitBreaker) -> None:
    await fail_times(breaker, 5)
    assert (await breaker.snapshot()).state is BreakerState.OPEN
    backend.advance(60)
    assert (await breaker.snapshot()).state is BreakerState.HALF_OPEN


def gauge(family: str, provider: str) -> float | None:
    return REGISTRY.get_sample_value(family, {"provider": provider})


def fallbacks() -> float:
    value = REGISTRY.get_sample_value("voicegw_state_fallback_total", {"component": "breaker"})
    return value or 0.0


# -- closed -> open --------------------------------------------------------------------------


async def test_starts_closed(backend, name):
    breaker = backend.make(name)
    assert await breaker.allows()
    snapshot = await breaker.snapshot()
    assert snapshot == BreakerSnapshot(
        name=name,
        state=BreakerState.CLOSED,
        consecutive_failures=0,
        opened_at=None,
        last_failure=None,
        last_success_at=None,
    )


async def test_exactly_five_consecutive_failures_open_it(backend, name):
    breaker = backend.make(name)
    await fail_times(breaker, 4)
    snapshot = await breaker.snapshot()
    assert snapshot.state is BreakerState.CLOSED
    assert snapshot.consecutive_failures == 4
    assert snapshot.last_failure == "ConnectError"
    assert await breaker.allows()

    await fail_times(breaker, 1, "TimeoutError")
    snapshot = await breaker.snapshot()
    assert snapshot.state is BreakerState.OPEN
    assert snapshot.consecutive_failures == 5
    assert snapshot.last_failure == "TimeoutError"
    assert snapshot.opened_at is not None
    assert not await breaker.allows()


async def test_a_success_resets_the_count(backend, name):
    breaker = backend.make(name)
    await fail_times(breaker, 4)
    trial = await breaker.acquire()
    await trial.succeed()
    snapshot = await breaker.snapshot()
    assert snapshot.consecutive_failures == 0
    assert snapshot.last_success_at is not None
    await fail_times(breaker, 4)
    assert (await breaker.snapshot()).state is BreakerState.CLOSED
    await fail_times(breaker, 1)
    assert (await breaker.snapshot()).state is BreakerState.OPEN


async def test_concurrent_trials_while_closed_all_count(backend, name):
    breaker = backend.make(name)
    trials = [await breaker.acquire() for _ in range(8)]
    await asyncio.gather(*(trial.fail("ConnectError") for trial in trials[:5]))
    assert (await breaker.snapshot()).state is BreakerState.OPEN


async def test_record_failure_outside_trials_counts(backend, name):
    breaker = backend.make(name)
    for _ in range(4):
        await breaker.record_failure("SessionClosed")
    await breaker.record_success()
    assert (await breaker.snapshot()).consecutive_failures == 0
    for _ in range(5):
        await breaker.record_failure("SessionClosed")
    snapshot = await breaker.snapshot()
    assert snapshot.state is BreakerState.OPEN
    assert snapshot.last_failure == "SessionClosed"


# -- open ------------------------------------------------------------------------------------


async def test_open_refuses_with_retry_after(backend, name):
    breaker = backend.make(name)
    await fail_times(breaker, 5)
    with pytest.raises(BreakerOpen) as refused:
        await breaker.acquire()
    assert isinstance(refused.value, ProviderError)
    assert refused.value.name == name
    assert 0 < refused.value.retry_after_s <= 60
    assert name in str(refused.value)

    backend.advance(30)
    with pytest.raises(BreakerOpen) as refused:
        await breaker.acquire()
    assert 0 < refused.value.retry_after_s <= 30


async def test_failures_while_open_do_not_extend_it(backend, name):
    breaker = backend.make(name)
    await fail_times(breaker, 5)
    opened_at = (await breaker.snapshot()).opened_at
    backend.advance(59)
    await breaker.record_failure("ConnectError")
    snapshot = await breaker.snapshot()
    assert snapshot.opened_at == opened_at
    backend.advance(1)
    assert (await breaker.snapshot()).state is BreakerState.HALF_OPEN


# -- half-open -------------------------------------------------------------------------------


async def test_half_open_admits_three_trials_and_refuses_the_fourth(backend, name):
    breaker = backend.make(name)
    await open_then_half_open(backend, breaker)
    assert await breaker.allows()
    trials = [await breaker.acquire() for _ in range(3)]
    assert not await breaker.allows()
    with pytest.raises(BreakerOpen) as refused:
        await breaker.acquire()
    assert 0 < refused.value.retry_after_s <= 30
    snapshot = await breaker.snapshot()
    assert snapshot.state is BreakerState.HALF_OPEN
    assert snapshot.opened_at is not None
    for trial in trials:
        await trial.release()


async def test_two_successes_close_it(backend, name):
    breaker = backend.make(name)
    await open_then_half_open(backend, breaker)
    first, second, third = [await breaker.acquire() for _ in range(3)]
    await first.succeed()
    assert (await breaker.snapshot()).state is BreakerState.HALF_OPEN
    await second.succeed()
    snapshot = await breaker.snapshot()
    assert snapshot.state is BreakerState.CLOSED
    assert snapshot.consecutive_failures == 0
    assert snapshot.opened_at is None
    # Closed admits any number of calls again.
    more = [await breaker.acquire() for _ in range(10)]
    for trial in [third, *more]:
        await trial.succeed()
    assert (await breaker.snapshot()).state is BreakerState.CLOSED


async def test_a_failure_in_half_open_reopens_it(backend, name):
    breaker = backend.make(name)
    await open_then_half_open(backend, breaker)
    first_opened_at = (await breaker.snapshot()).opened_at
    good, bad = await breaker.acquire(), await breaker.acquire()
    await good.succeed()
    await bad.fail("ConnectError")
    snapshot = await breaker.snapshot()
    assert snapshot.state is BreakerState.OPEN
    assert snapshot.opened_at is not None and first_opened_at is not None
    assert snapshot.opened_at > first_opened_at
    with pytest.raises(BreakerOpen) as refused:
        await breaker.acquire()
    assert 30 < refused.value.retry_after_s <= 60
    # Another full open period, then half-open again with a fresh success count.
    backend.advance(60)
    trial = await breaker.acquire()
    await trial.succeed()
    assert (await breaker.snapshot()).state is BreakerState.HALF_OPEN


async def test_record_failure_in_half_open_reopens_it(backend, name):
    breaker = backend.make(name)
    await open_then_half_open(backend, breaker)
    await breaker.record_failure("SessionClosed")
    assert (await breaker.snapshot()).state is BreakerState.OPEN


async def test_release_frees_a_slot_without_counting(backend, name):
    breaker = backend.make(name)
    await open_then_half_open(backend, breaker)
    trials = [await breaker.acquire() for _ in range(3)]
    await trials[0].release()
    replacement = await breaker.acquire()
    with pytest.raises(BreakerOpen):
        await breaker.acquire()
    await replacement.succeed()
    # The released trial counted neither way: one success is not enough to close.
    snapshot = await breaker.snapshot()
    assert snapshot.state is BreakerState.HALF_OPEN
    await trials[1].succeed()
    assert (await breaker.snapshot()).state is BreakerState.CLOSED


async def test_a_trial_ends_once(backend, name):
    breaker = backend.make(name)
    await open_then_half_open(backend, breaker)
    trial = await breaker.acquire()
    assert not trial.done
    await trial.release()
    assert trial.done
    await trial.fail("ConnectError")
    await trial.succeed()
    assert (await breaker.snapshot()).state is BreakerState.HALF_OPEN
    assert (await breaker.snapshot()).last_failure == "ConnectError"  # from opening it


async def test_expired_trial_slots_are_reclaimed(backend, name):
    breaker = backend.make(name, BreakerPolicy(trial_ttl_s=10))
    await open_then_half_open(backend, breaker)
    forgotten = [await breaker.acquire() for _ in range(3)]  # holders that never report
    with pytest.raises(BreakerOpen) as refused:
        await breaker.acquire()
    assert 0 < refused.value.retry_after_s <= 10
    backend.advance(10)
    assert await breaker.allows()
    fresh = [await breaker.acquire() for _ in range(3)]
    with pytest.raises(BreakerOpen):
        await breaker.acquire()
    # A late report from an expired trial still counts: the dependency did answer.
    await forgotten[0].succeed()
    await fresh[0].succeed()
    assert (await breaker.snapshot()).state is BreakerState.CLOSED


async def test_outcomes_of_calls_admitted_before_opening_do_not_count(backend, name):
    breaker = backend.make(name)
    stale = [await breaker.acquire() for _ in range(3)]
    await open_then_half_open(backend, breaker)
    await stale[0].succeed()
    await stale[1].succeed()
    assert (await breaker.snapshot()).state is BreakerState.HALF_OPEN
    await stale[2].fail("ConnectError")
    assert (await breaker.snapshot()).state is BreakerState.HALF_OPEN
    # They held no slot either.
    trials = [await breaker.acquire() for _ in range(3)]
    for trial in trials:
        await trial.release()


async def test_twenty_concurrent_acquires_in_half_open_admit_exactly_three(backend, name):
    breaker = backend.make(name)
    await open_then_half_open(backend, breaker)
    results = await asyncio.gather(*(breaker.acquire() for _ in range(20)), return_exceptions=True)
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BreakerOpen)]
    assert len(admitted) == 3
    assert len(refused) == 17


# -- the async-with form ---------------------------------------------------------------------


async def test_context_exception_is_a_failure(backend, name):
    breaker = backend.make(name)
    for _ in range(5):
        with pytest.raises(ConnectError):
            async with breaker.trial():
                raise ConnectError("refused")
    snapshot = await breaker.snapshot()
    assert snapshot.state is BreakerState.OPEN
    assert snapshot.last_failure == "ConnectError"
    with pytest.raises(BreakerOpen):
        async with breaker.trial():
            pytest.fail("an open breaker ran the body")


async def test_context_normal_exit_is_a_success(backend, name):
    breaker = backend.make(name)
    await open_then_half_open(backend, breaker)
    for _ in range(2):
        async with breaker.trial():
            pass
    assert (await breaker.snapshot()).state is BreakerState.CLOSED


async def test_context_explicit_outcome_wins(backend, name):
    breaker = backend.make(name)
    await open_then_half_open(backend, breaker)
    async with breaker.trial() as trial:
        await trial.fail("ProtocolError")
    snapshot = await breaker.snapshot()
    assert snapshot.state is BreakerState.OPEN
    assert snapshot.last_failure == "ProtocolError"


async def test_context_cancellation_releases(backend, name):
    breaker = backend.make(name)
    await open_then_half_open(backend, breaker)
    entered = asyncio.Semaphore(0)

    async def call() -> None:
        async with breaker.trial():
            entered.release()
            await asyncio.sleep(3600)

    tasks = [asyncio.create_task(call()) for _ in range(3)]
    async with asyncio.timeout(5 * UNIT):
        for _ in tasks:
            await entered.acquire()
    assert not await breaker.allows()
    for task in tasks:
        task.cancel()
    async with asyncio.timeout(5 * UNIT):
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    snapshot = await breaker.snapshot()
    assert snapshot.state is BreakerState.HALF_OPEN
    assert snapshot.consecutive_failures == 5
    trials = [await breaker.acquire() for _ in range(3)]
    for trial in trials:
        await trial.release()


# -- metrics ---------------------------------------------------------------------------------


async def test_gauges_follow_the_state(backend, name):
    breaker = backend.make(name)
    assert await breaker.allows()
    assert gauge("voicegw_breaker_state", name) == 0
    assert gauge("voicegw_provider_up", name) == 1
    await fail_times(breaker, 5)
    assert gauge("voicegw_breaker_state", name) == 1
    assert gauge("voicegw_provider_up", name) == 0
    backend.advance(60)
    assert await breaker.allows()
    assert gauge("voicegw_breaker_state", name) == 2
    assert gauge("voicegw_provider_up", name) == 1
    for _ in range(2):
        await (await breaker.acquire()).succeed()
    assert gauge("voicegw_breaker_state", name) == 0
    assert gauge("voicegw_provider_up", name) == 1


async def test_transitions_are_logged(backend, name, caplog):
    breaker = backend.make(name)
    await breaker.allows()
    with caplog.at_level(logging.INFO, logger="voicegw.providers.breakers"):
        await fail_times(breaker, 5)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [f"breaker {name}: CLOSED -> OPEN"]


# -- registry --------------------------------------------------------------------------------


async def test_registry_makes_one_breaker_per_name(backend, name):
    registry = BreakerRegistry(backend.make)
    assert registry.names() == []
    first = registry.get(f"{name}-b")
    assert registry.get(f"{name}-b") is first
    second = registry.get(f"{name}-a")
    assert registry.names() == [f"{name}-a", f"{name}-b"]
    await fail_times(first, 5)
    snapshots = await registry.snapshots()
    assert [s.name for s in snapshots] == [f"{name}-a", f"{name}-b"]
    assert [s.state for s in snapshots] == [BreakerState.CLOSED, BreakerState.OPEN]
    assert await second.allows()


async def test_registry_constructors(redis_client, redis_prefix, name):
    clock = FakeClock()
    memory = BreakerRegistry.in_process(BreakerPolicy(failure_threshold=1), clock)
    breaker = memory.get(name)
    assert isinstance(breaker, InProcessBreaker)
    await breaker.record_failure("ConnectError")
    snapshot = await breaker.snapshot()
    assert snapshot.state is BreakerState.OPEN
    assert snapshot.opened_at == clock.now

    try:
        shared = BreakerRegistry.redis(redis_client, redis_prefix, BreakerPolicy(open_s=30))
        breaker = shared.get(name)
        assert isinstance(breaker, RedisBreaker)
        assert breaker.policy.open_s == 30
        assert await breaker.allows()
    finally:
        await _cleanup(redis_client, redis_prefix)


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0},
        {"half_open_max_trials": 0},
        {"success_threshold": 0},
        {"open_s": 0},
        {"trial_ttl_s": -1},
    ],
)
def test_policy_rejects_nonsense(kwargs):
    with pytest.raises(ValueError, match="breaker policy"):
        BreakerPolicy(**kwargs)


def test_default_policy_is_the_design():
    policy = BreakerPolicy()
    assert (
        policy.failure_threshold,
        policy.open_s,
        policy.half_open_max_trials,
        policy.success_threshold,
    ) == (5, 60.0, 3, 2)


@pytest.mark.parametrize("bad", ["", "a b", "x{y}", "a" * 65, "é"])
def test_names_are_checked(bad):
    with pytest.raises(ValueError, match="breaker name"):
        InProcessBreaker(bad)


async def test_error_names_never_carry_messages(backend, name):
    assert safe_error_name("ConnectError") == "ConnectError"
    assert safe_error_name("websockets.InvalidStatus") == "websockets.InvalidStatus"
    assert safe_error_name("401 Unauthorized: key sk-abc") == "error"
    breaker = backend.make(name)
    await (await breaker.acquire()).fail("bad key sk-secret")
    await breaker.record_failure("token=abc")
    assert (await breaker.snapshot()).last_failure == "error"


# -- Redis only: sharing, server time, outages -----------------------------------------------


async def test_two_replicas_see_the_same_state(redis_pair, redis_prefix, name):
    first_client, second_client = redis_pair
    first = RedisBreaker(first_client, redis_prefix, name, timeout_s=2 * UNIT)
    second = RedisBreaker(second_client, redis_prefix, name, timeout_s=2 * UNIT)
    await fail_times(first, 4)
    await fail_times(second, 1)
    assert not await first.allows()
    with pytest.raises(BreakerOpen):
        await second.acquire()
    assert await first.snapshot() == await second.snapshot()

    # State outlives the instances: a new replica starts from what Redis holds.
    third = RedisBreaker(second_client, redis_prefix, name, timeout_s=2 * UNIT)
    assert (await third.snapshot()).state is BreakerState.OPEN


async def test_two_replicas_share_half_open_slots(redis_pair, redis_prefix, name):
    first_client, second_client = redis_pair
    offset = 0.0
    first, second = (
        RedisBreaker(
            client, redis_prefix, name, timeout_s=2 * UNIT, clock_offset_for_tests=lambda: offset
        )
        for client in (first_client, second_client)
    )
    await fail_times(first, 5)
    offset = 60.0
    trials = [await first.acquire(), await second.acquire(), await first.acquire()]
    with pytest.raises(BreakerOpen):
        await second.acquire()
    await trials[0].succeed()
    await trials[1].succeed()
    assert (await second.snapshot()).state is BreakerState.CLOSED
    await trials[2].release()


async def test_open_period_runs_on_the_redis_server_clock(redis_client, redis_prefix, name):
    policy = BreakerPolicy(failure_threshold=1, open_s=0.2 * UNIT)
    breaker = RedisBreaker(redis_client, redis_prefix, name, policy, timeout_s=2 * UNIT)
    try:
        await breaker.record_failure("ConnectError")
        async with asyncio.timeout(10 * UNIT):
            while not await breaker.allows():  # noqa: ASYNC110 - the state lives in Redis
                await asyncio.sleep(0.05 * UNIT)
        assert (await breaker.snapshot()).state is BreakerState.HALF_OPEN
    finally:
        await _cleanup(redis_client, redis_prefix)


async def test_redis_down_falls_back_and_keeps_working(dead_redis, redis_prefix, name, caplog):
    clock = FakeClock()
    breaker = RedisBreaker(
        dead_redis,
        redis_prefix,
        name,
        timeout_s=2 * UNIT,
        fallback=InProcessBreaker(name, clock=clock),
        degradation=Degradation("breaker", probe_interval_s=0.0),
    )
    before = fallbacks()
    with caplog.at_level(logging.WARNING, logger="security.replay"):
        assert await breaker.allows()
        await fail_times(breaker, 5)
        assert breaker.degraded
        with pytest.raises(BreakerOpen):
            await breaker.acquire()
        clock.now += 60
        async with breaker.trial():
            pass
        await breaker.record_success()
        assert (await breaker.snapshot()).state is BreakerState.CLOSED
    assert fallbacks() > before
    unavailable = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(unavailable) == 1
    assert gauge("voicegw_breaker_state", name) == 0


async def test_the_registry_says_when_its_breakers_run_in_process(dead_redis, redis_prefix, name):
    registry = BreakerRegistry.redis(dead_redis, redis_prefix, timeout_s=0.2 * UNIT)
    assert not registry.degraded
    assert await registry.get(name).allows()  # Redis does not answer: the fallback does
    assert registry.degraded
    registry.degradation.primary_succeeded()  # what /readyz does once Redis answers
    assert not registry.degraded
    assert not BreakerRegistry.in_process().degraded


class SwitchableProxy:
    """A TCP proxy in front of the test Redis that can be switched off and on: while off it
    closes every connection at once, like a Redis that went away."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.up = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> SwitchableProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if not self.up:
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            try:
                await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
            finally:
                up_writer.close()
        finally:
            writer.close()
            self._tasks.discard(task)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_redis_recovers_by_itself(redis_client, redis_prefix, name):
    kwargs = redis_client.connection_pool.connection_kwargs
    async with SwitchableProxy(kwargs["host"], kwargs["port"]) as proxy:
        client = aioredis.Redis(
            host="127.0.0.1",
            port=proxy.port,
            db=kwargs.get("db", 0),
            socket_timeout=UNIT,
            retry=Retry(NoBackoff(), 0),
        )
        breaker = RedisBreaker(
            client,
            redis_prefix,
            name,
            timeout_s=2 * UNIT,
            degradation=Degradation("breaker", probe_interval_s=0.0),
        )
        try:
            await breaker.record_failure("ConnectError")
            assert breaker.degraded
            assert (await breaker.snapshot()).consecutive_failures == 1  # the fallback's
            proxy.up = True
            snapshot = await breaker.snapshot()
            assert not breaker.degraded
            # What the fallback saw stays in the fallback: Redis state starts clean.
            assert snapshot.consecutive_failures == 0
            await breaker.record_failure("ConnectError")
            assert (await breaker.snapshot()).consecutive_failures == 1
            assert await redis_client.exists(f"{redis_prefix}breaker:{{{name}}}")
        finally:
            await client.aclose()
            await _cleanup(redis_client, redis_prefix)


async def test_a_trial_ending_during_an_outage_reaches_the_fallback(
    redis_client, redis_prefix, name
):
    breaker = RedisBreaker(
        redis_client,
        redis_prefix,
        name,
        BreakerPolicy(failure_threshold=1),
        timeout_s=2 * UNIT,
        degradation=Degradation("breaker", probe_interval_s=3600.0),
    )
    try:
        trial = await breaker.acquire()
        breaker.degradation.primary_failed(ConnectionError("test outage"))
        await trial.fail("ConnectError")
        assert not await breaker.allows()  # the fallback opened
        assert (await breaker.snapshot()).last_failure == "ConnectError"
    finally:
        await _cleanup(redis_client, redis_prefix)


async def test_a_hung_redis_costs_at_most_the_timeout(redis_prefix, name):
    handlers: list[asyncio.Task[None]] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        try:
            await asyncio.sleep(3600)  # read nothing, answer nothing
        finally:
            writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = aioredis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0))
    breaker = RedisBreaker(client, redis_prefix, name, timeout_s=0.1 * UNIT)
    try:
        async with asyncio.timeout(5 * UNIT):
            trial = await breaker.acquire()
            await trial.succeed()
        assert breaker.degraded
        # Degraded: the next call is served by the fallback without waiting on Redis.
        async with asyncio.timeout(5 * UNIT):
            assert await breaker.allows()
    finally:
        await client.aclose()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        server.close()
        await server.wait_closed()
