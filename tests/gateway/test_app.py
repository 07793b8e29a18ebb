"""The app's own routes (health, readiness, metrics, unknown paths) in process, and the media
WebSocket refusals through starlette's TestClient (which runs the lifespan)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from twilio.request_validator import RequestValidator

from gateway.app import build_app
from gateway.calls.state import CallState
from gateway.http.errors import CloseCode
from tests.conftest import DEAD_REDIS_URL, UNIT
from tests.gateway.conftest import (
    PUBLIC_WS_URL,
    Gateway,
    GatewayFactory,
    call_sid,
    make_settings,
)

VOICE = "/webhooks/twilio/voice"


# -- health and readiness ---------------------------------------------------------------------


async def test_healthz(gw: Gateway):
    response = await gw.http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert (await gw.http.head("/healthz")).status_code == 200


async def test_readyz_in_process(gw: Gateway):
    response = await gw.http.get("/readyz")
    assert response.status_code == 200
    report = response.json()
    assert report["ready"] is True and report["draining"] is False
    assert report["live_calls"] == 0
    assert "redis" not in report


async def test_readyz_with_redis(make_gateway: GatewayFactory):
    gw = await make_gateway(redis=True)
    response = await gw.http.get("/readyz")
    assert response.status_code == 200
    assert response.json()["redis"] == "ok"


async def test_readyz_503_while_draining_healthz_still_200(gw: Gateway):
    gw.runtime.lifecycle.draining = True
    response = await gw.http.get("/readyz")
    assert response.status_code == 503
    assert response.json()["ready"] is False and response.json()["draining"] is True
    assert (await gw.http.get("/healthz")).status_code == 200


async def test_readyz_503_when_redis_unreachable(make_gateway: GatewayFactory):
    gw = await make_gateway({"VOICEGW_REDIS_URL": DEAD_REDIS_URL})
    async with asyncio.timeout(5 * UNIT):
        response = await gw.http.get("/readyz")
    assert response.status_code == 503
    report = response.json()
    assert report["redis"] == "unreachable" and report["ready"] is False
    assert "127.0.0.1:1" not in response.text


# -- metrics ----------------------------------------------------------------------------------


async def test_metrics_from_loopback_without_token(gw: Gateway):
    response = await gw.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "voicegw_build_info" in response.text


async def test_metrics_from_elsewhere_without_token_403(gw: Gateway):
    async with gw.client_from("203.0.113.7") as http:
        response = await http.get("/metrics")
    assert response.status_code == 403
    assert response.json() == {"error": "source not allowed"}


async def test_metrics_forwarded_for_from_untrusted_peer_does_not_grant_access(gw: Gateway):
    async with gw.client_from("203.0.113.7") as http:
        response = await http.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"})
    assert response.status_code == 403


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", "Bearer ", "Basic bWV0cmljcy1zZWNyZXQ=", "bearer s3"]
)
async def test_metrics_token_required_when_set(make_gateway: GatewayFactory, authorization):
    gw = await make_gateway({"VOICEGW_METRICS_TOKEN": "s3"})
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await gw.http.get("/metrics", headers=headers)  # even from loopback
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {"error": "bearer token required"}


async def test_metrics_with_token(make_gateway: GatewayFactory):
    gw = await make_gateway({"VOICEGW_METRICS_TOKEN": "s3"})
    async with gw.client_from("203.0.113.7") as http:
        response = await http.get("/metrics", headers={"Authorization": "Bearer s3"})
    assert response.status_code == 200
    assert "voicegw_build_info" in response.text


def _rejections(text: str, carrier: str, layer: str) -> float:
    prefix = f'voicegw_webhook_rejections_total{{carrier="{carrier}",layer="{layer}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


async def test_metrics_count_a_rejection_once(gw: Gateway):
    before = _rejections((await gw.http.get("/metrics")).text, "twilio", "signature")
    response = await gw.twilio(VOICE, {"CallSid": call_sid()}, signature="A" * 27 + "=")
    assert response.status_code == 403
    text = (await gw.http.get("/metrics")).text
    assert "# TYPE voicegw_webhook_rejections_total counter" in text
    assert _rejections(text, "twilio", "signature") == before + 1


async def test_metrics_count_a_request_layer_rejection_once(gw: Gateway):
    before = _rejections((await gw.http.get("/metrics")).text, "telnyx", "request")
    assert (await gw.http.get("/webhooks/telnyx")).status_code == 405
    assert (await gw.http.post("/webhooks/telnyx", content=b"{}")).status_code == 415
    after = _rejections((await gw.http.get("/metrics")).text, "telnyx", "request")
    assert after == before + 2


# -- unknown paths ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/webhooks/twilio", "/webhooks/telnyx/extra", "/"])
async def test_unknown_path_404_json(gw: Gateway, path):
    response = await gw.http.get(path)
    assert response.status_code == 404
    assert response.json() == {"error": "not found"}
    assert (await gw.http.post(path, content=b"x")).status_code == 404


# -- media upgrade refusals (TestClient runs the lifespan) ------------------------------------


class Media:
    """A TestClient on a running app, with the Twilio helpers the media tests need."""

    def __init__(self, client: TestClient, token: str) -> None:
        self.client = client
        self.validator = RequestValidator(token)
        self.paths: dict[str, str] = {}  # CallSid -> the stream path the TwiML named

    def voice(self, sid: str) -> str:
        """Deliver a signed voice webhook for ``sid``; return the stream token from the TwiML
        (its stream path is kept in ``paths``)."""
        params = {"CallSid": sid, "AccountSid": "AC" + "0" * 32, "From": "+15550100001"}
        url = "http://gw.test:8000" + VOICE
        response = self.client.post(
            VOICE,
            data=params,
            headers={"X-Twilio-Signature": self.validator.compute_signature(url, params)},
        )
        assert response.status_code == 200, response.text
        stream_url = response.text.split('<Stream url="', 1)[1].split('"', 1)[0]
        assert stream_url.startswith(PUBLIC_WS_URL + "/media/twilio/call_")
        self.paths[sid] = stream_url.removeprefix(PUBLIC_WS_URL)
        marker = '<Parameter name="token" value="'
        return response.text.split(marker, 1)[1].split('"', 1)[0]

    def signed_headers(self, path: str) -> dict[str, str]:
        return {"X-Twilio-Signature": self.validator.compute_signature(PUBLIC_WS_URL + path, {})}

    def connect(self, sid: str, *, path: str | None = None) -> Any:
        """Open the stream of ``sid``'s call as Twilio would: its path, signed upgrade
        (``path``: connect there instead, with that path's signature)."""
        path = path or self.paths[sid]
        return self.client.websocket_connect(path, headers=self.signed_headers(path))

    def registry_state(self, sid: str) -> CallState | None:
        runtime = self.client.app.state.runtime  # type: ignore[attr-defined]

        async def get() -> Any:
            return await runtime.registry.by_carrier_id("twilio", sid)

        call = self.client.portal.call(get)  # type: ignore[union-attr]
        return None if call is None else call.state


@pytest.fixture
def media(tmp_path: Path) -> Iterator[Media]:
    settings = make_settings(tmp_path)
    assert settings.twilio_auth_token is not None
    app = build_app(settings)
    with TestClient(app, client=("127.0.0.1", 50000), base_url="http://gw.test:8000") as client:
        yield Media(client, settings.twilio_auth_token.get())


STREAM_SID = "MZ" + "1" * 32


def twilio_start(sid: str, token: str | None, stream_sid: str = STREAM_SID) -> str:
    start: dict[str, Any] = {
        "streamSid": stream_sid,
        "accountSid": "AC" + "0" * 32,
        "callSid": sid,
        "tracks": ["inbound"],
        "customParameters": {} if token is None else {"token": token},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    return orjson.dumps(
        {"event": "start", "sequenceNumber": "1", "streamSid": stream_sid, "start": start}
    ).decode()


def twilio_stop(sid: str, stream_sid: str = STREAM_SID) -> str:
    return orjson.dumps(
        {
            "event": "stop",
            "sequenceNumber": "2",
            "streamSid": stream_sid,
            "stop": {"accountSid": "AC" + "0" * 32, "callSid": sid},
        }
    ).decode()


CONNECTED = orjson.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}).decode()


