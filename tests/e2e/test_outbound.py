"""Outbound calls end to end: ``POST /api/v1/calls`` on a served gateway reaches the fake
Twilio / Telnyx REST API with the documented parameters; the test then plays the carrier with
what the fake received (stream URL, token), audio flows through the echo agent, and the call
ends on the status callback / hang-up. A carrier failure leaves no live call."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.exceptions import RedisError

from gateway.calls.outbound import DialRequest
from gateway.cli.admin import create_api_key
from gateway.records.base import AuditQuery, Role
from tests.conftest import UNIT
from tests.e2e.carrier import (
    Gateway,
    Ticket,
    caller_audio,
    frames_of,
    open_stream,
    post_twilio,
    rest_command,
    send_telnyx,
    telnyx_event,
    twilio_params,
)
from tests.fakes.carrier_rest import Behavior, RecordedRequest

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
CONNECTION_ID = "1684641123236054244"
CALLER_ID = "+15550100009"
OTHER_ID = "+15550100008"
CALLEE = "+15550100123"


def agents_file(tmp_path: Path, *, cap: int | None = None) -> Path:
    path = tmp_path / "agents.toml"
    limit = "" if cap is None else f"max_concurrent_calls = {cap}"
    path.write_text(
        f"""
[agents.reminders]
default = true
providers = ["echo"]
caller_ids = ["{CALLER_ID}", "{OTHER_ID}"]
{limit}

[agents.inbound_only]
numbers = ["+15550100077"]
providers = ["echo"]
"""
    )
    return path


async def outbound_gateway(make_gateway, tmp_path: Path, **env: str) -> Gateway:
    cap = env.pop("cap", None)
    gateway: Gateway = await make_gateway(
        "echo",
        VOICEGW_AGENTS_FILE=str(agents_file(tmp_path, cap=None if cap is None else int(cap))),
        VOICEGW_TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        VOICEGW_TELNYX_CONNECTION_ID=CONNECTION_ID,
        **env,
    )
    return gateway


async def api_key(gw: Gateway, role: Role = Role.DIALER, name: str = "campaigns") -> str:
    new, _ = await create_api_key(gw.runtime.store, name, role)
    return new.token


async def dial(gw: Gateway, token: str | None, body: Any, **headers: str) -> httpx.Response:
    sent = {"Content-Type": "application/json", **headers}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(base_url=gw.url, timeout=10 * UNIT) as http:
        if isinstance(body, bytes):
            return await http.post("/api/v1/calls", content=body, headers=sent)
        return await http.post("/api/v1/calls", json=body, headers=sent)


def request_body(carrier: str = "twilio", **extra: Any) -> dict[str, Any]:
    return {"to": CALLEE, "from": CALLER_ID, "agent": "reminders", "carrier": carrier, **extra}


def ticket_of(gw: Gateway, request: RecordedRequest) -> Ticket:
    """What the carrier would stream with: the fake's record of the placing request."""
    if request.carrier == "twilio":
        stream = ET.fromstring(request.form()["Twiml"]).find("./Connect/Stream")
        assert stream is not None
        token = next(p.get("value", "") for p in stream if p.get("name") == "token")
        return Ticket("twilio", request.call_id, ACCOUNT_SID, stream.get("url", ""), token)
    body = request.json()
    return Ticket("telnyx", request.call_id, "", body["stream_url"], body["stream_auth_token"])


