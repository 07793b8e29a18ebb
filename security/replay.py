"""Replay caches: remember which deliveries were already accepted.

``ReplayCache`` is the interface; ``InProcessReplayCache`` (one process) and
``RedisReplayCache`` (replicas sharing Redis) implement it, and ``FallbackReplayCache`` runs
on Redis while it answers and on an in-process cache while it does not. Keys are hashed with
SHA-256 before they are stored, so raw signatures and event ids never sit in memory dumps or
Redis. ``Degradation`` is the shared bookkeeping for every Redis-with-fallback component.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, Protocol

from redis.exceptions import RedisError

from metrics.registry import STATE_DEGRADED
from security.exceptions import StateUnavailable
from security.rediskeys import RedisClient, slot_tag, tagged

logger = logging.getLogger(__name__)

Clock = Callable[[], float]

REDIS_TIMEOUT_S: Final = 0.25
"""Default bound on one Redis round trip for the security state backends."""


def digest_key(key: str) -> str:
    """The stored form of a key: SHA-256, hex."""
    return _digest(key).hex()


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class ReplayCache(Protocol):
    """Remembers keys for a while; answers whether a key is new."""

    async def seen(self, key: str) -> bool:
        """True if ``key`` is currently remembered. Read-only."""
        ...

    async def first_seen(self, key: str, ttl_s: int) -> bool:
        """Remember ``key`` for ``ttl_s`` seconds; True only for the first caller (atomic)."""
        ...

    async def forget(self, key: str) -> None:
        """Drop ``key`` (its processing failed, so a retry must not look like a duplicate)."""
        ...


class InProcessReplayCache:
    """A bounded replay cache in this process.

    Entries expire after their TTL; when ``max_entries`` is reached the oldest entry is
    evicted first (so a flood of new keys can shorten how long old ones are remembered, never
    grow memory). Work per call is O(1) amortised.
    """

    __slots__ = ("_clock", "_entries", "_max_entries")

    def __init__(self, max_entries: int = 100_000, *, clock: Clock = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, float] = OrderedDict()  # digest -> expiry

    def __len__(self) -> int:
        return len(self._entries)

    async def seen(self, key: str) -> bool:
        return self._alive(_digest(key), self._clock())

    async def first_seen(self, key: str, ttl_s: int) -> bool:
        now = self._clock()
        digest = _digest(key)
        self._prune(now)
        if self._alive(digest, now):
            return False
        self._entries.pop(digest, None)
        while len(self._entries) >= self._max_entries:
            self._entries.popitem(last=False)
        self._entries[digest] = now + ttl_s
        return True

    async def forget(self, key: str) -> None:
        self._entries.pop(_digest(key), None)

    def _alive(self, digest: bytes, now: float) -> bool:
        expiry = self._entries.get(digest)
        return expiry is not None and expiry > now

    def _prune(self, now: float) -> None:
        # Entries are in insertion order; with one TTL per cache that is expiry order too.
        # Stop at the first live entry so each call does bounded work on average.
        while self._entries:
            digest, expiry = next(iter(self._entries.items()))
            if expiry > now:
                return
            del self._entries[digest]


class RedisReplayCache:
    """A replay cache shared by every replica: ``SET key 1 NX EX ttl`` on a hashed key,
    tagged with the hash slot of the key's namespace (``security.rediskeys``): a Twilio
    delivery's key (``"twilio\x00..."``) sits in the slot of the ``twilio`` rate limit.

    Every call is bounded by ``timeout_s``; a timeout or Redis error raises
    ``StateUnavailable``.
    """

    __slots__ = ("_client", "_prefix", "_timeout_s")

    def __init__(
        self, client: RedisClient, prefix: str, *, timeout_s: float = REDIS_TIMEOUT_S
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._timeout_s = timeout_s

    @property
    def client(self) -> RedisClient:
        return self._client

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    def redis_key(self, key: str) -> str:
        """Where ``key`` is stored: its digest under the prefix and its namespace's tag."""
        return tagged(f"{self._prefix}replay:", slot_tag(key), digest_key(key))

    async def seen(self, key: str) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s):
                count = await self._client.exists(self.redis_key(key))
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable("replay cache unavailable") from exc
        return bool(count)

    async def first_seen(self, key: str, ttl_s: int) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s):
                created = await self._client.set(self.redis_key(key), b"1", nx=True, ex=ttl_s)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable("replay cache unavailable") from exc
        return bool(created)

    async def forget(self, key: str) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._client.delete(self.redis_key(key))
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable("replay cache unavailable") from exc


