"""Refresh-token families: rotation on every use, with reuse detection.

A login starts a *family* (its id is the session id, ``sid``) with an absolute expiry (the
refresh lifetime; rotation never extends it). A refresh token is ``<family id>.<secret>``;
only SHA-256 of the secret is stored. ``rotate(token)`` is atomic:

* the family's current token → a new token replaces it (``Outcome.ROTATED``);
* a token of the family that was already rotated away → somebody holds a copy: the whole
  family is revoked (``Outcome.REUSED``) and every token of it is refused from then on;
* anything else (unknown, expired, revoked family, forged secret) → ``Outcome.INVALID``.

``InProcessRefreshFamilies`` serves one process (no ``await`` inside a decision, so the event
loop makes it atomic); ``RedisRefreshFamilies`` decides with one Lua script per rotation, its
keys hash-tagged by family so the script also runs on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import hmac
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Final, Protocol

from redis.exceptions import RedisError

from metrics.registry import SESSIONS_ACTIVE
from security.exceptions import StateUnavailable
from security.rediskeys import RedisClient, tagged
from security.replay import REDIS_TIMEOUT_S, Clock

_MAX_TOKEN_LEN: Final = 200


class Outcome(enum.Enum):
    ROTATED = "rotated"
    REUSED = "reused"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class Family:
    family_id: str
    user: str
    created_at: float
    expires_at: float

    def remaining_s(self, now: float) -> float:
        return max(0.0, self.expires_at - now)


@dataclass(frozen=True, slots=True)
class Rotation:
    """The result of presenting a refresh token. ``token`` is set only when ``ROTATED``;
    ``family`` is set for ``ROTATED`` and ``REUSED``."""

    outcome: Outcome
    family: Family | None = None
    token: str | None = None


def _hash(secret: str) -> str:
    return hashlib.sha256(b"voicegw-refresh\n" + secret.encode()).hexdigest()


def _split(token: str) -> tuple[str, str] | None:
    if len(token) > _MAX_TOKEN_LEN or token.count(".") != 1:
        return None
    family_id, secret = token.split(".")
    if (
        not family_id
        or not secret
        or not (family_id + secret).replace("-", "").replace("_", "").isalnum()
    ):
        return None
    return family_id, secret


def _new_secret() -> str:
    return secrets.token_urlsafe(32)


class RefreshFamilies(Protocol):
    async def create(self, user: str, ttl_s: float) -> tuple[str, Family]:
        """Start a family for ``user`` lasting ``ttl_s``; returns its first token."""
        ...

    async def rotate(self, token: str) -> Rotation: ...

    async def get(self, family_id: str) -> Family | None:
        """The family if it is live (not revoked, not expired)."""
        ...

    async def revoke(self, family_id: str) -> Family | None:
        """Revoke one family; returns it if it was live."""
        ...

    async def revoke_user(self, user: str) -> list[Family]:
        """Revoke every live family of ``user``; returns them."""
        ...

    async def count_live(self) -> int:
        """How many families are live (operator sessions), across every replica."""
        ...


@dataclass(slots=True)
class _State:
    family: Family
    current: str
    used: set[str] = field(default_factory=set)
    revoked: bool = False


class InProcessRefreshFamilies:
    """Families in this process, pruned when they expire."""

    __slots__ = ("_by_user", "_clock", "_families", "_max_families")

    def __init__(self, *, max_families: int = 100_000, clock: Clock = time.time) -> None:
        self._families: dict[str, _State] = {}
        self._by_user: dict[str, set[str]] = {}
        self._max_families = max_families
        self._clock = clock

    async def create(self, user: str, ttl_s: float) -> tuple[str, Family]:
        now = self._clock()
        self._prune(now)
        if len(self._families) >= self._max_families:
            oldest = min(self._families.values(), key=lambda s: s.family.created_at)
            self._forget(oldest.family)
        family = Family(secrets.token_urlsafe(16), user, now, now + ttl_s)
        secret = _new_secret()
        self._families[family.family_id] = _State(family, _hash(secret))
        self._by_user.setdefault(user, set()).add(family.family_id)
        return f"{family.family_id}.{secret}", family

    async def rotate(self, token: str) -> Rotation:
        parts = _split(token)
        if parts is None:
            return Rotation(Outcome.INVALID)
        family_id, secret = parts
        state = self._families.get(family_id)
        now = self._clock()
        if state is None or state.revoked or state.family.expires_at <= now:
            return Rotation(Outcome.INVALID)
        presented = _hash(secret)
        if hmac.compare_digest(presented, state.current):
            new_secret = _new_secret()
            state.used.add(state.current)
            state.current = _hash(new_secret)
            return Rotation(Outcome.ROTATED, state.family, f"{family_id}.{new_secret}")
        if presented in state.used:
            state.revoked = True
            return Rotation(Outcome.REUSED, state.family)
        return Rotation(Outcome.INVALID)

    async def get(self, family_id: str) -> Family | None:
        state = self._families.get(family_id)
        if state is None or state.revoked or state.family.expires_at <= self._clock():
            return None
        return state.family

    async def revoke(self, family_id: str) -> Family | None:
        live = await self.get(family_id)
        state = self._families.get(family_id)
        if state is not None:
            state.revoked = True
        return live

    async def revoke_user(self, user: str) -> list[Family]:
        revoked = []
        for family_id in list(self._by_user.get(user, ())):
            family = await self.revoke(family_id)
            if family is not None:
                revoked.append(family)
        return revoked

    async def count_live(self) -> int:
        now = self._clock()
        self._prune(now)
        return sum(1 for state in self._families.values() if not state.revoked)

    def _prune(self, now: float) -> None:
        for state in [s for s in self._families.values() if s.family.expires_at <= now]:
            self._forget(state.family)

    def _forget(self, family: Family) -> None:
        self._families.pop(family.family_id, None)
        ids = self._by_user.get(family.user)
        if ids is not None:
            ids.discard(family.family_id)
            if not ids:
                del self._by_user[family.user]


# KEYS[1] family hash, KEYS[2] used-token set; ARGV[1] presented hash, ARGV[2] new hash,
# ARGV[3] now (Unix seconds). Returns {outcome, user, created_at, expires_at}.
_ROTATE = """
local fam = redis.call('HMGET', KEYS[1], 'cur', 'exp', 'revoked', 'user', 'created')
if not fam[1] then return {'invalid'} end
if fam[3] == '1' or tonumber(fam[2]) <= tonumber(ARGV[3]) then return {'invalid'} end
if fam[1] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'cur', ARGV[2])
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('EXPIREAT', KEYS[2], math.ceil(tonumber(fam[2])))
  return {'rotated', fam[4], fam[5], fam[2]}
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'revoked', '1')
  return {'reused', fam[4], fam[5], fam[2]}
