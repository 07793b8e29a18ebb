"""Single-use media stream tokens bound to one call.

The gateway mints a token when it answers a call and puts it into the media stream URL it
hands the carrier; the media endpoint consumes it when the carrier connects. A token is
accepted once, only for the call it was minted for, and only before it expires. Presenting
a token spends it, whether or not the call matches. Only SHA-256 hashes of the token and the
call key are stored. The Redis backend fails closed: if Redis does not answer, ``mint`` and
``consume`` raise ``StateUnavailable`` and no stream is admitted.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from typing import Final, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from security.exceptions import StateUnavailable
from security.replay import REDIS_TIMEOUT_S, Clock

TOKEN_BYTES: Final = 32
DEFAULT_TTL_S: Final = 120

# token_urlsafe(32): 43 characters of the URL-safe base64 alphabet, no padding.
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")


def _hash(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _well_formed(token: str) -> bool:
    return _TOKEN_SHAPE.fullmatch(token) is not None


class StreamTokens(Protocol):
    async def mint(self, call_key: str, ttl_s: int = DEFAULT_TTL_S) -> str:
        """A new token for ``call_key``, valid for ``ttl_s`` seconds."""
        ...

    async def consume(self, token: str, call_key: str) -> bool:
        """True exactly once: for an unexpired token minted for ``call_key``."""
        ...


class InProcessStreamTokens:
    """Stream tokens in this process; at most ``max_tokens`` live, oldest dropped first."""

    __slots__ = ("_clock", "_max_tokens", "_tokens")

    def __init__(self, max_tokens: int = 100_000, *, clock: Clock = time.monotonic) -> None:
        self._max_tokens = max_tokens
        self._clock = clock
        self._tokens: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()

    async def mint(self, call_key: str, ttl_s: int = DEFAULT_TTL_S) -> str:
        now = self._clock()
        while self._tokens:
            oldest, (_, expiry) = next(iter(self._tokens.items()))
            if expiry > now and len(self._tokens) < self._max_tokens:
                break
            del self._tokens[oldest]
        token = secrets.token_urlsafe(TOKEN_BYTES)
        self._tokens[_hash(token)] = (_hash(call_key), now + ttl_s)
        return token

    async def consume(self, token: str, call_key: str) -> bool:
        if not _well_formed(token):
            return False
        entry = self._tokens.pop(_hash(token), None)
        if entry is None:
            return False
        bound_to, expiry = entry
        return expiry > self._clock() and hmac.compare_digest(bound_to, _hash(call_key))


class RedisStreamTokens:
    """Stream tokens in Redis, usable from any replica; spent atomically with ``GETDEL``."""

    __slots__ = ("_client", "_prefix", "_timeout_s")

    def __init__(
        self, client: aioredis.Redis, prefix: str, *, timeout_s: float = REDIS_TIMEOUT_S
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._timeout_s = timeout_s

    def _key(self, token: str) -> str:
        return f"{self._prefix}streamtoken:{_hash(token).hex()}"

    async def mint(self, call_key: str, ttl_s: int = DEFAULT_TTL_S) -> str:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        try:
            async with asyncio.timeout(self._timeout_s):
                stored = await self._client.set(
                    self._key(token), _hash(call_key).hex(), nx=True, ex=ttl_s
                )
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable("stream tokens unavailable") from exc
        if not stored:  # 256 random bits collided: refuse rather than share a token
            raise StateUnavailable("stream token not stored")
        return token

    async def consume(self, token: str, call_key: str) -> bool:
        if not _well_formed(token):
            return False
        try:
            async with asyncio.timeout(self._timeout_s):
                bound_to = await self._client.getdel(self._key(token))
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable("stream tokens unavailable") from exc
        if isinstance(bound_to, str):  # a client created with decode_responses=True
            bound_to = bound_to.encode("ascii", "replace")
        expected = _hash(call_key).hex().encode("ascii")
        return isinstance(bound_to, bytes) and hmac.compare_digest(bound_to, expected)
