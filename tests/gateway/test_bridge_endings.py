"""How a call's end is told when the carrier's stream closes while audio is going out.

A caller who hangs up makes the carrier send ``stop`` and then close the stream. If the
gateway's next send to the carrier fails before its reader has taken ``stop`` off the queue,
the call must still end as ``carrier_hangup`` (no REST hang-up: the carrier has ended the
call), whichever task ran first. A stream that closes without ``stop`` is
``carrier_disconnected`` and the line is hung up over REST. These tests drive the real
Bridge and the gateway's services with a carrier socket whose order of events is scripted, so
the race is not left to the scheduler.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import orjson
import pytest

from gateway.calls.state import Call, CallState, EndReason
from gateway.media import bridge
from gateway.media.bridge import Bridge
from gateway.media.endpoints import bridge_services
from providers.events import PCMU_8K, AudioChunk, StreamStarted
from providers.telephony.twilio import TwilioCodec
from tests.conftest import UNIT
from tests.gateway.conftest import Gateway, call_sid
from tests.gateway.test_app import STREAM_SID, twilio_start, twilio_stop
from tests.gateway.test_webhooks import VOICE, parse_twiml, twilio_params


class ClosingCarrier:
    """A carrier socket that has closed: the first send fails, and only a little later can
    the frames it sent before closing (``stop``, or nothing) be read, then the disconnect."""

    def __init__(self, pending: list[str], *, then_disconnect: bool = True) -> None:
        self.pending = pending
        self.then_disconnect = then_disconnect
        self.closed = asyncio.Event()
        self.sent = 0
        self.close_codes: list[int] = []

    async def send_text(self, text: str) -> None:
        self.sent += 1
        self.closed.set()
        raise OSError("connection closed")

    async def receive(self) -> dict[str, Any]:
        await self.closed.wait()
        await asyncio.sleep(0.01)  # the reader is behind the failed send
        if self.pending:
            return {"type": "websocket.receive", "text": self.pending.pop(0)}
        if not self.then_disconnect:
            await asyncio.Event().wait()  # a reader that never sees the end
        return {"type": "websocket.disconnect", "code": 1000}

    async def close(self, code: int = 1000) -> None:
        self.close_codes.append(code)


class TalkingAgent:
    """An agent session that speaks 20 ms of audio every 5 ms until closed."""

    provider = "echo"
    input_format = PCMU_8K
    output_format = PCMU_8K

    def __init__(self) -> None:
        self.received = 0
        self.closed = False

    async def connect(self) -> None:
        pass

    async def send(self, event: object) -> None:
        self.received += 1

    async def recv(self) -> AudioChunk:
        await asyncio.sleep(0.005)
        return AudioChunk.from_bytes(b"\xff" * 160, PCMU_8K, item_id="item-1")

    async def close(self) -> None:
        self.closed = True


async def streaming_call(gw: Gateway) -> tuple[Call, StreamStarted, TwilioCodec]:
    """A Twilio call answered by the gateway, its stream started and claimed as the media
    endpoint does; the codec has read ``start``."""
    sid = call_sid()
    _, token = parse_twiml(await gw.twilio(VOICE, twilio_params(sid)))
    codec = TwilioCodec()
    (started,) = codec.feed(twilio_start(sid, token))
    assert isinstance(started, StreamStarted)
    return await gw.runtime.admission.claim("twilio", started), started, codec


async def end_of(
    gw: Gateway, carrier: ClosingCarrier, monkeypatch: pytest.MonkeyPatch
) -> tuple[EndReason, Call, list[str]]:
    """Run a bridge on ``carrier`` to its end: the reason, the ended call, REST hang-ups."""
    hangups: list[str] = []
    monkeypatch.setattr(
        gw.runtime.control, "hang_up", lambda call, account: hangups.append(call.carrier_call_id)
    )
    call, started, codec = await streaming_call(gw)
    agent = TalkingAgent()
    services = bridge_services(gw.runtime)
    profile = gw.runtime.agents.profile(call.agent)
    running = Bridge(services, carrier, codec, agent, call, started, profile=profile)  # type: ignore[arg-type]
    async with asyncio.timeout(5 * UNIT):
        reason = await running.run([])
    ended = await gw.runtime.registry.get(call.call_id)
    assert ended is not None and ended.state is CallState.ENDED
    assert agent.closed
    return reason, ended, hangups


async def test_stop_read_after_a_failed_send_is_a_hangup(gw: Gateway, monkeypatch):
    carrier = ClosingCarrier([twilio_stop("CA")])
    reason, call, hangups = await end_of(gw, carrier, monkeypatch)
    assert carrier.sent >= 1  # the send failed first
    assert reason is EndReason.CARRIER_HANGUP
    assert call.ended_reason == "carrier_hangup"
    assert hangups == []  # the caller hung up: nothing to hang up over REST


async def test_close_without_stop_after_a_failed_send_is_a_disconnect(gw: Gateway, monkeypatch):
    carrier = ClosingCarrier([])
    reason, call, hangups = await end_of(gw, carrier, monkeypatch)
    assert reason is EndReason.CARRIER_GONE
    assert call.ended_reason == "carrier_disconnected"
    assert hangups == [call.carrier_call_id]  # the line may still be up


async def test_audio_before_the_close_is_still_read_then_disconnect(gw: Gateway, monkeypatch):
    payload = base64.b64encode(b"\xff" * 160).decode()
    media_frame = orjson.dumps(
        {
            "event": "media",
            "sequenceNumber": "2",
            "streamSid": STREAM_SID,
            "media": {"track": "inbound", "chunk": "1", "timestamp": "20", "payload": payload},
        }
    ).decode()
    carrier = ClosingCarrier([media_frame, media_frame])
    reason, call, hangups = await end_of(gw, carrier, monkeypatch)
    assert carrier.pending == []  # both frames were read before the end was decided
    assert reason is EndReason.CARRIER_GONE
    assert hangups == [call.carrier_call_id]


async def test_a_reader_that_never_ends_is_waited_for_boundedly(gw: Gateway, monkeypatch):
    monkeypatch.setattr(bridge, "CARRIER_DRAIN_S", 0.05)
    carrier = ClosingCarrier([], then_disconnect=False)
    reason, call, hangups = await end_of(gw, carrier, monkeypatch)
    assert reason is EndReason.CARRIER_GONE
    assert call.ended_reason == "carrier_disconnected"
    assert hangups == [call.carrier_call_id]
