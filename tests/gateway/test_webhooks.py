"""Webhook endpoints over HTTP, in process (httpx.ASGITransport): what a signed delivery does,
and how every kind of bad request is refused (exact status, short JSON reason, never a 500).
State-backed behaviour (replay, rate limit, the call registry) runs on every backend: in
process, one Redis server and a Redis Cluster."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator

import httpx
import orjson
import pydantic
import pytest
from nacl.signing import SigningKey
from twilio.request_validator import RequestValidator

from gateway.calls.registry import InProcessCallRegistry
from gateway.calls.state import CallState
from gateway.calls.twilio import HANGUP_TWIML
from gateway.calls.unopened import STREAM_OPEN_GRACE_S
from gateway.http.health import readiness
from metrics.registry import REGISTRY
from security.streamtokens import InProcessStreamTokens
from security.webhooks import DEFAULT_REPLAY_TTL_S
from tests.conftest import DEAD_REDIS_URL, UNIT
from tests.fakes.carrier_rest import Behavior, FakeCarrierRest
from tests.gateway.conftest import (
    PUBLIC_WS_URL,
    Gateway,
    GatewayFactory,
    call_control_id,
    call_sid,
    make_settings,
    telnyx_event,
)

VOICE = "/webhooks/twilio/voice"
STATUS = "/webhooks/twilio/status"
TELNYX = "/webhooks/telnyx"
CAP = 64 * 1024


def asyncio_timeout() -> asyncio.Timeout:
    return asyncio.timeout(10 * UNIT)


def twilio_params(sid: str | None = None, **extra: str) -> dict[str, str]:
    return {
        "AccountSid": "AC" + "0" * 32,
        "CallSid": sid or call_sid(),
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": "+15550100001",
        "To": "+15550100002",
        "ApiVersion": "2010-04-01",
        **extra,
    }


def assert_refused(response: httpx.Response, status: int, reason: str | None = None) -> None:
    """A short JSON error, the exact status, nothing internal."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"]
    if reason is not None:
        assert body["error"] == reason
    assert len(response.content) < 100
    assert "Traceback" not in response.text and "Error" not in response.text


