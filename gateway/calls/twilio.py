"""Twilio's webhooks: the voice webhook of a new call (answered with ``<Connect><Stream>``
carrying a stream token) and the status callback that ends it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from gateway.calls.state import CallState
from gateway.calls.twiml import HANGUP_TWIML, connect_twiml, twilio_stream_url
from gateway.calls.webhooks import ACK, carrier_ended, draining_reply, handle, short_text
from gateway.http.errors import json_error
from gateway.runtime import Runtime
from security.webhooks import Carrier, VerifiedWebhook

log = logging.getLogger("voicegw.webhooks")

TWILIO_TERMINAL: Final = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
CONSENT_FIELD: Final = "recording_consent"


def _params(verified: VerifiedWebhook) -> Mapping[str, str]:
    return dict(verified.form)


async def twilio_voice(request: Request) -> Response:
    """Incoming call: register it and answer with ``<Connect><Stream>`` carrying a token."""
    if request.app.state.runtime.lifecycle.draining:
        return draining_reply()
    return await handle(request, Carrier.TWILIO, _twilio_voice)


async def _twilio_voice(
    runtime: Runtime, verified: VerifiedWebhook, query: Mapping[str, str]
) -> Response:
    params = _params(verified)
    call_sid = params.get("CallSid", "")
    if not call_sid or len(call_sid) > 64:
        return json_error(400, "CallSid required")
    if verified.duplicate:
        return await _twilio_voice_again(runtime, verified, call_sid)
    # The dialled number picks the agent; the number itself is never a label or a log field.
    profile = runtime.agents.for_number(params.get("To"))
    call, created = await runtime.registry.create(
        "twilio",
        call_sid,
        profile.providers[0],
        account_id=short_text(params.get("AccountSid")),
        agent=profile.name,
    )
    if created:
        # Consent: "recording_consent=yes" as a form field or in the (signed) webhook URL.
        consent = "yes" in (params.get(CONSENT_FIELD), query.get(CONSENT_FIELD))
        await runtime.records.record_call(
            call,
            from_number=params.get("From"),
            to_number=params.get("To"),
            record=runtime.recorder.allowed(consent) and profile.record is not False,
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
    return await handle(request, Carrier.TWILIO, _twilio_status)


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
        await carrier_ended(runtime, call, f"twilio_{status}")
    return Response(ACK, media_type="application/json")
