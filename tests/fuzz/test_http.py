"""The HTTP surface (the whole Starlette app over ``httpx.ASGITransport``) under hostile requests.

State is real: the Redis backend (every key under the test's own prefix) and SQLite.
Invariants, per request:

* never a 5xx, and every 4xx is a short JSON ``{"error": ...}``;
* webhooks: an unsigned or mis-signed delivery is never accepted (no 2xx), and it changes no
  shared state: the rate-limit, replay and stream-token keys in Redis are byte for byte what
  they were, and the live-call registry and the call records are unchanged (a rejection is
  audited: that row is the only write it makes);
* ``/auth/login``: any body, content type or origin gets an answer; a body refused before
  the password check (400, 413, 415) does not count as a failed login for the name it carries;
* ``/api/v1``: any credentials, query parameters and path parameters get an answer.
"""

from __future__ import annotations

import base64
import dataclasses
import time
from urllib.parse import quote, urlencode

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cli.admin import add_user, create_api_key
from gateway.operators import routes as auth_routes
from gateway.records.base import Role
from security.admission import duplicate_scope
from security.ratelimit import RedisLimiter
from security.webhooks import Carrier
from tests.fuzz.profile import COSTLY, tally
from tests.fuzz.strategies import AWKWARD, dumps, json_values, mutated_bytes, mutated_json
from tests.gateway.conftest import (  # noqa: F401 - fixtures
    Gateway,
    GatewayFactory,
    call_sid,
    make_gateway,
    telnyx_event,
)
from tests.sessions.harness import TEST_HASHER

PASSWORD = "correct horse battery staple"


@pytest.fixture
async def gw(make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch) -> Gateway:  # noqa: F811
    """A gateway on the real Redis, with an admin user, a cheap password hash and no failed-
    login delay (the hash format and code path are production's; only the cost differs)."""
    monkeypatch.setattr(auth_routes, "FAILED_LOGIN_FLOOR_S", 0.0)
    # Thousands of logins from one address: the per-address limit has its own tests.
    made = await make_gateway({"VOICEGW_LOGIN_RATE_PER_MINUTE": "10000"}, redis=True)
    made.runtime.auth.hasher = TEST_HASHER
    await add_user(made.runtime.store, TEST_HASHER, "ada", Role.ADMIN, PASSWORD)
    return QuietGateway(**vars(made))


@dataclasses.dataclass(repr=False)
class QuietGateway(Gateway):
    """A ``Gateway`` with a short repr: Hypothesis prints the test's arguments, fixtures
    included, when it reports an example."""

    def __repr__(self) -> str:
        return "<gateway>"


async def shared_state(gw: Gateway) -> object:
    """What a webhook may change: rate-limit, replay and stream-token keys (their bytes),
    the live calls, and the durable call records. Not the duplicates' own limit, which a
    duplicate is meant to spend."""
    redis = gw.runtime.redis
    assert redis is not None
    prefix = gw.settings.redis_key_prefix
    limiter = RedisLimiter(redis, prefix + "rl:", 1)
    duplicates = {key.encode() for c in Carrier for key in limiter.keys(duplicate_scope(c.value))}
    keys: dict[bytes, bytes | None] = {}
    for part in ("rl:", "replay:", "st:"):
        async for key in redis.scan_iter(match=f"{prefix}{part}*"):
            if key not in duplicates:
                keys[key] = await redis.dump(key)
    live = sorted((c.call_id, c.state.value) for c in await gw.runtime.registry.list_active())
    records = [r.call_id for r in await gw.runtime.store.list_calls(limit=1000)]
    return keys, live, records


