"""Everything a running gateway shares between requests: state backends, pools, live bridges.

``Runtime.start(settings)`` builds the in-process backends, or the Redis ones when
``VOICEGW_REDIS_URL`` is set; ``stop()`` drains live calls with a bound, then closes pools.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import httpx
import redis.asyncio as aioredis
from nacl.signing import SigningKey as NaclSigningKey
from nacl.signing import VerifyKey
from redis.exceptions import RedisError
from starlette.requests import HTTPConnection

from gateway.calls import (
    ENDED_TTL_S,
    Call,
    CallError,
    CallRegistry,
    CallState,
    CallStateError,
    InProcessCallRegistry,
    RedisCallRegistry,
    default_replica_id,
    keep_alive,
)
from gateway.compliance.evidence import verify_periodically
from gateway.compliance.rejections import RejectionLedger
from gateway.devkeys import ensure_data_dir
from gateway.errors import CloseCode, StreamRefused
from gateway.fallback import fallback_audio
from gateway.operators.sessions import AuthConfig, AuthRuntime, signing_ring
from gateway.orphans import close_orphans_periodically
from gateway.recording import RecordingWriter, delete_recording_file
from gateway.records import Store, create_store
from gateway.records.base import CallRecord
from gateway.records.privacy import RetentionPeriods, RetentionSweeper, seal_numbers
from gateway.review.inventory import watch_keys
from gateway.review.startup import check_start
from gateway.settings import Settings
from metrics.logging import load_ip_hash_key
from metrics.registry import CALLS, FAILOVERS, PROVIDER_CONNECT, PROVIDER_ERRORS
from providers.ai.config import AgentConfig, AgentOptions, Provider, ProviderOptions
from providers.ai.session import AgentSession, open_session
from providers.breakers import BreakerOpen, BreakerPolicy, BreakerRegistry
from providers.events import CallId, StreamStarted
from providers.exceptions import ConnectError
from providers.telephony.rest import CarrierRestError, TelnyxRest, TwilioRest
from security.allowlist import Allowlist, AnySource, ClientAddressResolver
from security.apikeys import KeyPolicy
from security.audit import Auditor, HashChainer
from security.crypto import BlindIndex, KeyRing, load_or_create_dev_keys
from security.exceptions import Layer, Rejection, StateUnavailable
from security.lockout import LockoutPolicy
from security.ratelimit import FallbackLimiter, InProcessLimiter, Limiter, RedisLimiter
from security.refresh import gauge_live_sessions
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

if TYPE_CHECKING:
    from gateway.media import Bridge

log = logging.getLogger("voicegw.runtime")

REDIS_TIMEOUT_S: Final = 0.5
END_RETRY_S: Final = (0.5, 5.0)
"""First and longest wait between attempts to end a call in the registry while Redis is down."""
RETENTION_INTERVAL_S: Final = 3600.0
RECORDING_KEY_USE: Final = b"voicegw recording v1"  # one of security.crypto.DERIVED_KEY_USES
DAY_S: Final = 86400.0
STREAM_NOT_OPENED: Final = "stream_not_opened"
"""The outcome of a call answered with a stream that never opened before its token expired."""
STREAM_OPEN_GRACE_S: Final = 5.0
"""How long after its token expires a call may still be connecting: a stream that spent its
token just before expiry gets this long to move the call to streaming."""
DRAIN_GRACE_S: Final = 5.0
"""How long a drain keeps answering webhooks after its last media stream ended, for the
carriers' final word on those calls (Twilio's status callback follows the stream's stop by
about a second, Telnyx's ``call.hangup`` likewise); it ends sooner once every one arrived."""
# Tasks that loop for the runtime's life (or retry until Redis returns): stop() cancels them
# rather than waiting for them to finish.
BACKGROUND_LOOPS: Final = frozenset(
    {
        "heartbeat",
        "retention",
        "end-call",
        "set-provider",
        "key-inventory",
        "audit-verify",
        "sessions-gauge",
        "orphans",
        "unopened-streams",
    }
)


