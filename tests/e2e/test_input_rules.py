"""Input rules on the Twilio voice webhook, past a valid signature: a request Twilio signed
correctly but without a usable ``CallSid`` is refused with 400 and creates nothing, and a
request with two ``Content-Length`` headers is refused with 400 by the real server before any
handler runs (request smuggling)."""

from __future__ import annotations

import asyncio
import secrets
from urllib.parse import urlencode, urlsplit

import pytest
from twilio.request_validator import RequestValidator

from tests.conftest import UNIT
from tests.e2e.carrier import TWILIO_TOKEN, post_twilio, twilio_params

pytestmark = pytest.mark.e2e

VOICE = "/webhooks/twilio/voice"


@pytest.mark.parametrize("call_sid", [None, "", "CA" + "0" * 63], ids=["missing", "empty", "65"])
async def test_signed_voice_webhook_without_a_usable_call_sid_is_400(make_gateway, call_sid):
    gw = await make_gateway("echo")
    params = twilio_params("CA" + secrets.token_hex(16), "AC" + secrets.token_hex(16))
    if call_sid is None:
        del params["CallSid"]
    else:
        params["CallSid"] = call_sid
    reply = await post_twilio(gw, VOICE, params)  # signed with the real RequestValidator
    assert reply.status_code == 400
    assert reply.json() == {"error": "CallSid required"}
    assert await gw.runtime.registry.count_active() == 0
    # The longest CallSid accepted is 64 characters.
    params["CallSid"] = "CA" + "0" * 62
    assert (await post_twilio(gw, VOICE, params)).status_code == 200


async def test_duplicate_content_length_is_400(make_gateway):
    gw = await make_gateway("echo")
    params = twilio_params("CA" + secrets.token_hex(16), "AC" + secrets.token_hex(16))
    body = urlencode(params).encode()
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(
        gw.settings.public_url + VOICE, params
    )
    parts = urlsplit(gw.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(
            f"POST {VOICE} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"X-Twilio-Signature: {signature}\r\n"
            f"Content-Length: {len(body)}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        async with asyncio.timeout(5 * UNIT):
            head = await reader.readline()
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert await gw.call("twilio", params["CallSid"]) is None
