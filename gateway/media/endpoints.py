"""The media WebSocket endpoints: a carrier's stream from upgrade to Bridge.

``/media/twilio/{call}`` and ``/media/telnyx`` check the upgrade (``StreamAdmission``), read
frames until ``start`` and its stream token, claim the call, open its agent (``AgentDialer``),
and run a ``Bridge`` until the call ends. With no provider left the caller hears the fallback
message and the call ends; a stream whose codec cannot be carried ends its call at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from typing import Final

from redis.exceptions import RedisError
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.calls.state import CallState
from gateway.http.errors import CloseCode, StreamRefused
from gateway.media.audio import Framer, Transcoder
from gateway.media.bridge import Bridge, BridgeServices
from gateway.media.inbound import MAX_MALFORMED
from gateway.media.outbound import close_carrier
from gateway.media.setup import SetupClock
from gateway.runtime import Runtime
from metrics.logging import correlation_id
from metrics.registry import CALLS, MEDIA_DROPPED
from providers.codec import CarrierCodec, Frame
from providers.events import (
    PCMU_8K,
    AudioChunk,
    AudioFormat,
    Dtmf,
    Mark,
    StreamConnected,
    StreamStarted,
    StreamStopped,
)
from providers.exceptions import ProtocolError
from providers.telephony.telnyx import TelnyxCodec, UnsupportedMediaFormat
from providers.telephony.twilio import TwilioCodec
from security.exceptions import Rejection, StateUnavailable

log = logging.getLogger("voicegw.media")

START_TIMEOUT_S: Final = 10.0
"""The carrier must send ``start`` (with a valid token) within this long of connecting."""
FALLBACK_FRAME_BYTES: Final = 8000  # 1 s of mu-law per message (Telnyx: 20 ms to 30 s)
UNSUPPORTED_CODEC: Final = "unsupported_codec"
"""Outcome of a call whose stream announced a codec the gateway cannot carry."""


class UncarriableStream(Exception):
    """The stream's ``start`` announced audio the gateway cannot carry; ``token`` is the stream
    token the carrier presented (header or ``connected`` frame), if any."""

    def __init__(self, unsupported: UnsupportedMediaFormat, token: str | None) -> None:
        super().__init__(unsupported.reason)
        self.unsupported = unsupported
        self.token = token


def bridge_services(runtime: Runtime) -> BridgeServices:
    """The services of ``runtime`` a Bridge uses."""
    return BridgeServices(
        dialer=runtime.dialer,
        records=runtime.records,
        control=runtime.control,
        auditor=runtime.auditor,
        live=runtime.lifecycle,
        tools=runtime.tools,
        transcripts=runtime.transcripts,
    )


async def twilio_stream(websocket: WebSocket) -> None:
    """``/media/twilio/{call}``: the call id in the path is signed by Twilio's upgrade."""
    await _serve(websocket, "twilio")


async def telnyx_stream(websocket: WebSocket) -> None:
    await _serve(websocket, "telnyx")


async def _serve(websocket: WebSocket, carrier: str) -> None:
    runtime: Runtime = websocket.app.state.runtime
    try:
        runtime.admission.check_upgrade(carrier, websocket)
    except Rejection as rejection:
        log.warning("media upgrade refused", extra={"carrier": carrier, "layer": rejection.layer})
        await websocket.close(code=CloseCode.POLICY_VIOLATION)
        return
    await websocket.accept()
    setup = SetupClock()
    codec: CarrierCodec = TwilioCodec() if carrier == "twilio" else TelnyxCodec()
    header_token = websocket.headers.get("x-telnyx-streaming-auth-token")
    try:
        started, early = await _await_start(websocket, codec, header_token)
        setup.stage("start")
        call = await runtime.admission.claim(carrier, started, websocket.path_params.get("call"))
        setup.stage("claim")
    except UncarriableStream as uncarriable:
        await _end_uncarriable(runtime, websocket, carrier, uncarriable)
        return
    except StreamRefused as refused:
        log.warning("media stream refused", extra={"carrier": carrier, "reason": refused.reason})
        await close_carrier(websocket, refused.code)
        return
    correlation_id.set(call.call_id)
    connecting = time.monotonic()
    # The profile is fixed for the call from here: a reload does not change a call under way.
    profile = runtime.agents.profile(call.agent)
    agent = await runtime.dialer.open_agent(call, profile)
    setup.stage("provider")
    if agent is None:
        log.warning("no provider available", extra={"call_id": call.call_id})
        CALLS.labels(carrier, "none", "no_provider", call.agent).inc()
        await _play_fallback(websocket, codec, runtime.fallback, started.format)
        await runtime.records.end_call_eventually(call, "no_provider")
        await runtime.records.close_call_record(call, "no_provider", (), 0)
        await close_carrier(websocket, CloseCode.NORMAL)
        runtime.control.hang_up(call, started.account_id)
        return
    recorder = await runtime.recorder.open(call)
    bridge = Bridge(
        bridge_services(runtime),
        websocket,
        codec,
        agent,
        call,
        started,
        profile=profile,
        recorder=recorder,
    )
    await runtime.records.call_answered(call, agent.provider)
    setup.stage("answer")
    # The carrier kept sending while the provider connected: that backlog is not a flood.
    bridge.allow_backlog(time.monotonic() - connecting)
    bridge.inbound.setup = setup
    await bridge.run(early)


