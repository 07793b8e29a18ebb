"""Per-call recording consent (``VOICEGW_RECORDING=on``, consent rule "parameter"): a call is
recorded when, and only when, the carrier's signed request says the caller consented.

* Twilio: ``recording_consent=yes`` as a form field of the voice webhook, or as a parameter of
  the (signed) webhook URL;
* Telnyx: the SIP header ``X-Recording-Consent: yes`` in ``call.initiated``'s
  ``custom_headers``.

A consent field added to a request that is unsigned or whose signature does not cover it is
refused with the request, and changes nothing about the genuine call that follows.
"""

from __future__ import annotations

import base64
import secrets
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest
from twilio.request_validator import RequestValidator

from gateway.media.recorder import RECORDING_KEY_USE
from gateway.media.recording import RecordingReader
from tests.conftest import UNIT
from tests.e2e.carrier import (
    TWILIO_TOKEN,
    Gateway,
    Ticket,
    caller_audio,
    open_stream,
    post_twilio,
    rest_command,
    send_telnyx,
    telnyx_event,
    twilio_params,
)

pytestmark = pytest.mark.e2e

VOICE = "/webhooks/twilio/voice"
CONSENT_HEADER = {"name": "X-Recording-Consent", "value": "yes"}


async def twilio_ticket(gw: Gateway, path: str, params: dict[str, str]) -> Ticket:
    """Post a signed voice webhook to ``path`` (which may carry a query) and read its TwiML."""
    reply = await post_twilio(gw, path, params)
    assert reply.status_code == 200, reply.text
    stream = ET.fromstring(reply.text).find("./Connect/Stream")
    assert stream is not None, reply.text
    token = next(p.get("value", "") for p in stream if p.get("name") == "token")
    return Ticket("twilio", params["CallSid"], params["AccountSid"], stream.get("url", ""), token)


def new_twilio_call() -> dict[str, str]:
    return twilio_params("CA" + secrets.token_hex(16), "AC" + secrets.token_hex(16))


async def telnyx_ticket(gw: Gateway, **initiated: object) -> Ticket:
    call_control_id = "v3:" + secrets.token_urlsafe(24)
    body = telnyx_event("call.initiated", call_control_id, **initiated)
    assert (await send_telnyx(gw.url, gw.keys, body)).status_code == 200
    await rest_command(gw.rest, call_control_id, "answer")
    answered = telnyx_event("call.answered", call_control_id)
    assert (await send_telnyx(gw.url, gw.keys, answered)).status_code == 200
    command = (await rest_command(gw.rest, call_control_id, "streaming_start")).json()
    return Ticket(
        "telnyx", call_control_id, "", command["stream_url"], command["stream_auth_token"]
    )


async def talk_and_hang_up(gw: Gateway, ticket: Ticket) -> tuple[str, bytes]:
    """One second of caller audio through the stream, then ``stop``; the call id and the
    audio sent."""
    leg = await open_stream(gw, ticket)
    audio = caller_audio(50)
    await leg.play(audio, realtime=False)
    await leg.wait_audio(10)  # the call is up both ways
    await leg.stop()
    call = await gw.wait_ended(ticket)
    return call.call_id, leg.sent_audio


async def recorded_audio(gw: Gateway, call_id: str) -> bytes | None:
    """What the call's recording holds from the caller, or None when it was not recorded."""
    record = await gw.runtime.store.get_call(call_id)
    assert record is not None
    if record.recording_path is None:
        return None

    def lookup(key_id: str) -> bytes:
        return gw.runtime.data_keys.derive(key_id, RECORDING_KEY_USE)

    reader = RecordingReader(Path(record.recording_path), lookup)
    return b"".join(c.audio for c in reader if c.direction.value == "from_carrier")


@pytest.fixture
async def gw(make_gateway) -> Gateway:
    gateway: Gateway = await make_gateway("echo", VOICEGW_RECORDING="on")
    assert gateway.settings.recording_consent == "parameter"
    return gateway


@pytest.mark.parametrize("where", ["form", "url"])
async def test_twilio_call_with_consent_is_recorded(gw: Gateway, where: str) -> None:
    params = new_twilio_call()
    path = VOICE
    if where == "form":
        params["recording_consent"] = "yes"
    else:
        path = VOICE + "?recording_consent=yes"  # signed: the signature covers the URL
    call_id, sent = await talk_and_hang_up(gw, await twilio_ticket(gw, path, params))
    assert await recorded_audio(gw, call_id) == sent


@pytest.mark.parametrize("consent", [None, "no", "YES please"])
async def test_twilio_call_without_consent_is_not_recorded(gw: Gateway, consent: str | None):
    params = new_twilio_call()
    if consent is not None:
        params["recording_consent"] = consent
    call_id, _ = await talk_and_hang_up(gw, await twilio_ticket(gw, VOICE, params))
    assert await recorded_audio(gw, call_id) is None
    assert not (gw.settings.data_dir / "recordings").exists()


