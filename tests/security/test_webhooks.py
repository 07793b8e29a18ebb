"""The webhook pipeline end to end (no sockets): every bad input is its own case."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from datetime import UTC, datetime
from email.utils import format_datetime
from urllib.parse import parse_qsl, urlencode

import pytest
import telnyx
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from twilio.request_validator import RequestValidator

from metrics.registry import REGISTRY
from security.allowlist import (
    TELNYX_WEBHOOK_RANGES,
    Allowlist,
    ClientAddressResolver,
    parse_networks,
)
from security.exceptions import Layer, Rejection
from security.ratelimit import InProcessLimiter
from security.replay import InProcessReplayCache
from security.signatures import TelnyxSignatureVerifier, TwilioSignatureVerifier
from security.webhooks import (
    MAX_BODY_BYTES,
    MAX_FORM_FIELDS,
    Carrier,
    CarrierPolicy,
    WebhookPipeline,
    WebhookRequest,
    parse_form,
)
from tests.security.conftest import FakeClock

NOW = 1_700_000_000
TOKEN = "12345678901234567890123456789012"
PUBLIC = "https://gw.example.com"
TWILIO_URL = f"{PUBLIC}/webhooks/twilio/status?ts={NOW}"
TWILIO_VOICE_URL = f"{PUBLIC}/webhooks/twilio/voice"
TELNYX_URL = f"{PUBLIC}/webhooks/telnyx"
FORM = "application/x-www-form-urlencoded"
PARAMS = [
    ("AccountSid", "AC00000000000000000000000000000000"),
    ("CallSid", "CA11111111111111111111111111111111"),
    ("From", "+14155550100"),
    ("To", "+14155550199"),
    ("CallStatus", "ringing"),
    ("Caller", ""),
]
TWILIO_PEER = "192.0.2.10"
TELNYX_PEER = "192.76.120.130"
PROXY = "10.0.0.1"

SIGNING_KEY = SigningKey(b"\x07" * 32)
TELNYX_PUBLIC_KEY = base64.b64encode(bytes(SIGNING_KEY.verify_key)).decode()


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def rejections(carrier: str, layer: str) -> float:
    return counter("voicegw_webhook_rejections_total", carrier=carrier, layer=layer)


# -- building requests -----------------------------------------------------------------------


def twilio_request(
    params=PARAMS,
    *,
    url: str = TWILIO_URL,
    signed_url: str | None = None,
    body: bytes | None = None,
    method: str = "POST",
    content_type: str | None = FORM,
    signature: str | None = None,
    peer: str = TWILIO_PEER,
    extra_headers=(),
) -> WebhookRequest:
    if signature is None:
        signature = RequestValidator(TOKEN).compute_signature(signed_url or url, dict(params))
    headers = [("x-twilio-signature", signature)] if signature else []
    if content_type is not None:
        headers.append(("content-type", content_type))
    headers.extend(extra_headers)
    return WebhookRequest(
        carrier=Carrier.TWILIO,
        method=method,
        url=url,
        headers=headers,
        body=urlencode(params).encode() if body is None else body,
        peer_ip=peer,
    )


def telnyx_body(event_id: str = "0ccc7b54-4df3-4bca-a65a-3da1ecc777f0", **data) -> bytes:
    event = {
        "data": {
            "event_type": "call.initiated",
            "id": event_id,
            "occurred_at": "2023-11-14T22:13:20Z",
            "payload": {"call_control_id": "v3:abc", "from": "+14155550100"},
            "record_type": "event",
            **data,
        },
        "meta": {"attempt": 1, "delivered_to": TELNYX_URL},
    }
    return json.dumps(event, separators=(",", ":")).encode()


def telnyx_sign(timestamp: str, body: bytes) -> str:
    return base64.b64encode(SIGNING_KEY.sign(timestamp.encode() + b"|" + body).signature).decode()


def telnyx_request(
    body: bytes | None = None,
    *,
    timestamp: str | None = str(NOW),
    signature: str | None = None,
    signed_body: bytes | None = None,
    method: str = "POST",
    content_type: str | None = "application/json",
    peer: str = TELNYX_PEER,
    extra_headers=(),
) -> WebhookRequest:
    body = telnyx_body() if body is None else body
    headers = []
    if content_type is not None:
        headers.append(("content-type", content_type))
    if timestamp is not None:
        headers.append(("telnyx-timestamp", timestamp))
        if signature is None:
            signature = telnyx_sign(timestamp, body if signed_body is None else signed_body)
    if signature:
        headers.append(("telnyx-signature-ed25519", signature))
    headers.extend(extra_headers)
    return WebhookRequest(Carrier.TELNYX, method, TELNYX_URL, headers, body, peer)


# -- pipelines -------------------------------------------------------------------------------


@pytest.fixture
def make_pipeline(make_replay, make_limiter, clock):
    """A pipeline on the parametrized state backend (in-process or the real Redis)."""

    def make(limit: int = 1000, **overrides) -> WebhookPipeline:
        clock.now = NOW
        twilio_replay = overrides.pop("twilio_replay", None)
        resolver = ClientAddressResolver(parse_networks("10.0.0.0/8"))
        twilio = CarrierPolicy(
            verifier=TwilioSignatureVerifier([TOKEN]),
            allowlist=Allowlist(parse_networks("192.0.2.0/24, 2001:db8::/32")),
            limiter=make_limiter(limit),
            replay=make_replay() if twilio_replay is None else twilio_replay,
            resolver=resolver,
        )
        telnyx_policy = CarrierPolicy(
            verifier=TelnyxSignatureVerifier([TELNYX_PUBLIC_KEY]),
            allowlist=Allowlist(parse_networks([*TELNYX_WEBHOOK_RANGES, "2001:db8::/32"])),
            limiter=make_limiter(limit),
            replay=make_replay(),
            resolver=resolver,
        )
        return WebhookPipeline(twilio=twilio, telnyx=telnyx_policy, clock=clock, **overrides)

    return make


@pytest.fixture
def pipeline() -> WebhookPipeline:
    """An in-process pipeline, for the layers that keep no state."""
    clock = FakeClock(NOW)
    resolver = ClientAddressResolver(parse_networks("10.0.0.0/8"))
    return WebhookPipeline(
        twilio=CarrierPolicy(
            verifier=TwilioSignatureVerifier([TOKEN]),
            allowlist=Allowlist(parse_networks("192.0.2.0/24, 2001:db8::/32")),
            limiter=InProcessLimiter(100_000),
            replay=InProcessReplayCache(),
            resolver=resolver,
        ),
        telnyx=CarrierPolicy(
            verifier=TelnyxSignatureVerifier([TELNYX_PUBLIC_KEY]),
            allowlist=Allowlist(parse_networks([*TELNYX_WEBHOOK_RANGES, "2001:db8::/32"])),
            limiter=InProcessLimiter(100_000),
            replay=InProcessReplayCache(),
            resolver=resolver,
        ),
        clock=clock,
    )


async def refused(pipeline: WebhookPipeline, request: WebhookRequest) -> Rejection:
    carrier = request.carrier.value
    with pytest.raises(Rejection) as info:
        before = {layer: rejections(carrier, layer) for layer in Layer}
        await pipeline.check(request)
    rejection = info.value
    # Every rejection is metered once, under the layer that raised it.
    assert rejections(carrier, rejection.layer) == before[rejection.layer] + 1
    return rejection


def assert_refused(rejection: Rejection, layer: Layer, status: int) -> None:
    assert (rejection.layer, rejection.status) == (layer, status)
    assert len(rejection.reason) < 40 and TOKEN not in rejection.reason


# -- Twilio: accepted ------------------------------------------------------------------------


async def test_twilio_form_accepted(pipeline):
    before = counter("voicegw_webhook_requests_total", carrier="twilio", outcome="accepted")
    result = await pipeline.check(twilio_request())
    assert result.carrier is Carrier.TWILIO
    assert result.form == tuple(PARAMS)
    assert result.payload is None
    assert not result.duplicate
    assert len(result.event_id) == 32
    assert str(result.client_ip) == TWILIO_PEER
    assert (
        counter("voicegw_webhook_requests_total", carrier="twilio", outcome="accepted")
        == before + 1
    )


async def test_twilio_voice_webhook_without_timestamp_accepted(pipeline):
    result = await pipeline.check(twilio_request(url=TWILIO_VOICE_URL))
    assert not result.duplicate


async def test_twilio_json_body_accepted(pipeline):
    body = b'{"CallSid":"CA1","Status":"completed"}'
    url = f"{TWILIO_URL}&bodySHA256={hashlib.sha256(body).hexdigest()}"
    request = twilio_request([], url=url, body=body, content_type="application/json; charset=utf-8")
    result = await pipeline.check(request)
    assert result.payload == {"CallSid": "CA1", "Status": "completed"}
    assert result.form == ()


async def test_twilio_charset_and_case_tolerated(pipeline):
    request = twilio_request(content_type="Application/X-WWW-Form-Urlencoded; charset=UTF-8")
    await pipeline.check(request)


class MultiDict(dict):
    """The Flask-style mapping Twilio's validator understands for repeated keys."""

    def getall(self, name):
        return self[name]


