"""The revocation list: access tokens (by ``jti``) and whole sessions (by ``sid``) refused
before they expire.

An entry lives as long as the tokens it refuses can: the token's remaining lifetime for a
``jti``, the access-token lifetime for a ``sid``. ``InProcessRevocationList`` serves one
process; ``RedisRevocationList`` is shared by every replica. There is no fallback: if Redis
does not answer, ``is_revoked`` raises ``StateUnavailable`` and the caller refuses the request
(fail closed), because accepting a revoked session is worse than a short outage.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from typing import Final, Protocol

from redis.exceptions import RedisError

from security.exceptions import StateUnavailable
from security.rediskeys import RedisClient
from security.replay import REDIS_TIMEOUT_S, Clock


def jti_key(jti: str) -> str:
    return f"jti:{jti}"


def sid_key(sid: str) -> str:
    return f"sid:{sid}"


class RevocationList(Protocol):
    async def revoke(self, key: str, ttl_s: float) -> None:
        """Refuse ``key`` for the next ``ttl_s`` seconds (nothing when ``ttl_s <= 0``)."""
        ...

    async def is_revoked(self, keys: Sequence[str]) -> bool:
        """Whether any of ``keys`` is revoked. Raises ``StateUnavailable`` if unknown."""
        ...


class InProcessRevocationList:
    """Revocations in this process; expired entries are pruned as new ones arrive."""

    __slots__ = ("_clock", "_entries", "_max_entries")

    def __init__(self, *, max_entries: int = 1_000_000, clock: Clock = time.monotonic) -> None:
        self._entries: dict[str, float] = {}
        self._max_entries = max_entries
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    async def revoke(self, key: str, ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        now = self._clock()
        if len(self._entries) >= self._max_entries:
            self._entries = {k: e for k, e in self._entries.items() if e > now}
            if len(self._entries) >= self._max_entries:
                # Never drop a revocation: an entry that vanished early would readmit a token.
                raise StateUnavailable("revocation list full")
        self._entries[key] = max(self._entries.get(key, 0.0), now + ttl_s)

    async def is_revoked(self, keys: Sequence[str]) -> bool:
        now = self._clock()
        return any(self._entries.get(k, 0.0) > now for k in keys)


class RedisRevocationList:
    """Revocations shared by every replica: ``SET <prefix><key> 1 EX ttl``."""

    __slots__ = ("_client", "_prefix", "_timeout_s")

    def __init__(
        self, client: RedisClient, prefix: str, *, timeout_s: float = REDIS_TIMEOUT_S
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._timeout_s = timeout_s

    async def revoke(self, key: str, ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                # GT keeps a longer TTL already set for the same key.
                current = await self._client.ttl(self._prefix + key)
                if current < math.ceil(ttl_s):
                    await self._client.set(self._prefix + key, b"1", ex=math.ceil(ttl_s))
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable("revocation list unavailable") from exc

    async def is_revoked(self, keys: Sequence[str]) -> bool:
        if not keys:
            return False
        try:
            async with asyncio.timeout(self._timeout_s):
                # One round trip; separate EXISTS so keys may live in different cluster slots.
                async with self._client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.exists(self._prefix + key)
                    counts = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable("revocation list unavailable") from exc
        return any(counts)


DEFAULT_PREFIX: Final = "revoked:"