async def _end_uncarriable(
    runtime: Runtime, websocket: WebSocket, carrier: str, uncarriable: UncarriableStream
) -> None:
    """A stream whose codec the gateway cannot carry: when it presents its call's stream
    token (spent here), end that call at once (REST hang-up, outcome ``unsupported_codec``)
    rather than leave the caller on an answered, silent line. Without a valid token nothing
    is ended: a forged ``start`` must not hang up someone else's call."""
    unsupported = uncarriable.unsupported
    log.warning(
        "media stream codec not supported",
        extra={"carrier": carrier, "codec": unsupported.codec},
    )
    code = CloseCode.POLICY_VIOLATION
    try:
        token = uncarriable.token or ""
        if await runtime.stream_tokens.consume(token, f"{carrier}:{unsupported.call_id}"):
            call = await runtime.registry.by_carrier_id(carrier, unsupported.call_id)
            if call is not None and call.state is CallState.CONNECTING:
                correlation_id.set(call.call_id)
                await runtime.control.end_unbridged(
                    call, UNSUPPORTED_CODEC, hang_up=True, retry=True
                )
                code = CloseCode.UNSUPPORTED
    except (StateUnavailable, RedisError, OSError, TimeoutError):
        code = CloseCode.TRY_AGAIN_LATER
    await close_carrier(websocket, code)


async def _play_fallback(
    websocket: WebSocket, codec: CarrierCodec, audio: bytes, fmt: AudioFormat
) -> None:
    """Send the fallback message (mu-law, converted to the stream's ``fmt``) and wait
    (bounded) until the carrier says it has played."""
    frame = FALLBACK_FRAME_BYTES
    if fmt != PCMU_8K:
        audio = Transcoder(PCMU_8K, fmt).convert(audio)
    # Whole 20 ms frames: Telnyx refuses a shorter last one.
    framer = Framer(fmt)
    audio = b"".join(framer.push(audio) + framer.flush(pad=True))
    try:
        async with asyncio.timeout(len(audio) / fmt.bytes_per_second + START_TIMEOUT_S):
            for i in range(0, len(audio), frame):
                chunk = AudioChunk.from_bytes(audio[i : i + frame], fmt)
                await websocket.send_text(codec.encode(chunk))
            await websocket.send_text(codec.encode(Mark("fallback-played")))
            while True:
                message = await _receive(websocket)
                if message is None:
                    return
                with contextlib.suppress(ProtocolError):
                    if any(isinstance(e, (Mark, StreamStopped)) for e in codec.feed(message)):
                        return
    except (TimeoutError, WebSocketDisconnect, RuntimeError, OSError):
        return


async def _await_start(
    websocket: WebSocket, codec: CarrierCodec, header_token: str | None
) -> tuple[StreamStarted, list[Dtmf]]:
    """Read frames until ``start``; return it with the token resolved into ``auth_token``."""
    token = header_token
    early: list[Dtmf] = []
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            for _ in range(MAX_MALFORMED):
                frame = await _receive(websocket)
                if frame is None:
                    raise StreamRefused(CloseCode.NORMAL, "disconnected before start")
                try:
                    events = codec.feed(frame)
                except UnsupportedMediaFormat as exc:
                    raise UncarriableStream(exc, token) from None
                except ProtocolError as exc:
                    MEDIA_DROPPED.labels(codec.carrier, "from_carrier", "malformed").inc()
                    log.info("malformed frame before start", extra={"reason": exc.reason})
                    continue
                for event in events:
                    match event:
                        case StreamConnected(auth_token=t) if t:
                            token = token or t
                        case StreamStarted():
                            token = event.auth_token or token
                            if not token:
                                raise StreamRefused(CloseCode.POLICY_VIOLATION, "no stream token")
                            return _with_token(event, token), early
                        case Dtmf():
                            early.append(event)
                        case _:
                            pass
    except TimeoutError:
        raise StreamRefused(CloseCode.POLICY_VIOLATION, "no start in time") from None
    raise StreamRefused(CloseCode.POLICY_VIOLATION, "too many malformed frames")


def _with_token(event: StreamStarted, token: str) -> StreamStarted:
    return replace(event, auth_token=token)


async def _receive(websocket: WebSocket) -> Frame | None:
    """The next message's payload, or None once the peer has gone."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        return None
    text: str | None = message.get("text")
    if text is not None:
        return text
    data: bytes = message.get("bytes") or b""
    return data