def assert_answer(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400 and response.content:
        body = response.json()
        assert set(body) == {"error"} and len(body["error"]) < 100


# -- webhooks --------------------------------------------------------------------------------

WEBHOOKS = ["/webhooks/twilio/voice", "/webhooks/twilio/status", "/webhooks/telnyx"]
FORM = "application/x-www-form-urlencoded"
SECURITY_HEADERS = [
    "content-type",
    "content-length",
    "x-twilio-signature",
    "telnyx-signature-ed25519",
    "telnyx-timestamp",
    "x-forwarded-for",
]


def twilio_form(sid: str) -> dict[str, str]:
    return {"CallSid": sid, "AccountSid": "AC" + "0" * 32, "From": "+15550100001"}


@st.composite
def hostile_webhooks(draw: st.DrawFn, gw: Gateway) -> tuple[str, str, list[tuple[str, str]], bytes]:
    """(method, path and query, headers, body): signed deliveries with a signed part changed,
    deliveries signed with the wrong key, and random requests."""
    path = draw(st.sampled_from(WEBHOOKS))
    kind = draw(st.sampled_from(["mutated", "wrong_key", "random"]))
    if path == "/webhooks/telnyx":
        body = telnyx_event(draw(st.sampled_from(["call.initiated", "call.hangup"])), "v3:x")
        ts = str(int(time.time()))
        signature = gw.telnyx_signature(body, ts)
        if kind == "mutated":
            change = draw(st.sampled_from(["body", "ts", "signature"]))
            if change == "body":
                original = body
                body = draw(
                    (mutated_bytes(body) | mutated_json(orjson.loads(body)).map(dumps))
                    .map(lambda b: b.encode() if isinstance(b, str) else b)
                    .filter(lambda b: b != original)  # a mutation may give the same bytes
                )
            elif change == "ts":
                ts = str(int(ts) + draw(st.integers(-400, 400).filter(bool)))
            else:
                raw = bytearray(base64.b64decode(signature))
                raw[draw(st.integers(0, 63))] ^= draw(st.integers(1, 255))
                signature = base64.b64encode(raw).decode()
        elif kind == "wrong_key":
            from nacl.signing import SigningKey

            key = SigningKey(draw(st.binary(min_size=32, max_size=32)))
            signature = base64.b64encode(key.sign(ts.encode() + b"|" + body).signature).decode()
        headers = [
            ("content-type", "application/json"),
            ("telnyx-signature-ed25519", signature),
            ("telnyx-timestamp", ts),
        ]
        query = ""
    else:
        params = twilio_form(call_sid())
        query = draw(st.sampled_from(["", "?ts=" + str(int(time.time())), "?a=b"]))
        signature = gw.twilio_signature(path + query, params)
        if kind == "mutated":
            change = draw(st.sampled_from(["field", "add", "query", "signature"]))
            if change == "field":
                name = draw(st.sampled_from(sorted(params)))
                params[name] = params[name] + draw(st.text(min_size=1, max_size=5))
            elif change == "add":
                params["Extra" + draw(st.text(max_size=5))] = draw(st.text(max_size=5))
            elif change == "query":
                query += ("&" if query else "?") + "x=" + quote(draw(st.text(max_size=5)))
            else:
                raw = bytearray(base64.b64decode(signature))
                raw[draw(st.integers(0, 19))] ^= draw(st.integers(1, 255))
                signature = base64.b64encode(raw).decode()
        elif kind == "wrong_key":
            from twilio.request_validator import RequestValidator

            other = RequestValidator(draw(st.text(min_size=1, max_size=20)))
            signature = other.compute_signature(gw.settings.public(path + query), params)
        headers = [("content-type", FORM), ("x-twilio-signature", signature)]
        body = urlencode(params).encode()
    if kind == "random":
        headers = draw(
            st.lists(
                st.tuples(
                    st.sampled_from(SECURITY_HEADERS)
                    | st.from_regex(r"[a-z-]{1,12}", fullmatch=True),
                    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40),
                ),
                max_size=5,
            )
        )
        body = draw(st.binary(max_size=300) | json_values.map(lambda v: dumps(v).encode()))
        query = draw(st.sampled_from(["", "?ts=1", "?ts=" + "9" * 30]))
    method = "POST" if kind != "random" else draw(st.sampled_from(["POST", "GET", "PUT"]))
    return method, path + query, headers, body


