"""The webhook pipeline (``security/webhooks.py``) and its body parsers under hostile requests.

Invariants:

* the parsers return a value or raise ``Rejection(request, 400)``, nothing else;
* the pipeline raises nothing but ``Rejection`` for any request;
* a validly signed delivery with one signed part changed (body, signature, timestamp, signed
  URL, a duplicated or missing security header, the wrong method or content type, a source
  outside the allowlist, a stale clock) is refused, and the refusal changes no state: the
  replay cache and the rate limiter are exactly as before, and the original delivery is still
  recognised as a duplicate and not re-counted;
* a request that differs only in ways the carrier does not sign (header order and case,
  headers nobody reads, a Twilio form body spelled differently) is the *same* delivery: a
  duplicate, never processed twice.
"""

from __future__ import annotations

import copy
import ipaddress
import random
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from security.admission import duplicate_scope
from security.allowlist import Allowlist, ClientAddressResolver, parse_networks
from security.exceptions import Layer, Rejection
from security.ratelimit import InProcessLimiter
from security.replay import InProcessReplayCache
from security.signatures import TelnyxSignatureVerifier, TwilioSignatureVerifier
from security.webhooks import (
    Carrier,
    CarrierPolicy,
    VerifiedWebhook,
    WebhookPipeline,
    WebhookRequest,
    parse_form,
    parse_json_object,
)
from tests.conftest import FakeClock
from tests.fuzz.profile import FUZZ, tally
from tests.fuzz.strategies import dumps, json_values, mutated_bytes, mutated_json, mutated_text
from tests.security.test_webhooks import (
    NOW,
    PARAMS,
    TELNYX_PEER,
    TELNYX_PUBLIC_KEY,
    TOKEN,
    TWILIO_PEER,
    TWILIO_URL,
    telnyx_body,
    telnyx_request,
    twilio_request,
)

# -- parsers ---------------------------------------------------------------------------------

form_bodies = st.one_of(
    st.binary(max_size=200),
    st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10)), max_size=6).map(
        lambda pairs: urlencode(pairs).encode()
    ),
    st.sampled_from([urlencode(PARAMS).encode()]).flatmap(mutated_bytes),
    st.sampled_from([b"a=%ff", b"a=%", b"&&", b"=", b"a", b"a=1;b=2", b"a=1&" * 300]),
)


@FUZZ
@given(body=form_bodies)
def test_parse_form(body):
    try:
        pairs = parse_form(body)
    except Rejection as rejection:
        assert (rejection.layer, rejection.status) == (Layer.REQUEST, 400)
        tally("rejected")
        return
    tally("accepted")
    assert all(isinstance(n, str) and isinstance(v, str) for n, v in pairs)
    for name, value in pairs:
        (name + value).encode("utf-8")  # strictly decoded: no lone surrogates


json_bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: dumps(v).encode()),
    st.sampled_from([telnyx_body()]).flatmap(mutated_bytes),
    st.sampled_from([orjson.loads(telnyx_body())])
    .flatmap(mutated_json)
    .map(lambda v: dumps(v).encode()),
    st.sampled_from(
        [
            b'{"a":1,"a":2}',
            b'{"a":NaN}',
            b'{"a":Infinity}',
            b"\xef\xbb\xbf{}",
            b"[" * 100_000,
            b'{"a":' + b"9" * 5000 + b"}",
            b'{"a":"\\ud800"}',
        ]
    ),
)


@FUZZ
@given(body=json_bodies)
def test_parse_json_object(body):
    try:
        value = parse_json_object(body)
    except Rejection as rejection:
        assert (rejection.layer, rejection.status) == (Layer.REQUEST, 400)
        tally("rejected")
        return
    tally("accepted")
    assert isinstance(value, dict)


# -- the pipeline ----------------------------------------------------------------------------


class Pipeline:
    """A pipeline on in-process state whose state can be compared before and after."""

    def __init__(self) -> None:
        self.clock = FakeClock(NOW)
        resolver = ClientAddressResolver([ipaddress.ip_network("10.0.0.0/8")])
        self.policies: dict[Carrier, CarrierPolicy[Any]] = {
            Carrier.TWILIO: CarrierPolicy(
                verifier=TwilioSignatureVerifier([TOKEN]),
                allowlist=Allowlist(parse_networks("192.0.2.0/24")),
                limiter=InProcessLimiter(1000, clock=self.clock),
                replay=InProcessReplayCache(clock=self.clock),
                resolver=resolver,
            ),
            Carrier.TELNYX: CarrierPolicy(
                verifier=TelnyxSignatureVerifier([TELNYX_PUBLIC_KEY]),
                allowlist=Allowlist(parse_networks("192.76.120.0/24")),
                limiter=InProcessLimiter(1000, clock=self.clock),
                replay=InProcessReplayCache(clock=self.clock),
                resolver=resolver,
            ),
        }
        self.pipeline = WebhookPipeline(
            twilio=self.policies[Carrier.TWILIO],
            telnyx=self.policies[Carrier.TELNYX],
            clock=self.clock,
        )

    def state(self) -> object:
        """Everything the replay caches and limiters hold (their data attributes, copied), but
        the duplicates' own limit, which a duplicate is meant to spend."""
        state = {}
        for carrier, policy in self.policies.items():
            limiter = data_of(policy.limiter)
            limiter["_logs"] = {
                scope: log
                for scope, log in limiter["_logs"].items()
                if scope != duplicate_scope(carrier.value)
            }
            state[carrier] = (data_of(policy.replay), limiter)
        return state

    async def check(self, request: WebhookRequest) -> VerifiedWebhook | Rejection:
        try:
            return await self.pipeline.check(request)
        except Rejection as rejection:
            assert 400 <= rejection.status < 500
            assert rejection.reason and len(rejection.reason) < 64
            return rejection


