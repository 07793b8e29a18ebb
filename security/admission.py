"""Admission of a verified delivery: replay check, rate limit and replay record, in that order.

``Admitter.admit(scope, key, ttl_s)`` decides what happens to a delivery whose signature has
verified:

1. a delivery already remembered under ``key`` is a duplicate; it spends no budget of
   ``scope``'s limit, but one hit of its own limit, ``duplicate_scope(scope)`` (same limit and
   window): replays of a captured delivery are bounded without crowding out new deliveries;
2. otherwise one hit is counted on ``scope``'s rolling-window limit; a refused delivery is not
   remembered, so the carrier's retry is processed once the window has room;
3. an admitted delivery is remembered for ``ttl_s`` seconds.

``StepwiseAdmitter`` runs the three steps on any ``ReplayCache`` and ``Limiter`` (three calls;
a concurrent copy can slip between them, and then the copy that loses the record is reported
as a duplicate after spending budget). ``RedisAdmitter`` runs them as one atomic Lua script on
the same keys as ``RedisReplayCache`` and ``RedisLimiter`` (so ``ReplayCache.forget`` undoes its
record): one round trip per delivery at most, shared by deliveries admitted in the same
event-loop iteration. A delivery's key lies in its scope's namespace (``"twilio\x00..."`` for
scope ``"twilio"``, ``security.rediskeys``), so the replay key, the scope's limit and the
duplicates' limit share one hash slot and the script runs on Redis Cluster as well as on one
Redis or a Sentinel-managed primary. ``FallbackAdmitter`` runs the script while Redis
answers and falls back, per component and with the same bookkeeping, exactly as
``FallbackReplayCache`` and ``FallbackLimiter`` do. ``admitter_for`` picks the right one
for a pair of backends.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Final, Protocol, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection
from redis.exceptions import (
    AskError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from security.exceptions import StateUnavailable
from security.ratelimit import (
    SLIDING_LOG_LUA,
    Decision,
    FallbackLimiter,
    Limiter,
    RedisLimiter,
    sliding_log_decision,
)
from security.rediskeys import namespace
from security.replay import FallbackReplayCache, RedisReplayCache, ReplayCache


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict on one delivery.

    ``duplicate``: the delivery was admitted before (or by a concurrent copy) and must not be
    processed again; ``decision`` is then the duplicates' limit's verdict (None when a
    concurrent copy won the record after this one spent the delivery limit's budget).
    Otherwise ``decision`` is the rate limit's verdict: refused when ``decision.allowed`` is
    false, in which case nothing was remembered.
    """

    duplicate: bool
    decision: Decision | None = None

    @property
    def admitted(self) -> bool:
        return not self.duplicate and self.decision is not None and self.decision.allowed

    @property
    def refused(self) -> bool:
        """Over a limit: the delivery's, or the duplicates' for a duplicate."""
        return self.decision is not None and not self.decision.allowed


DUPLICATE: Final = Admission(duplicate=True)


def duplicate_scope(scope: str) -> str:
    """The rate-limit scope duplicates of ``scope``'s deliveries are counted on (in
    ``scope``'s namespace, hence its hash slot)."""
    return f"{scope}\x00duplicate"


class Admitter(Protocol):
    async def admit(self, scope: str, key: str, ttl_s: int) -> Admission:
        """Replay check, rate limit on ``scope``, then remember ``key`` for ``ttl_s`` s.
        ``key`` lies in ``scope``'s namespace: it starts with ``scope`` and a NUL."""
        ...


class StepwiseAdmitter:
    """The three steps as three calls on separate backends."""

    __slots__ = ("_limiter", "_replay")

    def __init__(self, replay: ReplayCache, limiter: Limiter) -> None:
        self._replay = replay
        self._limiter = limiter

    async def admit(self, scope: str, key: str, ttl_s: int) -> Admission:
        if await self._replay.seen(key):
            return Admission(
                duplicate=True, decision=await self._limiter.hit(duplicate_scope(scope))
            )
        decision = await self._limiter.hit(scope)
        if not decision.allowed:
            return Admission(duplicate=False, decision=decision)
        if not await self._replay.first_seen(key, ttl_s):
            # A concurrent copy of this delivery was recorded between our read and write; this
            # copy has spent the delivery limit's budget already.
            return DUPLICATE
        return Admission(duplicate=False, decision=decision)