def assert_ack(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok"}


def parse_twiml(response: httpx.Response) -> tuple[str, str]:
    """(stream url, token) from a ``<Connect><Stream>`` answer."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(response.text)
    assert root.tag == "Response"
    stream = root.find("./Connect/Stream")
    assert stream is not None, response.text
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert list(params) == ["token"]
    token = params["token"]
    assert token
    return stream.get("url", ""), token


@pytest.mark.parametrize(
    ("url", "token"),
    [
        ("wss://gw.example.com/media/twilio", "Zm9vYmFy-_0123456789abcdefghijklmnopqrstuv"),
        ("wss://gw.example.com:8443/base/media/twilio", "t"),
        ('ws://h/m?a=1&b="x"<y>', "a&b<c>\"d'e\r\n\tf"),
    ],
)
def test_twiml_is_what_the_twilio_package_renders(url, token):
    from twilio.twiml.voice_response import Connect, VoiceResponse

    from gateway.calls.twilio import HANGUP_TWIML, connect_twiml

    expected = VoiceResponse()
    connect = Connect()
    connect.stream(url=url).parameter(name="token", value=token)
    expected.append(connect)
    assert connect_twiml(url, token) == str(expected)
    stream = ET.fromstring(connect_twiml(url, token)).find("./Connect/Stream")
    assert stream is not None and stream.get("url") == url
    hangup = VoiceResponse()
    hangup.hangup()
    assert HANGUP_TWIML == str(hangup)


# -- Twilio: accepted -----------------------------------------------------------------------


async def test_twilio_voice_answers_with_connect_stream(gw: Gateway):
    params = twilio_params()
    response = await gw.twilio(VOICE, params)
    url, token = parse_twiml(response)
    call = await gw.runtime.registry.by_carrier_id("twilio", params["CallSid"])
    assert call is not None
    # The stream URL names the call, so Twilio's signature of the upgrade binds to it.
    assert url == f"{PUBLIC_WS_URL}/media/twilio/{call.call_id}"
    assert len(token) == 43
    assert response.text.startswith('<?xml version="1.0" encoding="UTF-8"?><Response><Connect>')


async def test_twilio_status_acknowledged(gw: Gateway):
    assert_ack(await gw.twilio(STATUS, twilio_params(CallStatus="in-progress")))


async def test_twilio_status_for_unknown_call_acknowledged(gw: Gateway):
    assert_ack(await gw.twilio(STATUS, twilio_params(CallStatus="completed")))


async def test_twilio_signature_with_secondary_token_accepted(make_gateway: GatewayFactory):
    gw = await make_gateway(
        {"VOICEGW_TWILIO_AUTH_TOKEN": "old-token", "VOICEGW_TWILIO_AUTH_TOKEN_SECONDARY": "new"}
    )
    params = twilio_params()
    signature = RequestValidator("new").compute_signature(gw.settings.public(VOICE), params)
    parse_twiml(await gw.twilio(VOICE, params, signature=signature))


async def test_twilio_fresh_timestamp_field_accepted_stale_refused(gw: Gateway):
    now = time.time()
    fresh = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(now))
    stale = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(now - 3600))
    assert_ack(await gw.twilio(STATUS, twilio_params(Timestamp=fresh)))
    assert_refused(
        await gw.twilio(STATUS, twilio_params(Timestamp=stale)), 403, "stale or future timestamp"
    )


# -- Twilio: request sanity -------------------------------------------------------------------


@pytest.mark.parametrize("path", [VOICE, STATUS, TELNYX])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_wrong_method_405_with_allow(gw: Gateway, path, method):
    response = await gw.http.request(method, path)
    assert_refused(response, 405, "method not allowed")
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/json; charset=latin-1", "multipart/form-data"]
)
async def test_twilio_wrong_content_type_415(gw: Gateway, content_type):
    params = twilio_params()
    body = str(httpx.QueryParams(params)).encode()
    response = await gw.http.post(
        VOICE,
        content=body,
        headers={
            "content-type": content_type,
            "x-twilio-signature": gw.twilio_signature(VOICE, params),
        },
    )
    assert_refused(response, 415, "unsupported media type")


async def test_twilio_missing_content_type_415(gw: Gateway):
    response = await gw.http.post(VOICE, content=b"CallSid=CA1")
    assert_refused(response, 415)


async def test_telnyx_form_content_type_415(gw: Gateway):
    body = telnyx_event("call.initiated", call_control_id())
    response = await gw.telnyx(
        body,
        headers=[
            ("content-type", "application/x-www-form-urlencoded"),
            ("telnyx-timestamp", str(int(time.time()))),
            ("telnyx-signature-ed25519", gw.telnyx_signature(body, str(int(time.time())))),
        ],
    )
    assert_refused(response, 415, "unsupported media type")


class RecordingBody:
    """An async request body that records how many chunks the app pulled."""

    def __init__(self, chunks: int, size: int = 1024) -> None:
        self.chunks = chunks
        self.size = size
        self.reads = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            self.reads += 1
            yield b"a" * self.size


@pytest.mark.parametrize("path", [VOICE, STATUS, TELNYX])
async def test_declared_oversize_body_413_without_reading(gw: Gateway, path):
    body = RecordingBody(chunks=CAP // 1024 + 1)
    response = await gw.http.post(
        path,
        content=body,
        headers={"content-type": "application/json", "content-length": str(CAP + 1)},
    )
    assert_refused(response, 413, "body too large")
    assert body.reads == 0


async def test_body_at_the_cap_is_read(gw: Gateway):
    # Exactly 64 KiB is allowed through the size check (then refused as an unsigned form).
    body = RecordingBody(chunks=CAP // 1024)
    response = await gw.http.post(
        STATUS,
        content=body,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400
    assert body.reads == CAP // 1024


@pytest.mark.parametrize("path", [VOICE, TELNYX])
async def test_chunked_body_over_the_cap_413_and_reading_stops(gw: Gateway, path):
    body = RecordingBody(chunks=200)  # 200 KiB, no Content-Length: chunked
    response = await gw.http.post(path, content=body, headers={"content-type": "application/json"})
    assert_refused(response, 413, "body too large")
    assert body.reads == CAP // 1024 + 1


async def test_bad_content_length_400(gw: Gateway):
    response = await gw.http.post(
        STATUS, content=b"a=1", headers={"content-length": "3x", "content-type": "text/plain"}
    )
    assert_refused(response, 400)


@pytest.mark.parametrize(
    "body",
    [b"CallSid=CA\xff\xfe", b"CallSid", b"CallSid=CA1&&&", b"CallSid=%FF"],
    ids=["non-utf8", "no-equals", "empty-fields", "escaped-non-utf8"],
)
async def test_twilio_malformed_form_400(gw: Gateway, body):
    response = await gw.http.post(
        VOICE,
        content=body,
        headers={
            "content-type": "application/x-www-form-urlencoded",
            "x-twilio-signature": gw.twilio_signature(VOICE, {}),
        },
    )
    assert_refused(response, 400, "malformed body")


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'\xef\xbb\xbf{"data": {}}',
        b"[1, 2]",
        b'{"data": {"id": "a", "id": "b", "event_type": "call.initiated"}}',
        b'{"data": {"id": "a", "event_type": "x", "payload": NaN}}',
        b'{"data": {"event_type": "call.initiated"}}',
        b'{"data": "x\xff"}',
    ],
    ids=["syntax", "bom", "array", "duplicate-key", "nan", "no-id", "non-utf8"],
)
async def test_telnyx_malformed_json_400(gw: Gateway, body):
    assert_refused(await gw.telnyx(body), 400, "malformed body")


async def test_twilio_duplicated_signature_header_400(gw: Gateway):
    params = twilio_params()
    signature = gw.twilio_signature(VOICE, params)
    response = await gw.twilio(
        VOICE, params, signature=signature, headers=[("X-Twilio-Signature", signature)]
    )
    assert_refused(response, 400, "duplicate header")


@pytest.mark.parametrize("header", ["telnyx-signature-ed25519", "telnyx-timestamp"])
async def test_telnyx_duplicated_security_header_400(gw: Gateway, header):
    body = telnyx_event("call.initiated", call_control_id())
    ts = str(int(time.time()))
    headers = [
        ("content-type", "application/json"),
        ("telnyx-signature-ed25519", gw.telnyx_signature(body, ts)),
        ("telnyx-timestamp", ts),
    ]
    headers += [(name, value) for name, value in headers if name == header]
    assert_refused(await gw.telnyx(body, headers=headers), 400, "duplicate header")


# -- signatures -------------------------------------------------------------------------------


async def test_twilio_missing_signature_400(gw: Gateway):
    assert_refused(await gw.twilio(VOICE, twilio_params(), signature=""), 400, "missing signature")


@pytest.mark.parametrize(
    "signature", ["not base64!", "AAAA", "A" * 200], ids=["junk", "short", "long"]
)
async def test_twilio_malformed_signature_400(gw: Gateway, signature):
    response = await gw.twilio(VOICE, twilio_params(), signature=signature)
    assert_refused(response, 400, "malformed signature")


async def test_twilio_signature_with_another_token_403(gw: Gateway):
    params = twilio_params()
    forged = RequestValidator("someone-else").compute_signature(gw.settings.public(VOICE), params)
    assert_refused(await gw.twilio(VOICE, params, signature=forged), 403, "invalid signature")


async def test_twilio_one_changed_byte_in_body_403(gw: Gateway):
    params = twilio_params()
    signature = gw.twilio_signature(VOICE, params)
    params["From"] = "+15550100009"
    assert_refused(await gw.twilio(VOICE, params, signature=signature), 403, "invalid signature")


async def test_twilio_one_changed_byte_in_url_403(gw: Gateway):
    params = twilio_params()
    # Signed for the status URL, delivered to the voice URL.
    signature = gw.twilio_signature(STATUS, params)
    assert_refused(await gw.twilio(VOICE, params, signature=signature), 403, "invalid signature")
    # Signed without a query, delivered with one.
    signature = gw.twilio_signature(VOICE, params)
    response = await gw.http.post(
        VOICE + "?x=1", data=params, headers={"X-Twilio-Signature": signature}
    )
    assert_refused(response, 403, "invalid signature")


async def test_twilio_signature_ignores_host_header(gw: Gateway):
    # The signed URL is the configured public URL, whatever Host the request claims.
    params = twilio_params()
    response = await gw.http.post(
        VOICE,
        data=params,
        headers={"X-Twilio-Signature": gw.twilio_signature(VOICE, params), "Host": "evil.test"},
    )
    parse_twiml(response)


async def test_telnyx_missing_signature_400(gw: Gateway):
    body = telnyx_event("call.initiated", call_control_id())
    headers = [("content-type", "application/json"), ("telnyx-timestamp", str(int(time.time())))]
    assert_refused(await gw.telnyx(body, headers=headers), 400, "missing signature")


async def test_telnyx_missing_timestamp_400(gw: Gateway):
    body = telnyx_event("call.initiated", call_control_id())
    headers = [
        ("content-type", "application/json"),
        ("telnyx-signature-ed25519", gw.telnyx_signature(body, str(int(time.time())))),
    ]
    assert_refused(await gw.telnyx(body, headers=headers), 400, "missing timestamp")


async def test_telnyx_malformed_timestamp_400(gw: Gateway):
    body = telnyx_event("call.initiated", call_control_id())
    ts = f"+{int(time.time())}"
    response = await gw.telnyx(
        body,
        headers=[
            ("content-type", "application/json"),
            ("telnyx-signature-ed25519", gw.telnyx_signature(body, ts)),
            ("telnyx-timestamp", ts),
        ],
    )
    assert_refused(response, 400, "malformed timestamp")


async def test_telnyx_malformed_signature_400(gw: Gateway):
    body = telnyx_event("call.initiated", call_control_id())
    assert_refused(await gw.telnyx(body, signature="AAAA"), 400, "malformed signature")


async def test_telnyx_one_changed_byte_in_body_403(gw: Gateway):
    body = telnyx_event("call.initiated", call_control_id())
    ts = str(int(time.time()))
    signature = gw.telnyx_signature(body, ts)
    changed = body.replace(b"+15550100001", b"+15550100002", 1)
    assert changed != body
    response = await gw.telnyx(changed, timestamp=int(ts), signature=signature)
    assert_refused(response, 403, "invalid signature")


async def test_telnyx_one_changed_byte_in_timestamp_403(gw: Gateway):
    body = telnyx_event("call.initiated", call_control_id())
    ts = int(time.time())
    signature = gw.telnyx_signature(body, str(ts))
    response = await gw.telnyx(body, timestamp=ts - 1, signature=signature)
    assert_refused(response, 403, "invalid signature")


async def test_telnyx_signed_by_another_key_403(gw: Gateway):
    body = telnyx_event("call.initiated", call_control_id())
    ts = str(int(time.time()))
    other = SigningKey.generate().sign(ts.encode() + b"|" + body).signature
    response = await gw.telnyx(body, timestamp=int(ts), signature=base64.b64encode(other).decode())
    assert_refused(response, 403, "invalid signature")


@pytest.mark.parametrize("offset", [-301, 301, -3600 * 24])
async def test_telnyx_stale_or_future_timestamp_403(gw: Gateway, offset):
    body = telnyx_event("call.initiated", call_control_id())
    response = await gw.telnyx(body, timestamp=int(time.time()) + offset)
    assert_refused(response, 403, "stale or future timestamp")


async def test_telnyx_timestamp_inside_window_accepted(gw: Gateway):
    body = telnyx_event("some.event", call_control_id())
    assert_ack(await gw.telnyx(body, timestamp=int(time.time()) - 200))


async def test_disabled_carrier_404(make_gateway: GatewayFactory):
    gw = await make_gateway({"VOICEGW_CARRIERS": "telnyx"})
    assert_refused(await gw.twilio(VOICE, twilio_params(), signature="x"), 404)


# -- source allowlist and trusted proxies ----------------------------------------------------


async def test_twilio_source_outside_allowlist_403(gw: Gateway):
    async with gw.client_from("203.0.113.7") as http:
        response = await gw.twilio(VOICE, twilio_params(), http=http)
    assert_refused(response, 403, "source not allowed")


async def test_telnyx_source_outside_allowlist_403(gw: Gateway):
    async with gw.client_from("203.0.113.7") as http:
        response = await gw.telnyx(telnyx_event("call.initiated", call_control_id()), http=http)
    assert_refused(response, 403, "source not allowed")


async def test_forwarded_for_from_untrusted_peer_is_ignored(gw: Gateway):
    async with gw.client_from("203.0.113.7") as http:
        response = await gw.twilio(
            VOICE, twilio_params(), headers=[("X-Forwarded-For", "127.0.0.1")], http=http
        )
    assert_refused(response, 403, "source not allowed")
    # And a loopback peer stays loopback whatever it claims.
    response = await gw.twilio(VOICE, twilio_params(), headers=[("X-Forwarded-For", "203.0.113.7")])
    parse_twiml(response)


async def test_forwarded_for_from_trusted_proxy_decides_the_source(make_gateway: GatewayFactory):
    gw = await make_gateway({"VOICEGW_TRUSTED_PROXIES": "10.0.0.0/8"})
    async with gw.client_from("10.1.2.3") as http:
        response = await gw.twilio(
            VOICE, twilio_params(), headers=[("X-Forwarded-For", "127.0.0.1")], http=http
        )
        parse_twiml(response)
        response = await gw.twilio(
            VOICE,
            twilio_params(),
            headers=[("X-Forwarded-For", "127.0.0.1, 203.0.113.7")],
            http=http,
        )
        assert_refused(response, 403, "source not allowed")
        response = await gw.telnyx(
            telnyx_event("call.initiated", call_control_id()),
            headers=None,
            http=http,
        )
        # Without X-Forwarded-For the proxy itself is the source, and it is not allowed.
        assert_refused(response, 403, "source not allowed")


async def test_malformed_forwarded_for_from_trusted_proxy_400(make_gateway: GatewayFactory):
    gw = await make_gateway({"VOICEGW_TRUSTED_PROXIES": "10.0.0.0/8"})
    async with gw.client_from("10.1.2.3") as http:
        response = await gw.twilio(
            VOICE, twilio_params(), headers=[("X-Forwarded-For", "not-an-ip")], http=http
        )
    assert_refused(response, 400, "bad forwarded header")


async def test_webhook_allowlist_any_accepts_every_source(make_gateway: GatewayFactory):
    gw = await make_gateway({"VOICEGW_TWILIO_ALLOWLIST": "any"})
    async with gw.client_from("203.0.113.7") as http:
        parse_twiml(await gw.twilio(VOICE, twilio_params(), http=http))
        response = await gw.telnyx(telnyx_event("x.y", call_control_id()), http=http)
    assert_refused(response, 403, "source not allowed")  # telnyx keeps its loopback default


# -- replay and rate limit (both backends) ---------------------------------------------------


async def stream_tokens_held(gw: Gateway) -> int:
    """Stream tokens the gateway holds, on either backend."""
    tokens = gw.runtime.stream_tokens
    if isinstance(tokens, InProcessStreamTokens):
        return len(tokens)
    return sum(b"streamtoken:" in key for key in await gw.redis_keys())


async def test_twilio_replayed_voice_gets_the_first_answer_and_changes_nothing(
    state_gw: Gateway,
):
    """A captured signed voice webhook replayed again and again: the first answer each time
    (same stream URL, same token), and no new token, call or record."""
    gw = state_gw
    params = twilio_params()
    first = await gw.twilio(VOICE, params)
    _, token = parse_twiml(first)
    tokens, records = await stream_tokens_held(gw), await gw.runtime.store.list_calls()
    for _ in range(20):
        again = await gw.twilio(VOICE, params)
        assert again.status_code == 200
        assert again.text == first.text
    assert await stream_tokens_held(gw) == tokens == 1
    assert await gw.runtime.store.list_calls() == records
    assert len(records) == 1
    call = await gw.runtime.registry.by_carrier_id("twilio", params["CallSid"])
    assert call is not None
    assert call.state is CallState.CONNECTING
    assert await gw.runtime.registry.count_active() == 1
    # The one token is the genuine stream's, and it still opens the call's stream.
    assert await gw.runtime.stream_tokens.consume(token, f"twilio:{params['CallSid']}")
    assert not (await readiness(gw.runtime))["degraded"]
    if gw.runtime.redis is not None:
        assert any(b"replay:" in key for key in await gw.redis_keys())


async def test_twilio_replayed_voice_of_a_streaming_or_ended_call_hangs_up(state_gw: Gateway):
    gw = state_gw
    params = twilio_params()
    parse_twiml(await gw.twilio(VOICE, params))
    call = await gw.runtime.registry.by_carrier_id("twilio", params["CallSid"])
    assert call is not None
    await gw.runtime.registry.transition(call.call_id, CallState.STREAMING)
    for _ in range(2):
        replay = await gw.twilio(VOICE, params)
        assert replay.text == HANGUP_TWIML
    assert_ack(await gw.twilio(STATUS, {**params, "CallStatus": "completed"}))
    assert (await gw.twilio(VOICE, params)).text == HANGUP_TWIML
    assert await stream_tokens_held(gw) == 1


async def test_twilio_replay_after_the_registry_forgot_the_call_creates_nothing(
    state_gw: Gateway,
):
    """The replay cache outlives the call in the registry: a replay then is still a duplicate,
    answered with a hang-up, and starts no new call and no new record."""
    gw = state_gw
    params = twilio_params()
    parse_twiml(await gw.twilio(VOICE, params))
    assert_ack(await gw.twilio(STATUS, {**params, "CallStatus": "completed"}))
    records = await gw.runtime.store.list_calls()
    # The registry forgets the ended call (here at once; by default after a day).
    if gw.runtime.redis is None:
        gw.runtime.registry = InProcessCallRegistry(gw.runtime.registry.replica_id)
    else:
        await gw.runtime.redis.delete(*[k for k in await gw.redis_keys() if b"calls:" in k])
    assert await gw.runtime.registry.by_carrier_id("twilio", params["CallSid"]) is None
    for _ in range(3):
        assert (await gw.twilio(VOICE, params)).text == HANGUP_TWIML
    assert await gw.runtime.registry.by_carrier_id("twilio", params["CallSid"]) is None
    assert await gw.runtime.store.list_calls() == records


async def test_registry_remembers_ended_calls_as_long_as_the_replay_cache(state_gw: Gateway):
    gw = state_gw
    assert gw.runtime.registry.ended_ttl >= DEFAULT_REPLAY_TTL_S
    params = twilio_params()
    parse_twiml(await gw.twilio(VOICE, params))
    assert_ack(await gw.twilio(STATUS, {**params, "CallStatus": "completed"}))
    if gw.runtime.redis is not None:
        call = await gw.runtime.registry.by_carrier_id("twilio", params["CallSid"])
        assert call is not None
        key = next(k for k in await gw.redis_keys() if k.endswith(call.call_id.encode()))
        assert await gw.runtime.redis.pttl(key) > (DEFAULT_REPLAY_TTL_S - 60) * 1000


async def test_replayed_voice_webhooks_evict_no_waiting_calls_token(make_gateway: GatewayFactory):
    """The in-process token store holds at most N tokens, oldest dropped first; more than N
    replays of one delivery once evicted a waiting call's token. (N is small here: the bound
    is a parameter, the mechanism the same as at 100,000.)"""
    gw = await make_gateway({"VOICEGW_RATE_LIMIT_PER_MINUTE": "1000"})
    gw.runtime.stream_tokens = InProcessStreamTokens(max_tokens=4)
    waiting = twilio_params()
    _, token = parse_twiml(await gw.twilio(VOICE, waiting))
    captured = twilio_params()
    parse_twiml(await gw.twilio(VOICE, captured))
    for _ in range(3 * 4):
        assert (await gw.twilio(VOICE, captured)).status_code == 200
    assert len(gw.runtime.stream_tokens) == 2
    assert await gw.runtime.stream_tokens.consume(token, f"twilio:{waiting['CallSid']}")


async def test_replayed_voice_webhooks_are_rate_limited_apart(
    make_gateway: GatewayFactory, backend: str
):
    """Duplicates have a budget of their own: a replay flood is refused with 429 without
    costing new calls theirs."""
    limit = 3
    gw = await make_gateway({"VOICEGW_RATE_LIMIT_PER_MINUTE": str(limit)}, redis=backend)
    params = twilio_params()
    first = await gw.twilio(VOICE, params)
    parse_twiml(first)
    for _ in range(limit):
        assert (await gw.twilio(VOICE, params)).text == first.text
    assert_refused(await gw.twilio(VOICE, params), 429, "rate limited")
    # Two of the three units are left for new calls.
    for _ in range(limit - 1):
        parse_twiml(await gw.twilio(VOICE, twilio_params()))
    assert_refused(await gw.twilio(VOICE, twilio_params()), 429, "rate limited")


@pytest.fixture
async def twilio_rest() -> AsyncIterator[FakeCarrierRest]:
    async with FakeCarrierRest() as fake:
        yield fake


async def test_call_whose_stream_never_opens_is_ended(
    make_gateway: GatewayFactory, backend: str, twilio_rest: FakeCarrierRest
):
    """Answered with a stream that never connects: once the token has expired the call is
    ended (registry, durable record) and hung up over the carrier's REST API."""
    gw = await make_gateway({"VOICEGW_TWILIO_API_URL": twilio_rest.base_url}, redis=backend)
    params = twilio_params()
    parse_twiml(await gw.twilio(VOICE, params))
    call = await gw.runtime.registry.by_carrier_id("twilio", params["CallSid"])
    assert call is not None and call.state is CallState.CONNECTING
    # Within the token's lifetime nothing happens.
    assert await gw.runtime.unopened.end_expired() == []
    due = call.updated_at + gw.settings.stream_token_ttl_s + STREAM_OPEN_GRACE_S + 1
    [ended] = await gw.runtime.unopened.end_expired(now=due)
    assert ended.call_id == call.call_id
    assert ended.state is CallState.ENDED and ended.ended_reason == "stream_not_opened"
    assert await gw.runtime.registry.count_active() == 0
    record = await gw.runtime.store.get_call(call.call_id)
    assert record is not None
    assert record.outcome == "stream_not_opened" and record.ended_at is not None
    async with asyncio_timeout():
        [hangup] = await twilio_rest.wait_for_requests(1)
    assert hangup.call_id == params["CallSid"]
    assert hangup.form() == {"Status": "completed"}
    assert gw.settings.twilio_auth_token is not None
    assert hangup.basic_auth() == (params["AccountSid"], gw.settings.twilio_auth_token.get())
    # Ended once: a second sweep (another replica's) finds nothing to do.
    assert await gw.runtime.unopened.end_expired(now=due) == []
    # Its stream, connecting now, would be refused; a replay of its webhook hangs up.
    assert (await gw.twilio(VOICE, params)).text == HANGUP_TWIML


