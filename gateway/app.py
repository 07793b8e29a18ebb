"""The composition root: ``start_runtime`` builds every service from ``Settings`` (the one
wiring function) and owns the start-up and shutdown order; ``build_app`` mounts the routes and
middleware and runs the runtime in the application's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Final

from nacl.signing import VerifyKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute

from gateway.agents.directory import audit_agents_file, check_endpoints, open_directory
from gateway.agents.http_tools import parse_tool_secrets
from gateway.agents.tools import ToolRunner
from gateway.calls import telnyx, twilio
from gateway.calls.commands import CallCommands
from gateway.calls.control import CallControl
from gateway.calls.dialcaps import FallbackDialCaps, build_dial_caps
from gateway.calls.orphans import close_orphans_periodically
from gateway.calls.outbound import OutboundCalls
from gateway.calls.records import CallRecords
from gateway.calls.registry import default_replica_id, keep_alive
from gateway.calls.transcripts import TranscriptLog
from gateway.calls.unopened import UnopenedStreams
from gateway.compliance.evidence import verify_periodically
from gateway.compliance.rejections import RejectionLedger
from gateway.events.outbox import OutboxStore, delete_delivered_events
from gateway.events.wiring import build_events
from gateway.http.clients import ClientAddresses
from gateway.http.errors import json_error
from gateway.http.health import healthz, metrics_endpoint, readyz
from gateway.http.middleware import HttpMiddleware
from gateway.lifecycle import Lifecycle
from gateway.media import endpoints
from gateway.media.admission import StreamAdmission
from gateway.media.dialer import AgentDialer
from gateway.media.fallback import fallback_audio
from gateway.media.recorder import Recorder
from gateway.media.recording import delete_recording_file
from gateway.media.tools import ToolServices
from gateway.operators import agents as agents_api
from gateway.operators import api, calls_api, console, deliveries, outbound_api
from gateway.operators.middleware import middleware as security_middleware
from gateway.operators.routes import routes as auth_routes
from gateway.records.privacy import RetentionPeriods, RetentionSweeper
from gateway.review import api as review_api
from gateway.review.inventory import watch_keys
from gateway.review.startup import check_start
from gateway.runtime import Runtime
from gateway.services import (
    DAY_S,
    Durable,
    SharedState,
    carrier_allowlists,
    commands_client,
    redis_client,
    warm_up,
    webhook_pipeline,
)
from gateway.settings import Settings, SettingsError
from metrics.registry import BUILD_INFO
from security.allowlist import ClientAddressResolver
from security.refresh import gauge_live_sessions

log = logging.getLogger("voicegw.runtime")

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
RETENTION_INTERVAL_S: Final = 3600.0

ROUTES: list[Route | WebSocketRoute] = [
    Route("/healthz", healthz, methods=["GET", "HEAD"]),
    Route("/readyz", readyz, methods=["GET", "HEAD"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
    Route("/webhooks/twilio/voice", twilio.twilio_voice, methods=ALL_METHODS),
    Route("/webhooks/twilio/status", twilio.twilio_status, methods=ALL_METHODS),
    Route("/webhooks/telnyx", telnyx.telnyx, methods=ALL_METHODS),
    WebSocketRoute("/media/twilio", endpoints.twilio_stream),  # no call: refused with 1008
    WebSocketRoute("/media/twilio/{call}", endpoints.twilio_stream),
    WebSocketRoute("/media/telnyx", endpoints.telnyx_stream),
    *auth_routes(),
    *api.routes(),
    *agents_api.routes(),
    *calls_api.routes(),
    *outbound_api.routes(),
    *deliveries.routes(),
    *review_api.routes(),
    *console.routes(),
]


async def start_runtime(settings: Settings) -> Runtime:
    """Build every service ``settings`` describe: the in-process state backends, or the Redis
    ones when ``VOICEGW_REDIS_URL`` is set; the store, keys and audit trail; the services of
    calls and media. Then start the background loops. ``Runtime.stop`` undoes it in order."""
    # First, before any pool opens: an agents file with problems refuses the start.
    agents = await asyncio.to_thread(open_directory, settings)  # it imports tool handlers
    if settings.production:  # tool and event endpoints resolving to refused addresses
        await check_endpoints(settings, agents.book)
    replica_id = default_replica_id()
    redis = None
    if settings.redis_url is not None:
        redis = redis_client(
            settings.redis_url.get(),
            settings.redis_max_connections,
            replica_id,
            mode=settings.redis_mode,
        )
        await warm_up(redis)
    state = SharedState.build(settings, redis, replica_id)
    durable = await Durable.open(settings, redis)
    lifecycle = Lifecycle(drain_s=settings.drain_s, task_grace_s=settings.carrier_rest_timeout_s)
    tasks = lifecycle.tasks
    clients = ClientAddresses(ClientAddressResolver(settings.trusted_proxies))
    allowlists = carrier_allowlists(settings)
    pipeline = webhook_pipeline(settings, state, clients.resolver, allowlists)
    recorder = Recorder(
        enabled=settings.recording,
        consent=settings.recording_consent,
        directory=settings.data_dir / "recordings",
        store=durable.store,
        data_keys=durable.data_keys,
    )
    # Call events to the customer (VOICEGW_EVENTS_URL): written to the store's outbox with
    # the call, delivered by the dispatcher; one breaker for the endpoint, beside the tools'.
    call_events, dispatcher = build_events(settings, durable.store, state.tool_breakers)
    transcripts = TranscriptLog(store=durable.store, data_keys=durable.data_keys)
    dial_caps = build_dial_caps(redis, settings.redis_key_prefix)
    if isinstance(dial_caps, FallbackDialCaps):
        state.degradable.append(dial_caps)  # /readyz: degraded while caps run in-process
    records = CallRecords(
        store=durable.store,
        data_keys=durable.data_keys,
        blind_index=durable.blind_index,
        registry=state.registry,
        tasks=tasks,
        recording_path=recorder.path,
        events=call_events,
        transcripts=transcripts,
        usage=dial_caps,
    )
    control = CallControl.build(
        settings, breakers=state.breakers, registry=state.registry, records=records, tasks=tasks
    )
    commands = CallCommands(
        bridges=lifecycle,
        control=control,
        replica_id=state.registry.replica_id,
        redis=None
        if settings.redis_url is None
        else commands_client(settings.redis_url.get(), mode=settings.redis_mode),
        prefix=settings.redis_key_prefix,
    )
    runner = ToolRunner(
        secrets=parse_tool_secrets(settings.tools_secrets.get()) if settings.tools_secrets else [],
        breakers=state.tool_breakers,
        production=settings.production,
        egress=settings.egress,
    )
    runtime = Runtime(
        settings=settings,
        redis=redis,
        lifecycle=lifecycle,
        registry=state.registry,
        stream_tokens=state.stream_tokens,
        breakers=state.breakers,
        degradable=state.degradable,
        pipeline=pipeline,
        clients=clients,
        rejections=RejectionLedger(durable.store),
        records=records,
        control=control,
        unopened=UnopenedStreams(
            registry=state.registry,
            records=records,
            control=control,
            token_ttl_s=settings.stream_token_ttl_s,
        ),
        outbound=OutboundCalls(
            settings=settings,
            registry=state.registry,
            stream_tokens=state.stream_tokens,
            breakers=state.breakers,
            control=control,
            records=records,
            agents=agents,
            recorder=recorder,
            lifecycle=lifecycle,
            caps=dial_caps,
        ),
        admission=StreamAdmission(
            public_ws_url=settings.public_ws_url,
            allowlists=allowlists,
            pipeline=pipeline,
            clients=clients,
            registry=state.registry,
            stream_tokens=state.stream_tokens,
        ),
        dialer=AgentDialer(settings, breakers=state.breakers, registry=state.registry, tasks=tasks),
        recorder=recorder,
        fallback=fallback_audio(settings.fallback_wav),
        commands=commands,
        agents=agents,
        tools=ToolServices(
            runner=runner,
            transfers=control,
            auditor=durable.auditor,
            caller_number=records.caller_number,
        ),
        transcripts=transcripts,
        event_dispatcher=dispatcher,
        store=durable.store,
        data_keys=durable.data_keys,
        blind_index=durable.blind_index,
        auditor=durable.auditor,
        auth=durable.auth,
    )
    # Shutdown, after live calls and background work: pending flood summaries and a signed
    # checkpoint over the audit chain's head, then the pools.
    lifecycle.at_stop(
        *(() if dispatcher is None else (dispatcher.stop,)),
        control.aclose,
        runner.aclose,
        runtime.rejections.close,
        durable.auditor.flush,
        durable.auditor.checkpoint,
        durable.store.close,
    )
    if redis is not None:
        lifecycle.at_stop(redis.aclose)
    if commands.redis is not None:
        lifecycle.at_stop(commands.redis.aclose)
    if settings.production:
        # The security review's critical failures refuse the start; warnings are logged.
        try:
            await check_start(runtime)
        except BaseException:
            await runtime.stop()
            raise
    if agents.from_file:
        await audit_agents_file(durable.auditor, agents, None, via="start")
    _start_loops(runtime)
    log.info(
        "gateway started",
        extra={
            "env": settings.env.value,
            "state": "redis" if redis else "in-process",
            "providers": ",".join(settings.providers),
        },
    )
    return runtime


def _start_loops(runtime: Runtime) -> None:
    """The runtime's background loops (``gateway.lifecycle.BACKGROUND_LOOPS``)."""
    settings, spawn = runtime.settings, runtime.lifecycle.tasks.spawn
    sweeper = RetentionSweeper(
        runtime.store,
        RetentionPeriods(
            calls_s=settings.retention_calls_days * DAY_S,
            audit_s=settings.retention_audit_days * DAY_S,
            login_failures_s=settings.login_lockout_window_s,
            transcripts_s=settings.retention_transcripts_days * DAY_S,
        ),
        runtime.auditor,
        delete_recording=delete_recording_file,
    )
    spawn(sweeper.run(RETENTION_INTERVAL_S), "retention")
    spawn(watch_keys(runtime), "key-inventory")
    spawn(gauge_live_sessions(runtime.auth.families), "sessions-gauge")
    if runtime.redis is not None or settings.database_url is None:
        # The registry knows every live call of the store's writers: shared through Redis,
        # or this process alone on its SQLite file. (Replicas sharing PostgreSQL without
        # Redis cannot see each other's calls; the security review flags that set-up.)
        spawn(
            close_orphans_periodically(
                runtime.store, runtime.registry, older_than_s=settings.call_ttl_s
            ),
            "orphans",
        )
    spawn(verify_periodically(runtime.store, lambda: _audit_verify_keys(runtime)), "audit-verify")
    for provider in settings.providers:
        runtime.breakers.get(provider)  # listed in /readyz from the start
    spawn(keep_alive(runtime.registry, on_error=_heartbeat_failed), "heartbeat")
    spawn(runtime.unopened.run(), "unopened-streams")
    spawn(runtime.commands.run(), "call-commands")
    if runtime.event_dispatcher is not None:
        runtime.event_dispatcher.start()
        spawn(
            forget_delivered_events(runtime.store, settings.retention_calls_days * DAY_S),
            "events-retention",
        )


