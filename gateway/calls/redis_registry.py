"""The live-call registry shared through Redis (``RedisCallRegistry``), for the replicas of one
deployment; the interface and the in-process backend are ``gateway.calls.registry``'s.

Every change is a compare-and-set in a Lua script, so concurrent changes to one call from
several replicas serialise and the loser re-checks the state machine (``gateway.calls.state``).
Active calls expire ``active_ttl`` after their holder's last ``heartbeat`` (a replica killed
without warning loses its calls that way); ended calls are kept ``ended_ttl``, then expire.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson

from gateway.calls.registry import ENDED_TTL_S, Changed, default_replica_id
from gateway.calls.state import (
    Call,
    CallError,
    CallNotFoundError,
    CallState,
    ended_by_replica_loss,
    new_call,
    transitioned,
    with_provider,
)
from providers.events import CallId
from security.rediskeys import RedisClient, tagged

# Deadlines use the server's clock so replicas' clocks may disagree.
_NOW_MS = "local t = redis.call('TIME')\nlocal now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

# KEYS: carrier index, new call, active set, replica set. ARGV: call id, record, ttl ms, base.
# Returns the record already registered for the carrier call id, or nil once it created one.
_CREATE = (
    """
local existing = redis.call('GET', KEYS[1])
if existing then
  local record = redis.call('GET', ARGV[4] .. 'call:' .. existing)
  if record then return record end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
"""
    + _NOW_MS
    + """
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('PEXPIRE', KEYS[4], ARGV[3])
return false
"""
)

# Compare-and-set. KEYS: call, carrier index, active set, old holder's set, new holder's set.
# ARGV: expected record, new record, ttl ms, call id, "1" if the call stays active.
_PUT = (
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
if ARGV[5] == '1' then
"""
    + _NOW_MS
    + """
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[4])
  if KEYS[4] ~= KEYS[5] then redis.call('SREM', KEYS[4], ARGV[4]) end
  redis.call('SADD', KEYS[5], ARGV[4])
  redis.call('PEXPIRE', KEYS[5], ARGV[3])
else
  redis.call('ZREM', KEYS[3], ARGV[4])
  redis.call('SREM', KEYS[4], ARGV[4])
  redis.call('SREM', KEYS[5], ARGV[4])
end
return 1
"""
)

# KEYS: this replica's set, active set, live replicas. ARGV: ttl ms, base, replica id.
_HEARTBEAT = (
    _NOW_MS
    + """
local held = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[2] .. 'call:' .. id
  local record = redis.call('GET', key)
  local call = record and cjson.decode(record)
  if call and call.replica == ARGV[3] and call.state ~= 'ended' then
    redis.call('PEXPIRE', key, ARGV[1])
    redis.call('PEXPIRE', ARGV[2] .. 'carrier:' .. call.carrier .. ':' .. call.carrier_call_id,
               ARGV[1])
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[1]), id)
    held = held + 1
  else
    redis.call('SREM', KEYS[1], id)
  end
end
if held > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[1]), ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[1])
return held
"""
)