@COSTLY
@given(data=st.data())
async def test_webhooks_refuse_unsigned_and_mis_signed(gw, data):
    method, url, headers, body = data.draw(hostile_webhooks(gw))
    before = await shared_state(gw)
    raw_headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]
    response = await gw.http.request(method, url, headers=raw_headers, content=body)
    assert_answer(response)
    assert response.status_code >= 400, "an unsigned or mis-signed webhook was accepted"
    assert await shared_state(gw) == before, "a rejected webhook changed shared state"
    tally("rejected")


# -- /auth/login -----------------------------------------------------------------------------

login_bodies = st.one_of(
    st.builds(
        lambda u, p: {"username": u, "password": p},
        st.sampled_from(["ada", " ADA ", "ada\x00", ""]) | st.text(max_size=70),
        st.sampled_from([PASSWORD, PASSWORD + " ", "", "x" * 2000]) | st.text(max_size=20),
    ).map(dumps),
    st.sampled_from([{"username": "ada", "password": PASSWORD}]).flatmap(mutated_json).map(dumps),
    json_values.map(dumps),
    st.text(max_size=100),
    st.sampled_from(["x" * 5000, '{"username": "ada", "password": "' + "p" * 5000 + '"}']),
)
content_types = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "text/plain", "", "application/jsonx"]
)
UNSPLITTABLE = ["http://gw.test:99999", "http://[::1", "http://gw.test:x", "http://[zz]"]
origins = st.sampled_from(
    [None, "http://gw.test:8000", "https://evil.example", "null", "\x7f", *UNSPLITTABLE]
)


@COSTLY
@given(body=login_bodies, content_type=content_types, origin=origins)
async def test_login_bodies(gw, body, content_type, origin):
    headers = {"content-type": content_type}
    if origin is not None:
        headers["origin"] = origin
    username = _username(body)
    failures_before = await _failures(gw, username)
    response = await gw.http.post("/auth/login", content=body.encode(), headers=headers)
    assert_answer(response)
    assert response.status_code in (200, 400, 401, 403, 413, 415), response.status_code
    if response.status_code in (400, 403, 413, 415):
        assert await _failures(gw, username) == failures_before
    tally("accepted" if response.status_code == 200 else "rejected")


def _username(body: str) -> str | None:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    name = value.get("username") if isinstance(value, dict) else None
    return name.strip().lower()[:64] if isinstance(name, str) else None


async def _failures(gw: Gateway, username: str | None) -> int:
    if username is None:
        return 0
    return await gw.runtime.store.count_login_failures(username, 0.0)


# -- /api/v1 ---------------------------------------------------------------------------------

query_values = st.sampled_from([v for v in AWKWARD if isinstance(v, str) and len(v) < 6000])
query_values = query_values | st.text(max_size=12) | st.integers(-5, 2**64).map(str)
QUERY_NAMES = ["limit", "after_seq", "before_seq", "since", "until", "order", "direction", "actor"]
QUERY_NAMES += ["action", "outcome", "entity_type", "entity_id", "format"]
API_PATHS = [
    "/api/v1/calls",
    "/api/v1/providers",
    "/api/v1/audit",
    "/api/v1/users/{}/data",
    "/api/v1/users/{}/delete",
    "/api/v1/calls/{}/recording",
    "/auth/session",
]


def raw(text: str) -> bytes:
    """UTF-8 bytes of ``text``, lone surrogates included (they arrive as invalid UTF-8)."""
    return text.encode("utf-8", "surrogatepass")


@pytest.fixture
async def api_key(gw: Gateway) -> str:
    new, _ = await create_api_key(gw.runtime.store, "fuzz", Role.ADMIN)
    return new.token