async def test_twilio_blank_values_and_repeated_keys_kept(pipeline):
    params = [*PARAMS, ("Event", "b"), ("Event", "a"), ("Empty", "")]
    grouped = MultiDict()
    for name, value in params:
        grouped.setdefault(name, []).append(value)
    signature = RequestValidator(TOKEN).compute_signature(TWILIO_URL, grouped)
    result = await pipeline.check(twilio_request(params, signature=signature))
    assert result.form == tuple(params)


# -- Twilio: request sanity ------------------------------------------------------------------


def _reference_form(body: bytes):
    """What ``parse_form`` must equal: the standard library's strict parser."""
    try:
        return tuple(
            parse_qsl(
                body.decode("utf-8"),
                keep_blank_values=True,
                strict_parsing=True,
                errors="strict",
                max_num_fields=MAX_FORM_FIELDS,
            )
        )
    except ValueError:
        return None


_FORM_PIECES = st.sampled_from(
    ["a", "B", "=", "&", "+", "%", "%2", "%20", "%3D", "%26", "%2B", "%ff", "%C3%A9", "é", ""]
)


@settings(max_examples=300, deadline=None)
@given(
    body=st.one_of(
        st.binary(max_size=40),
        st.lists(_FORM_PIECES, max_size=12).map(lambda parts: "".join(parts).encode()),
        st.sampled_from([b"a=1&" * 255 + b"a=1", b"a=1&" * 256 + b"a=1", b"", b"&", b"=&="]),
    )
)
def test_parse_form_equals_the_strict_standard_parser(body):
    expected = _reference_form(body)
    if expected is None:
        with pytest.raises(Rejection):
            parse_form(body)
    else:
        assert parse_form(body) == expected


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "post", "HEAD"])
async def test_wrong_method_is_405(pipeline, method):
    for request in (twilio_request(method=method), telnyx_request(method=method)):
        rejection = await refused(pipeline, request)
        assert_refused(rejection, Layer.REQUEST, 405)
        assert rejection.headers["Allow"] == "POST"


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded; charset=latin-1",
        "application/xml",
        "",
    ],
)
async def test_twilio_wrong_content_type_is_415(pipeline, content_type):
    rejection = await refused(pipeline, twilio_request(content_type=content_type))
    assert_refused(rejection, Layer.REQUEST, 415)


