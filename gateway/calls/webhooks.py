"""Webhook handling shared by both carriers. Each handler reads the body under a size cap and a
deadline, passes the request through the security pipeline, and acts only on what the pipeline
verified (``handle``); the carriers' own handlers are ``gateway.calls.twilio`` and
``gateway.calls.telnyx``.

A duplicate delivery (same verified Telnyx event id, same Twilio signature over the same URL and
body) is answered like the first and never processed twice: it creates, mints and ends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from gateway.calls.state import Call, CallState, CallStateError
from gateway.http.errors import json_error
from gateway.runtime import Runtime
from metrics.registry import CALLS, WEBHOOK_REJECTIONS
from security.exceptions import Layer, Rejection, StateUnavailable
from security.webhooks import Carrier, VerifiedWebhook, WebhookRequest

log = logging.getLogger("voicegw.webhooks")

ACK: Final = b'{"status":"ok"}'


def draining_reply() -> Response:
    """New calls while draining: the carrier retries them elsewhere. Events of live calls
    (status callbacks, hang-ups) are still processed."""
    return json_error(503, "draining", {"Retry-After": "5"})


class BodyError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def read_body(request: Request, cap: int, timeout_s: float) -> bytes:
    """The request body, refusing more than ``cap`` bytes (413) or a body slower than
    ``timeout_s`` (408). A declared oversize Content-Length is refused without reading.
    The body is kept on ``request.state`` so a second call returns it again."""
    cached: bytes | None = getattr(request.state, "body", None)
    if cached is not None:
        return cached
    declared = request.headers.getlist("content-length")
    if len(declared) > 1:
        raise BodyError(400, "duplicate content-length")
    if declared:
        value = declared[0]
        if not (value.isascii() and value.isdigit()):  # isdigit() alone passes "²"
            raise BodyError(400, "bad content-length")
        if len(value.lstrip("0")) > len(str(cap)) or int(value) > cap:
            raise BodyError(413, "body too large")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > cap:
                    raise BodyError(413, "body too large")
                chunks.append(chunk)
    except TimeoutError:
        raise BodyError(408, "body too slow") from None
    request.state.body = body = b"".join(chunks)
    return body


async def _verify(request: Request, carrier: Carrier) -> VerifiedWebhook | Response:
    runtime: Runtime = request.app.state.runtime
    settings = runtime.settings
    if request.method != "POST":
        # Rejected before the body is read; counted like every other rejection.
        return await _rejected(
            request, carrier, Rejection(Layer.REQUEST, "method not allowed", 405, {"Allow": "POST"})
        )
    try:
        body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
    except BodyError as exc:
        return await _rejected(request, carrier, Rejection(Layer.REQUEST, exc.reason, exc.status))
    query = request.url.query
    url = settings.public(request.url.path) + (f"?{query}" if query else "")
    client = request.client
    webhook = WebhookRequest(
        carrier=carrier,
        method=request.method,
        url=url,
        headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
        body=body,
        peer_ip=client.host if client else "",
    )
    try:
        return await runtime.pipeline.check(webhook)
    except Rejection as rejection:
        return await _rejected(request, carrier, rejection, counted=True)
    except StateUnavailable:
        # Shared state is down and this layer fails closed: the carrier retries later.
        return json_error(503, "temporarily unavailable", {"Retry-After": "5"})


async def _rejected(
    request: Request, carrier: Carrier, rejection: Rejection, *, counted: bool = False
) -> Response:
    """Count, log and audit a rejection (the audit trail aggregates floods), then answer it."""
    if not counted:
        WEBHOOK_REJECTIONS.labels(carrier.value, rejection.layer.value).inc()
    runtime: Runtime = request.app.state.runtime
    runtime.rejections.count(carrier.value, rejection.layer.value)
    await runtime.auditor.record(
        "webhook.rejected",
        "denied",
        actor=f"carrier:{carrier.value}",
        entity_type="webhook",
        ip=request.client.host if request.client else None,
        detail={"layer": rejection.layer.value, "status": rejection.status},
    )
    log.info(
        "webhook rejected",
        extra={
            "carrier": carrier.value,
            "layer": rejection.layer.value,
            "reason": rejection.reason,
            "status": rejection.status,
        },
    )
    return json_error(rejection.status, rejection.reason, rejection.headers)


async def carrier_ended(runtime: Runtime, call: Call, outcome: str) -> None:
    """The carrier says ``call`` is over: end it and its bridge. A call that never streamed
    has no Bridge to close its durable record, so it is closed here with ``outcome``."""
    await runtime.records.end_call(call, outcome)
    runtime.lifecycle.stop_call(call)
    if call.state in (CallState.RINGING, CallState.CONNECTING):
        CALLS.labels(call.carrier, "none", outcome, call.agent).inc()
        await runtime.records.close_call_record(call, outcome, (), 0)


def short_text(value: object) -> str | None:
    return value if isinstance(value, str) and len(value) <= 64 else None


Process = Callable[[Runtime, VerifiedWebhook, Mapping[str, str]], Awaitable[Response]]
"""A verified webhook's handler: the runtime, the verified request, its URL query."""


async def handle(request: Request, carrier: Carrier, process: Process) -> Response:
    """Verify, then process. When shared state fails mid-processing the delivery is dropped
    from the replay cache and answered 503, so the carrier's retry is processed in full."""
    verified = await _verify(request, carrier)
    if isinstance(verified, Response):
        return verified
    runtime: Runtime = request.app.state.runtime
    if verified.duplicate:  # the replay layer's catch: answered, never processed again
        runtime.rejections.count(carrier.value, Layer.REPLAY.value)
    try:
        return await process(runtime, verified, dict(request.query_params))
    except (StateUnavailable, RedisError, OSError, TimeoutError) as exc:
        log.warning(
            "webhook not processed: shared state unavailable",
            extra={"carrier": carrier.value, "error": type(exc).__name__},
        )
        with contextlib.suppress(StateUnavailable, RedisError, OSError, TimeoutError):
            await runtime.pipeline.forget(verified)
        return json_error(503, "temporarily unavailable", {"Retry-After": "5"})
    except CallStateError:
        # A concurrent event moved the call first; this one has nothing left to do.
        return Response(ACK, media_type="application/json")
