"""Issue 18's "done means", end to end, for Twilio and for Telnyx: a call requested through
``POST /api/v1/calls`` reaches the fake carrier REST API with the documented parameters,
streams through the agent, and produces ``call.started`` … ``call.ended`` at a receiver that
verifies every signature with ``standardwebhooks``. Then the receiver goes down, a second call
runs (its events wait in the outbox), the gateway process is restarted on the same data
directory, the receiver comes back: every event arrives, none is lost, a duplicate only ever
repeats a ``webhook-id`` with the same body, and each call's events come in order.

The gateway runs as real ``voicegw serve`` processes (``tests.e2e.processes``); the carrier is
played with the helpers of ``tests.e2e.carrier``.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import devkeys
from gateway.cli.admin import create_api_key
from gateway.records.base import Role
from gateway.services import open_store
from gateway.settings import Settings
from security.standard_webhooks import new_secret
from tests.conftest import UNIT
from tests.e2e.carrier import (
    caller_audio,
    frames_of,
    free_port,
    gateway_env,
    open_stream,
    post_twilio,
    send_telnyx,
    telnyx_event,
    twilio_params,
)
from tests.e2e.processes import serve_process
from tests.e2e.test_outbound import (
    ACCOUNT_SID,
    CALLEE,
    CALLER_ID,
    CONNECTION_ID,
    agents_file,
    request_body,
    ticket_of,
)
from tests.events.receiver import Receiver, until
from tests.fakes.carrier_rest import FakeCarrierRest, RecordedRequest

pytestmark = pytest.mark.e2e

ORDER = ["call.started", "call.answered", "call.ended"]
# A source tree under test given on PYTHONPATH (a worktree) reaches the gateway processes too.
SOURCE = {k: v for k, v in os.environ.items() if k == "PYTHONPATH"}


def documented(placed: RecordedRequest, public_url: str, call_id: str) -> None:
    """The carrier was asked for the call with the parameters its API documents."""
    if placed.carrier == "twilio":
        assert placed.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json"
        form = placed.form_lists()
        twiml = form.pop("Twiml")
        assert form == {
            "To": [CALLEE],
            "From": [CALLER_ID],
            "StatusCallback": [f"{public_url}/webhooks/twilio/status"],
            "StatusCallbackEvent": ["initiated", "ringing", "answered", "completed"],
            "StatusCallbackMethod": ["POST"],
        }
        ticket = ticket_of(None, placed)
        assert twiml and ticket.token
        assert ticket.stream_url == f"{public_url.replace('http', 'ws')}/media/twilio/{call_id}"
        return
    assert placed.path == "/v2/calls"
    body = placed.json()
    assert body.pop("stream_auth_token")
    assert body == {
        "connection_id": CONNECTION_ID,
        "to": CALLEE,
        "from": CALLER_ID,
        "stream_url": public_url.replace("http", "ws") + "/media/telnyx",
        "stream_track": "inbound_track",
        "stream_codec": "PCMU",
        "stream_bidirectional_mode": "rtp",
        "stream_bidirectional_codec": "PCMU",
    }


class Carrier:
    """Plays ``carrier`` for the calls one gateway process places: the callee's progress
    webhooks, the media stream through the echo agent, the end of the call."""

    def __init__(self, carrier: str, url: str, rest: FakeCarrierRest, keys: devkeys.DevKeys):
        self.carrier, self.url, self.rest, self.keys = carrier, url, rest, keys

    async def status(self, call_id: str, status: str) -> None:
        params = {**twilio_params(call_id, ACCOUNT_SID, status), "Direction": "outbound-api"}
        assert (await post_twilio(self.url, "/webhooks/twilio/status", params)).status_code == 200

    async def telnyx(self, event: str, call_id: str, **extra: str) -> None:
        body = telnyx_event(event, call_id, direction="outgoing", to=CALLEE, **extra)
        assert (await send_telnyx(self.url, self.keys, body)).status_code == 200

    async def call(self, token: str) -> tuple[str, RecordedRequest]:
        """Place one call through the API and play it to its end; returns the gateway's call
        id and the carrier request that placed it."""
        sent = len(self.rest.requests)
        async with httpx.AsyncClient(base_url=self.url, timeout=10 * UNIT) as http:
            reply = await http.post(
                "/api/v1/calls",
                json=request_body(self.carrier),
                headers={"Authorization": f"Bearer {token}"},
            )
        assert reply.status_code == 201, reply.text
        call_id = reply.json()["call_id"]
        (placed,) = self.rest.requests[sent:]
        assert reply.json()["carrier_call_id"] == placed.call_id
        documented(placed, self.url, call_id)
        # The callee answers.
        if self.carrier == "twilio":
            for status in ("initiated", "ringing", "in-progress"):
                await self.status(placed.call_id, status)
        else:
            await self.telnyx("call.initiated", placed.call_id)
            await self.telnyx("call.answered", placed.call_id)
        leg = await open_stream(self.url, ticket_of(None, placed))
        try:
            audio = caller_audio(25)
            await leg.play(audio, realtime=False)
            await leg.wait_audio(len(frames_of(audio)) // 2, within=10 * UNIT)  # echoed back
        finally:
            await leg.stop()
        # The callee hangs up.
        if self.carrier == "twilio":
            await self.status(placed.call_id, "completed")
        else:
            await self.telnyx("call.hangup", placed.call_id, hangup_cause="normal_clearing")
        return call_id, placed


async def api_get(url: str, token: str, path: str, **params: str) -> Any:
    async with httpx.AsyncClient(base_url=url, timeout=10 * UNIT) as http:
        reply = await http.get(path, params=params, headers={"Authorization": f"Bearer {token}"})
    assert reply.status_code == 200, reply.text
    return reply.json()


def by_call(receiver: Receiver) -> dict[str, list[tuple[str, str]]]:
    """(webhook-id, type) of each event delivered, first arrivals, grouped by call in order."""
    calls: dict[str, list[tuple[str, str]]] = {}
    seen: set[str] = set()
    for r in receiver.delivered():
        if r.webhook_id not in seen:
            seen.add(r.webhook_id)
            calls.setdefault(r.payload["data"]["call_id"], []).append(
                (r.webhook_id, r.payload["type"])
            )
    return calls


def all_of(receiver: Receiver, call_id: str) -> Callable[[], Awaitable[bool]]:
    """A check that the receiver has the call's three events."""

    async def check() -> bool:
        return len(by_call(receiver).get(call_id, [])) == len(ORDER)

    return check