@pytest.mark.parametrize("forgery", ["unsigned", "field-not-signed", "query-not-signed"])
async def test_forged_twilio_consent_changes_nothing(gw: Gateway, forgery: str) -> None:
    """A forged copy of the voice webhook claiming consent comes first; it is refused, and
    the genuine webhook (no consent) that follows makes an unrecorded call."""
    params = new_twilio_call()
    validator = RequestValidator(TWILIO_TOKEN)
    genuine = validator.compute_signature(gw.settings.public_url + VOICE, params)
    path, form, headers = VOICE, {**params, "recording_consent": "yes"}, {}
    match forgery:
        case "unsigned":
            pass
        case "field-not-signed":
            headers = {"X-Twilio-Signature": genuine}  # signs the form without the field
        case "query-not-signed":
            path, form = VOICE + "?recording_consent=yes", dict(params)
            headers = {"X-Twilio-Signature": genuine}  # signs the URL without the query
    async with httpx.AsyncClient(base_url=gw.url, timeout=5 * UNIT) as http:
        forged = await http.post(path, data=form, headers=headers)
    assert forged.status_code == (400 if forgery == "unsigned" else 403)
    assert await gw.call("twilio", params["CallSid"]) is None  # no call came of it

    call_id, _ = await talk_and_hang_up(gw, await twilio_ticket(gw, VOICE, params))
    assert await recorded_audio(gw, call_id) is None


async def test_telnyx_call_with_the_consent_header_is_recorded(gw: Gateway) -> None:
    ticket = await telnyx_ticket(
        gw, custom_headers=[{"name": "X-Other", "value": "1"}, CONSENT_HEADER]
    )
    call_id, sent = await talk_and_hang_up(gw, ticket)
    assert await recorded_audio(gw, call_id) == sent


@pytest.mark.parametrize(
    "headers",
    [None, [], [{"name": "X-Recording-Consent", "value": "no"}], "X-Recording-Consent: yes"],
    ids=["absent", "empty", "no", "not-a-list"],
)
async def test_telnyx_call_without_consent_is_not_recorded(gw: Gateway, headers: object) -> None:
    extra = {} if headers is None else {"custom_headers": headers}
    call_id, _ = await talk_and_hang_up(gw, await telnyx_ticket(gw, **extra))
    assert await recorded_audio(gw, call_id) is None


async def test_forged_telnyx_consent_changes_nothing(gw: Gateway) -> None:
    """The genuine ``call.initiated`` carries no consent; a copy with the header added but the
    original signature (or none) is refused, and the genuine call is not recorded."""
    call_control_id = "v3:" + secrets.token_urlsafe(24)
    genuine = telnyx_event("call.initiated", call_control_id)
    forged = genuine.replace(
        b'"direction"', b'"custom_headers":[' + _header_json() + b'],"direction"'
    )
    assert forged != genuine
    # Sign the genuine body, send the forged one under that signature.
    signed = await _signed_headers(gw, genuine)
    async with httpx.AsyncClient(base_url=gw.url, timeout=5 * UNIT) as http:
        reply = await http.post("/webhooks/telnyx", content=forged, headers=signed)
        assert reply.status_code == 403
        assert await gw.call("telnyx", call_control_id) is None
        unsigned = {"content-type": "application/json"}
        reply = await http.post("/webhooks/telnyx", content=forged, headers=unsigned)
        assert reply.status_code == 400
        assert await gw.call("telnyx", call_control_id) is None
    assert (await send_telnyx(gw.url, gw.keys, genuine)).status_code == 200
    await rest_command(gw.rest, call_control_id, "answer")
    answered = telnyx_event("call.answered", call_control_id)
    assert (await send_telnyx(gw.url, gw.keys, answered)).status_code == 200
    command = (await rest_command(gw.rest, call_control_id, "streaming_start")).json()
    ticket = Ticket(
        "telnyx", call_control_id, "", command["stream_url"], command["stream_auth_token"]
    )
    call_id, _ = await talk_and_hang_up(gw, ticket)
    assert await recorded_audio(gw, call_id) is None


def _header_json() -> bytes:
    return b'{"name":"X-Recording-Consent","value":"yes"}'


async def _signed_headers(gw: Gateway, body: bytes) -> dict[str, str]:
    ts = str(int(time.time()))
    signature = gw.keys.telnyx_signing_key().sign(ts.encode() + b"|" + body).signature
    return {
        "content-type": "application/json",
        "telnyx-signature-ed25519": base64.b64encode(signature).decode(),
        "telnyx-timestamp": ts,
    }