class Degradation:
    """Whether a Redis-backed component currently runs on its in-process fallback.

    ``use_primary()`` says whether to try Redis now: always while healthy, and at most once
    per ``probe_interval_s`` while degraded, so an outage does not cost every request a
    timeout. Each operation served by the fallback increments
    ``STATE_DEGRADED{component}``; the warning is logged at most once per
    ``log_interval_s``.
    """

    __slots__ = (
        "_clock",
        "_degraded",
        "_last_log",
        "_log_interval_s",
        "_next_probe",
        "_probe_interval_s",
        "component",
    )

    def __init__(
        self,
        component: str,
        *,
        probe_interval_s: float = 1.0,
        log_interval_s: float = 60.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.component = component
        self._probe_interval_s = probe_interval_s
        self._log_interval_s = log_interval_s
        self._clock = clock
        self._degraded = False
        self._next_probe = 0.0
        self._last_log: float | None = None

    @property
    def degraded(self) -> bool:
        return self._degraded

    def use_primary(self) -> bool:
        return not self._degraded or self._clock() >= self._next_probe

    def primary_failed(self, exc: BaseException) -> None:
        now = self._clock()
        self._degraded = True
        self._next_probe = now + self._probe_interval_s
        if self._last_log is None or now - self._last_log >= self._log_interval_s:
            self._last_log = now
            logger.warning(
                "%s: Redis unavailable (%s); using in-process state until it answers",
                self.component,
                type(exc.__cause__ or exc).__name__,
            )

    def primary_succeeded(self) -> None:
        if self._degraded:
            self._degraded = False
            logger.warning("%s: Redis answers again; shared state restored", self.component)

    def fell_back(self) -> None:
        STATE_DEGRADED.labels(component=self.component).inc()


class FallbackReplayCache:
    """Redis while it answers, an in-process cache while it does not.

    Keys written to the fallback during an outage are not copied to Redis afterwards: a
    delivery seen only during the outage can be accepted once more after recovery.

    A key forgotten while Redis could not be told (its processing failed during an outage)
    may still be in Redis: a write whose reply timed out can have landed. Its digest is kept
    (at most ``max_pending`` of them, oldest dropped) and the key is deleted from Redis before
    Redis is asked about it again, so the carrier's retry is processed, not dropped as a
    duplicate.
    """

    __slots__ = ("_fallback", "_max_pending", "_pending_forget", "_primary", "degradation")

    def __init__(
        self,
        primary: ReplayCache,
        fallback: ReplayCache | None = None,
        *,
        degradation: Degradation | None = None,
        max_pending: int = 100_000,
    ) -> None:
        self._primary = primary
        self._fallback: ReplayCache = InProcessReplayCache() if fallback is None else fallback
        self.degradation = Degradation("replay") if degradation is None else degradation
        self._pending_forget: OrderedDict[bytes, None] = OrderedDict()
        self._max_pending = max_pending

    @property
    def degraded(self) -> bool:
        return self.degradation.degraded

    @property
    def primary(self) -> ReplayCache:
        return self._primary

    async def seen(self, key: str) -> bool:
        if self.degradation.use_primary() and await self.settle_forget(key):
            try:
                result = await self._primary.seen(key)
            except StateUnavailable as exc:
                self.degradation.primary_failed(exc)
            else:
                self.degradation.primary_succeeded()
                return result
        self.degradation.fell_back()
        return await self._fallback.seen(key)

    async def first_seen(self, key: str, ttl_s: int) -> bool:
        if self.degradation.use_primary() and await self.settle_forget(key):
            try:
                result = await self._primary.first_seen(key, ttl_s)
            except StateUnavailable as exc:
                self.degradation.primary_failed(exc)
            else:
                self.degradation.primary_succeeded()
                return result
        self.degradation.fell_back()
        return await self._fallback.first_seen(key, ttl_s)

    async def forget(self, key: str) -> None:
        # Both copies: the key may have been written to either side of an outage.
        await self._fallback.forget(key)
        if self.degradation.use_primary():
            try:
                await self._primary.forget(key)
            except StateUnavailable as exc:
                self.degradation.primary_failed(exc)
            else:
                self.degradation.primary_succeeded()
                return
        self._pending_forget[_digest(key)] = None
        while len(self._pending_forget) > self._max_pending:
            self._pending_forget.popitem(last=False)

    async def settle_forget(self, key: str) -> bool:
        """Call before Redis is asked about ``key`` by anyone: deletes it there if a forget of
        it is pending. False when Redis failed (serve ``key`` from the fallback)."""
        digest = _digest(key)
        if digest not in self._pending_forget:
            return True
        try:
            await self._primary.forget(key)
        except StateUnavailable as exc:
            self.degradation.primary_failed(exc)
            return False
        self._pending_forget.pop(digest, None)
        return True
