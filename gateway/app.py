"""The ASGI application: routes, middleware and the lifespan that starts and stops shared pools."""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import media, webhooks
from gateway.errors import json_error
from gateway.operators import api, console
from gateway.operators.middleware import middleware as security_middleware
from gateway.operators.routes import routes as auth_routes
from gateway.review import api as review_api
from gateway.runtime import Runtime
from gateway.settings import Settings, SettingsError
from metrics.logging import correlation_id
from metrics.registry import BUILD_INFO, HTTP_DURATION, REGISTRY

log = logging.getLogger("voicegw.app")

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz(request: Request) -> Response:
    """Ready or not (the status code and ``ready``) for anyone: orchestrators probe from
    outside. The detail (providers, breaker states, failure classes, live calls, Redis and
    store) only for whoever may read ``/metrics``."""
    runtime: Runtime = request.app.state.runtime
    report = await runtime.readiness()
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
    elif not runtime.is_loopback_client(request):
        return json_error(403, "source not allowed")
    return None


async def metrics_endpoint(request: Request) -> Response:
    refused = _internals_refused(request)
    if refused is not None:
        return refused
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


ROUTES: list[Route | WebSocketRoute] = [
    Route("/healthz", healthz, methods=["GET", "HEAD"]),
    Route("/readyz", readyz, methods=["GET", "HEAD"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
    Route("/webhooks/twilio/voice", webhooks.twilio_voice, methods=ALL_METHODS),
    Route("/webhooks/twilio/status", webhooks.twilio_status, methods=ALL_METHODS),
    Route("/webhooks/telnyx", webhooks.telnyx, methods=ALL_METHODS),
    WebSocketRoute("/media/twilio", media.twilio_stream),  # no call: refused with 1008
    WebSocketRoute("/media/twilio/{call}", media.twilio_stream),
    WebSocketRoute("/media/telnyx", media.telnyx_stream),
    *auth_routes(),
    *api.routes(),
    *review_api.routes(),
    *console.routes(),
]
_TEMPLATES: dict[Callable[..., Any], str] = {r.endpoint: r.path for r in ROUTES}


class HttpMiddleware:
    """Times every HTTP request by route template, sets a correlation id, and turns any
    uncaught exception into a bare 500 JSON reply (logged, never shown to the client). A
    client that leaves mid-request is no error: it is timed with status 499."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = correlation_id.set(secrets.token_hex(8))
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except ClientDisconnect:
            # The client left before its request was all in: nobody to answer, nothing wrong.
            status = 499  # nginx's "client closed request", for the duration metric
        except Exception:
            log.exception("unhandled error", extra={"path_template": _template(scope)})
            if not response_started:
                await json_error(500, "internal error")(scope, receive, send)
            status = 500
        finally:
            HTTP_DURATION.labels(_template(scope), scope["method"], str(status)).observe(
                time.perf_counter() - started
            )
            correlation_id.reset(token)


def _template(scope: Scope) -> str:
    endpoint = scope.get("endpoint")
    return _TEMPLATES.get(endpoint, "unmatched") if endpoint is not None else "unmatched"


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
            runtime = await Runtime.start(settings)
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
    app.add_middleware(HttpMiddleware)
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
