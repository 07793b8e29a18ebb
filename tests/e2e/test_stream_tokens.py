"""Stream tokens over real sockets: single use, bound to their call, and short-lived."""

from __future__ import annotations

import asyncio

import pytest

from gateway.calls.state import CallState
from gateway.http.errors import CloseCode
from tests.e2e.carrier import answer, caller_audio, open_stream

pytestmark = pytest.mark.e2e

CARRIERS = ["twilio", "telnyx"]


async def refused(gw, ticket, token: str, openai_fake) -> None:
    """A stream presenting ``token`` is closed 1008 before any audio reaches the provider."""
    sessions, audio = openai_fake.connection_count, len(openai_fake.audio)
    leg = await open_stream(gw, ticket, token=token)
    await leg.send_audio(caller_audio(1))
    assert await leg.wait_closed() == CloseCode.POLICY_VIOLATION
    assert leg.payloads == []
    assert openai_fake.connection_count == sessions
    assert len(openai_fake.audio) == audio


@pytest.mark.parametrize("carrier", CARRIERS)
async def test_a_token_is_single_use(make_gateway, openai_fake, carrier):
    gw = await make_gateway("openai")
    ticket = await answer(gw, carrier)
    first = await open_stream(gw, ticket)
    await first.play(caller_audio(3), realtime=False)
    await first.wait_audio(3)

    await refused(gw, ticket, ticket.token, openai_fake)

    # The first stream is untouched.
    await first.play(caller_audio(3), realtime=False)
    await first.wait_audio(6)
    assert first.close_code is None
    await first.stop()


@pytest.mark.parametrize("carrier", CARRIERS)
async def test_a_token_is_bound_to_its_call(make_gateway, openai_fake, carrier):
    gw = await make_gateway("openai")
    a, b = await answer(gw, carrier), await answer(gw, carrier)

    await refused(gw, b, a.token, openai_fake)  # A's token on B's stream

    # Presenting A's token spent it; B's own token still opens B's stream.
    await refused(gw, a, a.token, openai_fake)
    leg = await open_stream(gw, b)
    await leg.play(caller_audio(3), realtime=False)
    await leg.wait_audio(3)
    await leg.stop()


@pytest.mark.parametrize("carrier", CARRIERS)
async def test_an_expired_token_is_refused(make_gateway, openai_fake, carrier):
    gw = await make_gateway("openai")
    ticket = await answer(gw, carrier)
    # VOICEGW_STREAM_TOKEN_TTL_S is at least 5 s; mint one for this call that lives 1 s.
    expired = await gw.runtime.stream_tokens.mint(f"{carrier}:{ticket.call_id}", 1)
    await asyncio.sleep(1.1)

    await refused(gw, ticket, expired, openai_fake)

    call = await gw.call(carrier, ticket.call_id)
    assert call is not None and call.state is CallState.CONNECTING
    leg = await open_stream(gw, ticket)  # the token the webhook handed out still works
    await leg.play(caller_audio(3), realtime=False)
    await leg.wait_audio(3)
    await leg.stop()
