"""Webhook handlers. Each reads the body under a size cap and a deadline, passes the request
through the security pipeline, and acts only on what the pipeline verified.

A duplicate delivery (same verified Telnyx event id, same Twilio signature over the same URL and
body) is answered like the first and never processed twice: it creates, mints and ends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import orjson
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from gateway.calls import CallState, CallStateError
from gateway.errors import json_error
from gateway.runtime import Runtime
from metrics.registry import WEBHOOK_REJECTIONS
from security.exceptions import Layer, Rejection, StateUnavailable
from security.webhooks import Carrier, VerifiedWebhook, WebhookRequest

log = logging.getLogger("voicegw.webhooks")

ACK: Final = b'{"status":"ok"}'
TWILIO_TERMINAL: Final = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})


def _draining() -> Response:
    """New calls while draining: the carrier retries them elsewhere. Events of live calls
    (status callbacks, hang-ups) are still processed."""
    return json_error(503, "draining", {"Retry-After": "5"})


async def _is_new_call(request: Request) -> bool:
    """Whether an (unverified) Telnyx body is a ``call.initiated``. Used only to refuse
    during a drain, before the pipeline runs, so the replay cache never records it."""
    runtime: Runtime = request.app.state.runtime
    try:
        body = await read_body(request, runtime.settings.max_body_bytes, 1.0)
        data = orjson.loads(body).get("data", {})
    except (BodyError, orjson.JSONDecodeError, AttributeError):
        return False
    return isinstance(data, dict) and data.get("event_type") == "call.initiated"


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


CONSENT_FIELD: Final = "recording_consent"
CONSENT_HEADER: Final = "x-recording-consent"


def _sip_consent(payload: Mapping[str, object]) -> bool:
    """Telnyx: the caller's consent as a SIP header ``X-Recording-Consent: yes``."""
    headers = payload.get("custom_headers")
    if not isinstance(headers, list):
        return False
    return any(
        isinstance(h, dict)
        and str(h.get("name", "")).lower() == CONSENT_HEADER
        and str(h.get("value", "")).lower() == "yes"
        for h in headers[:32]
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and len(value) <= 64 else None


def _params(verified: VerifiedWebhook) -> Mapping[str, str]:
    return dict(verified.form)


# -- Twilio --------------------------------------------------------------------------------


Process = Callable[[Runtime, VerifiedWebhook, Mapping[str, str]], Awaitable[Response]]
"""A verified webhook's handler: the runtime, the verified request, its URL query."""


async def _handle(request: Request, carrier: Carrier, process: Process) -> Response:
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


# TwiML exactly as the twilio package renders it (a test keeps them equal), without building
# its element tree for every call.
_XML_DECLARATION: Final = '<?xml version="1.0" encoding="UTF-8"?>'
HANGUP_TWIML: Final = _XML_DECLARATION + "<Response><Hangup /></Response>"
_ATTRIBUTE: Final = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "\r": "&#13;",
        "\n": "&#10;",
        "\t": "&#09;",
    }
)


def twilio_stream_url(public_ws_url: str, call_id: str) -> str:
    """The media stream URL of one call. The call id is a path segment (Twilio allows no query
    on a stream URL), so the signature of Twilio's WebSocket upgrade binds to this one call."""
    return f"{public_ws_url}/media/twilio/{call_id}"


def connect_twiml(stream_url: str, token: str) -> str:
    """``<Connect><Stream url=...>`` with the stream token as its one ``<Parameter>``."""
    return (
        f'{_XML_DECLARATION}<Response><Connect><Stream url="{stream_url.translate(_ATTRIBUTE)}">'
        f'<Parameter name="token" value="{token.translate(_ATTRIBUTE)}" /></Stream></Connect>'
        "</Response>"
    )


async def twilio_voice(request: Request) -> Response:
    """Incoming call: register it and answer with ``<Connect><Stream>`` carrying a token."""
    if request.app.state.runtime.draining:
        return _draining()
    return await _handle(request, Carrier.TWILIO, _twilio_voice)


async def _twilio_voice(
    runtime: Runtime, verified: VerifiedWebhook, query: Mapping[str, str]
) -> Response:
    params = _params(verified)
    call_sid = params.get("CallSid", "")
    if not call_sid or len(call_sid) > 64:
        return json_error(400, "CallSid required")
    if verified.duplicate:
        return await _twilio_voice_again(runtime, verified, call_sid)
    call, created = await runtime.registry.create(
        "twilio",
        call_sid,
        runtime.settings.providers[0],
        account_id=_text(params.get("AccountSid")),
    )
    if created:
        # Consent: "recording_consent=yes" as a form field or in the (signed) webhook URL.
        consent = "yes" in (params.get(CONSENT_FIELD), query.get(CONSENT_FIELD))
        await runtime.record_call(
            call,
            from_number=params.get("From"),
            to_number=params.get("To"),
            record=runtime.recording_allowed(consent),
        )
    if call.state is CallState.ENDED:
        return Response(HANGUP_TWIML, media_type="application/xml")
    if call.state is CallState.RINGING:
        call = await runtime.registry.transition(call.call_id, CallState.CONNECTING)
    # Kept for this delivery as long as the token lives: a duplicate gets this answer again.
    token = await runtime.stream_tokens.mint(
        f"twilio:{call_sid}", runtime.settings.stream_token_ttl_s, delivery=verified.replay_key
    )
    twiml = connect_twiml(twilio_stream_url(runtime.settings.public_ws_url, call.call_id), token)
    log.info("twilio call answered", extra={"call_id": call.call_id, "duplicate": False})
    return Response(twiml, media_type="application/xml")