async def keys_for(settings: Settings) -> tuple[str, str]:
    """A dialer key and an admin key, written to the store the gateway processes open."""
    store = open_store(settings)
    await store.open()
    try:
        dialer, _ = await create_api_key(store, "campaigns", Role.DIALER)
        admin, _ = await create_api_key(store, "ops", Role.ADMIN)
    finally:
        await store.close()
    return dialer.token, admin.token


@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
async def test_outbound_call_events_survive_a_down_receiver_and_a_gateway_restart(
    tmp_path: Path, rest: FakeCarrierRest, carrier: str
) -> None:
    secret = new_secret()
    receiver = Receiver(secret)
    await receiver.start()
    first_port, second_port = free_port(), free_port()

    def env(port: int) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", ""),
            **SOURCE,
            **gateway_env(
                tmp_path,
                port,
                rest,
                VOICEGW_PROVIDERS="echo",
                VOICEGW_AGENTS_FILE=str(agents_file(tmp_path)),
                VOICEGW_TWILIO_ACCOUNT_SID=ACCOUNT_SID,
                VOICEGW_TELNYX_CONNECTION_ID=CONNECTION_ID,
                VOICEGW_EVENTS_URL=receiver.url,
                VOICEGW_EVENTS_SECRET=secret,
                VOICEGW_LOG_LEVEL="WARNING",
            ),
        }

    settings = devkeys.apply(Settings.from_env(env(first_port)))
    dialer, admin = await keys_for(settings)
    keys = devkeys.load_or_create(settings.data_dir)
    try:
        async with serve_process(env(first_port), first_port, tmp_path / "first.log") as url:
            play = Carrier(carrier, url, rest, keys)
            first, _ = await play.call(dialer)
            await until(all_of(receiver, first), "the first call's events")
            # The endpoint goes down; the second call's events wait in the outbox.
            await receiver.stop()
            second, _ = await play.call(dialer)

            async def waiting() -> bool:
                call = (await api_get(url, admin, f"/api/v1/calls/{second}"))["call"]
                pending = await api_get(url, admin, "/api/v1/deliveries", state="pending")
                mine = [d for d in pending["deliveries"] if d["call_id"] == second]
                tried = any(d["attempts"] >= 1 for d in mine)
                return call["ended_at"] is not None and len(mine) == 3 and tried

            await until(waiting, "the second call ended, its 3 events pending, one tried")
        # The gateway process is gone; a new one starts on the same data directory.
        async with serve_process(env(second_port), second_port, tmp_path / "second.log") as url:
            await receiver.start()  # back, on its port
            await until(
                all_of(receiver, second), "the second call's events after the restart", 20 * UNIT
            )
            left = await api_get(url, admin, "/api/v1/deliveries", state="pending")
            dead = await api_get(url, admin, "/api/v1/deliveries", state="dead")
            assert left["deliveries"] == [] and dead["deliveries"] == []
    finally:
        await receiver.stop()

    # Every event arrived, in order per call, each signature verified by the receiver.
    calls = by_call(receiver)
    assert set(calls) == {first, second}
    for call_id in (first, second):
        assert [kind for _, kind in calls[call_id]] == ORDER
    assert receiver.forged == 0
    # At least once: a duplicate repeats its webhook-id with the same body.
    bodies: dict[str, dict[str, Any]] = {}
    for r in receiver.delivered():
        assert bodies.setdefault(r.webhook_id, r.payload) == r.payload
        assert r.payload["id"] == r.webhook_id
    assert len(bodies) == 6
    ended = bodies[calls[second][-1][0]]["data"]
    assert ended["agent"] == "reminders" and ended["carrier"] == carrier
    assert ended["providers"] == ["echo"] and ended["duration_s"] > 0
    raw = str([r.payload for r in receiver.received])
    assert CALLEE[1:] not in raw and CALLER_ID[1:] not in raw