async def test_twilio_status_completed_ends_the_call(state_gw: Gateway):
    gw = state_gw
    params = twilio_params()
    parse_twiml(await gw.twilio(VOICE, params))
    status = {**params, "CallStatus": "completed", "CallDuration": "3"}
    assert_ack(await gw.twilio(STATUS, status))
    call = await gw.runtime.registry.by_carrier_id("twilio", params["CallSid"])
    assert call is not None and call.state is CallState.ENDED
    assert call.ended_reason == "twilio_completed"
    assert_ack(await gw.twilio(STATUS, status))  # the retry is a duplicate
    assert await gw.runtime.registry.count_active() == 0
    # A late voice webhook for the ended call hangs up instead of streaming.
    late = await gw.twilio(VOICE, {**params, "CallStatus": "in-progress"})
    assert late.status_code == 200
    assert "<Hangup" in late.text and "<Stream" not in late.text


async def test_twilio_non_terminal_status_keeps_the_call(state_gw: Gateway):
    gw = state_gw
    params = twilio_params()
    parse_twiml(await gw.twilio(VOICE, params))
    assert_ack(await gw.twilio(STATUS, {**params, "CallStatus": "in-progress"}))
    call = await gw.runtime.registry.by_carrier_id("twilio", params["CallSid"])
    assert call is not None and call.state is CallState.CONNECTING


