"""``voicegw simulate call --outbound``: the carrier's side of a call the gateway places.

The simulator serves the carrier's REST API on ``http://127.0.0.1:{api_port}``
(``gateway.cli.carrier_api``; the gateway's ``VOICEGW_TWILIO_API_URL`` /
``VOICEGW_TELNYX_API_URL`` must point there) and asks the gateway to place a call through
``POST /api/v1/calls`` with a key of the ``dialer`` (or ``admin``) role. It checks the gateway's
request to the carrier for the documented parameters, answers it as the carrier does, then plays
the callee answering: the lifecycle webhooks the carrier sends (Twilio's status callbacks for the
events the request names in ``StatusCallbackEvent``, signed with ``X-Twilio-Signature``;
Telnyx's ``call.initiated``, ``call.answered`` and ``call.hangup``, signed Ed25519), and the
media stream the request names (Twilio's ``<Connect><Stream>``, Telnyx's ``stream_url``) with
the token it carries. The report is an incoming call's, with phone numbers masked.

What stops the simulation before it has a result (the gateway unreachable, or placing the call
through another carrier API) raises ``SimulateError``; what the gateway answered is in the
``Report``.
"""

from __future__ import annotations

import contextlib
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx
from twilio.request_validator import RequestValidator

from gateway import devkeys
from gateway.cli.carrier_api import CarrierApi, CarrierCommand
from gateway.cli.simulate import (
    CarrierFrames,
    Report,
    SimulateError,
    SimulateOptions,
    caller_audio,
    local_url,
    parse_twiml,
    play_stream,
    post_telnyx,
    reaching,
    serve_api,
    stream_ws_url,
    telnyx_event,
)
from gateway.settings import Settings
from security.redaction import mask_phone
from security.secret import Secret

PLACE_CALL: Final = "/api/v1/calls"
TWILIO_ANSWERING: Final = (
    ("initiated", "initiated"),
    ("ringing", "ringing"),
    ("answered", "in-progress"),
)
"""Twilio's ``StatusCallbackEvent`` names up to the callee answering, and their ``CallStatus``."""
TWILIO_REQUIRED: Final = ("To", "From", "Twiml", "StatusCallback")
TELNYX_REQUIRED: Final = ("connection_id", "to", "from", "stream_url", "stream_auth_token")


@dataclass(frozen=True, slots=True)
class Dial:
    """What the simulator asks the gateway to dial: from ``from_`` (one of the agent's
    ``caller_ids``) for ``agent``, with ``api_key`` (dialer or admin role). The callee is
    ``SimulateOptions.to``; the carrier ``SimulateOptions.carrier``."""

    api_key: Secret
    from_: str
    agent: str
    machine_detection: bool = False

    def __repr__(self) -> str:  # neither the key nor the number reaches a traceback
        return f"Dial(agent={self.agent!r})"


async def simulate_outbound_call(
    settings: Settings, options: SimulateOptions, dial: Dial
) -> Report:
    """One call placed by the gateway at ``options.gateway_url``, played from the carrier's
    side. Raises ``SimulateError`` when the gateway cannot be reached, places the call through
    another carrier API, or a file cannot be read or written."""
    report = Report(options.carrier, outbound=True)
    audio = caller_audio(options.wav)
    api = CarrierApi()
    with reaching(options.gateway_url):
        async with contextlib.AsyncExitStack() as stack:
            api_url = await stack.enter_async_context(serve_api(api, options.api_port))
            http = await stack.enter_async_context(
                httpx.AsyncClient(base_url=options.gateway_url, timeout=10.0)
            )
            placed = await _place(http, api, api_url, options, dial, report)
            if placed is None:
                return report
            if options.carrier == "twilio":
                await _twilio_callee(http, settings, options, audio, report, api, placed)
            else:
                await _telnyx_callee(http, settings, options, audio, report, api, placed)
    return report


async def _place(
    http: httpx.AsyncClient,
    api: CarrierApi,
    api_url: str,
    options: SimulateOptions,
    dial: Dial,
    report: Report,
) -> CarrierCommand | None:
    """Ask the gateway to dial; returns the request the carrier API got (None when the gateway
    refused, as reported)."""
    body: dict[str, object] = {
        "to": options.to,
        "from": dial.from_,
        "agent": dial.agent,
        "carrier": options.carrier,
    }
    if dial.machine_detection:
        body["machine_detection"] = True
    reply = await http.post(
        PLACE_CALL, json=body, headers={"Authorization": f"Bearer {dial.api_key.get()}"}
    )
    placed = next((c for c in api.commands if c.action in ("create", "dial")), None)
    what = f"POST {PLACE_CALL} to {mask_phone(options.to)} (agent {dial.agent})"
    if reply.status_code != 201:
        report.step(what, f"{reply.status_code} {_reason(reply)}")
        if placed is None and reply.status_code in (502, 503):
            raise _not_pointed_here(options.carrier, api_url)
        return None
    answer = reply.json()
    report.step(what, f"201 {answer.get('call_id')} ({answer.get('state')})")
    if placed is None:
        raise _not_pointed_here(options.carrier, api_url)
    return placed


def _reason(reply: httpx.Response) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return str(reply.json().get("error", ""))[:120]
    return ""