def redis_client(url: str, max_connections: int, replica_id: str) -> aioredis.Redis:
    """The process's Redis client. Every operation is bounded by ``REDIS_TIMEOUT_S``; at most
    ``max_connections`` connections are open, and a burst beyond them waits (as long as one
    operation may take) for a connection to be released instead of failing at once. The
    connections are named after the replica (``CLIENT LIST`` shows whose they are)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=REDIS_TIMEOUT_S,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        health_check_interval=15,
        client_name=f"voicegw:{replica_id}",
    )
    return aioredis.Redis.from_pool(pool)


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


@dataclass(frozen=True, slots=True)
class _Durable:
    store: Store
    data_keys: KeyRing
    blind_index: BlindIndex
    auditor: Auditor
    auth: AuthRuntime


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


async def _open_durable(settings: Settings, redis: aioredis.Redis | None) -> _Durable:
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
    return _Durable(store, data_keys, blind_index, auditor, auth)


class Degradable(Protocol):
    """A Redis-backed component with an in-process fallback (rate limits, replay cache)."""

    degradation: Degradation

    @property
    def degraded(self) -> bool: ...


@dataclass(eq=False)
class Runtime:
    settings: Settings
    redis: aioredis.Redis | None
    pipeline: WebhookPipeline
    registry: CallRegistry
    stream_tokens: StreamTokens
    http: httpx.AsyncClient
    twilio_rest: TwilioRest | None
    telnyx_rest: TelnyxRest | None
    resolver: ClientAddressResolver
    allowlists: dict[str, Allowlist]
    degradable: list[Degradable]
    breakers: BreakerRegistry
    fallback: bytes
    store: Store
    data_keys: KeyRing
    blind_index: BlindIndex
    auditor: Auditor
    auth: AuthRuntime
    rejections: RejectionLedger  # webhook rejections per hour, for the compliance report
    draining: bool = False
    bridges: set[Bridge] = field(default_factory=set)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    # While draining: calls that streamed during the drain and whose carrier has not yet said
    # they are over (a terminal status callback or hang-up event).
    _unsettled: set[CallId] = field(default_factory=set)
    _settled: asyncio.Event = field(default_factory=asyncio.Event)

    # -- lifecycle ----------------------------------------------------------------------

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        client: aioredis.Redis | None = None
        degradable: list[Degradable] = []
        limiters: dict[Carrier, Limiter] = {}
        replay: ReplayCache
        tokens: StreamTokens
        registry: CallRegistry
        replica_id = default_replica_id()
        if settings.redis_url is not None:
            prefix = settings.redis_key_prefix
            client = redis_client(
                settings.redis_url.get(), settings.redis_max_connections, replica_id
            )
            for carrier in Carrier:
                limiter = FallbackLimiter(
                    RedisLimiter(client, prefix + "rl:", settings.rate_limit_per_minute),
                    InProcessLimiter(settings.rate_limit_per_minute),
                )
                limiters[carrier] = limiter
                degradable.append(limiter)
            fallback_replay = FallbackReplayCache(
                RedisReplayCache(client, prefix + "replay:"), InProcessReplayCache()
            )
            degradable.append(fallback_replay)
            replay = fallback_replay
            tokens = RedisStreamTokens(client, prefix + "st:")
            registry = RedisCallRegistry(
                client,
                prefix + "calls:",
                replica_id=replica_id,
                ended_ttl=ENDED_TTL_S,
                active_ttl=settings.call_ttl_s,
            )
            breakers = BreakerRegistry.redis(client, prefix + "breaker:", BreakerPolicy())
            degradable.append(breakers)  # /readyz: degraded while breakers run in-process
        else:
            for carrier in Carrier:
                limiters[carrier] = InProcessLimiter(settings.rate_limit_per_minute)
            replay = InProcessReplayCache()
            tokens = InProcessStreamTokens()
            registry = InProcessCallRegistry(replica_id, ended_ttl=ENDED_TTL_S)
            breakers = BreakerRegistry.in_process(BreakerPolicy())

        if registry.ended_ttl < DEFAULT_REPLAY_TTL_S:
            # A webhook of an ended call the registry forgot would start that call again.
            raise ValueError("the call registry must remember ended calls as long as replays")
        durable = await _open_durable(settings, client)
        resolver = ClientAddressResolver(settings.trusted_proxies)
        allowlists = {
            c: Allowlist(AnySource.ANY if a.any else a.networks)
            for c in settings.carriers
            for a in [settings.allowlist(c)]
        }
        twilio_policy = telnyx_policy = None
        if "twilio" in settings.carriers and settings.twilio_auth_token is not None:
            twilio_tokens = [settings.twilio_auth_token.get()]
            if settings.twilio_auth_token_secondary is not None:
                twilio_tokens.append(settings.twilio_auth_token_secondary.get())
            twilio_policy = CarrierPolicy(
                verifier=TwilioSignatureVerifier(twilio_tokens),
                allowlist=allowlists["twilio"],
                limiter=limiters[Carrier.TWILIO],
                replay=replay,
                resolver=resolver,
                freshness_s=settings.freshness_window_s,
                replay_ttl_s=DEFAULT_REPLAY_TTL_S,
            )
        if "telnyx" in settings.carriers and settings.telnyx_public_keys:
            telnyx_policy = CarrierPolicy(
                verifier=TelnyxSignatureVerifier(settings.telnyx_public_keys),
                allowlist=allowlists["telnyx"],
                limiter=limiters[Carrier.TELNYX],
                replay=replay,
                resolver=resolver,
                freshness_s=settings.freshness_window_s,
                replay_ttl_s=DEFAULT_REPLAY_TTL_S,
            )
        pipeline = WebhookPipeline(
            twilio=twilio_policy, telnyx=telnyx_policy, max_body_bytes=settings.max_body_bytes
        )
        http = httpx.AsyncClient(timeout=settings.carrier_rest_timeout_s)
        twilio_rest = (
            TwilioRest(
                settings.twilio_auth_token.get(), base_url=settings.twilio_api_url, client=http
            )
            if settings.twilio_auth_token is not None
            else None
        )
        telnyx_rest = (
            TelnyxRest(settings.telnyx_api_key.get(), base_url=settings.telnyx_api_url, client=http)
            if settings.telnyx_api_key is not None
            else None
        )
        runtime = cls(
            settings=settings,
            redis=client,
            pipeline=pipeline,
            registry=registry,
            stream_tokens=tokens,
            http=http,
            twilio_rest=twilio_rest,
            telnyx_rest=telnyx_rest,
            resolver=resolver,
            allowlists=allowlists,
            degradable=degradable,
            breakers=breakers,
            fallback=fallback_audio(settings.fallback_wav),
            store=durable.store,
            data_keys=durable.data_keys,
            blind_index=durable.blind_index,
            auditor=durable.auditor,
            auth=durable.auth,
            rejections=RejectionLedger(durable.store),
        )
        sweeper = RetentionSweeper(
            durable.store,
            RetentionPeriods(
                calls_s=settings.retention_calls_days * DAY_S,
                audit_s=settings.retention_audit_days * DAY_S,
                login_failures_s=settings.login_lockout_window_s,
            ),
            durable.auditor,
            delete_recording=delete_recording_file,
        )
        if settings.production:
            # The security review's critical failures refuse the start; warnings are logged.
            try:
                await check_start(runtime)
            except BaseException:
                await runtime.stop()
                raise
        runtime.spawn(sweeper.run(RETENTION_INTERVAL_S), "retention")
        runtime.spawn(watch_keys(runtime), "key-inventory")
        runtime.spawn(gauge_live_sessions(durable.auth.families), "sessions-gauge")
        if client is not None or settings.database_url is None:
            # The registry knows every live call of the store's writers: shared through Redis,
            # or this process alone on its SQLite file. (Replicas sharing PostgreSQL without
            # Redis cannot see each other's calls; the security review flags that set-up.)
            runtime.spawn(
                close_orphans_periodically(
                    durable.store, registry, older_than_s=settings.call_ttl_s
                ),
                "orphans",
            )
        runtime.spawn(verify_periodically(durable.store, runtime.audit_verify_keys), "audit-verify")
        for provider in settings.providers:
            breakers.get(provider)  # listed in /readyz from the start
        runtime.spawn(keep_alive(registry, on_error=runtime._heartbeat_failed), "heartbeat")
        runtime.spawn(runtime._end_unopened_streams_periodically(), "unopened-streams")
        log.info(
            "gateway started",
            extra={
                "env": settings.env.value,
                "state": "redis" if client else "in-process",
                "providers": ",".join(settings.providers),
            },
        )
        return runtime

    async def drain(self, cut_short: Callable[[], bool] = lambda: False) -> None:
        """Stop taking new calls; let live ones end within ``VOICEGW_DRAIN_SECONDS`` (or until
        ``cut_short()``), then end the rest cleanly: carrier told, provider closed, call ended.
        Then keep answering those calls' webhooks for up to ``DRAIN_GRACE_S``, until the
        carrier's last word on each has arrived (new calls are still refused meanwhile)."""
        if not self.draining:
            self.draining = True
            self._unsettled = {bridge.call.call_id for bridge in self.bridges}
        if self.bridges:
            log.info("draining", extra={"live_calls": len(self.bridges)})
            deadline = asyncio.get_running_loop().time() + self.settings.drain_s
            await self._wait_until(self._idle, deadline, cut_short)
        from gateway.media import EndReason

        for bridge in list(self.bridges):
            bridge.stop(EndReason.DRAINING)
        if self.bridges:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._idle.wait()
        if self._unsettled and not cut_short():
            deadline = asyncio.get_running_loop().time() + DRAIN_GRACE_S
            await self._wait_until(self._settled, deadline, cut_short)

    @staticmethod
    async def _wait_until(
        event: asyncio.Event, deadline: float, cut_short: Callable[[], bool]
    ) -> None:
        """Wait for ``event`` until the loop time ``deadline``, or ``cut_short()`` (polled)."""
        while not event.is_set() and not cut_short():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.5)):
                    await event.wait()

    async def stop(self) -> None:
        """End live calls (if ``drain`` did not), wait for background work, close pools."""
        await self.drain(lambda: True)
        for task in self._tasks:
            if task.get_name() in BACKGROUND_LOOPS:
                task.cancel()
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.carrier_rest_timeout_s):
                    await asyncio.gather(*self._tasks, return_exceptions=True)
            for task in self._tasks:
                task.cancel()
        await self.http.aclose()
        # Flood summaries still pending, and a signed checkpoint over the chain's head.
        await self.rejections.close()
        await self.auditor.flush()
        await self.auditor.checkpoint()
        await self.store.close()
        if self.redis is not None:
            await self.redis.aclose()

    def add_bridge(self, bridge: Bridge) -> None:
        self.bridges.add(bridge)
        self._idle.clear()
        if self.draining:  # a call answered just before the drain: its webhooks are awaited too
            self._unsettled.add(bridge.call.call_id)
            self._settled.clear()

    def remove_bridge(self, bridge: Bridge) -> None:
        self.bridges.discard(bridge)
        if not self.bridges:
            self._idle.set()

    def audit_verify_keys(self) -> list[VerifyKey]:
        """Public keys of the session signing ring: checkpoints are signed with them."""
        return [VerifyKey(key.public_raw) for key in self.auth.tokens.ring.keys()]

    def _heartbeat_failed(self, exc: Exception) -> None:
        log.warning("call registry heartbeat failed", extra={"error": type(exc).__name__})

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """Run ``coro`` in the background, tracked so shutdown can wait for it."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def readiness(self) -> dict[str, Any]:
        report: dict[str, Any] = {"ready": not self.draining, "draining": self.draining}
        if self.redis is not None:
            try:
                async with asyncio.timeout(REDIS_TIMEOUT_S * 2):
                    await self.redis.ping()
                report["redis"] = "ok"
            except Exception:
                report["redis"] = "unreachable"
                report["ready"] = False
            else:
                # Redis answers: components on their fallback return to it now rather than at
                # their next use, so "degraded" clears without waiting for traffic.
                for component in self.degradable:
                    component.degradation.primary_succeeded()
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S * 2):
                report["store"] = "ok" if await self.store.ping() else "unreachable"
        except Exception:
            report["store"] = "unreachable"
        if report["store"] != "ok":
            report["ready"] = False
        report["degraded"] = report.get("redis") == "unreachable" or any(
            d.degraded for d in self.degradable
        )
        now = time.time()
        report["providers"] = {
            snap.name: {
                "state": snap.state.name.lower(),
                "last_failure": snap.last_failure,
                "since_last_success_s": None
                if snap.last_success_at is None
                else round(now - snap.last_success_at, 1),
            }
            for snap in await self.breakers.snapshots()
        }
        report["live_calls"] = len(self.bridges)
        return report

    # -- HTTP helpers -----------------------------------------------------------------------

    def client_address(self, conn: HTTPConnection) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The client's address: socket peer, or X-Forwarded-For through trusted proxies."""
        peer = conn.client.host if conn.client else ""
        return self.resolver.resolve(peer, conn.headers.getlist("x-forwarded-for"))

    def is_loopback_client(self, conn: HTTPConnection) -> bool:
        """Whether the client is this host. A request an undeclared reverse proxy on this host
        forwarded (loopback peer, X-Forwarded-For, loopback not a trusted proxy) is not: its
        client is somewhere behind that proxy."""
        try:
            address = self.client_address(conn)
        except Rejection:
            return False
        peer = conn.client.host if conn.client else ""
        forwarded = conn.headers.getlist("x-forwarded-for")
        return address.is_loopback and not self.resolver.forwarded_by_untrusted_loopback(
            peer, forwarded
        )

    def check_media_upgrade(self, carrier: str, conn: HTTPConnection) -> None:
        """Allowlist, and for Twilio the signature of the upgrade request over its per-call
        URL (``/media/twilio/{call}``: a path without a call is refused). Raises Rejection."""
        allowlist = self.allowlists.get(carrier)
        if allowlist is None:
            raise Rejection(Layer.REQUEST, "carrier not enabled", 404)
        if carrier == "twilio":
            if not conn.path_params.get("call"):
                raise Rejection(Layer.REQUEST, "no call in the stream path", 404)
            url = self.settings.public_ws_url + conn.url.path
            if conn.url.query:
                url += "?" + conn.url.query
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in conn.headers.raw]
            peer = conn.client.host if conn.client else ""
            self.pipeline.check_twilio_media_upgrade(url, headers, peer)
        else:
            allowlist.check(self.client_address(conn))

    # -- calls ----------------------------------------------------------------------------

    async def claim_stream(
        self, carrier: str, started: StreamStarted, path_call: str | None = None
    ) -> Call:
        """Consume the stream token bound to this call and mark the call streaming.

        ``path_call``: the call id the stream URL names (Twilio's, whose upgrade signature
        covers it); a stream whose ``start`` is for another call is refused before its token
        is spent. Raises StreamRefused; while shared state is down, with TRY_AGAIN_LATER
        (tokens fail closed)."""
        token = started.auth_token or ""
        try:
            call = None
            if path_call is not None:
                call = await self.registry.by_carrier_id(carrier, started.call_id)
                if call is None or call.call_id != path_call:
                    raise StreamRefused(CloseCode.POLICY_VIOLATION, "stream path of another call")
            if not await self.stream_tokens.consume(token, f"{carrier}:{started.call_id}"):
                raise StreamRefused(CloseCode.POLICY_VIOLATION, "invalid stream token")
            if call is None:
                call = await self.registry.by_carrier_id(carrier, started.call_id)
            if call is None or call.state is not CallState.CONNECTING:
                raise StreamRefused(CloseCode.POLICY_VIOLATION, "call not awaiting a stream")
            return await self.registry.transition(call.call_id, CallState.STREAMING)
        except CallError:
            # Ended meanwhile (a hang-up, or its stream was given up on): nothing to stream.
            raise StreamRefused(CloseCode.POLICY_VIOLATION, "call not awaiting a stream") from None
        except (StateUnavailable, RedisError, OSError, TimeoutError):
            raise StreamRefused(CloseCode.TRY_AGAIN_LATER, "shared state unavailable") from None

    async def end_unopened_streams(self, now: float | None = None) -> list[Call]:
        """End every call still connecting once its stream token has expired (plus
        ``STREAM_OPEN_GRACE_S``): registry ended, durable record closed, carrier told to hang
        up; returns the calls ended. ``now`` is Unix seconds.

        Any replica may run it for every call: the registry's compare-and-set lets exactly one
        end each call, so a call outlives neither the replica that answered it nor its token.
        (A holder that dies first takes its calls with it: the registry expires them after
        ``VOICEGW_CALL_TTL_S`` and the orphan closer completes their records.)"""
        now = time.time() if now is None else now
        cutoff = now - self.settings.stream_token_ttl_s - STREAM_OPEN_GRACE_S
        ended: list[Call] = []
        for call in await self.registry.list_active():
            if call.state is not CallState.CONNECTING or call.updated_at > cutoff:
                continue
            try:
                done = await self.registry.transition(
                    call.call_id, CallState.ENDED, reason=STREAM_NOT_OPENED
                )
            except CallError:  # streaming by now, or ended by someone else first
                continue
            log.warning("stream never opened: call ended", extra={"call_id": call.call_id})
            await self.close_call_record(done, STREAM_NOT_OPENED, (), 0)
            self.hang_up_carrier(done, done.account_id)
            ended.append(done)
        return ended

    async def _end_unopened_streams_periodically(self) -> None:
        """``end_unopened_streams`` a few times per token lifetime (at least every 30 s), so a
        call is ended at most about a quarter of that lifetime late."""
        interval = min(30.0, max(1.0, self.settings.stream_token_ttl_s / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.end_unopened_streams()
            except (StateUnavailable, RedisError, OSError, TimeoutError, CallError) as exc:
                log.warning("unopened streams not checked", extra={"error": type(exc).__name__})

    def agent_config(self, provider: str, *, greet: bool = True) -> AgentConfig:
        """How to open ``provider`` for a call. ``greet=False`` leaves the greeting out: a call
        that moves to another provider mid-call has been greeted already."""
        s = self.settings
        key, url = {
            "openai": (s.openai_api_key, s.openai_realtime_url),
            "deepgram": (s.deepgram_api_key, s.deepgram_agent_url),
            "gemini": (s.gemini_api_key, s.gemini_live_url),
            "echo": (None, None),
        }[provider]
        options = AgentOptions(
            instructions=s.agent_instructions,
            greeting=s.agent_greeting if greet else None,
            providers={
                Provider.OPENAI: ProviderOptions(s.openai_model, s.openai_voice),
                Provider.DEEPGRAM: ProviderOptions(s.deepgram_think_model, s.deepgram_voice),
                Provider.GEMINI: ProviderOptions(s.gemini_model, s.gemini_voice),
            },
        )
        return AgentConfig.for_provider(
            provider,
            api_key=key,
            url=url,
            options=options,
            connect_timeout_s=s.provider_connect_timeout_s,
        )

    async def open_agent(self, call: Call, *, after: str | None = None) -> AgentSession | None:
        """Connect the call to a provider: its current one, or the one after ``after``, moving
        down ``VOICEGW_PROVIDERS`` past providers whose breaker is open or that fail to
        connect. Returns None when none is left."""
        order = list(self.settings.providers)
        if after is not None:
            # The providers after the failed one, then the ones before it; never itself.
            start = order.index(after) + 1 if after in order else 0
            candidates = [p for p in order[start:] + order[:start] if p != after]
        else:
            start = order.index(call.provider) if call.provider in order else 0
            candidates = order[start:] + order[:start]
        for provider in candidates:
            breaker = self.breakers.get(provider)
            try:
                trial = await breaker.acquire()
            except BreakerOpen:
                continue
            session = open_session(self.agent_config(provider, greet=after is None))
            began = time.perf_counter()
            try:
                await session.connect()
            except ConnectError as exc:
                await trial.fail(type(exc).__name__)
                PROVIDER_ERRORS.labels(provider, "connect").inc()
                log.warning(
                    "provider connect failed",
                    extra={"provider": provider, "error": type(exc).__name__},
                )
                await session.close()
                continue
            except BaseException:
                await trial.release()
                await session.close()
                raise
            await trial.succeed()
            PROVIDER_CONNECT.labels(provider).observe(time.perf_counter() - began)
            if provider != call.provider:
                if after is None:  # moved at set-up; the Bridge counts mid-call moves
                    FAILOVERS.labels(call.provider, provider).inc()
                await self._set_provider(call, provider)
            return session
        return None

    async def _set_provider(self, call: Call, provider: str) -> None:
        """Record the call's new provider in the registry. While shared state is down the call
        goes on with its new provider and the registry is updated once Redis answers."""
        try:
            await self.registry.set_provider(call.call_id, provider)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning(
                "call's provider not updated in the registry yet",
                extra={"call_id": call.call_id, "error": type(exc).__name__},
            )
            self.spawn(
                self._when_registry_answers(
                    call, lambda: self.registry.set_provider(call.call_id, provider)
                ),
                "set-provider",
            )

    async def provider_failed(self, provider: str, error: str) -> None:
        """A live session of ``provider`` died mid-call: count it against its breaker."""
        await self.breakers.get(provider).record_failure(error)

    def recording_allowed(self, consent: bool) -> bool:
        """Whether a new call is recorded: recording on, and consent given for this call (or
        the configured rule records every call)."""
        s = self.settings
        return s.recording and (s.recording_consent == "all" or consent)

    def recording_path(self, call: Call) -> Path:
        # Call ids are "call_" + token_urlsafe: safe as a file name, no path traversal.
        return self.settings.data_dir / "recordings" / f"{call.call_id}.vgwrec"

    async def open_recording(self, call: Call) -> RecordingWriter | None:
        """A writer for this call's recording, or None when it is not to be recorded."""
        if not self.settings.recording:
            return None
        record = await self.store.get_call(call.call_id)
        if record is None or record.recording_path is None:
            return None
        key_id = self.data_keys.active_key_id
        key = self.data_keys.derive(key_id, RECORDING_KEY_USE)
        return RecordingWriter(Path(record.recording_path), key, key_id, call.call_id)

    async def record_call(
        self, call: Call, *, from_number: str | None, to_number: str | None, record: bool = False
    ) -> None:
        """Write the durable record of a new call; its numbers encrypted and blind-indexed.
        ``record``: the call will be recorded (consent checked by the caller)."""
        sealed = seal_numbers(
            self.data_keys,
            self.blind_index,
            call_id=call.call_id,
            from_number=from_number,
            to_number=to_number,
        )
        durable = CallRecord(
            call_id=call.call_id,
            carrier=call.carrier,
            carrier_call_id=call.carrier_call_id,
            started_at=call.created_at,
            providers=(call.provider,),
            recording_path=str(self.recording_path(call)) if record else None,
            **sealed.fields(),
        )
        try:
            await self.store.put_call(durable)
        except Exception as exc:  # the call goes on; the gap is logged
            log.error(
                "call record not written",
                extra={"call_id": call.call_id, "error": type(exc).__name__},
            )

    async def close_call_record(
        self, call: Call, outcome: str, providers: tuple[str, ...], failovers: int
    ) -> None:
        """Complete the durable record of an ended call."""
        try:
            record = await self.store.get_call(call.call_id)
            if record is None:
                return
            merged = tuple(dict.fromkeys(record.providers + providers))
            await self.store.put_call(
                dataclasses.replace(
                    record,
                    ended_at=time.time(),
                    outcome=outcome,
                    providers=merged,
                    failovers=record.failovers + failovers,
                )
            )
        except Exception as exc:
            log.error(
                "call record not completed",
                extra={"call_id": call.call_id, "error": type(exc).__name__},
            )

    async def end_call(self, call: Call, reason: str) -> None:
        current = await self.registry.get(call.call_id)
        if current is not None and current.state is not CallState.ENDED:
            # Another request (a duplicate hang-up, the bridge) may end it first.
            with contextlib.suppress(CallStateError):
                await self.registry.transition(call.call_id, CallState.ENDED, reason=reason)

    async def end_call_eventually(self, call: Call, reason: str) -> None:
        """``end_call`` for a call whose media has ended; never raises. While shared state is
        down the registry is updated in the background once Redis answers again, so the call
        is not kept alive by this replica's heartbeat as a ghost (until then it is still
        listed; if this process dies first, the registry's TTL ends it)."""
        try:
            await self.end_call(call, reason)
        except (RedisError, OSError, TimeoutError, CallError) as exc:
            log.warning(
                "call not ended in the registry yet",
                extra={"call_id": call.call_id, "error": type(exc).__name__},
            )
            self.spawn(
                self._when_registry_answers(call, lambda: self.end_call(call, reason)), "end-call"
            )

    async def _when_registry_answers(
        self, call: Call, update: Callable[[], Awaitable[object]]
    ) -> None:
        """Retry a registry ``update`` that failed while shared state was down, backing off
        from ``END_RETRY_S[0]`` to ``END_RETRY_S[1]``, until it succeeds or is moot."""
        delay, longest = END_RETRY_S
        while True:
            await asyncio.sleep(delay)
            try:
                await update()
            except (RedisError, OSError, TimeoutError):
                delay = min(delay * 2, longest)
            except CallError as exc:
                # Moot now: the call has ended or its record expired (an outage longer than
                # VOICEGW_CALL_TTL_S). Nothing left to update.
                log.info(
                    "call registry update dropped",
                    extra={"call_id": call.call_id, "error": type(exc).__name__},
                )
                return
            else:
                log.info("call registry updated", extra={"call_id": call.call_id})
                return

    def stop_bridge(self, call: Call) -> None:
        """The carrier says the call is over: end its bridge; a drain stops waiting for it."""
        from gateway.media import EndReason

        for bridge in list(self.bridges):
            if bridge.call.call_id == call.call_id:
                bridge.stop(EndReason.CARRIER_HANGUP)
        if call.call_id in self._unsettled:
            self._unsettled.discard(call.call_id)
            if not self._unsettled:
                self._settled.set()

    async def carrier_rest(
        self, carrier: str, what: str, action: Callable[[], Awaitable[object]]
    ) -> bool:
        """Run one carrier REST call through that carrier API's breaker. Failures are logged
        (never raised); returns whether it succeeded."""
        try:
            async with self.breakers.get(f"{carrier}-api").trial():
                await action()  # the client's own timeout fires inside the trial: a failure
        except BreakerOpen:
            log.warning("carrier API breaker open", extra={"carrier": carrier, "action": what})
            return False
        except (CarrierRestError, httpx.HTTPError) as exc:
            log.warning(
                "carrier REST call failed",
                extra={"carrier": carrier, "action": what, "error": type(exc).__name__},
            )
            return False
        return True

    def hang_up_carrier(self, call: Call, account_id: str | None) -> None:
        """Hang up the phone call over the carrier's REST API, in the background.
        ``account_id`` is Twilio's AccountSid (from the stream's ``start``)."""
        sid = call.carrier_call_id
        if call.carrier == "twilio" and self.twilio_rest is not None and account_id:
            twilio = self.twilio_rest
            self.spawn(
                self.carrier_rest("twilio", "hangup", lambda: twilio.hangup(account_id, sid)),
                "hangup",
            )
        elif call.carrier == "telnyx" and self.telnyx_rest is not None:
            telnyx = self.telnyx_rest
            self.spawn(self.carrier_rest("telnyx", "hangup", lambda: telnyx.hangup(sid)), "hangup")

    def answer_telnyx(self, call: Call, call_control_id: str) -> None:
        """Answer a Telnyx call, in the background; streaming starts on ``call.answered``."""
        rest = self._telnyx()
        if rest is None:
            return

        async def answer() -> None:
            if not await self.carrier_rest(
                "telnyx", "answer", lambda: rest.answer(call_control_id)
            ):
                # Never answered: nothing to hang up, but the record closes now, not when a
                # restart finds it open.
                await self.end_unbridged(call, "answer_failed", hang_up=False, retry=True)

        self.spawn(answer(), "telnyx-answer")

    def stream_telnyx(self, call: Call, call_control_id: str, token: str) -> None:
        """Start the bidirectional media stream of an answered Telnyx call, in the background."""
        rest = self._telnyx()
        if rest is None:
            return
        url = self.settings.public_ws_url + "/media/telnyx"

        async def start() -> None:
            started = await self.carrier_rest(
                "telnyx",
                "streaming_start",
                lambda: rest.start_streaming(
                    call_control_id, stream_url=url, stream_auth_token=token
                ),
            )
            if not started:
                await self.end_unbridged(call, "stream_failed", hang_up=True, retry=True)

        self.spawn(start(), "telnyx-stream")

    async def end_unbridged(
        self, call: Call, outcome: str, *, hang_up: bool, retry: bool = False
    ) -> bool:
        """End a call that has no Bridge on this replica (its answer or stream failed, its
        codec cannot be carried): ended in the registry with ``outcome``, hung up over REST
        when ``hang_up``, counted in ``voicegw_calls_total`` and its record closed with
        ``outcome``. Returns False, doing nothing, when the call had already ended: whoever
        ended it told the carrier and wrote the outcome.

        While shared state is down this raises (the webhook's carrier retries it), or with
        ``retry`` ends the call anyway and updates the registry once Redis answers.
        """
        try:
            await self.registry.transition(call.call_id, CallState.ENDED, reason=outcome)
        except CallStateError:
            return False
        except (RedisError, OSError, TimeoutError, CallError) as exc:
            if not retry:
                raise
            log.warning(
                "call not ended in the registry yet",
                extra={"call_id": call.call_id, "error": type(exc).__name__},
            )
            self.spawn(
                self._when_registry_answers(call, lambda: self.end_call(call, outcome)),
                "end-call",
            )
        if hang_up:
            self.hang_up_carrier(call, None)
        CALLS.labels(call.carrier, "none", outcome).inc()
        await self.close_call_record(call, outcome, (), 0)
        log.info("call ended", extra={"call_id": call.call_id, "reason": outcome})
        return True

    def stop_stream(self, call: Call, outcome: str) -> bool:
        """Stop this replica's Bridge of ``call`` with ``outcome`` (an ``EndReason`` value):
        it closes the stream, hangs up the line and records the outcome. Returns whether
        this replica bridges the call."""
        from gateway.media import EndReason

        found = False
        for bridge in list(self.bridges):
            if bridge.call.call_id == call.call_id:
                bridge.stop(EndReason(outcome))
                found = True
        return found

    def _telnyx(self) -> TelnyxRest | None:
        if self.telnyx_rest is None:
            log.warning("telnyx call not handled: VOICEGW_TELNYX_API_KEY is not set")
        return self.telnyx_rest