@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
async def test_rate_limit(make_gateway: GatewayFactory, backend: str, carrier: str):
    limit = 3
    gw = await make_gateway({"VOICEGW_RATE_LIMIT_PER_MINUTE": str(limit)}, redis=backend)

    async def good(n: int) -> httpx.Response:
        if carrier == "twilio":
            return await gw.twilio(STATUS, twilio_params(CallStatus="in-progress"))
        return await gw.telnyx(telnyx_event("call.machine.detection.ended", f"v3:rl{n}"))

    async def forged() -> httpx.Response:
        if carrier == "twilio":
            return await gw.twilio(STATUS, twilio_params(), signature="A" * 27 + "=")
        return await gw.telnyx(telnyx_event("x.y", "v3:x"), signature="A" * 86 + "==")

    # Badly signed requests cost nothing.
    for _ in range(limit + 2):
        assert (await forged()).status_code == 403
    accepted = [await good(n) for n in range(limit)]
    for response in accepted:
        assert_ack(response)
    refused = await good(limit)
    assert_refused(refused, 429, "rate limited")
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-limit"] == str(limit)
    assert refused.headers["ratelimit-remaining"] == "0"
    assert 0 < int(refused.headers["ratelimit-reset"]) <= 60
    # Still refused, and a forged request is still refused by its signature, not the limit.
    assert (await good(limit + 1)).status_code == 429
    assert (await forged()).status_code == 403
    assert not (await readiness(gw.runtime))["degraded"]
    if backend != "memory":
        assert any(b"ratelimit:" in key for key in await gw.redis_keys())