def closed_with(ws: Any) -> int:
    """Read until the server closes; return the close code."""
    deadline = time.monotonic() + 10 * UNIT
    while time.monotonic() < deadline:
        try:
            message = ws.receive()
        except WebSocketDisconnect as exc:
            return exc.code
        if message["type"] == "websocket.close":
            return int(message.get("code", 1000))
    raise AssertionError("server did not close the stream")


def test_twilio_upgrade_without_signature_refused(media: Media):
    sid = call_sid()
    media.voice(sid)
    with pytest.raises(WebSocketDisconnect) as info:
        with media.client.websocket_connect(media.paths[sid]):
            pass
    assert info.value.code == CloseCode.POLICY_VIOLATION


def test_twilio_upgrade_with_bad_signature_refused(media: Media):
    sid = call_sid()
    media.voice(sid)
    path = media.paths[sid]
    bad = RequestValidator("not-the-token").compute_signature(PUBLIC_WS_URL + path, {})
    with pytest.raises(WebSocketDisconnect) as info:
        with media.client.websocket_connect(path, headers={"X-Twilio-Signature": bad}):
            pass
    assert info.value.code == CloseCode.POLICY_VIOLATION


def test_twilio_upgrade_signed_for_another_path_refused(media: Media):
    sid = call_sid()
    media.voice(sid)
    headers = media.signed_headers("/media/telnyx")
    with pytest.raises(WebSocketDisconnect) as info:
        with media.client.websocket_connect(media.paths[sid], headers=headers):
            pass
    assert info.value.code == CloseCode.POLICY_VIOLATION


