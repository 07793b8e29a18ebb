"""Opening the gateway's shared services from ``Settings``, one function each: the Redis client,
the state backends (in process, or in Redis), the store and data keys, the session signing keys,
the audit trail, the operator-session configuration, and the webhook pipeline.

The composition root (``gateway.app``) and the offline commands (``voicegw users``, ``review``,
``compliance``) open them the same way. Imports settings, the store, auth and the lower
packages; nothing here runs a call.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any, Final, Protocol

import redis.asyncio as aioredis
from nacl.signing import SigningKey as NaclSigningKey
from redis.asyncio.cluster import RedisCluster

from gateway.calls.redis_registry import RedisCallRegistry
from gateway.calls.registry import ENDED_TTL_S, CallRegistry, InProcessCallRegistry
from gateway.devkeys import ensure_data_dir
from gateway.operators.sessions import AuthConfig, AuthRuntime, signing_ring
from gateway.records import create_store
from gateway.records.base import Store
from gateway.settings import RedisMode, Settings
from metrics.logging import load_ip_hash_key
from providers.breakers import BreakerPolicy, BreakerRegistry
from security.allowlist import Allowlist, AnySource, ClientAddressResolver
from security.apikeys import KeyPolicy
from security.audit import Auditor, HashChainer
from security.crypto import BlindIndex, KeyRing, load_or_create_dev_keys
from security.lockout import LockoutPolicy
from security.ratelimit import FallbackLimiter, InProcessLimiter, Limiter, RedisLimiter
from security.rediskeys import RedisClient
from security.replay import (
    Degradation,
    FallbackReplayCache,
    InProcessReplayCache,
    RedisReplayCache,
    ReplayCache,
)
from security.signatures import TelnyxSignatureVerifier, TwilioSignatureVerifier
from security.signing_keys import KeyRing as SigningKeyRing
from security.streamtokens import InProcessStreamTokens, RedisStreamTokens, StreamTokens
from security.webhooks import DEFAULT_REPLAY_TTL_S, Carrier, CarrierPolicy, WebhookPipeline

REDIS_TIMEOUT_S: Final = 0.5
DAY_S: Final = 86400.0


def redis_client(
    url: str,
    max_connections: int,
    replica_id: str,
    *,
    mode: RedisMode = "standalone",
    timeout_s: float = REDIS_TIMEOUT_S,
) -> RedisClient:
    """The process's Redis client: of one server, or (``mode="cluster"``) of the Redis
    Cluster that ``url``'s node belongs to. Every operation is bounded by ``timeout_s``. At
    most ``max_connections`` connections are open (per node on a cluster); on one server a
    burst beyond them waits (as long as one operation may take) for a connection to be
    released instead of failing at once, while the cluster client fails the operation (the
    state falls back in process). The connections are named after the replica (``CLIENT
    LIST`` shows whose they are)."""
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "health_check_interval": 15,
        "client_name": f"voicegw:{replica_id}",
    }
    if mode == "cluster":
        return RedisCluster.from_url(url, max_connections=max_connections, **options)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout_s, **options
    )
    return aioredis.Redis.from_pool(pool)


CLUSTER_WARM_UP_S: Final = 2.0


async def warm_up(client: RedisClient) -> None:
    """Let a cluster client read the cluster's nodes and slots now, so the first webhook's
    state operations (bounded by ``REDIS_TIMEOUT_S``) do not pay for it. Bounded; a cluster
    that does not answer yet is read on first use instead, so this never raises."""
    if isinstance(client, RedisCluster):
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLUSTER_WARM_UP_S):
                await client.initialize()


def commands_client(url: str, *, mode: RedisMode = "standalone") -> RedisClient:
    """A Redis client for the call-command channel: it blocks on a subscription and on
    replies, so no socket timeout (connecting is still bounded); a small pool of its own."""
    options: dict[str, Any] = {
        "socket_connect_timeout": REDIS_TIMEOUT_S,
        "health_check_interval": 15,
    }
    if mode == "cluster":
        return RedisCluster.from_url(url, max_connections=16, **options)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=16, timeout=REDIS_TIMEOUT_S, **options
    )
    return aioredis.Redis.from_pool(pool)


class Degradable(Protocol):
    """A Redis-backed component with an in-process fallback (rate limits, replay cache)."""

    degradation: Degradation

    @property
    def degraded(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class SharedState:
    """The state behind small interfaces, each with two backends: the webhook rate limits,
    the replay cache, stream tokens, the live-call registry and the breakers. ``degradable``:
    the Redis-backed ones that fall back in process (``/readyz`` reports them)."""

    limiters: dict[Carrier, Limiter]
    replay: ReplayCache
    stream_tokens: StreamTokens
    registry: CallRegistry
    breakers: BreakerRegistry
    tool_breakers: BreakerRegistry
    """One breaker per tool endpoint of the agents (apart from the providers' and carriers')."""
    degradable: list[Degradable]

    @classmethod
    def build(cls, settings: Settings, redis: RedisClient | None, replica_id: str) -> SharedState:
        """The Redis backends on ``redis``, or the in-process ones when it is None."""
        degradable: list[Degradable] = []
        limiters: dict[Carrier, Limiter] = {}
        replay: ReplayCache
        tokens: StreamTokens
        registry: CallRegistry
        if redis is not None:
            prefix = settings.redis_key_prefix
            for carrier in Carrier:
                limiter = FallbackLimiter(
                    RedisLimiter(redis, prefix + "rl:", settings.rate_limit_per_minute),
                    InProcessLimiter(settings.rate_limit_per_minute),
                )
                limiters[carrier] = limiter
                degradable.append(limiter)
            fallback_replay = FallbackReplayCache(
                RedisReplayCache(redis, prefix + "replay:"), InProcessReplayCache()
            )
            degradable.append(fallback_replay)
            replay = fallback_replay
            tokens = RedisStreamTokens(redis, prefix + "st:")
            registry = RedisCallRegistry(
                redis,
                prefix + "calls:",
                replica_id=replica_id,
                ended_ttl=ENDED_TTL_S,
                active_ttl=settings.call_ttl_s,
            )
            breakers = BreakerRegistry.redis(redis, prefix + "breaker:", BreakerPolicy())
            degradable.append(breakers)  # /readyz: degraded while breakers run in-process
            tool_breakers = BreakerRegistry.redis(redis, prefix + "tool-breaker:", BreakerPolicy())
        else:
            for carrier in Carrier:
                limiters[carrier] = InProcessLimiter(settings.rate_limit_per_minute)
            replay = InProcessReplayCache()
            tokens = InProcessStreamTokens()
            registry = InProcessCallRegistry(replica_id, ended_ttl=ENDED_TTL_S)
            breakers = BreakerRegistry.in_process(BreakerPolicy())
            tool_breakers = BreakerRegistry.in_process(BreakerPolicy())
        if registry.ended_ttl < DEFAULT_REPLAY_TTL_S:
            # A webhook of an ended call the registry forgot would start that call again.
            raise ValueError("the call registry must remember ended calls as long as replays")
        return cls(limiters, replay, tokens, registry, breakers, tool_breakers, degradable)


def carrier_allowlists(settings: Settings) -> dict[str, Allowlist]:
    """The source allowlist of each enabled carrier."""
    return {
        c: Allowlist(AnySource.ANY if a.any else a.networks)
        for c in settings.carriers
        for a in [settings.allowlist(c)]
    }


def webhook_pipeline(
    settings: Settings,
    state: SharedState,
    resolver: ClientAddressResolver,
    allowlists: dict[str, Allowlist],
) -> WebhookPipeline:
    """The webhook pipeline: for each carrier enabled with its secrets, its signature
    verifier, allowlist, rate limit and the shared replay cache."""
    twilio_policy = telnyx_policy = None
    if "twilio" in settings.carriers and settings.twilio_auth_token is not None:
        twilio_tokens = [settings.twilio_auth_token.get()]
        if settings.twilio_auth_token_secondary is not None:
            twilio_tokens.append(settings.twilio_auth_token_secondary.get())
        twilio_policy = CarrierPolicy(
            verifier=TwilioSignatureVerifier(twilio_tokens),
            allowlist=allowlists["twilio"],
            limiter=state.limiters[Carrier.TWILIO],
            replay=state.replay,
            resolver=resolver,
            freshness_s=settings.freshness_window_s,
            replay_ttl_s=DEFAULT_REPLAY_TTL_S,
        )
    if "telnyx" in settings.carriers and settings.telnyx_public_keys:
        telnyx_policy = CarrierPolicy(
            verifier=TelnyxSignatureVerifier(settings.telnyx_public_keys),
            allowlist=allowlists["telnyx"],
            limiter=state.limiters[Carrier.TELNYX],
            replay=state.replay,
            resolver=resolver,
            freshness_s=settings.freshness_window_s,
            replay_ttl_s=DEFAULT_REPLAY_TTL_S,
        )
    return WebhookPipeline(
        twilio=twilio_policy, telnyx=telnyx_policy, max_body_bytes=settings.max_body_bytes
    )


def open_store(settings: Settings) -> Store:
    """The configured store (not yet opened): PostgreSQL when set, else SQLite."""
    ensure_data_dir(settings.data_dir)
    return create_store(
        data_dir=settings.data_dir,
        database_url=settings.database_url.get() if settings.database_url else None,
    )


def load_data_keys(settings: Settings) -> tuple[KeyRing, BlindIndex]:
    """Field-encryption keys and the blind-index key: configured, or (development only; the
    settings refuse this in production) generated into the data directory."""
    if settings.encryption_keys is not None and settings.blind_index_key is not None:
        return (
            KeyRing.from_spec(settings.encryption_keys.get()),
            BlindIndex.from_base64(settings.blind_index_key.get()),
        )
    dev = load_or_create_dev_keys(settings.data_dir)
    keyring = (
        KeyRing.from_spec(settings.encryption_keys.get())
        if settings.encryption_keys
        else dev.keyring()
    )
    index = (
        BlindIndex.from_base64(settings.blind_index_key.get())
        if settings.blind_index_key
        else dev.blind_index()
    )
    return keyring, index


def auth_config(settings: Settings) -> AuthConfig:
    """The operator-session configuration ``settings`` describe."""
    return AuthConfig(
        public_url=settings.public_url,
        access_ttl_s=settings.session_ttl_s,
        refresh_ttl_s=settings.refresh_ttl_s,
        cors_origins=settings.cors_origins,
        lockout=LockoutPolicy(settings.login_lockout_failures, settings.login_lockout_window_s),
        login_rate_per_minute=settings.login_rate_per_minute,
        login_ipv6_prefix=settings.login_ipv6_prefix,
        api_keys=KeyPolicy(
            settings.api_key_max_age_days * DAY_S, settings.api_key_grace_days * DAY_S
        ),
        production=settings.production,
    )


def settings_signing_ring(settings: Settings) -> SigningKeyRing:
    """The session signing keys: from ``VOICEGW_SIGNING_KEY``, its key file, or the data dir."""
    return signing_ring(
        settings.data_dir,
        key_file=settings.signing_key_file,
        seeds=settings.signing_keys.get().split(",") if settings.signing_keys else (),
    )


def open_auditor(settings: Settings, store: Store, ring: SigningKeyRing | None = None) -> Auditor:
    """The audit trail's writer: events chained in ``store``, checkpoints signed with the
    active session signing key (the gateway and the admin commands write the same chain)."""
    active = (ring or settings_signing_ring(settings)).active
    checkpoint_key = (
        None if active.private is None else NaclSigningKey(active.private.private_bytes_raw())
    )
    return Auditor(
        store,
        HashChainer(checkpoint_key, key_id=active.kid),
        ip_hash_key=load_ip_hash_key(settings.data_dir),
    )


@dataclass(frozen=True, slots=True)
class Durable:
    """What outlives a process: the store, the data keys, the audit trail, operator sessions."""

    store: Store
    data_keys: KeyRing
    blind_index: BlindIndex
    auditor: Auditor
    auth: AuthRuntime

    @classmethod
    async def open(cls, settings: Settings, redis: RedisClient | None) -> Durable:
        """The store (migrated), data keys, audit trail and operator sessions."""
        store = open_store(settings)
        await store.open()
        data_keys, blind_index = load_data_keys(settings)
        ring = settings_signing_ring(settings)
        auditor = open_auditor(settings, store, ring)
        auth = AuthRuntime.build(
            auth_config(settings),
            ring=ring,
            store=store,
            redis=redis,
            redis_prefix=settings.redis_key_prefix,
            auditor=auditor,
        )
        return cls(store, data_keys, blind_index, auditor, auth)