async def forget_delivered_events(store: OutboxStore, older_than_s: float) -> None:
    """Delete delivered call events once they are as old as call records may be, hourly."""
    while True:
        try:
            await delete_delivered_events(store, older_than_s=older_than_s, now=time.time())
        except Exception as exc:  # the next round tries again
            log.warning("delivered events not deleted", extra={"error": type(exc).__name__})
        await asyncio.sleep(RETENTION_INTERVAL_S)


def _audit_verify_keys(runtime: Runtime) -> list[VerifyKey]:
    """Public keys of the session signing ring: checkpoints are signed with them."""
    return [VerifyKey(key.public_raw) for key in runtime.auth.tokens.ring.keys()]


def _heartbeat_failed(exc: Exception) -> None:
    log.warning("call registry heartbeat failed", extra={"error": type(exc).__name__})


async def _not_found(request: Request, exc: Exception) -> Response:
    return json_error(404, "not found")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    allow = getattr(exc, "headers", None) or {}
    return json_error(405, "method not allowed", allow)


def build_app(settings: Settings) -> Starlette:
    """The application for ``settings``; pools start in the lifespan, not here."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            runtime = await start_runtime(settings)
        except SettingsError as exc:  # the security review refused: `voicegw serve` says why
            app.state.start_refused = str(exc)
            raise
        app.state.runtime = runtime
        try:
            yield
        finally:
            await runtime.stop()

    BUILD_INFO.info({"version": _version()})
    app = Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers={404: _not_found, 405: _method_not_allowed},
    )
    # Starlette's trailing-slash redirect builds an absolute Location from the Host header;
    # a path that differs by a slash is a 404 (/console redirects itself, relatively).
    app.router.redirect_slashes = False
    app.add_middleware(HttpMiddleware, templates={r.endpoint: r.path for r in ROUTES})
    for m in reversed(
        security_middleware(production=settings.production, cors_origins=settings.cors_origins)
    ):
        app.add_middleware(m.cls, *m.args, **m.kwargs)  # security headers end up outermost
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("voicegw")
    except PackageNotFoundError:
        return "0+unknown"