# KEYS: live replicas. Replicas whose last heartbeat is younger than the active TTL (read-only).
_LIVE_REPLICAS = (
    _NOW_MS
    + """
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""
)

# KEYS: active set. ARGV: "count" or "list". Drops calls whose holder stopped beating first.
_ACTIVE = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[1] == 'count' then return redis.call('ZCARD', KEYS[1]) end
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
)

_MAX_ATTEMPTS: Final = 16
_MGET_BATCH: Final = 500


def _encode(call: Call) -> bytes:
    return orjson.dumps(
        {
            "v": 1,
            "call_id": call.call_id,
            "carrier": call.carrier,
            "carrier_call_id": call.carrier_call_id,
            "provider": call.provider,
            "state": call.state.value,
            "created_at": call.created_at,
            "updated_at": call.updated_at,
            "replica": call.replica,
            "ended_reason": call.ended_reason,
            "account_id": call.account_id,
            "agent": call.agent,
        }
    )


def _decode(raw: bytes | str) -> Call:
    try:
        d: dict[str, Any] = orjson.loads(raw)
        call = Call(
            call_id=CallId(d["call_id"]),
            carrier=d["carrier"],
            carrier_call_id=d["carrier_call_id"],
            provider=d["provider"],
            state=CallState(d["state"]),
            created_at=float(d["created_at"]),
            updated_at=float(d["updated_at"]),
            replica=d["replica"],
            ended_reason=d["ended_reason"],
            account_id=d.get("account_id"),
            agent=d.get("agent") or "default",
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CallError("malformed call record in Redis") from exc
    return call


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisCallRegistry:
    """``CallRegistry`` in Redis, shared by every replica using the same ``prefix``.

    All keys carry the hash tag ``{calls}`` (``security.rediskeys``) so the Lua scripts work
    on Redis Cluster too: they read and index calls of any replica, so they share one slot.
    The client may or may not decode responses. Run ``heartbeat`` every
    ``heartbeat_interval`` seconds (a quarter of ``active_ttl``).
    """

    def __init__(
        self,
        client: RedisClient,
        prefix: str = "voicegw:",
        *,
        replica_id: str | None = None,
        ended_ttl: float = ENDED_TTL_S,
        active_ttl: float = 60.0,
    ) -> None:
        if ended_ttl <= 0 or active_ttl <= 0:
            raise ValueError("TTLs must be positive")
        self._redis = client
        self._replica_id = replica_id or default_replica_id()
        self._base = tagged(prefix, "calls") + ":"
        self._active_key = self._base + "active"
        self.ended_ttl: Final = ended_ttl
        self._ended_ttl_ms = max(1, round(ended_ttl * 1000))
        self._active_ttl_ms = max(1, round(active_ttl * 1000))
        self.heartbeat_interval: Final = active_ttl / 4
        self._create = client.register_script(_CREATE)
        self._put = client.register_script(_PUT)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._active = client.register_script(_ACTIVE)
        self._replicas_key = self._base + "replicas"
        self._live_replicas = client.register_script(_LIVE_REPLICAS)

    @property
    def replica_id(self) -> str:
        return self._replica_id

    def _call_key(self, call_id: str) -> str:
        return f"{self._base}call:{call_id}"

    def _carrier_key(self, carrier: str, carrier_call_id: str) -> str:
        return f"{self._base}carrier:{carrier}:{carrier_call_id}"

    def _replica_key(self, replica_id: str) -> str:
        return f"{self._base}replica:{replica_id}"

    async def create(
        self,
        carrier: str,
        carrier_call_id: str,
        provider: str,
        *,
        account_id: str | None = None,
        agent: str = "default",
        call_id: CallId | None = None,
    ) -> tuple[Call, bool]:
        call = new_call(
            carrier, carrier_call_id, provider, self._replica_id, account_id, agent, call_id
        )
        keys = [
            self._carrier_key(carrier, carrier_call_id),
            self._call_key(call.call_id),
            self._active_key,
            self._replica_key(self._replica_id),
        ]
        args: list[str | bytes | int] = [
            call.call_id,
            _encode(call),
            self._active_ttl_ms,
            self._base,
        ]
        existing = await self._create(keys=keys, args=args)
        if existing is None:
            return call, True
        return _decode(existing), False

    async def get(self, call_id: CallId) -> Call | None:
        raw = await self._redis.get(self._call_key(call_id))
        return None if raw is None else _decode(raw)

    async def by_carrier_id(self, carrier: str, carrier_call_id: str) -> Call | None:
        call_id = await self._redis.get(self._carrier_key(carrier, carrier_call_id))
        if call_id is None:
            return None
        return await self.get(CallId(_text(call_id)))

    async def transition(
        self, call_id: CallId, new_state: CallState, *, reason: str | None = None
    ) -> Call:
        return await self._update(
            call_id, lambda c: transitioned(c, new_state, reason, self._replica_id)
        )

    async def set_provider(self, call_id: CallId, provider: str) -> Call:
        return await self._update(call_id, lambda c: with_provider(c, provider))

    async def list_active(self) -> list[Call]:
        ids = await self._active(keys=[self._active_key], args=["list"])
        calls: list[Call] = []
        for start in range(0, len(ids), _MGET_BATCH):
            batch = ids[start : start + _MGET_BATCH]
            records: list[bytes | str | None] = await self._redis.mget(
                [self._call_key(_text(i)) for i in batch]
            )
            # A record missing here expired between the two reads.
            calls += [c for c in (_decode(r) for r in records if r is not None) if c.active]
        return sorted(calls, key=lambda c: c.created_at)

    async def count_active(self) -> int:
        return int(await self._active(keys=[self._active_key], args=["count"]))

    async def remove_replica(self, replica_id: str) -> list[Call]:
        held = await self._redis.smembers(self._replica_key(replica_id))
        change = ended_by_replica_loss(replica_id)
        ended: list[Call] = []
        for call_id in sorted(_text(i) for i in held):
            try:
                call = await self._update(CallId(call_id), change)
            except CallNotFoundError:
                continue
            if call is not None:
                ended.append(call)
        return ended

    async def heartbeat(self) -> int:
        keys = [self._replica_key(self._replica_id), self._active_key, self._replicas_key]
        args: list[str | int] = [self._active_ttl_ms, self._base, self._replica_id]
        return int(await self._heartbeat(keys=keys, args=args))

    async def live_replicas(self) -> int:
        """How many replicas (this one included once it has beaten) sent a heartbeat within
        the active TTL: the deployment's size, as the security review reads it."""
        return int(await self._live_replicas(keys=[self._replicas_key]))

    async def _update(self, call_id: CallId, change: Callable[[Call], Changed]) -> Changed:
        """Read, change, compare-and-set; on a lost race re-read and re-check the change."""
        key = self._call_key(call_id)
        for _ in range(_MAX_ATTEMPTS):
            raw = await self._redis.get(key)
            if raw is None:
                raise CallNotFoundError(call_id)
            old = _decode(raw)
            new = change(old)
            if new is None:
                return new
            keys = [
                key,
                self._carrier_key(new.carrier, new.carrier_call_id),
                self._active_key,
                self._replica_key(old.replica),
                self._replica_key(new.replica),
            ]
            ttl = self._active_ttl_ms if new.active else self._ended_ttl_ms
            args: list[str | bytes | int] = [
                raw,
                _encode(new),
                ttl,
                call_id,
                "1" if new.active else "0",
            ]
            if await self._put(keys=keys, args=args):
                return new
        raise CallError(f"call {call_id}: too many concurrent changes")