def test_twilio_stream_path_without_a_call_refused(media: Media):
    """The old, call-less stream URL: refused cleanly even with a valid signature over it."""
    path = "/media/twilio"
    with pytest.raises(WebSocketDisconnect) as info:
        with media.client.websocket_connect(path, headers=media.signed_headers(path)):
            pass
    assert info.value.code == CloseCode.POLICY_VIOLATION
    assert media.client.get("/healthz").status_code == 200


def test_upgrade_header_of_one_call_does_not_open_another(media: Media):
    """A captured upgrade signature (call A's path) replayed on call B's path is refused, and
    on A's own path cannot carry B's stream: B's stream opens afterwards as usual."""
    sid_a, sid_b = call_sid(), call_sid()
    media.voice(sid_a)
    token_b = media.voice(sid_b)
    captured = media.signed_headers(media.paths[sid_a])
    with pytest.raises(WebSocketDisconnect) as info:
        with media.client.websocket_connect(media.paths[sid_b], headers=captured):
            pass
    assert info.value.code == CloseCode.POLICY_VIOLATION
    # On A's path (where the captured signature is valid) with B's start and token: refused
    # before B's token is spent.
    with media.connect(sid_a) as ws:
        ws.send_text(CONNECTED)
        ws.send_text(twilio_start(sid_b, token_b))
        assert closed_with(ws) == CloseCode.POLICY_VIOLATION
    assert media.registry_state(sid_b) is CallState.CONNECTING
    with media.connect(sid_b) as ws:
        ws.send_text(CONNECTED)
        ws.send_text(twilio_start(sid_b, token_b))
        deadline = time.monotonic() + 10 * UNIT
        while media.registry_state(sid_b) is not CallState.STREAMING:
            assert time.monotonic() < deadline, "B's own stream did not open"
            time.sleep(0.01)
        ws.send_text(twilio_stop(sid_b))


def test_media_upgrade_from_outside_the_allowlist_refused(tmp_path: Path):
    settings = make_settings(tmp_path)
    assert settings.twilio_auth_token is not None
    validator = RequestValidator(settings.twilio_auth_token.get())
    twilio_path = "/media/twilio/call_" + "A" * 22
    headers = {"X-Twilio-Signature": validator.compute_signature(PUBLIC_WS_URL + twilio_path, {})}
    with TestClient(build_app(settings), client=("203.0.113.7", 50000)) as client:
        for path, hdrs in ((twilio_path, headers), ("/media/telnyx", {})):
            with pytest.raises(WebSocketDisconnect) as info:
                with client.websocket_connect(path, headers=hdrs):
                    pass
            assert info.value.code == CloseCode.POLICY_VIOLATION