async def test_duplicate_delivery_spends_no_budget(make_gateway: GatewayFactory, backend: str):
    gw = await make_gateway({"VOICEGW_RATE_LIMIT_PER_MINUTE": "2"}, redis=backend)
    body = telnyx_event("call.machine.detection.ended", call_control_id())
    for _ in range(2):
        assert_ack(await gw.telnyx(body))
    assert_ack(await gw.telnyx(telnyx_event("x.y", call_control_id())))
    assert (await gw.telnyx(telnyx_event("x.y", call_control_id()))).status_code == 429
    # A duplicate of an accepted delivery is still answered like the first: duplicates
    # count on a limit of their own...
    assert_ack(await gw.telnyx(body))
    # ...which bounds them too.
    assert_refused(await gw.telnyx(body), 429, "rate limited")


async def test_rate_limited_delivery_is_not_processed(make_gateway: GatewayFactory, backend: str):
    """A delivery refused with 429 is not processed (the carrier retries it later)."""
    gw = await make_gateway({"VOICEGW_RATE_LIMIT_PER_MINUTE": "1"}, redis=backend)
    assert_ack(await gw.twilio(STATUS, twilio_params(CallStatus="in-progress")))
    params = twilio_params()
    assert (await gw.twilio(VOICE, params)).status_code == 429
    assert await gw.runtime.registry.by_carrier_id("twilio", params["CallSid"]) is None