@COSTLY
@given(
    path=st.sampled_from(API_PATHS),
    segment=query_values,
    params=st.lists(
        st.tuples(
            st.sampled_from(QUERY_NAMES),
            query_values,
        ),
        max_size=4,
    ),
    credentials=st.sampled_from(["key", "none", "garbage", "cookie"]),
    garbage=st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60),
)
async def test_api_requests(gw, api_key, path, segment, params, credentials, garbage):
    headers: list[tuple[bytes, bytes]] = []
    if credentials == "key":
        headers.append((b"authorization", f"Bearer {api_key}".encode()))
    elif credentials == "garbage":
        headers.append((b"authorization", garbage.encode("latin-1")))
    elif credentials == "cookie":
        headers.append((b"cookie", b"voicegw_access=" + garbage.encode("latin-1")))
    url = path.format(quote(raw(segment), safe="")) + (
        "?" + urlencode([(n, raw(v)) for n, v in params]) if params else ""
    )
    method = "POST" if path.endswith("/delete") else "GET"
    response = await gw.http.request(method, url, headers=headers)
    assert_answer(response)
    tally("accepted" if response.status_code < 400 else "rejected")


ROUTE_PARAMETERS = {
    "/api/v1/calls": ["limit"],
    "/api/v1/audit": [
        *("limit", "after_seq", "before_seq", "since", "until", "order"),
        *("action", "actor", "outcome", "entity_type", "entity_id"),
    ],
    "/api/v1/calls/CA1/recording": ["direction"],
}


async def test_every_query_parameter_with_every_awkward_value(gw, api_key):
    """Each query parameter of each route, authenticated, set to each awkward value."""
    headers = {"authorization": f"Bearer {api_key}"}
    for path, names in ROUTE_PARAMETERS.items():
        for name in names:
            for value in AWKWARD:
                if isinstance(value, list | dict) or len(str(value)) > 10_000:
                    continue  # httpx refuses URLs over 64 KiB
                query = urlencode([(name, raw(str(value)))])
                response = await gw.http.get(f"{path}?{query}", headers=headers)
                assert_answer(response)
                tally("accepted" if response.status_code < 400 else "rejected")


TWILIO_READS = ["x-twilio-signature"]


async def test_every_security_header_with_every_awkward_value(gw):
    """Each header the webhook layers read, on a signed delivery, set to each awkward value
    (as raw latin-1 bytes, what a server hands the application): refused, state unchanged."""
    body = telnyx_event("call.hangup", "v3:awkward")
    ts = str(int(time.time()))
    base = {
        "content-type": "application/json",
        "telnyx-signature-ed25519": gw.telnyx_signature(body, ts),
        "telnyx-timestamp": ts,
    }
    values = [v for v in AWKWARD if isinstance(v, str) and len(v) < 10_000]
    values = [v for v in values if all(ord(c) < 256 for c in v)]
    paths = ("/webhooks/telnyx", "/webhooks/twilio/status")
    # Content-Length is not signed (and httpx sends the body whatever it says): any answer
    # but a 5xx will do.
    for value in values:
        raw_headers = [(n.encode(), v.encode()) for n, v in base.items()]
        raw_headers.append((b"content-length", value.encode("latin-1")))
        for path in paths:
            assert_answer(await gw.http.post(path, headers=raw_headers, content=body))
    before = await shared_state(gw)
    read_by = {"/webhooks/telnyx": list(base), "/webhooks/twilio/status": [*base, *TWILIO_READS]}
    for path, names in read_by.items():
        for name in [*names, "x-forwarded-for"]:
            for value in values:
                if value == base.get(name):
                    continue
                headers = {**base, name: value}
                raw_headers = [(n.encode(), v.encode("latin-1")) for n, v in headers.items()]
                response = await gw.http.post(path, headers=raw_headers, content=body)
                assert_answer(response)
                if name in names:  # a header this carrier's layers read: refused
                    assert response.status_code >= 400, (path, name, value)
                    tally("rejected")
    assert await shared_state(gw) == before