end
return {'invalid'}
"""

# KEYS[1] family hash; ARGV[1] now. Marks the family revoked; returns it if it was live.
_REVOKE = """
local fam = redis.call('HMGET', KEYS[1], 'exp', 'revoked', 'user', 'created')
if not fam[1] then return false end
redis.call('HSET', KEYS[1], 'revoked', '1')
if fam[2] == '1' or tonumber(fam[1]) <= tonumber(ARGV[1]) then return false end
return {fam[3], fam[4], fam[1]}
"""


class RedisRefreshFamilies:
    """Families in Redis, shared by every replica. Every call is bounded by ``timeout_s``;
    a Redis failure raises ``StateUnavailable`` (the refresh is refused, never guessed)."""

    __slots__ = ("_client", "_clock", "_prefix", "_revoke", "_rotate", "_timeout_s")

    def __init__(
        self,
        client: RedisClient,
        prefix: str,
        *,
        timeout_s: float = REDIS_TIMEOUT_S,
        clock: Clock = time.time,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._timeout_s = timeout_s
        self._clock = clock
        self._rotate = client.register_script(_ROTATE)
        self._revoke = client.register_script(_REVOKE)

    def _family_key(self, family_id: str) -> str:
        return tagged(f"{self._prefix}rt:", family_id)

    def _used_key(self, family_id: str) -> str:
        return tagged(f"{self._prefix}rt:", family_id, "used")

    def _live_key(self) -> str:
        """Sorted set of the live families' ids, scored by expiry: for ``count_live``."""
        return f"{self._prefix}rtlive"

    def _user_key(self, user: str) -> str:
        return f"{self._prefix}rtu:{hashlib.sha256(user.encode()).hexdigest()[:32]}"

    async def create(self, user: str, ttl_s: float) -> tuple[str, Family]:
        now = self._clock()
        family = Family(secrets.token_urlsafe(16), user, now, now + ttl_s)
        secret = _new_secret()
        key = self._family_key(family.family_id)
        expire_at = math.ceil(family.expires_at)
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.hset(
                        key,
                        mapping={
                            "cur": _hash(secret),
                            "exp": repr(family.expires_at),
                            "created": repr(now),
                            "user": user,
                            "revoked": "0",
                        },
                    )
                    pipe.expireat(key, expire_at)
                    pipe.sadd(self._user_key(user), family.family_id)
                    pipe.expireat(self._user_key(user), expire_at, gt=True)
                    pipe.expireat(self._user_key(user), expire_at, nx=True)
                    pipe.zadd(self._live_key(), {family.family_id: family.expires_at})
                    pipe.expireat(self._live_key(), expire_at, gt=True)
                    pipe.expireat(self._live_key(), expire_at, nx=True)
                    await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable("refresh store unavailable") from exc
        return f"{family.family_id}.{secret}", family

    async def rotate(self, token: str) -> Rotation:
        parts = _split(token)
        if parts is None:
            return Rotation(Outcome.INVALID)
        family_id, secret = parts
        new_secret = _new_secret()
        try:
            async with asyncio.timeout(self._timeout_s):
                result = await self._rotate(
                    keys=[self._family_key(family_id), self._used_key(family_id)],
                    args=[_hash(secret), _hash(new_secret), repr(self._clock())],
                )
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable("refresh store unavailable") from exc
        outcome = Outcome(_text(result[0]))
        if outcome is Outcome.INVALID:
            return Rotation(outcome)
        family = Family(
            family_id, _text(result[1]), float(_text(result[2])), float(_text(result[3]))
        )
        if outcome is Outcome.ROTATED:
            return Rotation(outcome, family, f"{family_id}.{new_secret}")
        await self._not_live(family_id)  # reused: the script revoked the family
        return Rotation(outcome, family)

    async def get(self, family_id: str) -> Family | None:
        try:
            async with asyncio.timeout(self._timeout_s):
                values = await self._client.hmget(
                    self._family_key(family_id), ["exp", "revoked", "user", "created"]
                )
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable("refresh store unavailable") from exc
        exp, revoked, user, created = values
        if exp is None or user is None or created is None or revoked in (b"1", "1"):
            return None
        family = Family(family_id, _text(user), float(created), float(exp))
        return family if family.expires_at > self._clock() else None

    async def revoke(self, family_id: str) -> Family | None:
        try:
            async with asyncio.timeout(self._timeout_s):
                result = await self._revoke(
                    keys=[self._family_key(family_id)], args=[repr(self._clock())]
                )
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable("refresh store unavailable") from exc
        await self._not_live(family_id)
        if not result:
            return None
        return Family(family_id, _text(result[0]), float(result[1]), float(result[2]))

    async def _not_live(self, family_id: str) -> None:
        """Take a revoked family out of the live count. The revocation has happened: if this
        fails, the family is counted until it expires, and nothing else is affected."""
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(self._timeout_s):
                await self._client.zrem(self._live_key(), family_id)

    async def count_live(self) -> int:
        now = self._clock()
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.zremrangebyscore(self._live_key(), "-inf", now)
                    pipe.zcard(self._live_key())
                    _, live = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable("refresh store unavailable") from exc
        return int(live)

    async def revoke_user(self, user: str) -> list[Family]:
        try:
            async with asyncio.timeout(self._timeout_s):
                members = await self._client.smembers(self._user_key(user))
        except (RedisError, OSError, TimeoutError) as exc:
            raise StateUnavailable("refresh store unavailable") from exc
        revoked = []
        for family_id in sorted(_text(m) for m in members):
            family = await self.revoke(family_id)
            if family is not None and family.user == user:
                revoked.append(family)
        return revoked


async def gauge_live_sessions(families: RefreshFamilies, every_s: float = 15.0) -> None:
    """Keep ``voicegw_sessions_active`` at the live-session count, every ``every_s`` seconds,
    until cancelled. The count is global (every replica reports the same figure: take the
    max, not the sum); while the store is unavailable the last figure stays."""
    while True:
        with contextlib.suppress(StateUnavailable):
            SESSIONS_ACTIVE.set(await families.count_live())
        await asyncio.sleep(every_s)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
