"""Single-use media stream tokens bound to one call.

The gateway mints a token when it answers a call and puts it into the media stream URL it
hands the carrier; the media endpoint consumes it when the carrier connects. A token is
accepted once, only for the call it was minted for, and only before it expires. Presenting
a token spends it, whether or not the call matches. Only SHA-256 hashes of the token and the
call key are stored. The Redis backend fails closed: if Redis does not answer, ``mint`` and
``consume`` raise ``StateUnavailable`` and no stream is admitted.

A call the gateway places itself names its token before the carrier names the call: the token
is minted for a provisional key and ``rebind`` moves it, unspent and with its expiry, to the
call's key once the carrier's answer gives the call id; a stream that presents it before that
spends it and is refused.

A token minted for a webhook ``delivery`` (the replay cache's key of the signed request that
asked for it) is also kept for that delivery, for the token's lifetime, so that a duplicate of
the delivery is answered with the same token instead of a new one (``minted_for``): replays
mint nothing, evict nothing. It is stored sealed: XORed with a pad derived from the delivery
key, which contains the carrier's signature and is itself stored only hashed; reading the
store alone does not yield the token, only presenting the signed delivery again does.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from typing import Final, Protocol

from redis.exceptions import RedisError

from security.exceptions import StateUnavailable
from security.rediskeys import RedisClient
from security.replay import REDIS_TIMEOUT_S, Clock

TOKEN_BYTES: Final = 32
DEFAULT_TTL_S: Final = 120

# token_urlsafe(32): 43 characters of the URL-safe base64 alphabet, no padding.
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")


def _hash(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _well_formed(token: str) -> bool:
    return _TOKEN_SHAPE.fullmatch(token) is not None


def _text(value: bytes | str) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


def _delivery_id(delivery: str) -> bytes:
    """Where a delivery's token is kept (not the replay cache's digest of the same key)."""
    return _hash("voicegw stream token delivery\x00" + delivery)


def _pad(delivery: str) -> bytes:
    """The one-time pad a delivery's token is sealed with (one token per delivery)."""
    return _hash("voicegw stream token seal\x00" + delivery)


def _seal(token: str, delivery: str) -> bytes:
    raw = base64.urlsafe_b64decode(token + "=")
    return bytes(a ^ b for a, b in zip(raw, _pad(delivery), strict=True))


def _unseal(sealed: bytes, delivery: str) -> str | None:
    if len(sealed) != TOKEN_BYTES:
        return None
    raw = bytes(a ^ b for a, b in zip(sealed, _pad(delivery), strict=True))
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class StreamTokens(Protocol):
    async def mint(
        self, call_key: str, ttl_s: int = DEFAULT_TTL_S, *, delivery: str | None = None
    ) -> str:
        """A new token for ``call_key``, valid for ``ttl_s`` seconds; kept for ``delivery``
        (when given) as long."""
        ...

    async def minted_for(self, delivery: str) -> str | None:
        """The token minted for ``delivery`` within its lifetime (spent or not), else None.
        Read-only: it mints, extends and evicts nothing."""
        ...

    async def consume(self, token: str, call_key: str) -> bool:
        """True exactly once: for an unexpired token minted for ``call_key``."""
        ...

    async def rebind(self, token: str, from_key: str, to_key: str) -> bool:
        """Bind an unspent, unexpired ``token`` minted for ``from_key`` to ``to_key`` instead,
        keeping its expiry. False, changing nothing, when it is spent, expired or bound to
        another key."""
        ...