# KEYS: replay key, limit log, limit counter, duplicates' log, duplicates' counter;
# ARGV: limit, window ms, replay TTL s. Returns the sliding log's {allowed, remaining,
# reset_ms}: of the delivery's limit, or for a duplicate of the duplicates' limit with
# ``DUPLICATE_VERDICT`` added to ``allowed``.
_ADMIT: Final = (
    """
local replay_key, log_key, seq_key = KEYS[1], KEYS[2], KEYS[3]
local duplicate = redis.call('EXISTS', replay_key) == 1
if duplicate then
  log_key, seq_key = KEYS[4], KEYS[5]
end
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
"""
    + SLIDING_LOG_LUA
    + """
if duplicate then
  return {allowed + 2, remaining, reset}
end
if allowed == 1 then
  redis.call('SET', replay_key, '1', 'EX', tonumber(ARGV[3]))
end
return {allowed, remaining, reset}
"""
)
DUPLICATE_VERDICT: Final = 2


MAX_BATCH: Final = 64
"""At most this many deliveries share one write to Redis."""


def _command(*parts: bytes) -> bytes:
    """One command in the Redis protocol (RESP)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


@dataclass(slots=True)
class _Pending:
    command: bytes
    slot_key: str
    """A key of the script's hash slot: on Redis Cluster, it names the node to send it to."""
    future: asyncio.Future[object]


