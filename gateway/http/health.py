"""The gateway's own routes: liveness (``/healthz``), readiness (``/readyz``) and ``/metrics``.

Ready or not is for anyone (orchestrators probe from outside); the detail of readiness and the
metrics only for whoever may read the gateway's internals: with ``VOICEGW_METRICS_TOKEN`` set,
its bearer token; without, a client on this host.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.http.errors import json_error
from gateway.http.workers import current as current_worker
from gateway.runtime import Runtime
from gateway.services import REDIS_TIMEOUT_S
from metrics.registry import exposition


async def readiness(runtime: Runtime) -> dict[str, Any]:
    """The readiness report: draining or not, Redis, the store, degraded components, each
    provider's breaker, live calls, the agent profiles, the worker count and which worker
    answered."""
    draining = runtime.lifecycle.draining
    report: dict[str, Any] = {"ready": not draining, "draining": draining}
    if runtime.redis is not None:
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S * 2):
                await runtime.redis.ping()
            report["redis"] = "ok"
        except Exception:
            report["redis"] = "unreachable"
            report["ready"] = False
        else:
            # Redis answers: components on their fallback return to it now rather than at
            # their next use, so "degraded" clears without waiting for traffic.
            for component in runtime.degradable:
                component.degradation.primary_succeeded()
    try:
        async with asyncio.timeout(REDIS_TIMEOUT_S * 2):
            report["store"] = "ok" if await runtime.store.ping() else "unreachable"
    except Exception:
        report["store"] = "unreachable"
    if report["store"] != "ok":
        report["ready"] = False
    report["degraded"] = report.get("redis") == "unreachable" or any(
        d.degraded for d in runtime.degradable
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
        for snap in await runtime.breakers.snapshots()
    }
    report["live_calls"] = len(runtime.lifecycle)  # this worker's
    # Under ``--workers N``: how many, and which one answered (its index and pid).
    worker = current_worker()
    report["workers"] = worker.count
    report["worker"] = {"index": worker.index, "pid": os.getpid()}
    # Where the agent profiles come from, and whether the last reload was refused (the old
    # profiles still serve: ready, but an operator should look).
    report["agents"] = runtime.agents.state()
    return report


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz(request: Request) -> Response:
    """Ready or not (the status code and ``ready``) for anyone: orchestrators probe from
    outside. The detail (providers, breaker states, failure classes, live calls, Redis and
    store) only for whoever may read ``/metrics``."""
    runtime: Runtime = request.app.state.runtime
    report = await readiness(runtime)
    status = 200 if report["ready"] else 503
    if _internals_refused(request) is not None:
        report = {"ready": report["ready"]}
    return Response(orjson.dumps(report), status_code=status, media_type="application/json")


def _internals_refused(request: Request) -> Response | None:
    """The refusal for a request that may not read the gateway's internals (``/metrics``, the
    detail of ``/readyz``), or None: with ``VOICEGW_METRICS_TOKEN`` set, its bearer token;
    without, a client on this host."""
    runtime: Runtime = request.app.state.runtime
    token = runtime.settings.metrics_token
    if token is not None:
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {token.get()}".encode()):
            return json_error(401, "bearer token required", {"WWW-Authenticate": "Bearer"})
    elif not runtime.clients.is_loopback(request):
        return json_error(403, "source not allowed")
    return None


async def metrics_endpoint(request: Request) -> Response:
    refused = _internals_refused(request)
    if refused is not None:
        return refused
    body, content_type = exposition()
    return Response(body, media_type=content_type)