@pytest.mark.parametrize(
    "content_type", [None, FORM, "text/json", "application/json; charset=iso-8859-1"]
)
async def test_telnyx_wrong_content_type_is_415(pipeline, content_type):
    rejection = await refused(pipeline, telnyx_request(content_type=content_type))
    assert_refused(rejection, Layer.REQUEST, 415)


async def test_oversize_body_is_413(pipeline):
    big = [*PARAMS, ("Pad", "x" * MAX_BODY_BYTES)]
    assert_refused(await refused(pipeline, twilio_request(big)), Layer.REQUEST, 413)
    body = telnyx_body(pad="x" * MAX_BODY_BYTES)
    assert_refused(await refused(pipeline, telnyx_request(body)), Layer.REQUEST, 413)


async def test_body_at_the_cap_is_accepted(pipeline):
    filler = MAX_BODY_BYTES - len(urlencode([*PARAMS, ("Pad", "")]))
    params = [*PARAMS, ("Pad", "x" * filler)]
    assert len(urlencode(params)) == MAX_BODY_BYTES
    await pipeline.check(twilio_request(params))


@pytest.mark.parametrize(
    "body",
    [
        b"From=\xff\xfe",  # not UTF-8
        b"From=%ff",  # percent-decodes to invalid UTF-8
        b"From",  # no "="
        b"From=1&&To=2",  # empty field
        b"&From=1",
        b"From=1&",
        b"=" * 300 + b"&a=1" * 300,  # too many fields
    ],
)
async def test_twilio_malformed_form_is_400(pipeline, body):
    rejection = await refused(pipeline, twilio_request(body=body))
    assert_refused(rejection, Layer.REQUEST, 400)