async def echoed(gw: Gateway, ticket: Ticket) -> None:
    """Open the stream the carrier would open once the callee answers; the echo agent sends
    the callee's audio back."""
    leg = await open_stream(gw, ticket)
    try:
        audio = caller_audio(25)
        await leg.play(audio, realtime=False)
        await leg.wait_audio(len(frames_of(audio)) // 2, within=10 * UNIT)
    finally:
        await leg.close()


async def test_twilio_outbound_call_streams_through_the_agent_and_ends_on_status(
    make_gateway, tmp_path: Path
) -> None:
    gw = await outbound_gateway(make_gateway, tmp_path)
    token = await api_key(gw)
    reply = await dial(gw, token, request_body("twilio", machine_detection=True))
    assert reply.status_code == 201, reply.text
    answer = reply.json()
    (placed,) = gw.rest.requests_for("twilio")
    assert answer == {
        "call_id": answer["call_id"],
        "carrier_call_id": placed.call_id,
        "state": "connecting",
    }
    # What Twilio was asked: the documented parameters, the per-call stream URL and a token.
    assert placed.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json"
    assert placed.basic_auth() == (ACCOUNT_SID, "e2e-twilio-auth-token")
    form = placed.form_lists()
    assert form.pop("Twiml")
    assert form == {
        "To": [CALLEE],
        "From": [CALLER_ID],
        "StatusCallback": [gw.settings.public("/webhooks/twilio/status")],
        "StatusCallbackEvent": ["initiated", "ringing", "answered", "completed"],
        "StatusCallbackMethod": ["POST"],
        "MachineDetection": ["Enable"],
    }
    ticket = ticket_of(gw, placed)
    assert ticket.stream_url == f"{gw.settings.public_ws_url}/media/twilio/{answer['call_id']}"
    call = await gw.call("twilio", placed.call_id)
    assert call is not None and call.call_id == answer["call_id"] and call.agent == "reminders"

    # Twilio reports progress: nothing changes until the stream opens.
    for status in ("initiated", "ringing", "in-progress"):
        params = {**twilio_params(placed.call_id, ACCOUNT_SID, status), "Direction": "outbound-api"}
        assert (await post_twilio(gw, "/webhooks/twilio/status", params)).status_code == 200
    await echoed(gw, ticket)
    # A second stream with the same token is refused: the token was spent.
    second = await open_stream(gw, ticket)
    assert await second.wait_closed() == 1008

    params = {
        **twilio_params(placed.call_id, ACCOUNT_SID, "completed"),
        "Direction": "outbound-api",
    }
    assert (await post_twilio(gw, "/webhooks/twilio/status", params)).status_code == 200
    ended = await gw.wait_ended(ticket)
    assert ended.call_id == answer["call_id"]

    events = await gw.runtime.store.query_audit(AuditQuery(action="call.dial"))
    (event,) = events
    assert (event.outcome, event.entity_id, event.role) == ("success", answer["call_id"], "dialer")
    assert event.detail["agent"] == "reminders" and event.detail["carrier"] == "twilio"
    assert CALLEE[1:] not in str(event.detail) and CALLER_ID[1:] not in str(event.detail)


async def test_telnyx_outbound_call_streams_through_the_agent_and_ends_on_hangup(
    make_gateway, tmp_path: Path
) -> None:
    gw = await outbound_gateway(make_gateway, tmp_path)
    token = await api_key(gw, Role.ADMIN, "ops")
    reply = await dial(gw, token, request_body("telnyx"))
    assert reply.status_code == 201, reply.text
    answer = reply.json()
    (placed,) = gw.rest.requests_for("telnyx")
    assert answer["carrier_call_id"] == placed.call_id
    assert placed.path == "/v2/calls"
    assert placed.bearer() == "KEYe2e-telnyx-api-key"
    body = placed.json()
    assert body.pop("stream_auth_token")
    assert body == {
        "connection_id": CONNECTION_ID,
        "to": CALLEE,
        "from": CALLER_ID,
        "stream_url": gw.settings.public_ws_url + "/media/telnyx",
        "stream_track": "inbound_track",
        "stream_codec": "PCMU",
        "stream_bidirectional_mode": "rtp",
        "stream_bidirectional_codec": "PCMU",
    }
    # Telnyx reports the call it dialled: no answer, no second stream.
    for event in ("call.initiated", "call.answered"):
        webhook = telnyx_event(event, placed.call_id, direction="outgoing", to=CALLEE)
        assert (await send_telnyx(gw.url, gw.keys, webhook)).status_code == 200
    ticket = ticket_of(gw, placed)
    await echoed(gw, ticket)
    hangup = telnyx_event("call.hangup", placed.call_id, direction="outgoing")
    assert (await send_telnyx(gw.url, gw.keys, hangup)).status_code == 200
    ended = await gw.wait_ended(ticket)
    assert ended.call_id == answer["call_id"]
    assert [r.action for r in gw.rest.requests_for("telnyx")][:1] == ["dial"]
    assert not {"answer", "streaming_start"} & {r.action for r in gw.rest.requests}


@pytest.mark.parametrize(
    ("carrier", "behavior", "status"),
    [
        ("twilio", Behavior.SERVER_ERROR, 502),
        ("twilio", Behavior.UNAUTHORIZED, 502),
        ("telnyx", Behavior.SERVER_ERROR, 502),
        ("telnyx", Behavior.HANG, 502),
    ],
)
async def test_a_carrier_failure_leaves_no_live_call(
    make_gateway, tmp_path: Path, carrier: str, behavior: Behavior, status: int
) -> None:
    gw = await outbound_gateway(make_gateway, tmp_path)
    token = await api_key(gw)
    gw.rest.set_response(carrier, behavior, call_id="create" if carrier == "twilio" else "dial")  # type: ignore[arg-type]
    reply = await dial(gw, token, request_body(carrier))
    assert reply.status_code == status
    assert reply.json() == {"error": "the carrier did not place the call"}
    (placed,) = gw.rest.requests
    assert await gw.runtime.registry.list_active() == []
    assert await gw.call(carrier, placed.call_id) is None
    # The call's record is closed, its numbers unreadable in it.
    (record,) = await gw.runtime.store.list_calls(limit=10)
    assert record.outcome == "dial_failed" and record.ended_at is not None
    # The token the request carried admits no stream.
    ticket = ticket_of(gw, placed)
    leg = await open_stream(gw, ticket)
    assert await leg.wait_closed() == 1008
    (event,) = await gw.runtime.store.query_audit(AuditQuery(action="call.dial"))
    assert event.outcome == "failure" and event.detail["status"] == status


async def test_an_open_breaker_refuses_with_503(make_gateway, tmp_path: Path) -> None:
    gw = await outbound_gateway(make_gateway, tmp_path, VOICEGW_DIAL_RATE_PER_MINUTE="100")
    token = await api_key(gw)
    gw.rest.set_response("twilio", Behavior.SERVER_ERROR, call_id="create")
    statuses = [(await dial(gw, token, request_body())).status_code for _ in range(12)]
    assert statuses[0] == 502 and statuses[-1] == 503
    sent = len(gw.rest.requests)
    reply = await dial(gw, token, request_body())
    assert reply.status_code == 503 and reply.headers["retry-after"]
    assert len(gw.rest.requests) == sent  # an open breaker sends nothing
    assert await gw.runtime.registry.list_active() == []


async def test_input_rules(make_gateway, tmp_path: Path) -> None:
    gw = await outbound_gateway(make_gateway, tmp_path, VOICEGW_DIAL_RATE_PER_MINUTE="1000")
    token = await api_key(gw)
    bad: list[Any] = [
        b"{not json",
        b"[]",
        b'"to"',
        {},
        {"from": CALLER_ID, "agent": "reminders"},
        request_body(to=None),
        request_body(to=123),
        request_body(agent="x" * 65),
        request_body(agent="rem\x00inders"),
        request_body(to="15550100123"),
        request_body(to="+0155501001"),
        request_body(to="+1555"),
        request_body(to="+1555010012345678"),
        request_body(**{"from": "sip:me@example.com"}),
        request_body(carrier="sip"),
        request_body(machine_detection="yes"),
        request_body(extra=1),
        b"\xff\xfe",
    ]
    for body in bad:
        reply = await dial(gw, token, body)
        assert reply.status_code == 400, (body, reply.text)
        assert CALLEE not in reply.text
    assert (await dial(gw, token, b"{" + b" " * 5000 + b"}")).status_code == 413
    reply = await dial(gw, token, request_body(), **{"Content-Type": "text/plain"})
    assert reply.status_code == 415

    refused = {
        "unknown agent": request_body(agent="nobody"),
        "from is not one of the agent's caller_ids": request_body(**{"from": "+15550100001"}),
    }
    for reason, body in refused.items():
        reply = await dial(gw, token, body)
        assert (reply.status_code, reply.json()) == (422, {"error": reason})
    # An agent without caller ids cannot dial.
    reply = await dial(gw, token, request_body(agent="inbound_only"))
    assert reply.status_code == 422
    assert gw.rest.requests == []

    assert (await dial(gw, None, request_body())).status_code == 401
    assert (await dial(gw, "vgk_nope_nope", request_body())).status_code == 401
    for role in (Role.OPERATOR, Role.AUDITOR):
        other = await api_key(gw, role, f"key-{role.value}")
        assert (await dial(gw, other, request_body())).status_code == 403
    assert gw.rest.requests == []


async def test_a_carrier_without_its_settings_cannot_be_chosen(
    make_gateway, tmp_path: Path
) -> None:
    gw = await make_gateway(
        "echo",
        VOICEGW_AGENTS_FILE=str(agents_file(tmp_path)),
        VOICEGW_TELNYX_CONNECTION_ID=CONNECTION_ID,
    )
    token = await api_key(gw)
    reply = await dial(gw, token, request_body("twilio"))
    assert reply.status_code == 422
    # The default is the first carrier with what it needs: Telnyx here.
    body = request_body()
    del body["carrier"]
    reply = await dial(gw, token, body)
    assert reply.status_code == 201, reply.text
    assert [r.action for r in gw.rest.requests] == ["dial"]


async def test_the_dial_rate_per_key(make_gateway, tmp_path: Path) -> None:
    gw = await outbound_gateway(make_gateway, tmp_path, VOICEGW_DIAL_RATE_PER_MINUTE="2")
    token = await api_key(gw)
    assert (await dial(gw, token, request_body())).status_code == 201
    assert (await dial(gw, token, request_body("telnyx"))).status_code == 201
    reply = await dial(gw, token, request_body())
    assert reply.status_code == 429
    assert 1 <= int(reply.headers["retry-after"]) <= 60
    assert len(gw.rest.requests) == 2
    # Another key has its own allowance.
    other = await api_key(gw, Role.DIALER, "second")
    assert (await dial(gw, other, request_body())).status_code == 201
    (denied,) = await gw.runtime.store.query_audit(AuditQuery(action="call.dial", outcome="denied"))
    assert denied.detail["status"] == 429


async def test_the_agents_concurrent_call_cap(make_gateway, tmp_path: Path) -> None:
    gw = await outbound_gateway(make_gateway, tmp_path, cap="1")
    token = await api_key(gw)
    first = await dial(gw, token, request_body())
    assert first.status_code == 201
    reply = await dial(gw, token, request_body("telnyx"))
    assert reply.status_code == 429
    assert reply.json() == {"error": "the agent is at its concurrent call limit"}
    assert len(gw.rest.requests) == 1
    # Once the first call ends the agent may dial again.
    (placed,) = gw.rest.requests
    params = {
        **twilio_params(placed.call_id, ACCOUNT_SID, "no-answer"),
        "Direction": "outbound-api",
    }
    assert (await post_twilio(gw, "/webhooks/twilio/status", params)).status_code == 200
    ended = await gw.wait_ended(ticket_of(gw, placed))
    assert ended.ended_reason == "twilio_no-answer"
    assert (await dial(gw, token, request_body("telnyx"))).status_code == 201


def test_a_dial_request_shows_no_number() -> None:
    # Its repr, which a traceback or a log call would show, names no number.
    shown = repr(DialRequest(to=CALLEE, from_=CALLER_ID, agent="reminders"))
    assert CALLEE not in shown and CALLER_ID not in shown


class RegistryDown:
    """The gateway's registry, but Redis fails when a call is registered."""

    def __init__(self, registry: Any) -> None:
        self._registry = registry

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)

    async def create(self, *args: Any, **kwargs: Any) -> Any:
        raise RedisError("connection refused")


async def test_a_call_placed_but_not_registered_is_hung_up(make_gateway, tmp_path: Path) -> None:
    gw = await outbound_gateway(make_gateway, tmp_path)
    token = await api_key(gw)
    outbound = gw.runtime.outbound
    outbound.registry = RegistryDown(outbound.registry)  # type: ignore[assignment]
    reply = await dial(gw, token, request_body())
    assert reply.status_code == 503 and reply.headers["retry-after"]
    assert reply.json() == {"error": "the call could not be registered"}
    placed = gw.rest.requests[0]
    assert placed.action == "create"
    # The carrier placed it: it is told to hang up, and the token admits no stream.
    hangup = await rest_command(gw.rest, placed.call_id, "update")
    assert hangup.form() == {"Status": "completed"}
    assert await gw.runtime.registry.list_active() == []
    leg = await open_stream(gw, ticket_of(gw, placed))
    assert await leg.wait_closed() == 1008
    (record,) = await gw.runtime.store.list_calls(limit=10)
    assert record.outcome == "dial_failed" and record.carrier_call_id == placed.call_id