# -- Telnyx call flow (fake Call Control REST) ------------------------------------------------


@pytest.fixture
async def fake_rest() -> AsyncIterator[FakeCarrierRest]:
    async with FakeCarrierRest(telnyx_api_key="KEYtest") as fake:
        yield fake


@pytest.fixture
async def telnyx_gw(make_gateway: GatewayFactory, backend: str, fake_rest: FakeCarrierRest):
    return await make_gateway(
        {"VOICEGW_TELNYX_API_URL": fake_rest.base_url, "VOICEGW_TELNYX_API_KEY": "KEYtest"},
        redis=backend,
    )


async def test_telnyx_call_flow(telnyx_gw: Gateway, fake_rest: FakeCarrierRest):
    gw = telnyx_gw
    ccid = call_control_id()
    assert_ack(await gw.telnyx(telnyx_event("call.initiated", ccid)))
    async with asyncio_timeout():
        [answer] = await fake_rest.wait_for_requests(1)
    assert (answer.action, answer.call_id) == ("answer", ccid)
    assert answer.bearer() == "KEYtest"
    call = await gw.runtime.registry.by_carrier_id("telnyx", ccid)
    assert call is not None and call.state is CallState.RINGING

    assert_ack(await gw.telnyx(telnyx_event("call.answered", ccid)))
    async with asyncio_timeout():
        requests = await fake_rest.wait_for_requests(2)
    stream = requests[1]
    assert (stream.action, stream.call_id) == ("streaming_start", ccid)
    command = stream.json()
    assert command["stream_url"] == f"{PUBLIC_WS_URL}/media/telnyx"
    assert command["stream_bidirectional_mode"] == "rtp"
    assert command["stream_bidirectional_codec"] == "PCMU"
    assert len(command["stream_auth_token"]) == 43
    call = await gw.runtime.registry.by_carrier_id("telnyx", ccid)
    assert call is not None and call.state is CallState.CONNECTING

    assert_ack(await gw.telnyx(telnyx_event("call.hangup", ccid, hangup_cause="normal_clearing")))
    call = await gw.runtime.registry.by_carrier_id("telnyx", ccid)
    assert call is not None and call.state is CallState.ENDED
    assert call.ended_reason == "telnyx_hangup"
    await gw.settle()
    assert len(fake_rest.requests) == 2


async def test_telnyx_replayed_initiated_answers_once(
    telnyx_gw: Gateway, fake_rest: FakeCarrierRest
):
    gw = telnyx_gw
    ccid = call_control_id()
    body = telnyx_event("call.initiated", ccid)
    assert_ack(await gw.telnyx(body))
    assert_ack(await gw.telnyx(body))
    # A redelivery with a fresh timestamp (a carrier retry) is the same event id.
    assert_ack(await gw.telnyx(body, timestamp=int(time.time()) + 1))
    await gw.settle()
    assert [r.action for r in fake_rest.requests] == ["answer"]
    assert await gw.runtime.registry.count_active() == 1


async def test_telnyx_second_initiated_event_for_same_call_answers_once(
    telnyx_gw: Gateway, fake_rest: FakeCarrierRest
):
    gw = telnyx_gw
    ccid = call_control_id()
    assert_ack(await gw.telnyx(telnyx_event("call.initiated", ccid)))
    assert_ack(await gw.telnyx(telnyx_event("call.initiated", ccid)))  # new event id
    await gw.settle()
    assert [r.action for r in fake_rest.requests] == ["answer"]


async def test_telnyx_unknown_and_non_call_events_acknowledged(
    telnyx_gw: Gateway, fake_rest: FakeCarrierRest
):
    gw = telnyx_gw
    assert_ack(await gw.telnyx(telnyx_event("call.speak.ended", call_control_id())))
    no_call = orjson.dumps({"data": {"id": "evt-1x", "event_type": "message.sent", "payload": {}}})
    assert_ack(await gw.telnyx(no_call))
    outgoing = telnyx_event("call.initiated", call_control_id(), direction="outgoing")
    assert_ack(await gw.telnyx(outgoing))
    assert_ack(await gw.telnyx(telnyx_event("call.answered", call_control_id())))  # unknown call
    await gw.settle()
    assert fake_rest.requests == []
    assert await gw.runtime.registry.count_active() == 0


async def test_telnyx_rest_failure_does_not_fail_the_webhook(
    telnyx_gw: Gateway, fake_rest: FakeCarrierRest
):
    gw = telnyx_gw
    fake_rest.set_response("telnyx", Behavior.SERVER_ERROR)
    ccid = call_control_id()
    assert_ack(await gw.telnyx(telnyx_event("call.initiated", ccid)))
    await gw.settle()
    assert [r.action for r in fake_rest.requests] == ["answer"]
    call = await gw.runtime.registry.by_carrier_id("telnyx", ccid)
    assert call is not None and call.state is CallState.ENDED
    assert call.ended_reason == "answer_failed"