def data_of(obj: object) -> dict[str, object]:
    names = getattr(type(obj), "__slots__", None) or vars(obj)
    values = {name: getattr(obj, name) for name in names if hasattr(obj, name)}
    return {name: copy.deepcopy(v) for name, v in values.items() if not callable(v)}


def valid(carrier: Carrier) -> WebhookRequest:
    if carrier is Carrier.TWILIO:
        return twilio_request()
    return telnyx_request()


MUST_REJECT = [
    "body",
    "signature",
    "timestamp",
    "signed_url",
    "drop_header",
    "duplicate_header",
    "method",
    "content_type",
    "peer",
    "stale",
]
SAME_DELIVERY = ["header_case", "header_order", "extra_header", "unsigned_url", "respelled"]


def replace_header(request: WebhookRequest, name: str, value: str | None) -> WebhookRequest:
    headers = [(n, v) for n, v in request.headers if n != name]
    if value is not None:
        headers.append((name, value))
    return WebhookRequest(
        request.carrier, request.method, request.url, headers, request.body, request.peer_ip
    )


def header(request: WebhookRequest, name: str) -> str:
    return next(v for n, v in request.headers if n == name)


def with_(request: WebhookRequest, **changes: object) -> WebhookRequest:
    fields: dict[str, Any] = {
        "carrier": request.carrier,
        "method": request.method,
        "url": request.url,
        "headers": request.headers,
        "body": request.body,
        "peer_ip": request.peer_ip,
    }
    fields.update(changes)
    return WebhookRequest(**fields)


@st.composite
def mutations(draw: st.DrawFn, carrier: Carrier) -> tuple[str, WebhookRequest, float]:
    """(kind, request, seconds the clock moves) for one change to a valid delivery."""
    request = valid(carrier)
    twilio = carrier is Carrier.TWILIO
    # Telnyx signs the body and the timestamp header, Twilio the URL and the decoded fields.
    not_applicable = ("timestamp", "unsigned_url") if twilio else ("signed_url", "respelled")
    kinds = [k for k in MUST_REJECT + SAME_DELIVERY if k not in not_applicable]
    kind = draw(st.sampled_from(kinds))
    signature = "x-twilio-signature" if twilio else "telnyx-signature-ed25519"
    security = [signature, "content-type"] + ([] if twilio else ["telnyx-timestamp"])
    clock = 0.0
    match kind:
        case "body":
            body = draw(mutated_bytes(request.body))
            if twilio:
                # A Twilio body that decodes to the same fields is the same delivery.
                try:
                    same = sorted(parse_form(body)) == sorted(parse_form(request.body))
                except Rejection:
                    same = False
                assume(not same)
            assume(body != request.body)
            request = with_(request, body=body)
        case "signature":
            forged = draw(mutated_text(header(request, signature), surrogates=False))
            assume(forged != header(request, signature))
            request = replace_header(request, signature, forged)
        case "timestamp":
            ts = header(request, "telnyx-timestamp")
            forged = draw(mutated_text(ts, surrogates=False) | st.integers(0, 10**15).map(str))
            assume(forged != ts)
            request = replace_header(request, "telnyx-timestamp", forged)
        case "signed_url":
            url = draw(mutated_text(request.url, surrogates=False))
            assume(url != request.url and not url.startswith(TWILIO_URL + "&"))
            request = with_(request, url=url)
        case "drop_header":
            request = replace_header(request, draw(st.sampled_from(security)), None)
        case "duplicate_header":
            name = draw(st.sampled_from(security))
            request = with_(request, headers=[*request.headers, (name, header(request, name))])
        case "method":
            method = draw(st.sampled_from(["GET", "PUT", "post", "HEAD", "DELETE", ""]))
            request = with_(request, method=method)
        case "content_type":
            wrong = ["text/plain", "application/xml", "multipart/form-data", ""]
            wrong.append("application/json" if twilio else "application/x-www-form-urlencoded")
            wrong.append(("application/x-www-form-urlencoded" if twilio else "application/json")
                         + "; charset=latin-1")  # fmt: skip
            # For Twilio, JSON is accepted but a form body is not JSON: refused as malformed.
            request = replace_header(request, "content-type", draw(st.sampled_from(wrong)))
        case "peer":
            peer = draw(st.sampled_from(["203.0.113.9", "10.0.0.1", "::1", "bad", ""]))
            request = with_(request, peer_ip=peer)
        case "stale":
            clock = draw(st.sampled_from([-1, 1])) * draw(st.integers(301, 10**6))
        case "header_case":
            request = with_(request, headers=[(n.upper(), v) for n, v in request.headers])
        case "header_order":
            headers = list(request.headers)
            random.Random(draw(st.integers())).shuffle(headers)
            request = with_(request, headers=headers)
        case "extra_header":
            name = draw(st.sampled_from(["x-forwarded-for", "user-agent", "x-anything"]))
            request = with_(request, headers=[*request.headers, (name, draw(st.text(max_size=20)))])
        case "unsigned_url":
            request = with_(request, url=request.url + "?" + draw(st.text(max_size=10)))
        case "respelled":
            pairs = parse_form(request.body)
            spelled = urlencode(list(reversed(pairs)), quote_via=quote)
            request = with_(request, body=spelled.encode())
    return kind, request, clock


