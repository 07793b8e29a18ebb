"""The toll-fraud guard end to end, on served gateways with fake carriers: a denied or unlisted
destination never reaches a carrier, the caps of an API key and of an agent answer 429 with
Retry-After, every refusal is audited and counted, a transfer to a denied number is refused
to the model and to an operator, and two gateways on one Redis share the caps."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import httpx
import pytest

from gateway.agents.directory import open_directory
from gateway.cli.admin import create_api_key
from gateway.records.base import AuditQuery, Role
from gateway.settings import Settings, SettingsError
from tests.conftest import REDIS_URL, UNIT
from tests.e2e.carrier import (
    Gateway,
    caller_audio,
    metric,
    place_call,
    post_twilio,
    twilio_params,
)
from tests.e2e.processes import clear_gateway_keys
from tests.e2e.test_agents import SUPPORT, echo_gateway, endpoint, press  # noqa: F401
from tests.e2e.test_outbound import (
    ACCOUNT_SID,
    CALLER_ID,
    CONNECTION_ID,
    api_key,
    dial,
    request_body,
    ticket_of,
)

pytestmark = pytest.mark.e2e

PREMIUM = "+19005550123"
JAMAICA = "+18765550123"
LONDON = "+442079460000"


def agents_file(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "agents.toml"
    path.write_text(
        f"""
