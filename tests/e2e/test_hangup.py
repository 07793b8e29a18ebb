"""Hang-up from either side ends both sides of the call."""

from __future__ import annotations

import asyncio

import pytest

from gateway.calls.state import CallState
from gateway.http.errors import CloseCode
from tests.conftest import UNIT
from tests.e2e.carrier import TELNYX_API_KEY, TWILIO_TOKEN, caller_audio, place_call

pytestmark = pytest.mark.e2e

CARRIERS = ["twilio", "telnyx"]


@pytest.mark.parametrize("how", ["stop", "close"])
@pytest.mark.parametrize("carrier", CARRIERS)
async def test_carrier_hangup_closes_the_provider(make_gateway, openai_fake, rest, carrier, how):
    gw = await make_gateway("openai")
    leg = await place_call(gw, carrier)
    await leg.play(caller_audio(5), realtime=False)
    await leg.wait_audio(5)
    assert len(openai_fake.connections) == 1

    if how == "stop":
        await leg.stop()  # the caller hung up: Twilio/Telnyx send ``stop``, then close
    else:
        await leg.close()  # the stream closed without ``stop``

    async with asyncio.timeout(5 * UNIT):
        await openai_fake.wait_until(lambda: not openai_fake.connections)
    call = await gw.wait_ended(leg.ticket)
    assert call.state is CallState.ENDED
    assert call.ended_reason == ("carrier_hangup" if how == "stop" else "carrier_disconnected")
    assert await gw.runtime.registry.list_active() == []
    hangups = [r for r in rest.requests if r.action not in ("answer", "streaming_start")]
    if how == "stop":
        # The caller hung up: the carrier ended the call, no REST hang-up.
        assert hangups == []
    else:
        # The stream vanished without ``stop``: the line may still be up, so it is hung up
        # (idempotent: "already ended" is not an error).
        expected = 1 if carrier == "twilio" else 3  # telnyx: answer, streaming_start, hangup
        requests = await rest.wait_for_requests(expected)
        assert [r.action for r in requests][-1] == ("update" if carrier == "twilio" else "hangup")


@pytest.mark.parametrize("carrier", CARRIERS)
async def test_provider_hangup_hangs_up_the_carrier(make_gateway, openai_fake, rest, carrier):
    gw = await make_gateway("openai")
    leg = await place_call(gw, carrier)
    await leg.play(caller_audio(5), realtime=False)
    await leg.wait_audio(5)

    await openai_fake.close(1000)  # the provider ends the conversation normally

    assert await leg.wait_closed() == CloseCode.NORMAL
    call = await gw.wait_ended(leg.ticket)
    assert call.ended_reason == "agent_hangup"
    if carrier == "twilio":
        async with asyncio.timeout(5 * UNIT):
            request = (await rest.wait_for_requests(1))[-1]
        assert request.carrier == "twilio"
        assert request.path == (
            f"/2010-04-01/Accounts/{leg.ticket.account_id}/Calls/{leg.ticket.call_id}.json"
        )
        assert request.form() == {"Status": "completed"}
        assert request.basic_auth() == (leg.ticket.account_id, TWILIO_TOKEN)
    else:
        async with asyncio.timeout(5 * UNIT):
            requests = await rest.wait_for_requests(3)  # answer, streaming_start, hangup
        request = requests[-1]
        assert (request.carrier, request.action) == ("telnyx", "hangup")
        assert request.path == f"/v2/calls/{leg.ticket.call_id}/actions/hangup"
        assert request.bearer() == TELNYX_API_KEY
    assert len(rest.requests) == (1 if carrier == "twilio" else 3)
