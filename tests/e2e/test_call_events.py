"""Call events and transcripts end to end: a real call on a served gateway produces
``call.started`` … ``call.ended`` at a receiver that verifies each signature independently,
retried under the same id while the receiver fails, and an agent that keeps transcripts has
its turns stored encrypted and readable by the roles allowed to."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from gateway.cli.admin import create_api_key
from gateway.records.base import Role
from security.standard_webhooks import new_secret
from tests.agents.endpoint import Answer, Endpoint
from tests.conftest import UNIT
from tests.e2e.carrier import CALLEE, Gateway, caller_audio, eventually, place_call

pytestmark = pytest.mark.e2e

CALLER = "+15550100001"


@pytest.fixture
async def receiver() -> AsyncIterator[Endpoint]:
    server = Endpoint()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def agents_file(tmp_path: Path, *, include_transcript: bool = False) -> Path:
    path = tmp_path / "agents.toml"
    path.write_text(
        f"""
[agents.notes]
numbers = ["{CALLEE}"]
providers = ["openai"]
instructions = "You take notes."
transcripts = true
include_transcript = {"true" if include_transcript else "false"}
"""
    )
    return path


async def events_gateway(
    make_gateway, tmp_path: Path, receiver: Endpoint, *, include_transcript: bool = False
) -> tuple[Gateway, str]:
    secret = new_secret()
    gw = await make_gateway(
        "openai",
        VOICEGW_AGENTS_FILE=str(agents_file(tmp_path, include_transcript=include_transcript)),
        VOICEGW_EVENTS_URL=receiver.url,
        VOICEGW_EVENTS_SECRET=secret,
    )
    return gw, secret


def delivered(receiver: Endpoint, secret: str) -> list[tuple[str, dict[str, Any]]]:
    """(webhook-id, verified body) of every request the receiver got, in arrival order."""
    return [
        (r.headers["webhook-id"], Webhook(secret).verify(r.body, r.headers))
        for r in receiver.requests
    ]


async def test_a_call_reaches_the_receiver_as_signed_events_in_order(
    make_gateway, tmp_path, receiver, openai_fake
):
    gw, secret = await events_gateway(make_gateway, tmp_path, receiver)
    # The receiver fails at first: the events wait and come again under the same ids.
    receiver.answer = Answer(status=503, body=b"{}")
    leg = await place_call(gw, "twilio")
    await leg.play(caller_audio(5))
    await openai_fake.wait_until(lambda: openai_fake.tools is not None and openai_fake.connections)
    await openai_fake.transcript("I would like to book a table", role="user")
    await openai_fake.transcript("For how many people?", role="agent")
    await leg.stop()
    ended = await gw.wait_ended(leg.ticket)
    await eventually(lambda: len(receiver.requests) >= 1, 5 * UNIT, "a first attempt")
    receiver.answer = Answer(status=204, body=b"")
    await eventually(
        lambda: (
            any(b["type"] == "call.ended" for _, b in delivered(receiver, secret)[-3:])
            and len({i for i, _ in delivered(receiver, secret)}) == 3
        ),
        15 * UNIT,
        "three events delivered",
    )
    attempts = delivered(receiver, secret)
    ids = list(dict.fromkeys(i for i, _ in attempts))
    bodies = {i: b for i, b in attempts}
    assert [bodies[i]["type"] for i in ids] == ["call.started", "call.answered", "call.ended"]
    # At least once, under one id per event: a retried event repeats its id and body.
    assert len(attempts) > len(ids)
    for event_id, body in attempts:
        assert body == bodies[event_id] and body["id"] == event_id
    final = bodies[ids[-1]]["data"]
    assert final["call_id"] == ended.call_id and final["agent"] == "notes"
    assert final["outcome"] == "carrier_hangup" and final["providers"] == ["openai"]
    assert final["duration_s"] > 0
    raw = b"".join(r.body for r in receiver.requests)
    assert CALLER[1:].encode() not in raw and CALLEE[1:].encode() not in raw
    assert b"book a table" not in raw  # transcripts are not in the events

    # The turns were stored encrypted; an admin reads them, an operator does not.
    admin, _ = await create_api_key(gw.runtime.store, "admin-key", Role.ADMIN)
    ops, _ = await create_api_key(gw.runtime.store, "ops-key", Role.OPERATOR)
    path = f"/api/v1/calls/{ended.call_id}"
    async with httpx.AsyncClient(base_url=gw.url, timeout=10 * UNIT) as http:
        read = await http.get(path, headers={"Authorization": f"Bearer {admin.token}"})
        turns = read.json()["transcript"]
        assert [(t["role"], t["text"]) for t in turns] == [
            ("caller", "I would like to book a table"),
            ("agent", "For how many people?"),
        ]
        masked = await http.get(path, headers={"Authorization": f"Bearer {ops.token}"})
        assert "transcript" not in masked.json()
        assert b"book a table" not in masked.content
    stored = await gw.runtime.store.get_transcript(ended.call_id)
    assert stored and all(b"book a table" not in t.text for t in stored)


async def test_a_call_whose_agent_dies_ends_with_call_failed(
    make_gateway, tmp_path, receiver, openai_fake
):
    gw, secret = await events_gateway(make_gateway, tmp_path, receiver)
    leg = await place_call(gw, "twilio")
    await leg.play(caller_audio(3))
    await openai_fake.close_abnormally()  # the only provider of the agent vanishes mid-call
    ended = await gw.wait_ended(leg.ticket, 10 * UNIT)
    assert ended.ended_reason == "agent_failed"
    await eventually(
        lambda: [b["type"] for _, b in delivered(receiver, secret)][-1:] == ["call.failed"],
        10 * UNIT,
        "call.failed",
    )
    types = [b["type"] for _, b in delivered(receiver, secret)]
    assert types == ["call.started", "call.answered", "call.failed"]
    last = [b for _, b in delivered(receiver, secret)][-1]
    assert last["data"]["outcome"] == "agent_failed"


async def test_dead_events_are_listed_and_sent_again(make_gateway, tmp_path, receiver, openai_fake):
    gw, _ = await events_gateway(make_gateway, tmp_path, receiver)
    receiver.answer = Answer(status=410, body=b"")  # Gone: dead at once
    leg = await place_call(gw, "twilio")
    await leg.play(caller_audio(3))
    await leg.stop()
    await gw.wait_ended(leg.ticket)
    admin, _ = await create_api_key(gw.runtime.store, "admin-key", Role.ADMIN)
    ops, _ = await create_api_key(gw.runtime.store, "ops-key", Role.OPERATOR)
    bearer = {"Authorization": f"Bearer {admin.token}"}
    async with httpx.AsyncClient(base_url=gw.url, timeout=10 * UNIT) as http:

        async def dead() -> list[dict[str, Any]]:
            page = await http.get("/api/v1/deliveries", headers=bearer, params={"state": "dead"})
            assert page.status_code == 200, page.text
            listed: list[dict[str, Any]] = page.json()["deliveries"]
            return listed

        for _ in range(200):
            if len(await dead()) == 3:
                break
            await asyncio.sleep(0.05)
        listed = await dead()
        assert sorted(d["type"] for d in listed) == ["call.answered", "call.ended", "call.started"]
        assert all(d["last_error"] == "HTTP410" for d in listed)
        denied = await http.get(
            "/api/v1/deliveries", headers={"Authorization": f"Bearer {ops.token}"}
        )
        assert denied.status_code == 403
        for params in ({"state": "lost"}, {"limit": "0"}, {"limit": "x"}):
            bad = await http.get("/api/v1/deliveries", headers=bearer, params=params)
            assert bad.status_code == 400
        assert (
            await http.post("/api/v1/deliveries/evt_nope/retry", headers=bearer)
        ).status_code == 409

        receiver.answer = Answer(status=200, body=b"{}")
        one = await http.post(f"/api/v1/deliveries/{listed[-1]['event_id']}/retry", headers=bearer)
        assert one.status_code == 200
        rest = await http.post("/api/v1/deliveries/retry-dead", headers=bearer)
        assert rest.json() == {"ok": True, "requeued": 2}
    await eventually(
        lambda: (
            sum(r.headers.get("webhook-id") == listed[-1]["event_id"] for r in receiver.requests)
            >= 2
        ),
        10 * UNIT,
        "the retried event sent again",
    )
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert ids == {d["event_id"] for d in listed}  # sent again under the same ids
    await eventually(lambda: len(receiver.requests) >= 6, 10 * UNIT, "all three again")


async def test_an_agent_may_send_its_transcript_with_the_last_event(
    make_gateway, tmp_path, receiver, openai_fake
):
    gw, secret = await events_gateway(make_gateway, tmp_path, receiver, include_transcript=True)
    leg = await place_call(gw, "twilio")
    await leg.play(caller_audio(3))
    await openai_fake.wait_until(lambda: bool(openai_fake.connections))
    await openai_fake.transcript("Table for 4 at 19:30, name 5550123", role="user")
    await openai_fake.transcript("Booked.", role="agent")
    await leg.stop()
    await gw.wait_ended(leg.ticket)
    await eventually(
        lambda: [b["type"] for _, b in delivered(receiver, secret)][-1:] == ["call.ended"],
        10 * UNIT,
        "call.ended",
    )
    bodies = [b for _, b in delivered(receiver, secret)]
    assert bodies[-1]["data"]["transcript"] == [
        {"role": "caller", "text": "Table for 4 at 19:30, name 5550123"},
        {"role": "agent", "text": "Booked."},
    ]
    assert all("transcript" not in b["data"] for b in bodies[:-1])
