"""A call's detail and the commands on a live call, through ``/api/v1/calls`` on a served
gateway: hang-up and transfer reach the carrier, land in the record and the timeline, and every
malformed, unauthorised or mistimed request gets a short 4xx."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import httpx
import pytest

from gateway.cli.admin import create_api_key
from gateway.records.base import AuditQuery, Role
from tests.conftest import UNIT
from tests.e2e.carrier import CALLEE, Gateway, caller_audio, eventually, metric, place_call

pytestmark = pytest.mark.e2e

BILLING = "+14155550123"
CALLER = "+15550100001"  # what tests/e2e/carrier.py's webhooks send as From


def agents_file(tmp_path: Path) -> Path:
    path = tmp_path / "agents.toml"
    path.write_text(
        f"""
[agents.desk]
numbers = ["{CALLEE}"]
providers = ["echo"]
instructions = "You answer the front desk."
transfer = {{ billing = "{BILLING}" }}
"""
    )
    return path


async def gateway(make_gateway, tmp_path: Path) -> Gateway:
    return await make_gateway("echo", VOICEGW_AGENTS_FILE=str(agents_file(tmp_path)))


async def bearer(gw: Gateway, role: Role) -> dict[str, str]:
    key, _ = await create_api_key(gw.runtime.store, f"key-{role.value}", role)
    return {"Authorization": f"Bearer {key.token}"}


async def record_closed(gw: Gateway, call_id: str) -> None:
    """Wait until the call's durable record has its outcome (written after the call ends)."""
    async with asyncio.timeout(5 * UNIT):
        for _ in itertools.count():
            record = await gw.runtime.store.get_call(call_id)
            if record is not None and record.outcome is not None:
                return
            await asyncio.sleep(0.02)


async def call_id_of(gw: Gateway, carrier: str, carrier_call_id: str) -> str:
    call = await gw.call(carrier, carrier_call_id)
    assert call is not None
    return call.call_id


@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
async def test_an_operator_hangs_up_a_live_call(make_gateway, tmp_path, carrier):
    gw = await gateway(make_gateway, tmp_path)
    leg = await place_call(gw, carrier)
    await leg.play(caller_audio(5))
    call_id = await call_id_of(gw, carrier, leg.ticket.call_id)
    ops = await bearer(gw, Role.OPERATOR)
    before = metric("voicegw_call_commands_total", command="hangup", outcome="ok")
    async with httpx.AsyncClient(base_url=gw.url, timeout=10 * UNIT) as http:
        reply = await http.post(f"/api/v1/calls/{call_id}/hangup", headers=ops)
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"ok": True, "call_id": call_id}
        ended = await gw.wait_ended(leg.ticket)
        assert ended.ended_reason == "operator_hangup"
        await leg.wait_closed()
        # The line is hung up over the carrier's API too (in the background, after the end).
        hangup = "update" if carrier == "twilio" else "hangup"

        def hung_up() -> bool:
            sent = gw.rest.requests_for(carrier)
            return hangup in [r.action for r in sent if r.call_id == leg.ticket.call_id]

        await eventually(hung_up, 5 * UNIT, "REST hang-up")
        # Again: the call is no longer live.
        again = await http.post(f"/api/v1/calls/{call_id}/hangup", headers=ops)
        assert again.status_code == 409 and again.json() == {"error": "the call is not live"}
    assert metric("voicegw_call_commands_total", command="hangup", outcome="ok") == before + 1
    await record_closed(gw, call_id)
    record = await gw.runtime.store.get_call(call_id)
    assert record is not None and record.outcome == "operator_hangup"
    audited = await gw.runtime.store.query_audit(AuditQuery(action="call.hangup"))
    assert [(e.entity_id, e.outcome) for e in audited] == [
        (call_id, "success"),
        (call_id, "failure"),
    ]
    assert len({e.actor for e in audited}) == 1 and audited[0].actor.startswith("apikey:")


async def test_an_operator_transfers_a_live_call(make_gateway, tmp_path):
    gw = await gateway(make_gateway, tmp_path)
    leg = await place_call(gw, "twilio")
    await leg.play(caller_audio(5))
    call_id = await call_id_of(gw, "twilio", leg.ticket.call_id)
    ops = await bearer(gw, Role.OPERATOR)
    async with httpx.AsyncClient(base_url=gw.url, timeout=10 * UNIT) as http:
        path = f"/api/v1/calls/{call_id}/transfer"
        unknown = await http.post(path, headers=ops, json={"destination": "sales"})
        assert unknown.status_code == 422
        assert unknown.json() == {"error": "destination is not in the agent's transfer table"}
        number = await http.post(path, headers=ops, json={"destination": BILLING})
        assert number.status_code == 400  # a number is never a destination: only a key
        reply = await http.post(path, headers=ops, json={"destination": "billing"})
        assert reply.status_code == 200, reply.text
    ended = await gw.wait_ended(leg.ticket)
    assert ended.ended_reason == "transferred"
    (update,) = [r for r in gw.rest.requests_for("twilio") if r.call_id == leg.ticket.call_id]
    assert f"<Number>{BILLING}</Number>" in update.form()["Twiml"]
    await record_closed(gw, call_id)
    record = await gw.runtime.store.get_call(call_id)
    assert record is not None and (record.outcome, record.transfer_to) == ("transferred", "billing")