async def test_telnyx_streaming_start_failure_ends_and_hangs_up(
    telnyx_gw: Gateway, fake_rest: FakeCarrierRest
):
    gw = telnyx_gw
    ccid = call_control_id()
    assert_ack(await gw.telnyx(telnyx_event("call.initiated", ccid)))
    await gw.settle()
    fake_rest.set_response("telnyx", Behavior.SERVER_ERROR)
    assert_ack(await gw.telnyx(telnyx_event("call.answered", ccid)))
    await gw.settle()
    await gw.settle()  # the hang-up is started by the failed streaming_start
    assert [r.action for r in fake_rest.requests] == ["answer", "streaming_start", "hangup"]
    call = await gw.runtime.registry.by_carrier_id("telnyx", ccid)
    assert call is not None and call.state is CallState.ENDED


def calls_ended(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "voicegw_calls_total",
        {"carrier": "telnyx", "provider": "none", "outcome": outcome, "agent": "default"},
    )
    return value or 0.0


async def closed_record(gw: Gateway, ccid: str) -> tuple[str | None, float | None]:
    """(outcome, ended_at) of the call's durable record."""
    call = await gw.runtime.registry.by_carrier_id("telnyx", ccid)
    assert call is not None
    record = await gw.runtime.store.get_call(call.call_id)
    assert record is not None
    return record.outcome, record.ended_at


async def test_telnyx_failed_answer_closes_the_record_at_once(
    telnyx_gw: Gateway, fake_rest: FakeCarrierRest
):
    gw = telnyx_gw
    before = calls_ended("answer_failed")
    fake_rest.set_response("telnyx", Behavior.SERVER_ERROR)
    ccid = call_control_id()
    assert_ack(await gw.telnyx(telnyx_event("call.initiated", ccid)))
    await gw.settle()
    outcome, ended_at = await closed_record(gw, ccid)
    assert outcome == "answer_failed" and ended_at is not None  # not left for replica_lost
    assert calls_ended("answer_failed") == before + 1
    assert [r.action for r in fake_rest.requests] == ["answer"]  # never answered: no hang-up


async def test_telnyx_failed_streaming_start_closes_the_record_at_once(
    telnyx_gw: Gateway, fake_rest: FakeCarrierRest
):
    gw = telnyx_gw
    ccid = call_control_id()
    assert_ack(await gw.telnyx(telnyx_event("call.initiated", ccid)))
    await gw.settle()
    fake_rest.set_response("telnyx", Behavior.SERVER_ERROR)
    assert_ack(await gw.telnyx(telnyx_event("call.answered", ccid)))
    await gw.settle()
    await gw.settle()
    outcome, ended_at = await closed_record(gw, ccid)
    assert outcome == "stream_failed" and ended_at is not None


def telnyx_stream_event(event_type: str, ccid: str) -> bytes:
    """A ``streaming.failed`` / ``streaming.stopped`` event shaped as the telnyx SDK's webhook
    types describe it (checked against them here)."""
    from telnyx.types.call_streaming_failed_webhook_event import CallStreamingFailedWebhookEvent
    from telnyx.types.call_streaming_stopped_webhook_event import (
        CallStreamingStoppedWebhookEvent,
    )

    payload: dict[str, object] = {
        "call_control_id": ccid,
        "call_leg_id": "428c31b6-7af4-4bcb-b7f5-5013ef9657c1",
        "call_session_id": "428c31b6-abf3-3bc1-b7f4-5013ef9657c1",
        "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
        "connection_id": "7267xxxxxxxxxxxxxx",
    }
    if event_type == "streaming.failed":
        payload |= {
            "failure_reason": "connection_failed",
            "stream_id": "1edb94f9-7ef0-4150-b502-e0ebadfd9491",
            "stream_params": {
                "stream_url": f"{PUBLIC_WS_URL}/media/telnyx",
                "track": "inbound_track",
            },
            "stream_type": "websocket",
        }
        model: type[pydantic.BaseModel] = CallStreamingFailedWebhookEvent
    else:
        payload["stream_url"] = f"{PUBLIC_WS_URL}/media/telnyx"
        model = CallStreamingStoppedWebhookEvent
    body = {
        "data": {
            "event_type": event_type,
            "id": str(uuid.uuid4()),
            "occurred_at": "2026-01-01T00:00:00.000000Z",
            "payload": payload,
            "record_type": "event",
        },
        "meta": {"attempt": 1, "delivered_to": "voicegw"},
    }
    parsed = model.model_validate(body)
    assert parsed.data is not None and parsed.data.payload is not None
    assert parsed.data.payload.call_control_id == ccid
    return orjson.dumps(body)


async def answered_call(gw: Gateway, fake_rest: FakeCarrierRest) -> str:
    """A Telnyx call answered, its streaming_start sent; the media stream not yet open."""
    ccid = call_control_id()
    assert_ack(await gw.telnyx(telnyx_event("call.initiated", ccid)))
    assert_ack(await gw.telnyx(telnyx_event("call.answered", ccid)))
    await gw.settle()
    assert [r.action for r in fake_rest.requests if r.call_id == ccid] == [
        "answer",
        "streaming_start",
    ]
    return ccid


@pytest.mark.parametrize(
    ("event_type", "outcome"),
    [("streaming.failed", "stream_failed"), ("streaming.stopped", "stream_stopped")],
)
async def test_telnyx_stream_that_fails_or_stops_ends_the_call(
    telnyx_gw: Gateway, fake_rest: FakeCarrierRest, event_type: str, outcome: str
):
    """Without its stream the caller would sit on an answered, silent line: hang up, end the
    call with an outcome that says why, count it."""
    gw = telnyx_gw
    ccid = await answered_call(gw, fake_rest)
    before = calls_ended(outcome)
    assert_ack(await gw.telnyx(telnyx_stream_event(event_type, ccid)))
    await gw.settle()
    assert [r.action for r in fake_rest.requests if r.call_id == ccid][-1] == "hangup"
    call = await gw.runtime.registry.by_carrier_id("telnyx", ccid)
    assert call is not None and call.state is CallState.ENDED and call.ended_reason == outcome
    assert (await closed_record(gw, ccid))[0] == outcome
    assert calls_ended(outcome) == before + 1