@pytest.mark.parametrize(
    "body",
    [
        b"\xff" + telnyx_body(),  # not UTF-8
        b"\xef\xbb\xbf" + telnyx_body(),  # byte-order mark
        b"{",
        b"[]",
        b'"data"',
        b"null",
        b'{"data": {"id": "a", "event_type": "x", "id": "b"}}',  # duplicate key
        b'{"data": {"id": "a", "event_type": "x"}, "n": NaN}',
        b'{"data": {"id": "a", "event_type": "x"}, "n": Infinity}',
        b"[" * 5000 + b"]" * 5000,
        b"{}",
        b'{"data": []}',
        b'{"data": {"event_type": "call.initiated"}}',
        b'{"data": {"id": "a"}}',
        b'{"data": {"id": 12, "event_type": "call.initiated"}}',
        b'{"data": {"id": "", "event_type": "call.initiated"}}',
        b'{"data": {"id": "\\ud800", "event_type": "call.initiated"}}',  # lone surrogate
        b'{"data": {"id": "a\\u0000", "event_type": "call.initiated"}}',
        b'{"data": {"id": "a", "event_type": "call.initiated\\n"}}',
        b'{"data": {"id": "a", "event_type": null}}',
        ('{"data": {"id": "%s", "event_type": "x"}}' % ("a" * 300)).encode(),
    ],
)
async def test_telnyx_malformed_json_is_400(pipeline, body):
    rejection = await refused(pipeline, telnyx_request(body))
    assert_refused(rejection, Layer.REQUEST, 400)


@pytest.mark.parametrize(
    "extra",
    [
        [("x-twilio-signature", "AAAAAAAAAAAAAAAAAAAAAAAAAAA=")],
        [("content-type", FORM)],
        [("Content-Type", FORM)],
    ],
)
async def test_twilio_duplicated_headers_are_400(pipeline, extra):
    rejection = await refused(pipeline, twilio_request(extra_headers=extra))
    assert_refused(rejection, Layer.REQUEST, 400)


@pytest.mark.parametrize(
    "extra",
    [
        [("telnyx-signature-ed25519", telnyx_sign(str(NOW), telnyx_body()))],
        [("telnyx-timestamp", str(NOW))],
        [("telnyx-timestamp", str(NOW + 1))],
    ],
)
async def test_telnyx_duplicated_headers_are_400(pipeline, extra):
    rejection = await refused(pipeline, telnyx_request(extra_headers=extra))
    assert_refused(rejection, Layer.REQUEST, 400)


async def test_twilio_missing_signature_is_400(pipeline):
    assert_refused(await refused(pipeline, twilio_request(signature="")), Layer.SIGNATURE, 400)


async def test_telnyx_missing_signature_is_400(pipeline):
    assert_refused(await refused(pipeline, telnyx_request(signature="")), Layer.SIGNATURE, 400)


async def test_telnyx_missing_timestamp_is_400(pipeline):
    assert_refused(await refused(pipeline, telnyx_request(timestamp=None)), Layer.FRESHNESS, 400)


async def test_unparsable_url_is_400(pipeline):
    request = twilio_request(url="https://[gw.example.com/webhooks/twilio/status")
    assert_refused(await refused(pipeline, request), Layer.REQUEST, 400)


async def test_unconfigured_carrier_is_404():
    pipeline = WebhookPipeline()
    assert_refused(await refused(pipeline, twilio_request()), Layer.REQUEST, 404)
    assert_refused(await refused(pipeline, telnyx_request()), Layer.REQUEST, 404)
    with pytest.raises(Rejection):
        pipeline.check_twilio_media_upgrade("wss://x/media", [], TWILIO_PEER)


# -- allowlist and client address ------------------------------------------------------------


async def test_source_outside_allowlist_is_403(pipeline):
    assert_refused(
        await refused(pipeline, twilio_request(peer="203.0.113.5")), Layer.ALLOWLIST, 403
    )
    assert_refused(await refused(pipeline, telnyx_request(peer=TWILIO_PEER)), Layer.ALLOWLIST, 403)