@FUZZ
@pytest.mark.parametrize("carrier", [Carrier.TWILIO, Carrier.TELNYX])
@given(data=st.data())
async def test_one_change_to_a_signed_delivery(carrier, data):
    kind, request, clock = data.draw(mutations(carrier))
    p = Pipeline()
    first = await p.check(valid(carrier))
    assert isinstance(first, VerifiedWebhook) and not first.duplicate
    before = p.state()
    p.clock.advance(clock)
    result = await p.check(request)
    p.clock.advance(-clock)
    if kind in MUST_REJECT:
        assert isinstance(result, Rejection), f"{kind}: a changed delivery was accepted"
        tally("rejected")
    else:
        assert isinstance(result, VerifiedWebhook) and result.duplicate, kind
        tally("accepted")
    assert p.state() == before, f"{kind}: state changed"
    again = await p.check(valid(carrier))
    assert isinstance(again, VerifiedWebhook) and again.duplicate
    assert p.state() == before


headers = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "content-type",
                "x-twilio-signature",
                "telnyx-signature-ed25519",
                "telnyx-timestamp",
                "x-forwarded-for",
                "Content-Type",
            ]
        )
        | st.text(max_size=10),
        st.text(max_size=40)
        | st.sampled_from(["application/json", "application/x-www-form-urlencoded", str(NOW)]),
    ),
    max_size=6,
)


@FUZZ
@given(
    carrier=st.sampled_from(list(Carrier)),
    method=st.sampled_from(["POST", "GET", "PUT"]) | st.text(max_size=6),
    url=st.sampled_from([TWILIO_URL]) | st.text(max_size=60),
    headers=headers,
    body=json_bodies | form_bodies,
    peer=st.sampled_from([TWILIO_PEER, TELNYX_PEER, "10.0.0.1", "::1"]) | st.text(max_size=12),
)
async def test_garbage_requests(carrier, method, url, headers, body, peer):
    p = Pipeline()
    before = p.state()
    result = await p.check(WebhookRequest(carrier, method, url, headers, body, peer))
    assert isinstance(result, Rejection), "an unsigned request was accepted"
    assert p.state() == before
    tally("rejected")


dates = st.one_of(
    st.builds(
        "{}, {} {} {} {}:{}:{} {}".format,
        st.sampled_from(["Mon", "Tue", "xyz", ""]),
        st.integers(-1, 10**12),
        st.sampled_from(["Jan", "Feb", "Dec", "Foo"]),
        st.integers(-1, 10**12),
        st.integers(-1, 99),
        st.integers(-1, 99),
        st.integers(-1, 99),
        st.sampled_from(["+0000", "-0000", "GMT", "+2359", "-9999", "EST", "+99999999"]),
    ),
    st.text(max_size=64),
)


@FUZZ
@given(stamp=dates)
async def test_twilio_timestamp_field(stamp):
    """Twilio's ``Timestamp`` form field is read before the signature (freshness runs
    first): whatever it holds, the answer is a rejection or a verified delivery."""
    p = Pipeline()
    params = [*PARAMS, ("Timestamp", stamp)]
    result = await p.check(twilio_request(params))
    tally("rejected" if isinstance(result, Rejection) else "accepted")
    unsigned = await p.check(twilio_request(params, signature="A" * 27 + "="))
    assert isinstance(unsigned, Rejection)