@pytest.mark.parametrize("token", ["wrong", None, "A" * 43], ids=["wrong", "missing", "unknown"])
def test_twilio_start_with_bad_token_closes_1008(media: Media, token):
    sid = call_sid()
    media.voice(sid)
    with media.connect(sid) as ws:
        ws.send_text(CONNECTED)
        ws.send_text(twilio_start(sid, token))
        assert closed_with(ws) == CloseCode.POLICY_VIOLATION
    assert media.registry_state(sid) is CallState.CONNECTING


def test_twilio_token_of_another_call_closes_1008_and_is_spent(media: Media):
    sid_a, sid_b = call_sid(), call_sid()
    token_a = media.voice(sid_a)
    media.voice(sid_b)
    with media.connect(sid_b) as ws:
        ws.send_text(twilio_start(sid_b, token_a))
        assert closed_with(ws) == CloseCode.POLICY_VIOLATION
    # Presenting the token spent it, even for the wrong call.
    with media.connect(sid_a) as ws:
        ws.send_text(twilio_start(sid_a, token_a))
        assert closed_with(ws) == CloseCode.POLICY_VIOLATION


def test_twilio_reused_token_closes_1008(media: Media):
    sid = call_sid()
    token = media.voice(sid)
    with media.connect(sid) as ws:
        ws.send_text(CONNECTED)
        ws.send_text(twilio_start(sid, token))
        ws.send_text(twilio_stop(sid))
        # After ``stop`` the carrier closes; the gateway ends the call without a close frame.
        deadline = time.monotonic() + 10 * UNIT
        while media.registry_state(sid) is not CallState.ENDED:
            assert time.monotonic() < deadline, "the call did not end after stop"
            time.sleep(0.01)
    with media.connect(sid) as ws:
        ws.send_text(twilio_start(sid, token))
        assert closed_with(ws) == CloseCode.POLICY_VIOLATION


def test_garbage_and_binary_before_start_do_not_crash(media: Media):
    sid = call_sid()
    media.voice(sid)
    with media.connect(sid) as ws:
        ws.send_bytes(b"\x00\xff" * 100)
        ws.send_text("not json at all")
        ws.send_text('{"event": "start"}')
        ws.send_text("[]")
        ws.send_text(twilio_start(sid, "wrong"))
        assert closed_with(ws) == CloseCode.POLICY_VIOLATION
    # The app still serves.
    assert media.client.get("/healthz").status_code == 200


def test_endless_garbage_before_start_closes_1008(media: Media):
    sid = call_sid()
    media.voice(sid)
    with media.connect(sid) as ws:
        for _ in range(30):
            ws.send_text("garbage")
        assert closed_with(ws) == CloseCode.POLICY_VIOLATION


def test_disconnect_before_start_leaves_the_call_connecting(media: Media):
    sid = call_sid()
    media.voice(sid)
    with media.connect(sid) as ws:
        ws.send_text(CONNECTED)
    assert media.registry_state(sid) is CallState.CONNECTING
    assert media.client.get("/healthz").status_code == 200


def test_telnyx_start_with_bad_token_closes_1008(media: Media):
    ccid = "v3:" + uuid.uuid4().hex
    start = {
        "event": "start",
        "sequence_number": "1",
        "stream_id": str(uuid.uuid4()),
        "start": {
            "call_control_id": ccid,
            "call_session_id": str(uuid.uuid4()),
            "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
        },
    }
    for headers in ({"x-telnyx-streaming-auth-token": "A" * 43}, {}):
        with media.client.websocket_connect("/media/telnyx", headers=headers) as ws:
            ws.send_bytes(b"\x01\x02")
            ws.send_text(orjson.dumps(start).decode())
            assert closed_with(ws) == CloseCode.POLICY_VIOLATION


