"""Telnyx Call Control webhooks: answer new calls, start their media stream once answered, end
calls on hang-up or when their stream fails or stops."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.calls.state import CallState
from gateway.calls.webhooks import (
    ACK,
    BodyError,
    carrier_ended,
    draining_reply,
    handle,
    read_body,
    short_text,
)
from gateway.runtime import Runtime
from security.webhooks import Carrier, VerifiedWebhook

log = logging.getLogger("voicegw.webhooks")

CONSENT_HEADER: Final = "x-recording-consent"


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


TELNYX_STREAM_ENDED: Final = {
    "streaming.failed": "stream_failed",
    "streaming.stopped": "stream_stopped",
}
"""Call Control events that end a call's media stream, and the outcome they give the call."""


async def telnyx(request: Request) -> Response:
    """Call Control events: answer new calls, start their media stream once answered, end
    calls on hang-up or when their stream fails or stops. Other events are acknowledged."""
    if request.app.state.runtime.lifecycle.draining and await _is_new_call(request):
        return draining_reply()
    return await handle(request, Carrier.TELNYX, _telnyx)


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
            to_number = short_text(payload.get("to"))
            profile = runtime.agents.for_number(to_number)
            call, created = await runtime.registry.create(
                "telnyx", call_control_id, profile.providers[0], agent=profile.name
            )
            if created:
                consent = runtime.recorder.allowed(_sip_consent(payload))
                await runtime.records.record_call(
                    call,
                    from_number=short_text(payload.get("from")),
                    to_number=to_number,
                    record=consent and profile.record is not False,
                )
                runtime.control.answer_telnyx(call, call_control_id)
        case "call.answered":
            found = await runtime.registry.by_carrier_id("telnyx", call_control_id)
            if found is not None and found.state is CallState.RINGING:
                call = await runtime.registry.transition(found.call_id, CallState.CONNECTING)
                token = await runtime.stream_tokens.mint(
                    f"telnyx:{call_control_id}", runtime.settings.stream_token_ttl_s
                )
                runtime.control.stream_telnyx(call, call_control_id, token)
        case "call.hangup":
            found = await runtime.registry.by_carrier_id("telnyx", call_control_id)
            if found is not None:
                await carrier_ended(runtime, found, "telnyx_hangup")
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
    if not runtime.lifecycle.stop_stream(found, outcome):
        await runtime.control.end_unbridged(found, outcome, hang_up=True)