class RedisAdmitter:
    """The three steps as one atomic Lua script, with one round trip for every delivery that
    arrives in the same event-loop iteration.

    Uses the keys, client and timeout of ``replay`` and ``limiter`` (which must share one
    client). Deliveries admitted concurrently are sent together, in one write on one pooled
    connection (on Redis Cluster, one per node that holds their slots), and their replies
    read in order; each script still runs atomically on its own. A batch is bounded by the
    larger of the two timeouts; a timeout or Redis error raises ``StateUnavailable`` in every
    delivery of the batch.

    The script is sent on a pooled connection directly rather than through the client's
    command path, which retries after a connection error: a script whose reply was lost has
    run, and re-sending it would report the delivery as its own duplicate. Here a lost reply
    raises instead, and the fallback admits the delivery (processed at least once). A script
    a cluster node redirected (``MOVED``/``ASK``: its slot moved) did not run: it is sent
    once more after the client re-reads the cluster's slots.
    """

    __slots__ = ("_limiter", "_load", "_pending", "_replay", "_sha", "_tasks", "_timeout_s")

    def __init__(self, replay: RedisReplayCache, limiter: RedisLimiter) -> None:
        if replay.client is not limiter.client:
            raise ValueError("replay cache and limiter must share one Redis client")
        self._replay = replay
        self._limiter = limiter
        self._timeout_s = max(replay.timeout_s, limiter.timeout_s)
        # SCRIPT LOAD names a script by its SHA-1: an identifier, not a security measure.
        self._sha = hashlib.sha1(_ADMIT.encode(), usedforsecurity=False).hexdigest().encode()
        self._load = _command(b"SCRIPT", b"LOAD", _ADMIT.encode())
        self._pending: list[_Pending] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def admit(self, scope: str, key: str, ttl_s: int) -> Admission:
        if namespace(key) != scope:
            # Another namespace is another hash slot, which Redis Cluster refuses.
            raise ValueError("a delivery key must lie in its scope's namespace")
        limiter = self._limiter
        replay_key = self._replay.redis_key(key)
        log_key, seq_key = limiter.keys(scope)
        duplicates_log, duplicates_seq = limiter.keys(duplicate_scope(scope))
        command = _command(
            b"EVALSHA",
            self._sha,
            b"5",
            replay_key.encode(),
            log_key.encode(),
            seq_key.encode(),
            duplicates_log.encode(),
            duplicates_seq.encode(),
            b"%d" % limiter.limit,
            b"%d" % limiter.window_ms,
            b"%d" % ttl_s,
        )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[object] = loop.create_future()
        self._pending.append(_Pending(command, replay_key, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        elif len(self._pending) >= MAX_BATCH:
            self._flush()
        reply = await future
        if not isinstance(reply, list) or len(reply) != 3:
            raise StateUnavailable(f"unexpected admission reply {type(reply).__name__}")
        verdict, remaining, reset_ms = (int(value) for value in reply)
        duplicate = verdict >= DUPLICATE_VERDICT
        allowed = verdict - DUPLICATE_VERDICT if duplicate else verdict
        return Admission(
            duplicate=duplicate,
            decision=sliding_log_decision(limiter.limit, allowed, remaining, reset_ms),
        )

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _replies(self, link: _Link, batch: list[_Pending]) -> list[object]:
        try:
            replies = await _exchange(link, [p.command for p in batch])
            missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:
                # Redis restarted or its script cache was flushed: those scripts did not run.
                # Load it and run them again.
                await _exchange(link, [self._load])
                again = await _exchange(link, [batch[i].command for i in missing])
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        except RedisConnectionError:
            # This connection died (Redis restarted, network cut); the idle ones most likely
            # did too: reconnect them on their next use.
            await link.reset()
            raise
        return replies

    async def _cluster_replies(self, client: RedisCluster, batch: list[_Pending]) -> list[object]:
        """The replies to ``batch``, each script sent to the node that holds its slot."""
        await client.initialize()  # the slots are known once it has run
        replies: list[object] = [None] * len(batch)
        todo = list(range(len(batch)))
        for attempt in range(2):
            by_node: dict[ClusterNode, list[int]] = {}
            for i in todo:
                node = client.get_node_from_key(batch[i].slot_key)
                if node is None:  # pragma: no cover - only asked for replicas
                    raise SlotNotCoveredError(batch[i].slot_key)
                by_node.setdefault(node, []).append(i)
            try:
                answers = await asyncio.gather(
                    *(
                        self._replies(_NodeLink(node), [batch[i] for i in indexes])
                        for node, indexes in by_node.items()
                    )
                )
            except RedisConnectionError:
                # A node failed or left: read the cluster's shape again before the next batch.
                await client.nodes_manager.initialize()
                raise
            for indexes, answer in zip(by_node.values(), answers, strict=True):
                for i, reply in zip(indexes, answer, strict=True):
                    replies[i] = reply
            todo = [i for i in todo if isinstance(replies[i], AskError)]
            if not todo:
                break
            if attempt == 0:
                # Their slots moved, and those scripts did not run: re-read the slots.
                await client.nodes_manager.initialize()
        return replies

    async def _run(self, batch: list[_Pending]) -> None:
        """Send ``batch``, then resolve each delivery's future with its reply or an error."""
        client = self._limiter.client
        try:
            async with asyncio.timeout(self._timeout_s):
                if isinstance(client, RedisCluster):
                    replies = await self._cluster_replies(client, batch)
                else:
                    replies = await self._replies(_PoolLink(client.connection_pool), batch)
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            _fail(batch, exc)
            return
        except BaseException as exc:
            _fail(batch, exc)
            raise
        for pending, reply in zip(batch, replies, strict=True):
            if pending.future.done():  # the caller went away
                continue
            if isinstance(reply, Exception):
                _fail([pending], reply)
            else:
                pending.future.set_result(reply)


class _Link(Protocol):
    """Where a batch is sent: a connection pool, or a cluster node's connections."""

    async def acquire(self) -> AbstractConnection: ...

    async def release(self, connection: AbstractConnection) -> None: ...

    async def reset(self) -> None:
        """Reconnect the idle connections on their next use."""
        ...


class _PoolLink:
    __slots__ = ("_pool",)

    def __init__(self, pool: aioredis.ConnectionPool) -> None:
        self._pool = pool

    async def acquire(self) -> AbstractConnection:
        connection: AbstractConnection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        await self._pool.release(connection)

    async def reset(self) -> None:
        await self._pool.disconnect(inuse_connections=False)


class _NodeLink:
    __slots__ = ("_node",)

    def __init__(self, node: ClusterNode) -> None:
        self._node = node

    async def acquire(self) -> AbstractConnection:
        return self._node.acquire_connection()

    async def release(self, connection: AbstractConnection) -> None:
        # The connection came from this node's ``acquire_connection``.
        self._node.release(cast(Connection, connection))

    async def reset(self) -> None:
        await self._node.disconnect_free_connections()


async def _exchange(link: _Link, commands: list[bytes]) -> list[object]:
    """Write ``commands`` at once on one connection of ``link`` and read their replies; an
    error reply is returned in its place (it does not spoil the connection)."""
    connection = await link.acquire()
    try:
        await connection.send_packed_command(b"".join(commands))
        replies: list[object] = []
        for _ in commands:
            try:
                replies.append(await connection.read_response())
            except ResponseError as error:
                replies.append(error)
        return replies
    finally:
        await link.release(connection)


def _fail(batch: list[_Pending], cause: BaseException) -> None:
    for pending in batch:
        if not pending.future.done():
            error = StateUnavailable("webhook state unavailable")
            error.__cause__ = cause
            pending.future.set_exception(error)


class FallbackAdmitter:
    """``RedisAdmitter`` while Redis answers; the components' own fallbacks while not.

    Redis is tried only when both components would try it (``Degradation.use_primary``). A
    failure marks both degraded, then the delivery goes through ``replay`` and ``limiter``
    step by step, which serve it from their in-process state and count each fallback exactly
    as they do on their own. A success marks both healthy.
    """

    __slots__ = ("_limiter", "_primary", "_replay", "_stepwise")

    def __init__(
        self, replay: FallbackReplayCache, limiter: FallbackLimiter, primary: Admitter
    ) -> None:
        self._replay = replay
        self._limiter = limiter
        self._primary = primary
        self._stepwise = StepwiseAdmitter(replay, limiter)

    async def admit(self, scope: str, key: str, ttl_s: int) -> Admission:
        replay, limiter = self._replay.degradation, self._limiter.degradation
        if replay.use_primary() and limiter.use_primary() and await self._replay.settle_forget(key):
            try:
                admission = await self._primary.admit(scope, key, ttl_s)
            except StateUnavailable as exc:
                replay.primary_failed(exc)
                limiter.primary_failed(exc)
            else:
                replay.primary_succeeded()
                limiter.primary_succeeded()
                return admission
        return await self._stepwise.admit(scope, key, ttl_s)


def admitter_for(replay: ReplayCache, limiter: Limiter) -> Admitter:
    """One round trip when both backends are Redis on one client (with or without their
    in-process fallbacks); three calls otherwise."""
    if isinstance(replay, FallbackReplayCache) and isinstance(limiter, FallbackLimiter):
        primary_replay, primary_limiter = replay.primary, limiter.primary
        pair = _on_one_redis(primary_replay, primary_limiter)
        if pair is not None:
            return FallbackAdmitter(replay, limiter, RedisAdmitter(*pair))
    elif (pair := _on_one_redis(replay, limiter)) is not None:
        return RedisAdmitter(*pair)
    return StepwiseAdmitter(replay, limiter)


def _on_one_redis(
    replay: ReplayCache, limiter: Limiter
) -> tuple[RedisReplayCache, RedisLimiter] | None:
    """Both backends, when they are exactly the Redis ones and share one client."""
    if (
        type(replay) is RedisReplayCache
        and type(limiter) is RedisLimiter
        and replay.client is limiter.client
    ):
        return replay, limiter
    return None
