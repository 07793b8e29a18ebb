"""Every pair of carrier and provider carries a call end to end over real sockets."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest

from gateway.calls.state import CallState
from gateway.media.audio import ulaw_decode
from providers.ai.echo import mean_level
from tests.conftest import UNIT
from tests.e2e.carrier import FRAME, caller_audio, frames_of, place_call

pytestmark = pytest.mark.e2e

FRAMES = 40  # 0.8 s of caller speech
ECHO_THRESHOLD = 500.0  # EchoAgent's default loudness threshold


def first_loud_frame(audio: bytes) -> int:
    return next(i for i, f in enumerate(frames_of(audio)) if mean_level(f) > ECHO_THRESHOLD)


def rms(pcm16: bytes) -> float:
    samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float64)
    return float(np.sqrt((samples**2).mean())) if len(samples) else 0.0


@pytest.mark.parametrize("provider", ["openai", "deepgram", "gemini", "echo"])
@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
async def test_call_end_to_end(
    make_gateway, carrier, provider, openai_fake, deepgram_fake, gemini_fake
):
    gw = await make_gateway(provider)
    leg = await place_call(gw, carrier)
    audio = caller_audio(FRAMES)
    await leg.play(audio)

    pcm_expected = FRAMES * 0.02 * 16_000 * 2  # what Gemini should get: 16 kHz PCM16

    def gemini_pcm() -> bytes:
        return b"".join(base64.b64decode(chunk) for chunk in gemini_fake.audio)

    fake = {"openai": openai_fake, "deepgram": deepgram_fake, "gemini": gemini_fake}.get(provider)
    if fake is not None:
        arrived = {
            "openai": lambda: len(openai_fake.audio) >= FRAMES,
            "deepgram": lambda: len(deepgram_fake.audio) >= FRAMES,
            # The Gemini codec sends ~100 ms batches; the last partial one waits for more.
            "gemini": lambda: len(gemini_pcm()) >= 0.9 * pcm_expected,
        }[provider]
        async with asyncio.timeout(5 * UNIT):
            await fake.wait_until(arrived)
    match provider:
        case "openai":
            # Fast path: the carrier's base64 payloads reach OpenAI untouched.
            assert openai_fake.audio == leg.sent
        case "deepgram":
            assert deepgram_fake.audio == frames_of(audio)
        case "gemini":
            pcm = gemini_pcm()
            assert 0.9 * pcm_expected <= len(pcm) <= pcm_expected
            sent_rms = rms(ulaw_decode(audio))
            assert 0.5 * sent_rms < rms(pcm) < 2 * sent_rms

    if provider == "gemini":
        # Transcoded back to 8 kHz mu-law in whole 20 ms frames, about as loud as it went in.
        await leg.wait_audio(int(FRAMES * 0.8))
        assert all(len(base64.b64decode(p)) == 160 for p in leg.payloads)
        sent_rms = rms(ulaw_decode(audio))
        assert 0.5 * sent_rms < rms(ulaw_decode(leg.audio)) < 2 * sent_rms
    else:
        # The openai and deepgram fakes and the echo agent send the caller's audio back: the
        # carrier gets exactly those bytes, in order. The echo agent's VAD starts an utterance
        # at the first loud frame and (like a barge-in) drops the echo of the quiet before it.
        skip = first_loud_frame(audio) if provider == "echo" else 0
        await leg.wait_audio(FRAMES - skip)
        assert leg.audio == audio[skip * FRAME :]

    await leg.stop()
    call = await gw.wait_ended(leg.ticket)
    assert call.state is CallState.ENDED
    assert call.ended_reason == "carrier_hangup"
    assert call.provider == provider


@pytest.mark.parametrize("provider", ["openai", "deepgram", "gemini"])
async def test_the_agent_greets_the_caller_first(
    make_gateway, provider, openai_fake, deepgram_fake, gemini_fake
):
    greeting = "Thanks for calling Acme. How can I help?"
    gw = await make_gateway(provider, VOICEGW_AGENT_GREETING=greeting)
    leg = await place_call(gw, "twilio")
    # Each fake speaks 60 ms for a greeting; the caller has said nothing yet.
    await leg.wait_audio(3)
    assert leg.sent == []
    assert set(leg.audio) <= {0xFF, 0x7F}  # the fakes speak silence: mu-law +0 and -0
    match provider:
        case "openai":
            (response,) = openai_fake.created
            assert response["instructions"].endswith(f'"{greeting}"')
        case "deepgram":
            assert deepgram_fake.settings["agent"]["greeting"] == greeting
        case "gemini":
            (turn,) = gemini_fake.turns
            assert turn["parts"][0]["text"].endswith(f'"{greeting}"')
    await leg.stop()
    call = await gw.wait_ended(leg.ticket)
    assert call.ended_reason == "carrier_hangup"


async def test_a_call_moved_to_another_provider_is_not_greeted_again(
    make_gateway, openai_fake, deepgram_fake
):
    greeting = "Thanks for calling Acme. How can I help?"
    gw = await make_gateway("openai,deepgram", VOICEGW_AGENT_GREETING=greeting)
    leg = await place_call(gw, "twilio")
    await leg.wait_audio(3)  # OpenAI's greeting
    (response,) = openai_fake.created
    assert response["instructions"].endswith(f'"{greeting}"')

    await openai_fake.close_abnormally()
    async with asyncio.timeout(5 * UNIT):
        await deepgram_fake.wait_until(lambda: deepgram_fake.settings is not None)
    # The caller heard the greeting once; the provider taking over mid-call does not repeat it.
    assert "greeting" not in deepgram_fake.settings["agent"]
    await leg.stop()
    call = await gw.wait_ended(leg.ticket)
    assert call.ended_reason == "carrier_hangup"
    assert call.provider == "deepgram"