async def _twilio_voice_again(
    runtime: Runtime, verified: VerifiedWebhook, call_sid: str
) -> Response:
    """A duplicate voice webhook: the first answer (same stream URL, same token) while its
    token lives and the call still awaits its stream, else ``<Hangup/>``. Only reads: a replay
    creates no call and no record, mints no token, and evicts none."""
    token = await runtime.stream_tokens.minted_for(verified.replay_key)
    call = None if token is None else await runtime.registry.by_carrier_id("twilio", call_sid)
    if token is None or call is None or call.state is not CallState.CONNECTING:
        return Response(HANGUP_TWIML, media_type="application/xml")
    twiml = connect_twiml(twilio_stream_url(runtime.settings.public_ws_url, call.call_id), token)
    log.info("twilio call answered", extra={"call_id": call.call_id, "duplicate": True})
    return Response(twiml, media_type="application/xml")


async def twilio_status(request: Request) -> Response:
    """Call status callback: a terminal status ends the call."""
    return await _handle(request, Carrier.TWILIO, _twilio_status)


async def _twilio_status(
    runtime: Runtime, verified: VerifiedWebhook, query: Mapping[str, str]
) -> Response:
    if verified.duplicate:
        return Response(ACK, media_type="application/json")
    params = _params(verified)
    status = params.get("CallStatus", "")
    if status not in TWILIO_TERMINAL:
        # Progress reports change nothing here: no registry round trip for them.
        return Response(ACK, media_type="application/json")
    call = await runtime.registry.by_carrier_id("twilio", params.get("CallSid", ""))
    if call is not None:
        await runtime.end_call(call, f"twilio_{status}")
        runtime.stop_bridge(call)
    return Response(ACK, media_type="application/json")


# -- Telnyx --------------------------------------------------------------------------------


TELNYX_STREAM_ENDED: Final = {
    "streaming.failed": "stream_failed",
    "streaming.stopped": "stream_stopped",
}
"""Call Control events that end a call's media stream, and the outcome they give the call."""


async def telnyx(request: Request) -> Response:
    """Call Control events: answer new calls, start their media stream once answered, end
    calls on hang-up or when their stream fails or stops. Other events are acknowledged."""
    if request.app.state.runtime.draining and await _is_new_call(request):
        return _draining()
    return await _handle(request, Carrier.TELNYX, _telnyx)


async def _telnyx(
    runtime: Runtime, verified: VerifiedWebhook, query: Mapping[str, str]
) -> Response:
    if verified.duplicate:
        return Response(ACK, media_type="application/json")
    data = verified.payload.get("data") if verified.payload else None
    event_type = verified.event_type
    event_payload = data.get("payload") if isinstance(data, dict) else None
    payload: Mapping[str, object] = event_payload if isinstance(event_payload, dict) else {}
    call_control_id = payload.get("call_control_id")
    if not isinstance(call_control_id, str) or not 0 < len(call_control_id) <= 128:
        # Not a call event (or a malformed one): acknowledged, nothing to do.
        return Response(ACK, media_type="application/json")
    match event_type:
        case "call.initiated" if payload.get("direction", "incoming") == "incoming":
            call, created = await runtime.registry.create(
                "telnyx", call_control_id, runtime.settings.providers[0]
            )
            if created:
                await runtime.record_call(
                    call,
                    from_number=_text(payload.get("from")),
                    to_number=_text(payload.get("to")),
                    record=runtime.recording_allowed(_sip_consent(payload)),
                )
                runtime.answer_telnyx(call, call_control_id)
        case "call.answered":
            found = await runtime.registry.by_carrier_id("telnyx", call_control_id)
            if found is not None and found.state is CallState.RINGING:
                call = await runtime.registry.transition(found.call_id, CallState.CONNECTING)
                token = await runtime.stream_tokens.mint(
                    f"telnyx:{call_control_id}", runtime.settings.stream_token_ttl_s
                )
                runtime.stream_telnyx(call, call_control_id, token)
        case "call.hangup":
            found = await runtime.registry.by_carrier_id("telnyx", call_control_id)
            if found is not None:
                await runtime.end_call(found, "telnyx_hangup")
                runtime.stop_bridge(found)
        case "streaming.failed" | "streaming.stopped":
            await _telnyx_stream_ended(runtime, call_control_id, TELNYX_STREAM_ENDED[event_type])
        case _:
            pass
    return Response(ACK, media_type="application/json")


async def _telnyx_stream_ended(runtime: Runtime, call_control_id: str, outcome: str) -> None:
    """The call's media stream failed or stopped and the call is still live: without its
    stream the caller sits on a silent line, so end the call (REST hang-up, outcome recorded
    and counted). The bridge, when this replica runs it, does that itself. A call that has
    ended already (our own hang-up or stream end comes back as ``streaming.stopped``) is left
    as it is."""
    found = await runtime.registry.by_carrier_id("telnyx", call_control_id)
    if found is None or not found.active:
        return
    log.warning("telnyx media stream ended", extra={"call_id": found.call_id, "reason": outcome})
    if not runtime.stop_stream(found, outcome):
        await runtime.end_unbridged(found, outcome, hang_up=True)