[agents.reminders]
default = true
providers = ["echo"]
caller_ids = ["{CALLER_ID}"]
{extra}
"""
    )
    return path


async def guarded(make_gateway, tmp_path: Path, extra: str = "", **env: str) -> Gateway:
    gw: Gateway = await make_gateway(
        "echo",
        VOICEGW_AGENTS_FILE=str(agents_file(tmp_path, extra)),
        VOICEGW_TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        VOICEGW_TELNYX_CONNECTION_ID=CONNECTION_ID,
        **env,
    )
    return gw


def blocked(reason: str, action: str = "dial") -> float:
    return metric("voicegw_dials_blocked_total", action=action, reason=reason)


async def refusals(gw: Gateway) -> list[dict]:
    events = await gw.runtime.store.query_audit(AuditQuery(action="call.dial", outcome="denied"))
    return [e.detail for e in events]


async def end_call(gw: Gateway, carrier_call_id: str) -> None:
    params = {
        **twilio_params(carrier_call_id, ACCOUNT_SID, "completed"),
        "Direction": "outbound-api",
    }
    assert (await post_twilio(gw, "/webhooks/twilio/status", params)).status_code == 200


async def test_denied_and_unlisted_destinations_never_reach_a_carrier(make_gateway, tmp_path):
    gw = await guarded(make_gateway, tmp_path, VOICEGW_DIAL_RATE_PER_MINUTE="100")
    token = await api_key(gw)
    before = {r: blocked(r) for r in ("denied_prefix", "not_allowed")}
    for number in (PREMIUM, JAMAICA):
        reply = await dial(gw, token, request_body(to=number))
        assert reply.status_code == 403
        assert reply.json() == {
            "error": "the destination is on the deny list (premium-rate or high-risk)"
        }
    reply = await dial(gw, token, request_body(to=LONDON))
    assert (reply.status_code, reply.json()) == (
        403,
        {"error": "the destination is not in the agent's allowed_destinations"},
    )
    assert gw.rest.requests == []
    assert blocked("denied_prefix") == before["denied_prefix"] + 2
    assert blocked("not_allowed") == before["not_allowed"] + 1
    details = await refusals(gw)
    assert sorted(d["blocked"] for d in details) == [
        "denied_prefix",
        "denied_prefix",
        "not_allowed",
    ]
    assert all(d["status"] == 403 for d in details)
    assert not any(n[1:] in str(details) for n in (PREMIUM, JAMAICA, LONDON))
    # Allowed by default: the agent's own country (+1).
    assert (await dial(gw, token, request_body())).status_code == 201


async def test_an_agent_lifts_the_deny_list_by_prefix_and_widens_its_destinations(
    make_gateway, tmp_path
):
    extra = 'allowed_destinations = ["+1", "+44"]\nallow_denied_prefixes = ["+1900"]'
    gw = await guarded(make_gateway, tmp_path, extra, VOICEGW_DIAL_RATE_PER_MINUTE="100")
    token = await api_key(gw)
    for number in (PREMIUM, LONDON):
        assert (await dial(gw, token, request_body(to=number))).status_code == 201
    assert (await dial(gw, token, request_body(to=JAMAICA))).status_code == 403
    assert len(gw.rest.requests) == 2


async def test_the_keys_concurrent_and_minute_caps(make_gateway, tmp_path):
    gw = await guarded(
        make_gateway,
        tmp_path,
        VOICEGW_DIAL_CONCURRENT_CALLS="1",
        VOICEGW_DIAL_MINUTES_PER_DAY="1",
    )
    token = await api_key(gw)
    assert (await dial(gw, token, request_body())).status_code == 201
    concurrent = blocked("concurrent")
    reply = await dial(gw, token, request_body())
    assert (reply.status_code, reply.json()) == (429, {"error": "too many calls in progress"})
    assert int(reply.headers["retry-after"]) >= 1
    assert blocked("concurrent") == concurrent + 1
    # Once the call ends, its minute (rounded up) uses the key's day.
    (placed,) = gw.rest.requests
    await end_call(gw, placed.call_id)
    await gw.wait_ended(ticket_of(gw, placed))
    minutes = blocked("minutes")

    async def refused_for_minutes() -> bool:
        reply = await dial(gw, token, request_body())
        return reply.status_code == 429 and reply.json() == {
            "error": "the day's call minutes are used up"
        }

    await eventually_async(refused_for_minutes)
    reply = await dial(gw, token, request_body())
    assert 1 <= int(reply.headers["retry-after"]) <= 86400  # the next UTC midnight
    assert blocked("minutes") >= minutes + 1
    assert len(gw.rest.requests) == 1
    details = await refusals(gw)
    assert {(d["blocked"], d["scope"], d["status"]) for d in details} == {
        ("concurrent", "key", 429),
        ("minutes", "key", 429),
    }
    # Another key has its own day.
    other = await api_key(gw, Role.DIALER, "second")
    assert (await dial(gw, other, request_body())).status_code == 201


async def eventually_async(condition, within: float = 5 * UNIT) -> None:
    """Poll an async ``condition`` until it holds (the call's end is counted just after the
    registry says it ended)."""
    async with asyncio.timeout(within):
        while not await condition():  # noqa: ASYNC110 (the condition is a request)
            await asyncio.sleep(0.05)


async def test_the_agents_rate_and_minute_caps(make_gateway, tmp_path):
    gw = await guarded(
        make_gateway,
        tmp_path,
        "dials_per_minute = 1\ndial_minutes_per_day = 1",
        VOICEGW_DIAL_RATE_PER_MINUTE="100",
    )
    first, second = await api_key(gw), await api_key(gw, Role.DIALER, "second")
    assert (await dial(gw, first, request_body())).status_code == 201
    rate = blocked("rate")
    # The agent's cap holds whichever key asks.
    reply = await dial(gw, second, request_body())
    assert (reply.status_code, reply.json()) == (
        429,
        {"error": "the agent's dial rate is exceeded"},
    )
    assert 1 <= int(reply.headers["retry-after"]) <= 60
    assert blocked("rate") == rate + 1
    (detail,) = await refusals(gw)
    assert (detail["blocked"], detail["scope"], detail["agent"]) == ("rate", "agent", "reminders")
    assert len(gw.rest.requests) == 1


async def test_two_gateways_on_one_redis_share_the_caps(make_gateway, tmp_path):
    prefix = f"voicegw-test:toll-{tmp_path.name[-12:]}:"
    shared = {"VOICEGW_REDIS_URL": REDIS_URL, "VOICEGW_REDIS_KEY_PREFIX": prefix}
    try:
        gateways = []
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            gateways.append(
                await guarded(
                    make_gateway,
                    tmp_path / name,
                    "dials_per_minute = 1",
                    VOICEGW_DATA_DIR=str(tmp_path / name / "data"),
                    **shared,
                )
            )
        a, b = gateways
        assert (await dial(a, await api_key(a), request_body())).status_code == 201
        reply = await dial(b, await api_key(b), request_body())
        assert reply.status_code == 429 and reply.headers["retry-after"]
        assert reply.json() == {"error": "the agent's dial rate is exceeded"}
        (detail,) = await refusals(b)
        assert detail["blocked"] == "rate"
    finally:
        await clear_gateway_keys(REDIS_URL, prefix)


# -- transfers -----------------------------------------------------------------------------------


async def test_a_transfer_to_a_denied_number_is_refused_to_the_model_and_the_operator(
    make_gateway,
    tmp_path,
    endpoint,  # noqa: F811
):
    gw, _ = await echo_gateway(make_gateway, tmp_path, endpoint)
    # A profile whose transfer number the guard refuses at the moment of the transfer (the
    # loader refuses such a file: this is the check behind it).
    book = gw.runtime.agents.book
    support = book.get("support")
    denied = dataclasses.replace(support, transfer={"billing": PREMIUM})
    gw.runtime.agents.book = dataclasses.replace(
        book, profiles={**book.profiles, "support": denied}
    )
    before = blocked("denied_prefix", "transfer")
    leg = await place_call(gw, "twilio", to=SUPPORT)
    await leg.play(caller_audio(5))
    # The model's transfer_call (the echo agent picks "billing" on 3).
    assert await press(gw, leg, "3", 1) == {"error": "destination_not_allowed"}
    assert blocked("denied_prefix", "transfer") == before + 1
    # An operator's live command.
    call = await gw.call("twilio", leg.ticket.call_id)
    assert call is not None and call.active
    key, _ = await create_api_key(gw.runtime.store, "ops", Role.OPERATOR)
    async with httpx.AsyncClient(base_url=gw.url, timeout=10 * UNIT) as http:
        reply = await http.post(
            f"/api/v1/calls/{call.call_id}/transfer",
            headers={"Authorization": f"Bearer {key.token}"},
            json={"destination": "billing"},
        )
    assert (reply.status_code, reply.json()) == (
        403,
        {"error": "the destination is not allowed (toll-fraud guard)"},
    )
    assert blocked("denied_prefix", "transfer") == before + 2
    # No carrier was asked to move the call; it goes on.
    assert not [r for r in gw.rest.requests_for("twilio") if r.call_id == leg.ticket.call_id]
    assert (await gw.call("twilio", leg.ticket.call_id)).active
    events = await gw.runtime.store.query_audit(AuditQuery(action="call.transfer"))
    denials = [e for e in events if e.outcome == "denied"]
    assert {e.detail["by"] for e in denials} == {"agent", "operator"}
    assert all(e.detail["blocked"] == "denied_prefix" for e in denials)
    await leg.stop()


def test_a_transfer_outside_the_rules_stops_start_up(tmp_path):
    path = tmp_path / "agents.toml"
    path.write_text(
        '[agents.desk]\nproviders = ["echo"]\nnumbers = ["+14155550199"]\n'
        f'transfer = {{ billing = "{PREMIUM}", london = "{LONDON}" }}\n'
    )
    settings = Settings.from_env(
        {"VOICEGW_AGENTS_FILE": str(path), "VOICEGW_DATA_DIR": str(tmp_path / "data")}
    )
    with pytest.raises(SettingsError) as info:
        open_directory(settings)
    text = str(info.value)
    assert "agents.desk.transfer.billing: on the deny list" in text
    assert "agents.desk.transfer.london: outside allowed_destinations" in text
    assert PREMIUM[2:] not in text and LONDON[3:] not in text