class InProcessStreamTokens:
    """Stream tokens in this process; at most ``max_tokens`` live, oldest dropped first (and
    as many tokens kept for deliveries, likewise)."""

    __slots__ = ("_clock", "_deliveries", "_max_tokens", "_tokens")

    def __init__(self, max_tokens: int = 100_000, *, clock: Clock = time.monotonic) -> None:
        self._max_tokens = max_tokens
        self._clock = clock
        self._tokens: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self._deliveries: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()

    def __len__(self) -> int:
        """Tokens held (live or not yet pruned)."""
        return len(self._tokens)

    async def mint(
        self, call_key: str, ttl_s: int = DEFAULT_TTL_S, *, delivery: str | None = None
    ) -> str:
        now = self._clock()
        self._prune(self._tokens, now)
        token = secrets.token_urlsafe(TOKEN_BYTES)
        self._tokens[_hash(token)] = (_hash(call_key), now + ttl_s)
        if delivery is not None:
            self._prune(self._deliveries, now)
            self._deliveries[_delivery_id(delivery)] = (_seal(token, delivery), now + ttl_s)
        return token

    async def minted_for(self, delivery: str) -> str | None:
        entry = self._deliveries.get(_delivery_id(delivery))
        if entry is None or entry[1] <= self._clock():
            return None
        return _unseal(entry[0], delivery)

    def _prune(self, entries: OrderedDict[bytes, tuple[bytes, float]], now: float) -> None:
        """Drop expired entries from the front, and the oldest while full (one TTL per
        gateway: insertion order is expiry order)."""
        while entries:
            oldest, (_, expiry) = next(iter(entries.items()))
            if expiry > now and len(entries) < self._max_tokens:
                break
            del entries[oldest]

    async def consume(self, token: str, call_key: str) -> bool:
        if not _well_formed(token):
            return False
        entry = self._tokens.pop(_hash(token), None)
        if entry is None:
            return False
        bound_to, expiry = entry
        return expiry > self._clock() and hmac.compare_digest(bound_to, _hash(call_key))

    async def rebind(self, token: str, from_key: str, to_key: str) -> bool:
        if not _well_formed(token):
            return False
        entry = self._tokens.get(_hash(token))
        if entry is None or entry[1] <= self._clock():
            return False
        if not hmac.compare_digest(entry[0], _hash(from_key)):
            return False
        self._tokens[_hash(token)] = (_hash(to_key), entry[1])
        return True


# Compare-and-set of a token's binding, keeping its TTL: 1 when it was bound to ARGV[1].
_REBIND: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
    return 1
end
return 0
"""


class RedisStreamTokens:
    """Stream tokens in Redis, usable from any replica; spent atomically with ``GETDEL``."""

    __slots__ = ("_client", "_prefix", "_rebind", "_timeout_s")

    def __init__(
        self, client: RedisClient, prefix: str, *, timeout_s: float = REDIS_TIMEOUT_S
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._timeout_s = timeout_s
        self._rebind = client.register_script(_REBIND)

    def _key(self, token: str) -> str:
        return f"{self._prefix}streamtoken:{_hash(token).hex()}"

    def _delivery_key(self, delivery: str) -> str:
        return f"{self._prefix}streamtoken-delivery:{_delivery_id(delivery).hex()}"

    async def mint(
        self, call_key: str, ttl_s: int = DEFAULT_TTL_S, *, delivery: str | None = None
    ) -> str:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        try:
            async with asyncio.timeout(self._timeout_s):
                # One round trip; not a transaction, since the two keys may sit in different
                # cluster slots.
                pipe = self._client.pipeline(transaction=False)
                pipe.set(self._key(token), _hash(call_key).hex(), nx=True, ex=ttl_s)
                if delivery is not None:
                    pipe.set(self._delivery_key(delivery), _seal(token, delivery).hex(), ex=ttl_s)
                stored = (await pipe.execute())[0]
                if not stored and delivery is not None:
                    await self._client.delete(self._delivery_key(delivery))
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable("stream tokens unavailable") from exc
        if not stored:  # 256 random bits collided: refuse rather than share a token
            raise StateUnavailable("stream token not stored")
        return token

    async def minted_for(self, delivery: str) -> str | None:
        try:
            async with asyncio.timeout(self._timeout_s):
                sealed = await self._client.get(self._delivery_key(delivery))
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable("stream tokens unavailable") from exc
        if not isinstance(sealed, bytes | str):
            return None
        try:
            return _unseal(bytes.fromhex(_text(sealed)), delivery)
        except ValueError:  # not what mint wrote
            return None

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

    async def rebind(self, token: str, from_key: str, to_key: str) -> bool:
        if not _well_formed(token):
            return False
        try:
            async with asyncio.timeout(self._timeout_s):
                moved = await self._rebind(
                    keys=[self._key(token)],
                    args=[_hash(from_key).hex(), _hash(to_key).hex()],
                )
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable("stream tokens unavailable") from exc
        return bool(moved)