def test_lifespan_starts_and_stops_the_runtime(tmp_path: Path):
    app = build_app(make_settings(tmp_path))
    with TestClient(app, client=("127.0.0.1", 50000)) as client:
        runtime = app.state.runtime
        assert client.get("/readyz").status_code == 200
    assert runtime.lifecycle.draining
    assert runtime.control.http.is_closed
    assert not [t for t in runtime.lifecycle.tasks.running if not t.done()]


# -- readiness detail, trailing slashes, forwarded loopback (issue 15, items 14 and 15) ---------

TOKEN32 = "0123456789abcdef0123456789abcdef"


async def test_readyz_from_elsewhere_shows_only_its_status(gw: Gateway):
    async with gw.client_from("203.0.113.7") as http:
        response = await http.get("/readyz")
        assert response.status_code == 200
        assert response.json() == {"ready": True}
        gw.runtime.lifecycle.draining = True
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"ready": False}


async def test_readyz_detail_behind_the_metrics_token(make_gateway: GatewayFactory):
    gw = await make_gateway({"VOICEGW_METRICS_TOKEN": TOKEN32})
    async with gw.client_from("203.0.113.7") as http:
        detailed = await http.get("/readyz", headers={"Authorization": f"Bearer {TOKEN32}"})
        wrong = await http.get("/readyz", headers={"Authorization": "Bearer wrong"})
    assert detailed.status_code == 200 and "providers" in detailed.json()
    assert "live_calls" in detailed.json() and "store" in detailed.json()
    assert wrong.status_code == 200 and wrong.json() == {"ready": True}
    # With a token set, loopback is no pass either (the same rule as /metrics).
    assert (await gw.http.get("/readyz")).json() == {"ready": True}


async def test_readyz_detail_for_a_loopback_client(gw: Gateway):
    report = (await gw.http.get("/readyz")).json()
    assert set(report) >= {"ready", "draining", "store", "degraded", "providers", "live_calls"}


@pytest.mark.parametrize("path", ["/healthz/", "/api/v1/calls/", "/metrics/", "/readyz/"])
async def test_no_trailing_slash_redirect_built_from_the_host_header(gw: Gateway, path: str):
    response = await gw.http.get(path, headers={"Host": "attacker.example"})
    assert response.status_code == 404
    assert "location" not in response.headers
    assert response.json() == {"error": "not found"}


async def test_console_without_slash_redirects_relatively(gw: Gateway):
    response = await gw.http.get("/console", headers={"Host": "attacker.example"})
    assert response.status_code in (307, 308)
    assert response.headers["location"] == "/console/"
    assert (await gw.http.get("/console/")).status_code == 200


async def test_metrics_refused_to_a_request_forwarded_by_an_undeclared_local_proxy(gw: Gateway):
    """A reverse proxy on this host without VOICEGW_TRUSTED_PROXIES: its requests come from
    127.0.0.1 with X-Forwarded-For. That is not a local scraper; a local scraper still is."""
    before = _untrusted((await gw.http.get("/metrics")).text)
    response = await gw.http.get("/metrics", headers={"X-Forwarded-For": "198.51.100.9"})
    assert response.status_code == 403
    readyz = await gw.http.get("/readyz", headers={"X-Forwarded-For": "198.51.100.9"})
    assert readyz.json() == {"ready": True}
    after = _untrusted((await gw.http.get("/metrics")).text)
    assert after >= before + 2
    assert gw.runtime.clients.resolver.untrusted_forwarded >= 2


async def test_metrics_through_a_declared_local_proxy(make_gateway: GatewayFactory):
    gw = await make_gateway({"VOICEGW_TRUSTED_PROXIES": "127.0.0.1/32"})
    # The proxy forwards a remote client: refused; it forwards a local one: allowed.
    remote = await gw.http.get("/metrics", headers={"X-Forwarded-For": "198.51.100.9"})
    local = await gw.http.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"})
    assert (remote.status_code, local.status_code) == (403, 200)
    assert gw.runtime.clients.resolver.untrusted_forwarded == 0


def _untrusted(text: str) -> float:
    for line in text.splitlines():
        if line.startswith("voicegw_untrusted_forwarded_requests_total "):
            return float(line.split()[1])
    return 0.0