def _not_pointed_here(carrier: str, api_url: str) -> SimulateError:
    variable = "VOICEGW_TWILIO_API_URL" if carrier == "twilio" else "VOICEGW_TELNYX_API_URL"
    return SimulateError(
        f"the gateway did not place the call through the simulated {carrier} API at {api_url}: "
        f"start `voicegw serve` with {variable}={api_url}"
    )


def missing(body: Mapping[str, Any], names: tuple[str, ...]) -> list[str]:
    """The ``names`` that ``body`` lacks or leaves empty."""
    return [name for name in names if not body.get(name)]


def _checked(report: Report, what: str, absent: list[str]) -> None:
    report.step(what, "ok" if not absent else "missing " + ", ".join(absent))


# -- Twilio --------------------------------------------------------------------------------


def twilio_status(
    placed: CarrierCommand, to: str, status: str, sequence: int, **extra: str
) -> dict[str, str]:
    """A status callback as Twilio POSTs it for the call ``placed`` (form fields)."""
    return {
        "AccountSid": placed.account,
        "CallSid": placed.call_id,
        "CallStatus": status,
        "Direction": "outbound-api",
        "From": str(placed.body.get("From", "")),
        "To": to,
        "ApiVersion": "2010-04-01",
        "CallbackSource": "call-progress-events",
        "SequenceNumber": str(sequence),
        "Timestamp": time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime()),
        **extra,
    }


async def _twilio_callee(
    http: httpx.AsyncClient,
    settings: Settings,
    options: SimulateOptions,
    audio: bytes,
    report: Report,
    api: CarrierApi,
    placed: CarrierCommand,
) -> None:
    if settings.twilio_auth_token is None:
        raise SimulateError("no Twilio auth token (VOICEGW_TWILIO_AUTH_TOKEN)")
    validator = RequestValidator(settings.twilio_auth_token.get())
    body = placed.body
    absent = missing(body, TWILIO_REQUIRED)
    _checked(report, "carrier REST API: Calls.json (To, From, Twiml, ...)", absent)
    try:
        stream_url, token = parse_twiml(str(body.get("Twiml", "")))
    except (ET.ParseError, SimulateError):
        report.step("Twiml <Connect><Stream> with token", "unusable")
        return
    report.step("Twiml <Connect><Stream> with token", "ok" if stream_url and token else "no token")
    callback = str(body.get("StatusCallback", ""))
    events = body.get("StatusCallbackEvent") or []
    sequence = 0

    async def status(event: str, call_status: str, **extra: str) -> None:
        nonlocal sequence
        params = twilio_status(placed, options.to, call_status, sequence, **extra)
        sequence += 1
        reply = await http.post(
            local_url(options.gateway_url, callback),
            data=params,
            headers={"X-Twilio-Signature": validator.compute_signature(callback, params)},
        )
        named = event if event == call_status else f"{event}: {call_status}"
        report.step(f"status callback {named} (signed)", f"{reply.status_code}")

    for event, call_status in TWILIO_ANSWERING:
        if event in events:
            await status(event, call_status)
    headers = {"X-Twilio-Signature": validator.compute_signature(stream_url, {})}
    frames = CarrierFrames(
        "twilio", placed.call_id, token, placed.account, to=options.to, from_=_from(body, "From")
    )
    t0 = time.monotonic()
    await play_stream(
        stream_ws_url(options.gateway_url, stream_url), headers, frames, audio, options, report, api
    )
    # Twilio always reports the end of the call, asked for or not.
    await status("completed", "completed", CallDuration=str(max(1, round(time.monotonic() - t0))))


def _from(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    return value if isinstance(value, str) else ""


# -- Telnyx --------------------------------------------------------------------------------


async def _telnyx_callee(
    http: httpx.AsyncClient,
    settings: Settings,
    options: SimulateOptions,
    audio: bytes,
    report: Report,
    api: CarrierApi,
    placed: CarrierCommand,
) -> None:
    keys = devkeys.load_or_create(settings.data_dir)
    body = placed.body
    _checked(
        report,
        "carrier REST API: /v2/calls (connection_id, to, from, stream_url, ...)",
        missing(body, TELNYX_REQUIRED),
    )
    bidirectional = body.get("stream_bidirectional_mode") == "rtp"
    report.step("stream parameters (rtp, PCMU, token)", "ok" if bidirectional else "one-way!")
    cid, to, from_ = placed.call_id, options.to, _from(body, "from")
    ids = {
        "direction": "outgoing",
        "from": from_,
        "connection_id": _from(body, "connection_id"),
        "call_session_id": str(uuid.uuid4()),
    }

    async def webhook(event_type: str, **extra: str) -> None:
        reply = await post_telnyx(http, keys, telnyx_event(event_type, cid, to, **ids, **extra))
        report.step(f"{event_type} webhook (signed)", f"{reply.status_code}")

    await webhook("call.initiated", state="bridging")
    await webhook("call.answered")
    token = _from(body, "stream_auth_token")
    frames = CarrierFrames("telnyx", cid, token, to=to, from_=from_)
    headers = {"x-telnyx-streaming-auth-token": token}
    ws_url = stream_ws_url(options.gateway_url, _from(body, "stream_url"))
    await play_stream(ws_url, headers, frames, audio, options, report, api)
    await webhook("call.hangup", hangup_cause="normal_clearing", hangup_source="callee")