async def test_telnyx_stream_stopped_after_the_call_ended_changes_nothing(
    telnyx_gw: Gateway, fake_rest: FakeCarrierRest
):
    """Our own hang-up (or the caller's) comes back as ``streaming.stopped``: no second
    hang-up, the outcome stays."""
    gw = telnyx_gw
    ccid = await answered_call(gw, fake_rest)
    fake_rest.set_response("telnyx", Behavior.SERVER_ERROR)
    call = await gw.runtime.registry.by_carrier_id("telnyx", ccid)
    assert call is not None
    assert await gw.runtime.control.end_unbridged(call, "agent_hangup", hang_up=True)
    await gw.settle()
    requests = len(fake_rest.requests)
    assert_ack(await gw.telnyx(telnyx_stream_event("streaming.stopped", ccid)))
    assert_ack(await gw.telnyx(telnyx_stream_event("streaming.failed", ccid)))
    await gw.settle()
    assert len(fake_rest.requests) == requests
    ended = await gw.runtime.registry.by_carrier_id("telnyx", ccid)
    assert ended is not None and ended.ended_reason == "agent_hangup"
    assert (await closed_record(gw, ccid))[0] == "agent_hangup"


async def test_telnyx_stream_event_for_an_unknown_call_is_acknowledged(
    telnyx_gw: Gateway, fake_rest: FakeCarrierRest
):
    gw = telnyx_gw
    assert_ack(await gw.telnyx(telnyx_stream_event("streaming.failed", call_control_id())))
    await gw.settle()
    assert fake_rest.requests == []


async def test_telnyx_call_without_api_key_is_acknowledged(make_gateway: GatewayFactory):
    gw = await make_gateway()
    assert_ack(await gw.telnyx(telnyx_event("call.initiated", call_control_id())))


# -- shared state down ------------------------------------------------------------------------


@pytest.fixture
async def dead_redis_gw(make_gateway: GatewayFactory) -> Gateway:
    return await make_gateway({"VOICEGW_REDIS_URL": DEAD_REDIS_URL})


async def test_twilio_voice_with_redis_down_is_503_not_500(dead_redis_gw: Gateway):
    async with asyncio_timeout():
        response = await dead_redis_gw.twilio(VOICE, twilio_params())
    assert_refused(response, 503)
    assert "retry-after" in response.headers


async def test_telnyx_with_redis_down_is_503_not_500(dead_redis_gw: Gateway):
    async with asyncio_timeout():
        response = await dead_redis_gw.telnyx(telnyx_event("call.initiated", call_control_id()))
    assert_refused(response, 503)
    assert "retry-after" in response.headers


async def test_forged_request_with_redis_down_is_still_refused(dead_redis_gw: Gateway):
    async with asyncio_timeout():
        response = await dead_redis_gw.twilio(VOICE, twilio_params(), signature="A" * 27 + "=")
    assert_refused(response, 403, "invalid signature")


# -- draining ---------------------------------------------------------------------------------


async def test_new_calls_refused_while_draining(gw: Gateway):
    gw.runtime.lifecycle.draining = True
    response = await gw.twilio(VOICE, twilio_params())
    assert_refused(response, 503, "draining")
    assert response.headers["retry-after"]
    response = await gw.telnyx(telnyx_event("call.initiated", call_control_id()))
    assert_refused(response, 503, "draining")
    # Events of live calls are still processed.
    assert_ack(await gw.twilio(STATUS, twilio_params(CallStatus="completed")))
    assert_ack(await gw.telnyx(telnyx_event("call.hangup", call_control_id())))


async def test_delivery_that_failed_mid_processing_is_processed_on_retry(
    state_gw: Gateway, monkeypatch: pytest.MonkeyPatch
):
    """Shared state failing after verification: 503, and the carrier's identical retry is
    processed in full instead of being acknowledged as a duplicate."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    gw = state_gw

    real_create = gw.runtime.registry.create
    failures = iter([True])

    async def flaky_create(*args, **kwargs):
        if next(failures, False):
            raise RedisConnectionError("down")
        return await real_create(*args, **kwargs)

    monkeypatch.setattr(gw.runtime.registry, "create", flaky_create)
    params = twilio_params()
    assert_refused(await gw.twilio(VOICE, params), 503)
    url, token = parse_twiml(await gw.twilio(VOICE, params))
    assert token
    call = await gw.runtime.registry.by_carrier_id("twilio", params["CallSid"])
    assert call is not None
    assert url == f"{PUBLIC_WS_URL}/media/twilio/{call.call_id}"


async def test_a_registry_forgetting_calls_before_replays_refuses_to_start(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    from gateway import services
    from gateway.app import start_runtime

    monkeypatch.setattr(services, "ENDED_TTL_S", 3600.0)
    with pytest.raises(ValueError, match="remember ended calls"):
        await start_runtime(make_settings(tmp_path))


async def test_twilio_call_ended_before_its_stream_closes_its_record(state_gw: Gateway):
    gw = state_gw
    params = twilio_params()
    parse_twiml(await gw.twilio(VOICE, params))  # answered; the caller hangs up at once
    assert_ack(await gw.twilio(STATUS, {**params, "CallStatus": "completed"}))
    call = await gw.runtime.registry.by_carrier_id("twilio", params["CallSid"])
    assert call is not None
    record = await gw.runtime.store.get_call(call.call_id)
    assert record is not None
    # No Bridge ever ran: the record is closed now, not left for the orphan scan.
    assert record.outcome == "twilio_completed" and record.ended_at is not None


async def test_telnyx_hangup_before_the_stream_closes_the_record(
    telnyx_gw: Gateway, fake_rest: FakeCarrierRest
):
    gw = telnyx_gw
    before = calls_ended("telnyx_hangup")
    ccid = call_control_id()
    assert_ack(await gw.telnyx(telnyx_event("call.initiated", ccid)))
    await gw.settle()
    assert_ack(await gw.telnyx(telnyx_event("call.hangup", ccid)))
    outcome, ended_at = await closed_record(gw, ccid)
    assert outcome == "telnyx_hangup" and ended_at is not None
    assert calls_ended("telnyx_hangup") == before + 1
    # The hang-up's retry is a duplicate; ending again changes nothing.
    assert_ack(await gw.telnyx(telnyx_event("call.hangup", ccid)))
    assert calls_ended("telnyx_hangup") == before + 1