async def test_allowlist_runs_before_the_signature(pipeline):
    request = twilio_request(peer="203.0.113.5", signature="AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
    assert_refused(await refused(pipeline, request), Layer.ALLOWLIST, 403)


async def test_untrusted_peer_cannot_claim_an_address(pipeline):
    request = twilio_request(peer="203.0.113.5", extra_headers=[("x-forwarded-for", TWILIO_PEER)])
    assert_refused(await refused(pipeline, request), Layer.ALLOWLIST, 403)


async def test_forged_left_most_forwarded_entry_is_ignored(pipeline):
    spoofed = [("x-forwarded-for", f"{TWILIO_PEER}, 203.0.113.5")]
    request = twilio_request(peer=PROXY, extra_headers=spoofed)
    assert_refused(await refused(pipeline, request), Layer.ALLOWLIST, 403)


async def test_client_behind_trusted_proxy_accepted(pipeline):
    forwarded = [("x-forwarded-for", f"203.0.113.5, {TWILIO_PEER}")]
    result = await pipeline.check(twilio_request(peer=PROXY, extra_headers=forwarded))
    assert str(result.client_ip) == TWILIO_PEER


async def test_malformed_forwarded_for_is_400(pipeline):
    request = twilio_request(peer=PROXY, extra_headers=[("x-forwarded-for", "nonsense")])
    assert_refused(await refused(pipeline, request), Layer.REQUEST, 400)


async def test_ipv6_sources(pipeline):
    assert (await pipeline.check(twilio_request(peer="2001:db8::10"))).client_ip.version == 6
    await pipeline.check(telnyx_request(peer="2001:db8::20"))
    assert_refused(
        await refused(pipeline, twilio_request(peer="2001:db9::10")), Layer.ALLOWLIST, 403
    )
    mapped = await pipeline.check(twilio_request([("A", "1")], peer=f"::ffff:{TWILIO_PEER}"))
    assert str(mapped.client_ip) == TWILIO_PEER


# -- freshness -------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [-301, 301, -86_400, 10**9])
async def test_twilio_ts_outside_window_is_403(pipeline, offset):
    url = f"{PUBLIC}/webhooks/twilio/status?ts={NOW + offset}"
    assert_refused(await refused(pipeline, twilio_request(url=url)), Layer.FRESHNESS, 403)


@pytest.mark.parametrize("offset", [-300, 300, 0])
async def test_twilio_ts_at_window_edges_accepted(pipeline, offset):
    await pipeline.check(twilio_request(url=f"{PUBLIC}/webhooks/twilio/status?ts={NOW + offset}"))


@pytest.mark.parametrize(
    "query", [f"ts=+{NOW}", "ts=", "ts=abc", f"ts={NOW}.5", f"ts={NOW}&ts={NOW}", "ts=1" * 20]
)
async def test_twilio_malformed_ts_is_400(pipeline, query):
    url = f"{PUBLIC}/webhooks/twilio/status?{query}"
    assert_refused(await refused(pipeline, twilio_request(url=url)), Layer.FRESHNESS, 400)


def rfc2822(unix: float) -> str:
    return format_datetime(datetime.fromtimestamp(unix, UTC))


@pytest.mark.parametrize("offset", [-301, 301])
async def test_twilio_timestamp_param_outside_window_is_403(pipeline, offset):
    params = [*PARAMS, ("Timestamp", rfc2822(NOW + offset))]
    request = twilio_request(params, url=TWILIO_VOICE_URL)
    assert_refused(await refused(pipeline, request), Layer.FRESHNESS, 403)


async def test_twilio_timestamp_param_inside_window_accepted(pipeline):
    params = [*PARAMS, ("Timestamp", rfc2822(NOW - 30))]
    await pipeline.check(twilio_request(params, url=TWILIO_VOICE_URL))
    params = [*PARAMS, ("Timestamp", "Tue, 14 Nov 2023 22:13:20 -0000")]
    await pipeline.check(twilio_request(params, url=TWILIO_VOICE_URL))


@pytest.mark.parametrize("stamp", ["yesterday", "", "x" * 100])
async def test_twilio_malformed_timestamp_param_is_400(pipeline, stamp):
    request = twilio_request([*PARAMS, ("Timestamp", stamp)], url=TWILIO_VOICE_URL)
    assert_refused(await refused(pipeline, request), Layer.FRESHNESS, 400)


async def test_twilio_repeated_timestamp_param_is_400(pipeline):
    params = [*PARAMS, ("Timestamp", rfc2822(NOW)), ("Timestamp", rfc2822(NOW))]
    request = twilio_request(params, url=TWILIO_VOICE_URL)
    assert_refused(await refused(pipeline, request), Layer.FRESHNESS, 400)


@pytest.mark.parametrize("offset", [-301, 301, -3600])
async def test_telnyx_outside_window_is_403(pipeline, offset):
    request = telnyx_request(timestamp=str(NOW + offset))
    assert_refused(await refused(pipeline, request), Layer.FRESHNESS, 403)


@pytest.mark.parametrize("offset", [-300, 300])
async def test_telnyx_window_edges_accepted(pipeline, offset):
    await pipeline.check(telnyx_request(telnyx_body(f"edge{offset}"), timestamp=str(NOW + offset)))


@pytest.mark.parametrize(
    "timestamp", [f"+{NOW}", f" {NOW}", f"{NOW}.0", "", "\u0661\u0667" + "\u0660" * 8]
)
async def test_telnyx_malformed_timestamp_is_400(pipeline, timestamp):
    request = telnyx_request(timestamp=timestamp, signature="x")
    assert_refused(await refused(pipeline, request), Layer.FRESHNESS, 400)


# -- signature: every single changed byte ----------------------------------------------------


async def test_twilio_every_body_byte_change_fails_or_is_the_same_delivery(pipeline):
    original = twilio_request()
    assert not (await pipeline.check(original)).duplicate
    body = original.body
    same_fields = 0
    for index in range(len(body)):
        for flip in (0x01, 0x20):
            changed = body[:index] + bytes([body[index] ^ flip]) + body[index + 1 :]
            request = twilio_request(
                body=changed, signature=dict(original.headers)["x-twilio-signature"]
            )
            try:
                result = await pipeline.check(request)
            except Rejection:
                continue
            # Twilio signs the decoded fields, not the bytes: a change that decodes to the
            # same fields (%2B vs %2b) is the same delivery, and is reported as a duplicate.
            assert sorted(result.form) == sorted(PARAMS)
            assert result.duplicate
            same_fields += 1
    assert same_fields == 2  # the two "%2B" escapes in From and To


async def test_twilio_every_url_change_fails(pipeline):
    signature = RequestValidator(TOKEN).compute_signature(TWILIO_URL, dict(PARAMS))
    for index in range(len(TWILIO_URL)):
        char = TWILIO_URL[index]
        changed = TWILIO_URL[:index] + chr(ord(char) ^ 1) + TWILIO_URL[index + 1 :]
        await refused(pipeline, twilio_request(url=changed, signature=signature))


async def test_twilio_every_signature_change_fails(pipeline):
    signature = RequestValidator(TOKEN).compute_signature(TWILIO_URL, dict(PARAMS))
    for index in range(len(signature)):
        for flip in (0x01, 0x02, 0x20):
            changed = signature[:index] + chr(ord(signature[index]) ^ flip) + signature[index + 1 :]
            rejection = await refused(pipeline, twilio_request(signature=changed))
            assert rejection.layer is Layer.SIGNATURE


async def test_telnyx_every_body_byte_change_fails(pipeline):
    body = telnyx_body()
    signature = telnyx_sign(str(NOW), body)
    for index in range(len(body)):
        changed = body[:index] + bytes([body[index] ^ 1]) + body[index + 1 :]
        rejection = await refused(pipeline, telnyx_request(changed, signature=signature))
        assert rejection.layer in (Layer.REQUEST, Layer.SIGNATURE)


async def test_telnyx_every_timestamp_change_fails(pipeline):
    signature = telnyx_sign(str(NOW), telnyx_body())
    # Changes that stay inside the window must fail on the signature.
    for timestamp in (str(NOW + 1), str(NOW - 1), str(NOW + 100)):
        rejection = await refused(
            pipeline, telnyx_request(timestamp=timestamp, signature=signature)
        )
        assert_refused(rejection, Layer.SIGNATURE, 403)
    for index in range(len(str(NOW))):
        text = str(NOW)
        changed = text[:index] + chr(ord(text[index]) ^ 1) + text[index + 1 :]
        await refused(pipeline, telnyx_request(timestamp=changed, signature=signature))


async def test_telnyx_every_signature_change_fails(pipeline):
    signature = telnyx_sign(str(NOW), telnyx_body())
    for index in range(len(signature)):
        for flip in (0x01, 0x02, 0x20):
            changed = signature[:index] + chr(ord(signature[index]) ^ flip) + signature[index + 1 :]
            rejection = await refused(pipeline, telnyx_request(signature=changed))
            assert rejection.layer is Layer.SIGNATURE


async def test_telnyx_pipeline_agrees_with_the_sdk():
    clockless = WebhookPipeline(
        telnyx=CarrierPolicy(
            verifier=TelnyxSignatureVerifier([TELNYX_PUBLIC_KEY]),
            allowlist=Allowlist(parse_networks(TELNYX_WEBHOOK_RANGES)),
            limiter=InProcessLimiter(10),
            replay=InProcessReplayCache(),
        )
    )
    timestamp = str(int(time.time()))
    request = telnyx_request(timestamp=timestamp)
    client = telnyx.Telnyx(api_key="x", public_key=TELNYX_PUBLIC_KEY)
    event = client.webhooks.unwrap(
        request.body.decode(), headers=dict(request.headers), key=TELNYX_PUBLIC_KEY
    )
    result = await clockless.check(request)
    assert result.event_id == event.data.id
    assert result.event_type == "call.initiated"


# -- replay ----------------------------------------------------------------------------------


async def test_twilio_duplicate_counted_not_processed(make_pipeline):
    pipeline = make_pipeline(limit=1)
    before = counter("voicegw_webhook_duplicates_total", carrier="twilio")
    first = await pipeline.check(twilio_request())
    assert not first.duplicate
    again = await pipeline.check(twilio_request())
    assert again.duplicate
    assert again.event_id == first.event_id
    # The duplicate spent none of the deliveries' budget (the first delivery used it all).
    assert counter("voicegw_webhook_duplicates_total", carrier="twilio") == before + 1


async def test_duplicates_have_a_limit_of_their_own(make_pipeline):
    """A flood of replays of one captured delivery is refused with 429 once over the limit,
    and still spends none of the budget of new deliveries."""
    limit = 3
    pipeline = make_pipeline(limit=limit)
    limited = counter("voicegw_rate_limited_total", carrier="twilio", scope="duplicate")
    assert not (await pipeline.check(twilio_request())).duplicate
    for _ in range(limit):
        assert (await pipeline.check(twilio_request())).duplicate
    for _ in range(2):
        with pytest.raises(Rejection) as info:
            await pipeline.check(twilio_request())
        assert info.value.layer is Layer.RATE_LIMIT and info.value.status == 429
        assert int(info.value.headers["Retry-After"]) >= 1
    assert counter("voicegw_rate_limited_total", carrier="twilio", scope="duplicate") == (
        limited + 2
    )
    # New deliveries still have the budget the duplicates did not touch.
    for n in range(limit - 1):
        params = [(k, f"CA{n:032d}" if k == "CallSid" else v) for k, v in PARAMS]
        fresh = await pipeline.check(twilio_request(params))
        assert not fresh.duplicate


async def test_concurrent_copies_are_processed_once(make_pipeline):
    import asyncio

    pipeline = make_pipeline()
    results = await asyncio.gather(*(pipeline.check(twilio_request()) for _ in range(8)))
    assert sum(not result.duplicate for result in results) == 1


class LosesTheRace(InProcessReplayCache):
    """A cache another replica writes to between our read and our write."""

    async def seen(self, key: str) -> bool:
        return False

    async def first_seen(self, key: str, ttl_s: int) -> bool:
        return False


async def test_copy_that_loses_the_race_is_a_duplicate(make_pipeline):
    pipeline = make_pipeline(twilio_replay=LosesTheRace())
    before = counter("voicegw_webhook_duplicates_total", carrier="twilio")
    assert (await pipeline.check(twilio_request())).duplicate
    assert counter("voicegw_webhook_duplicates_total", carrier="twilio") == before + 1


async def test_twilio_reordered_fields_are_the_same_delivery(make_pipeline):
    pipeline = make_pipeline()
    await pipeline.check(twilio_request())
    reordered = twilio_request(list(reversed(PARAMS)))
    assert (await pipeline.check(reordered)).duplicate


async def test_telnyx_retry_with_new_signature_is_a_duplicate(make_pipeline):
    pipeline = make_pipeline()
    before = counter("voicegw_webhook_duplicates_total", carrier="telnyx")
    first = await pipeline.check(telnyx_request())
    retry = await pipeline.check(telnyx_request(timestamp=str(NOW + 60)))
    assert not first.duplicate and retry.duplicate
    assert retry.event_id == first.event_id
    assert counter("voicegw_webhook_duplicates_total", carrier="telnyx") == before + 1


async def test_forged_twilio_request_does_not_poison_replay(make_pipeline):
    pipeline = make_pipeline()
    genuine = twilio_request()
    signature = dict(genuine.headers)["x-twilio-signature"]
    # The attacker saw the genuine signature and sends it first with other fields.
    forged = twilio_request([*PARAMS[:-1], ("Caller", "x")], signature=signature)
    assert_refused(await refused(pipeline, forged), Layer.SIGNATURE, 403)
    assert not (await pipeline.check(genuine)).duplicate


async def test_forged_telnyx_request_does_not_poison_replay(make_pipeline):
    pipeline = make_pipeline()
    genuine = telnyx_request()
    forged = telnyx_request(signature=telnyx_sign(str(NOW), b"something else"))
    assert_refused(await refused(pipeline, forged), Layer.SIGNATURE, 403)
    assert not (await pipeline.check(genuine)).duplicate


# -- rate limit ------------------------------------------------------------------------------


async def test_rate_limit_exact_at_the_boundary(make_pipeline):
    pipeline = make_pipeline(limit=3)
    before = counter("voicegw_rate_limited_total", carrier="telnyx", scope="carrier")
    for index in range(3):
        result = await pipeline.check(telnyx_request(telnyx_body(f"event-{index}")))
        assert not result.duplicate
    rejection = await refused(pipeline, telnyx_request(telnyx_body("event-3")))
    assert_refused(rejection, Layer.RATE_LIMIT, 429)
    headers = rejection.headers
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert headers["RateLimit-Limit"] == "3"
    assert headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(headers["RateLimit-Reset"]) <= 60
    assert counter("voicegw_rate_limited_total", carrier="telnyx", scope="carrier") == before + 1
    # A duplicate of an accepted delivery is still recognised while the limit is exhausted.
    assert (await pipeline.check(telnyx_request(telnyx_body("event-0")))).duplicate
    # The limit is per carrier.
    await pipeline.check(twilio_request())


async def test_badly_signed_flood_spends_no_budget(make_pipeline):
    pipeline = make_pipeline(limit=2)
    for index in range(50):
        forged = telnyx_request(telnyx_body(f"forged-{index}"), signature=telnyx_sign("1", b"x"))
        assert_refused(await refused(pipeline, forged), Layer.SIGNATURE, 403)
        bad = twilio_request([("n", str(index))], signature="AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        assert_refused(await refused(pipeline, bad), Layer.SIGNATURE, 403)
    for index in range(2):
        await pipeline.check(telnyx_request(telnyx_body(f"real-{index}")))
        await pipeline.check(twilio_request([("n", str(index))]))


async def test_rate_limited_delivery_is_processed_when_retried():
    clock = FakeClock(NOW)
    limiter = InProcessLimiter(1, 60, clock=clock)
    pipeline = WebhookPipeline(
        telnyx=CarrierPolicy(
            verifier=TelnyxSignatureVerifier([TELNYX_PUBLIC_KEY]),
            allowlist=Allowlist(parse_networks(TELNYX_WEBHOOK_RANGES)),
            limiter=limiter,
            replay=InProcessReplayCache(clock=clock),
        ),
        clock=clock,
    )
    await pipeline.check(telnyx_request(telnyx_body("first")))
    limited = telnyx_request(telnyx_body("second"))
    assert_refused(await refused(pipeline, limited), Layer.RATE_LIMIT, 429)
    clock.advance(60)
    retry = telnyx_request(telnyx_body("second"), timestamp=str(NOW + 60))
    assert not (await pipeline.check(retry)).duplicate


# -- media WebSocket upgrade -----------------------------------------------------------------

MEDIA_URL = f"wss://gw.example.com/media/twilio?token={'A' * 43}&ts={NOW}"


def media_signature(url: str = MEDIA_URL) -> str:
    return RequestValidator(TOKEN).compute_signature(url, {})


def test_media_upgrade_accepted(pipeline):
    headers = [("x-twilio-signature", media_signature()), ("upgrade", "websocket")]
    assert str(pipeline.check_twilio_media_upgrade(MEDIA_URL, headers, TWILIO_PEER)) == TWILIO_PEER


@pytest.mark.parametrize(
    ("url", "headers", "peer", "layer", "status"),
    [
        (MEDIA_URL, [], TWILIO_PEER, Layer.SIGNATURE, 400),
        (
            MEDIA_URL,
            [("x-twilio-signature", "AAAAAAAAAAAAAAAAAAAAAAAAAAA=")],
            TWILIO_PEER,
            Layer.SIGNATURE,
            403,
        ),
        (
            MEDIA_URL.replace("AAAA", "AAAB", 1),
            [("x-twilio-signature", media_signature())],
            TWILIO_PEER,
            Layer.SIGNATURE,
            403,
        ),
        (
            MEDIA_URL,
            [("x-twilio-signature", media_signature())] * 2,
            TWILIO_PEER,
            Layer.REQUEST,
            400,
        ),
        (
            MEDIA_URL,
            [("x-twilio-signature", media_signature())],
            "203.0.113.5",
            Layer.ALLOWLIST,
            403,
        ),
        (
            MEDIA_URL.replace(str(NOW), str(NOW - 301)),
            [("x-twilio-signature", media_signature(MEDIA_URL.replace(str(NOW), str(NOW - 301))))],
            TWILIO_PEER,
            Layer.FRESHNESS,
            403,
        ),
    ],
)
def test_media_upgrade_refused(pipeline, url, headers, peer, layer, status):
    before = rejections("twilio", layer)
    with pytest.raises(Rejection) as info:
        pipeline.check_twilio_media_upgrade(url, headers, peer)
    assert_refused(info.value, layer, status)
    assert rejections("twilio", layer) == before + 1