async def test_call_detail_masks_numbers_for_operators_and_shows_the_timeline(
    make_gateway, tmp_path
):
    gw = await gateway(make_gateway, tmp_path)
    leg = await place_call(gw, "twilio")
    await leg.play(caller_audio(5))
    call_id = await call_id_of(gw, "twilio", leg.ticket.call_id)
    ops, admin = await bearer(gw, Role.OPERATOR), await bearer(gw, Role.ADMIN)
    async with httpx.AsyncClient(base_url=gw.url, timeout=10 * UNIT) as http:
        live = (await http.get(f"/api/v1/calls/{call_id}", headers=ops)).json()["call"]
        assert (live["state"], live["agent"], live["provider"]) == ("streaming", "desk", "echo")
        await http.post(f"/api/v1/calls/{call_id}/hangup", headers=ops)
        await gw.wait_ended(leg.ticket)
        await record_closed(gw, call_id)

        seen = (await http.get(f"/api/v1/calls/{call_id}", headers=ops)).json()
        call = seen["call"]
        assert (call["state"], call["outcome"], call["agent"]) == (
            "ended",
            "operator_hangup",
            "desk",
        )
        assert call["from"] == "+1555010••01" and call["to"] == "+1555010••02"
        assert CALLER not in str(seen)
        assert [e["action"] for e in seen["timeline"]] == ["call.hangup"]
        assert seen["timeline"][0]["actor"].startswith("apikey:")
        reads = await gw.runtime.store.query_audit(AuditQuery(action="call.read"))
        assert reads == []  # masked numbers: nothing personal read

        full = (await http.get(f"/api/v1/calls/{call_id}", headers=admin)).json()["call"]
        assert (full["from"], full["to"]) == (CALLER, CALLEE)
        reads = await gw.runtime.store.query_audit(AuditQuery(action="call.read"))
        assert [e.entity_id for e in reads] == [call_id]
        assert reads[0].actor != seen["timeline"][0]["actor"]  # the admin's key, audited

        missing = await http.get("/api/v1/calls/call_doesnotexist", headers=ops)
        assert missing.status_code == 404
        odd = await http.get("/api/v1/calls/%00%ff", headers=ops)
        assert odd.status_code == 404


async def test_the_call_history_filters_and_pages(make_gateway, tmp_path):
    gw = await gateway(make_gateway, tmp_path)
    legs = [await place_call(gw, "twilio") for _ in range(3)]
    for leg in legs:
        await leg.stop()
        ended = await gw.wait_ended(leg.ticket)
        await record_closed(gw, ended.call_id)
    ops = await bearer(gw, Role.OPERATOR)
    async with httpx.AsyncClient(base_url=gw.url, timeout=10 * UNIT) as http:
        seen: list[str] = []
        cursor = None
        for _ in range(3):
            params = {"limit": "2", "agent": "desk", "state": "ended"}
            if cursor:
                params["cursor"] = cursor
            page = (await http.get("/api/v1/calls", headers=ops, params=params)).json()
            seen += [r["call_id"] for r in page["recent"]]
            cursor = page["next"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) == 3
        none = await http.get("/api/v1/calls", headers=ops, params={"agent": "nobody"})
        assert none.json()["recent"] == []
        for params in (
            {"state": "maybe"},
            {"since": "nan"},
            {"cursor": "not-a-cursor"},
            {"agent": "a\x00b"},
            {"limit": "-1"},
        ):
            bad = await http.get("/api/v1/calls", headers=ops, params=params)
            assert bad.status_code == 400, params


async def test_commands_refuse_bad_requests_and_roles(make_gateway, tmp_path):
    gw = await gateway(make_gateway, tmp_path)
    leg = await place_call(gw, "twilio")
    call_id = await call_id_of(gw, "twilio", leg.ticket.call_id)
    auditor = await bearer(gw, Role.AUDITOR)
    ops = await bearer(gw, Role.OPERATOR)
    transfer = f"/api/v1/calls/{call_id}/transfer"
    async with httpx.AsyncClient(base_url=gw.url, timeout=10 * UNIT) as http:
        assert (await http.post(f"/api/v1/calls/{call_id}/hangup")).status_code == 401
        denied = await http.post(f"/api/v1/calls/{call_id}/hangup", headers=auditor)
        assert denied.status_code == 403
        assert (await http.post("/api/v1/calls/call_nope/hangup", headers=ops)).status_code == 404
        wrong_type = await http.post(transfer, headers=ops, content=b"destination=billing")
        assert wrong_type.status_code == 415
        for body in (b"{", b"[]", b'{"destination": 5}', b'{"destination": ""}', b"x" * 5000):
            reply = await http.post(
                transfer, headers={**ops, "content-type": "application/json"}, content=body
            )
            assert reply.status_code in (400, 413), (body[:20], reply.status_code)
            assert "error" in reply.json()
    # None of it touched the call.
    assert (await gw.call("twilio", leg.ticket.call_id)).active  # type: ignore[union-attr]
    await leg.stop()
    await asyncio.sleep(0)
