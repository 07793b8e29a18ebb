"""Media WebSocket endpoints and the Bridge between a carrier stream and an agent session.

Data takes one path: carrier frame → carrier codec → typed events → Bridge → agent session
(agent codec inside) and back. Per call the Bridge runs three tasks on the shared event loop:

* ``from_carrier``: reads carrier frames and forwards audio/DTMF to the agent. On the fast path
  (both sides G.711 μ-law 8 kHz) the base64 payload is forwarded untouched.
* ``from_agent``: reads agent events, transcodes audio when needed, and handles barge-in.
  A carrier that plays only whole 20 ms frames (Telnyx) gets them on the fast path too: the
  part of a chunk short of a frame waits for the next one, and the end of a response is
  padded with silence to a whole frame. Audio goes straight to the carrier while nothing is
  queued and the carrier holds less than ``OUTBOUND_LEAD_S`` of it (the usual case: one task
  hop less per frame); otherwise it is queued for ``to_carrier``.
* ``to_carrier``: paces queued audio so the carrier holds at most ``OUTBOUND_LEAD_S`` of it
  (no starvation, no ballooning buffer). Marks, every ``MARK_EVERY_S`` of audio sent and once
  it pauses, tell what the caller heard.

Drop policy: inbound audio is never queued (each frame is sent before the next is read; a
provider that stops reading fails the send after its timeout). Outbound audio waits in a queue
capped at ``OUTBOUND_QUEUE_S``; beyond it the oldest audio is dropped and counted. Barge-in
drops the queue. Every send to either peer is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import time
from dataclasses import dataclass
from typing import Any, Final, assert_never

from redis.exceptions import RedisError
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.audio import Framer, Transcoder, is_passthrough
from gateway.calls import Call, CallState
from gateway.errors import CloseCode, StreamRefused
from gateway.recording import Direction, RecordingError, RecordingWriter
from gateway.runtime import Runtime
from metrics.framemeter import FrameMeter
from metrics.logging import correlation_id
from metrics.registry import (
    ACTIVE_CALLS,
    CALL_DURATION,
    CALLS,
    FAILOVERS,
    MEDIA_DROPPED,
    MEDIA_FRAMES,
    MEDIA_RELAY,
    PROVIDER_ERRORS,
)
from providers.ai.session import AgentSession
from providers.codec import CarrierCodec, Frame
from providers.events import (
    PCMU_8K,
    AgentReady,
    AudioChunk,
    AudioFormat,
    Clear,
    Dtmf,
    Error,
    GoAway,
    Hangup,
    Interrupt,
    Mark,
    ResponseDone,
    ResumptionHandle,
    SpeechStarted,
    StreamConnected,
    StreamStarted,
    StreamStopped,
    Transcript,
)
from providers.exceptions import ProtocolError, SessionClosed, SessionError
from providers.telephony.telnyx import TelnyxCodec, UnsupportedMediaFormat
from providers.telephony.twilio import TwilioCodec
from security.exceptions import Rejection, StateUnavailable

log = logging.getLogger("voicegw.media")

START_TIMEOUT_S: Final = 10.0
"""The carrier must send ``start`` (with a valid token) within this long of connecting."""
CARRIER_SEND_TIMEOUT_S: Final = 5.0
CARRIER_DRAIN_S: Final = 1.0
"""After a send to the carrier fails, how long the frames it sent before closing may take to
be read (among them ``stop``: the caller hung up)."""
OUTBOUND_LEAD_S: Final = 0.4
OUTBOUND_QUEUE_S: Final = 120.0
MARK_EVERY_S: Final = 0.1
MARK_IDLE_S: Final = 0.06
"""Outbound audio that pauses this long gets a mark at its end (what the caller heard)."""
FALLBACK_FRAME_BYTES: Final = 8000  # 1 s of mu-law per message (Telnyx: 20 ms to 30 s)
FAILOVER_BUFFER_FRAMES: Final = 50
"""Caller audio held (1 s at 20 ms frames) while a call moves to another provider."""
MAX_MALFORMED: Final = 25
"""Malformed frames tolerated per stream (each counted and dropped); one more closes it."""
MAX_FRAMES_PER_S: Final = 250.0
"""Sustained inbound frame rate above which the stream is a flood (Twilio sends 50/s)."""
FRAME_BURST: Final = 500.0
CARRIER_FRAMES_PER_S: Final = 50.0
"""Frames a carrier sends per second (20 ms each): its backlog rate while a provider connects."""
WHOLE_FRAMES: Final = frozenset({"telnyx"})
"""Carriers that play only whole frames (Telnyx: 20 ms to 30 s per message): agent audio for
them is cut to multiples of 20 ms. Twilio plays any length."""
UNSUPPORTED_CODEC: Final = "unsupported_codec"
"""Outcome of a call whose stream announced a codec the gateway cannot carry."""


class EndReason(enum.StrEnum):
    CARRIER_HANGUP = "carrier_hangup"
    CARRIER_GONE = "carrier_disconnected"
    CARRIER_ERROR = "carrier_error"
    CARRIER_STALLED = "carrier_stalled"
    AGENT_HANGUP = "agent_hangup"
    AGENT_FAILED = "agent_failed"
    FLOOD = "flood"
    DRAINING = "draining"
    STREAM_FAILED = "stream_failed"
    """The carrier reported the media stream failed (Telnyx ``streaming.failed``)."""
    STREAM_STOPPED = "stream_stopped"
    """The carrier stopped the media stream, not at our request (``streaming.stopped``)."""


_CLOSE_CODES: Final = {
    EndReason.FLOOD: CloseCode.POLICY_VIOLATION,
    EndReason.AGENT_FAILED: CloseCode.INTERNAL_ERROR,
    EndReason.DRAINING: CloseCode.GOING_AWAY,
}


class CarrierGone(Exception):
    """A send to the carrier failed: it has disconnected."""


class UncarriableStream(Exception):
    """The stream's ``start`` announced audio the gateway cannot carry; ``token`` is the stream
    token the carrier presented (header or ``connected`` frame), if any."""

    def __init__(self, unsupported: UnsupportedMediaFormat, token: str | None) -> None:
        super().__init__(unsupported.reason)
        self.unsupported = unsupported
        self.token = token


# -- endpoints -------------------------------------------------------------------------------


async def twilio_stream(websocket: WebSocket) -> None:
    """``/media/twilio/{call}``: the call id in the path is signed by Twilio's upgrade."""
    await _serve(websocket, "twilio")


async def telnyx_stream(websocket: WebSocket) -> None:
    await _serve(websocket, "telnyx")


async def _serve(websocket: WebSocket, carrier: str) -> None:
    runtime: Runtime = websocket.app.state.runtime
    try:
        runtime.check_media_upgrade(carrier, websocket)
    except Rejection as rejection:
        log.warning("media upgrade refused", extra={"carrier": carrier, "layer": rejection.layer})
        await websocket.close(code=CloseCode.POLICY_VIOLATION)
        return
    await websocket.accept()
    codec: CarrierCodec = TwilioCodec() if carrier == "twilio" else TelnyxCodec()
    header_token = websocket.headers.get("x-telnyx-streaming-auth-token")
    try:
        started, early = await _await_start(websocket, codec, header_token)
        call = await runtime.claim_stream(carrier, started, websocket.path_params.get("call"))
    except UncarriableStream as uncarriable:
        await _end_uncarriable(runtime, websocket, carrier, uncarriable)
        return
    except StreamRefused as refused:
        log.warning("media stream refused", extra={"carrier": carrier, "reason": refused.reason})
        await _close(websocket, refused.code)
        return
    correlation_id.set(call.call_id)
    connecting = time.monotonic()
    agent = await runtime.open_agent(call)
    if agent is None:
        log.warning("no provider available", extra={"call_id": call.call_id})
        CALLS.labels(carrier, "none", "no_provider").inc()
        await _play_fallback(websocket, codec, runtime.fallback, started.format)
        await runtime.end_call_eventually(call, "no_provider")
        await runtime.close_call_record(call, "no_provider", (), 0)
        await _close(websocket, CloseCode.NORMAL)
        runtime.hang_up_carrier(call, started.account_id)
        return
    recorder = await runtime.open_recording(call)
    bridge = Bridge(runtime, websocket, codec, agent, call, started, recorder=recorder)
    # The carrier kept sending while the provider connected: that backlog is not a flood.
    bridge.allow_backlog(time.monotonic() - connecting)
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
                await runtime.end_unbridged(call, UNSUPPORTED_CODEC, hang_up=True, retry=True)
                code = CloseCode.UNSUPPORTED
    except (StateUnavailable, RedisError, OSError, TimeoutError):
        code = CloseCode.TRY_AGAIN_LATER
    await _close(websocket, code)


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
    from dataclasses import replace

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


async def _close(websocket: WebSocket, code: int) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CARRIER_SEND_TIMEOUT_S):
            await websocket.close(code=code)


# -- the bridge ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Placed:
    """A mark placed after outbound audio: item and how far into it the caller will be."""

    item_id: str | None
    item_ms: float


class Bridge:
    """Joins one carrier stream to one agent session until either side ends."""

    def __init__(
        self,
        runtime: Runtime,
        websocket: WebSocket,
        codec: CarrierCodec,
        agent: AgentSession,
        call: Call,
        started: StreamStarted,
        *,
        recorder: RecordingWriter | None = None,
    ) -> None:
        self.runtime = runtime
        self.ws = websocket
        self.codec = codec
        self.agent = agent
        self.call = call
        self.carrier = codec.carrier
        self.started = started
        self.carrier_format = started.format
        self._transcode_in: Transcoder | None = None
        self._transcode_out: Transcoder | None = None
        self._whole_frames = self.carrier in WHOLE_FRAMES
        self._framer: Framer | None = None
        self._set_formats(agent)
        self._providers: list[str] = [agent.provider]  # every provider the call used
        self.recorder = recorder
        self._media_origin = asyncio.get_running_loop().time()
        # Recordings are mu-law 8 kHz whatever the carrier sends (Telnyx may send A-law).
        pcmu = self.carrier_format == PCMU_8K
        self._record_in = None if pcmu else Transcoder(self.carrier_format, PCMU_8K)
        self._record_out = None if pcmu else Transcoder(self.carrier_format, PCMU_8K)
        self._switching = False  # a failover is in progress: hold caller audio
        self._held: collections.deque[AudioChunk] = collections.deque(maxlen=FAILOVER_BUFFER_FRAMES)
        self._loop = asyncio.get_running_loop()
        self._outbound: collections.deque[AudioChunk] = collections.deque()
        self._outbound_s = 0.0
        self._wakeup = asyncio.Event()
        self._playing = False  # a chunk is being sent to the carrier (_play)
        self._idle_timer: asyncio.TimerHandle | None = None  # checks for a pause (_idle_check)
        self._mark_due = False  # audio paused: to_carrier marks its end
        self._play_until = 0.0  # loop time when everything sent so far will have played
        self._last_played = 0.0  # loop time the last chunk was sent
        self._marks: dict[str, _Placed] = {}
        self._mark_seq = 0
        self._since_mark_s = 0.0
        self._item_id: str | None = None  # item of the audio last sent to the carrier
        self._item_ms = 0.0  # how much of it has been sent
        self._heard: dict[str | None, float] = {}  # item -> ms the caller has heard
        self._malformed = 0
        self._sends = 0  # carrier sends in progress
        self._send_began: float | None = None  # loop time the oldest of them began
        self._burst = FRAME_BURST
        self._tokens = FRAME_BURST
        self._tokens_at = time.perf_counter()
        self._agent_hung_up = False
        # Frame counts and relay times are tallied per call and added in batches.
        self._meter_in = FrameMeter(
            MEDIA_FRAMES.labels(self.carrier, "from_carrier"), MEDIA_RELAY.labels("from_carrier")
        )
        self._meter_out = FrameMeter(
            MEDIA_FRAMES.labels(self.carrier, "to_carrier"), MEDIA_RELAY.labels("to_carrier")
        )
        self.ended = asyncio.Event()
        self._stop_reason: EndReason | None = None

    def stop(self, reason: EndReason) -> None:
        """Ask the bridge to end (e.g. draining); returns at once."""
        self._stop_reason = reason
        self.ended.set()

    async def run(self, early: list[Dtmf]) -> EndReason:
        started = time.monotonic()
        ACTIVE_CALLS.labels(self.carrier, self.agent.provider).inc()
        self.runtime.add_bridge(self)
        reason = EndReason.CARRIER_ERROR
        reader = asyncio.create_task(self._from_carrier(early), name="from_carrier")
        tasks: list[asyncio.Task[Any]] = [
            reader,
            asyncio.create_task(self._from_agent(), name="from_agent"),
            asyncio.create_task(self._to_carrier(), name="to_carrier"),
            asyncio.create_task(self._watch_sends(), name="watchdog"),
            asyncio.create_task(self.ended.wait(), name="stop"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            reason = self._reason(done)
            if reason is EndReason.CARRIER_GONE and reader not in done:
                reason = await self._carrier_ending(reader)
        finally:
            for task in tasks:
                task.cancel()
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.runtime.remove_bridge(self)
            ACTIVE_CALLS.labels(self.carrier, self.agent.provider).dec()
            await self._finish(reason, time.monotonic() - started)
        return reason

    @staticmethod
    async def _carrier_ending(reader: asyncio.Task[EndReason]) -> EndReason:
        """A send to the carrier failed: its stream has closed. The frames it sent before
        closing may still wait to be read, ``stop`` among them when the caller hung up. Let
        the reader reach their end (bounded), so that a hang-up is told from a stream that
        vanished whichever task happened to run first."""
        done, _ = await asyncio.wait({reader}, timeout=CARRIER_DRAIN_S)
        if reader in done and not reader.cancelled() and reader.exception() is None:
            if reader.result() is EndReason.CARRIER_HANGUP:
                return EndReason.CARRIER_HANGUP
        return EndReason.CARRIER_GONE

    def _reason(self, done: set[asyncio.Task[Any]]) -> EndReason:
        for task in done:
            if task.get_name() == "stop":
                return self._stop_reason or EndReason.DRAINING
            exc = task.exception()
            if exc is None:
                result = task.result()
                if isinstance(result, EndReason):
                    return result
            elif isinstance(exc, CarrierGone):
                return EndReason.CARRIER_GONE
            elif isinstance(exc, SessionError):
                PROVIDER_ERRORS.labels(self.agent.provider, "session").inc()
                log.warning(
                    "agent session failed",
                    extra={"provider": self.agent.provider, "error": type(exc).__name__},
                )
                return EndReason.AGENT_FAILED
            else:
                log.error("bridge task failed", exc_info=exc)
                return EndReason.CARRIER_ERROR
        return EndReason.CARRIER_ERROR

    def _media_ms(self, loop_time: float) -> int:
        return max(0, int((loop_time - self._media_origin) * 1000))

    async def _record(self, direction: Direction, chunk: AudioChunk, at_ms: int) -> None:
        """Hand one chunk to the recording; returns at once and never fails the call."""
        if self.recorder is None:
            return
        transcoder = self._record_in if direction is Direction.FROM_CARRIER else self._record_out
        audio = chunk.to_bytes()
        if transcoder is not None:
            audio = transcoder.convert(audio)
        with contextlib.suppress(ValueError):  # at_ms beyond 49 days
            await self.recorder.write(direction, audio, at_ms)

    async def _finish(self, reason: EndReason, duration_s: float) -> None:
        self._meter_in.flush()
        self._meter_out.flush()
        await self.agent.close()
        if self.recorder is not None:
            try:
                await self.recorder.close()
            except RecordingError:
                log.error("call recording incomplete", extra={"call_id": self.call.call_id})
            if self.recorder.dropped:
                MEDIA_DROPPED.labels(self.carrier, "recording", "disk_slow").inc(
                    self.recorder.dropped
                )
        # Ended in the registry before the stream closes or the line is hung up, so that the
        # carrier's report of that (Telnyx ``streaming.stopped``) finds the call ended by us.
        await self.runtime.end_call_eventually(self.call, reason.value)
        match reason:
            case EndReason.CARRIER_HANGUP:
                pass  # the caller hung up: the carrier has ended the call
            case EndReason.CARRIER_GONE:
                # The stream vanished without ``stop``; the phone line may still be up (a
                # Telnyx stream ends without ending the call). "Already ended" is fine.
                self.runtime.hang_up_carrier(self.call, self.started.account_id)
            case _:
                await _close(self.ws, _CLOSE_CODES.get(reason, CloseCode.NORMAL))
                # We or the agent ended the call: hang up the phone line too.
                self.runtime.hang_up_carrier(self.call, self.started.account_id)
        CALLS.labels(self.carrier, self.agent.provider, reason.value).inc()
        CALL_DURATION.observe(duration_s)
        await self.runtime.close_call_record(
            self.call, reason.value, tuple(self._providers), len(self._providers) - 1
        )
        log.info(
            "call ended",
            extra={
                "call_id": self.call.call_id,
                "reason": reason.value,
                "duration_s": round(duration_s, 3),
            },
        )

    # -- from_carrier ---------------------------------------------------------------------

    async def _from_carrier(self, early: list[Dtmf]) -> EndReason:
        for dtmf in early:
            await self._send_to_agent(dtmf)
        ws = self.ws
        while True:
            message = await ws.receive()
            received = time.perf_counter()
            if message["type"] == "websocket.disconnect":
                return EndReason.CARRIER_GONE
            if not self._admit(received):
                MEDIA_DROPPED.labels(self.carrier, "from_carrier", "flood").inc()
                log.warning("media flood", extra={"call_id": self.call.call_id})
                return EndReason.FLOOD
            frame: Frame = message.get("text") or message.get("bytes") or b""
            try:
                events = self.codec.feed(frame)
            except ProtocolError as exc:
                MEDIA_DROPPED.labels(self.carrier, "from_carrier", "malformed").inc()
                self._malformed += 1
                if self._malformed > MAX_MALFORMED:
                    log.warning("too many malformed frames", extra={"call_id": self.call.call_id})
                    return EndReason.FLOOD
                log.info("malformed frame dropped", extra={"reason": exc.reason})
                continue
            for event in events:
                match event:
                    case AudioChunk():
                        await self._audio_to_agent(event)
                        self._meter_in.count()
                        self._meter_in.time(time.perf_counter() - received)
                        if self.recorder is not None:
                            at_ms = event.timestamp_ms
                            if at_ms is None:
                                at_ms = self._media_ms(self._loop.time())
                            await self._record(Direction.FROM_CARRIER, event, at_ms)
                    case Dtmf():
                        await self._send_to_agent(event)
                    case Mark(name=name):
                        self._mark_played(name)
                    case StreamStopped():
                        return EndReason.CARRIER_HANGUP
                    case Error(fatal=True):
                        return EndReason.CARRIER_ERROR
                    case Error():
                        log.info("carrier error event", extra={"code": event.code})
                    case StreamConnected() | StreamStarted():
                        MEDIA_DROPPED.labels(self.carrier, "from_carrier", "unexpected").inc()
                    case _:
                        assert_never(event)

    def allow_backlog(self, seconds: float) -> None:
        """Admit the frames a carrier queued during ``seconds`` before the bridge read them."""
        self._burst = FRAME_BURST + seconds * CARRIER_FRAMES_PER_S
        self._tokens = self._burst

    def _admit(self, now: float) -> bool:
        """Token bucket on inbound frames (``now`` from ``time.perf_counter``); False means a
        flood."""
        self._tokens = min(self._burst, self._tokens + (now - self._tokens_at) * MAX_FRAMES_PER_S)
        self._tokens_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    async def _audio_to_agent(self, chunk: AudioChunk) -> None:
        if self._switching:
            self._held.append(chunk)
            return
        try:
            await self._send_audio(chunk)
        except SessionError:
            # The provider is failing; from_agent notices it on recv and fails over.
            self._held.append(chunk)

    async def _send_audio(self, chunk: AudioChunk) -> None:
        if self._transcode_in is None:
            await self.agent.send(chunk)  # fast path: the payload is forwarded untouched
            return
        converted = self._transcode_in.convert(chunk.to_bytes())
        if converted:
            await self.agent.send(AudioChunk.from_bytes(converted, self.agent.input_format))

    async def _send_to_agent(self, event: Dtmf) -> None:
        if self._switching:
            return
        with contextlib.suppress(SessionError):
            await self.agent.send(event)

    # -- from_agent -------------------------------------------------------------------------

    async def _from_agent(self) -> EndReason:
        while True:
            try:
                event = await self.agent.recv()
            except SessionClosed as closed:
                if not closed.abnormal:
                    return EndReason.AGENT_HANGUP
                if not await self._fail_over(type(closed).__name__):
                    return EndReason.AGENT_FAILED
                continue
            except SessionError as exc:
                if not await self._fail_over(type(exc).__name__):
                    return EndReason.AGENT_FAILED
                continue
            received = time.perf_counter()
            match event:
                case AudioChunk():
                    if self._transcode_out is not None:
                        self._queue_audio(event)
                    elif (chunk := self._whole(event)) is None:
                        pass  # shorter than a frame so far: carried to the next chunk
                    elif self._may_play_now():
                        await self._play(chunk)  # nothing queued ahead: no hop to to_carrier
                    else:
                        self._enqueue(chunk)
                    self._meter_out.time(time.perf_counter() - received)
                case SpeechStarted():
                    await self._barge_in()
                case Hangup():
                    return EndReason.AGENT_HANGUP
                case Error(fatal=True):
                    log.warning(
                        "agent error", extra={"provider": self.agent.provider, "code": event.code}
                    )
                    if not await self._fail_over(f"fatal:{event.code}"[:64]):
                        return EndReason.AGENT_FAILED
                case Error():
                    PROVIDER_ERRORS.labels(self.agent.provider, "error").inc()
                case ResponseDone():
                    self._flush_out()
                case AgentReady() | Transcript() | GoAway() | ResumptionHandle():
                    pass
                case _:
                    assert_never(event)

    async def _fail_over(self, error: str) -> bool:
        """Move the call to the next available provider without touching the carrier stream.
        Caller audio is held (up to 1 s) meanwhile and replayed to the new provider. Returns
        False when no provider is left."""
        failed = self.agent
        self._switching = True
        began = time.perf_counter()
        PROVIDER_ERRORS.labels(failed.provider, "session").inc()
        log.warning("provider failed mid-call", extra={"provider": failed.provider, "error": error})
        await self.runtime.provider_failed(failed.provider, error)
        await failed.close()
        replacement = await self.runtime.open_agent(self.call, after=failed.provider)
        if replacement is None:
            return False
        self._use_agent(replacement)
        while self._held:
            chunk = self._held.popleft()
            try:
                await self._send_audio(chunk)
            except SessionError:
                break  # the new provider failed too: from_agent sees it on recv
        self._switching = False
        FAILOVERS.labels(failed.provider, replacement.provider).inc()
        self._providers.append(replacement.provider)
        await self.runtime.auditor.record(
            "call.failover",
            "success",
            entity_type="call",
            entity_id=self.call.call_id,
            detail={
                "from_provider": failed.provider,
                "to_provider": replacement.provider,
                "error": error,
            },
        )
        log.warning(
            "call moved to another provider",
            extra={
                "from_provider": failed.provider,
                "to_provider": replacement.provider,
                "gap_ms": round((time.perf_counter() - began) * 1000, 1),
            },
        )
        return True

    def _use_agent(self, agent: AgentSession) -> None:
        """Swap in a new agent session; transcoders follow its formats. Audio queued for the
        carrier keeps playing (the caller hears the end of the last sentence)."""
        ACTIVE_CALLS.labels(self.carrier, self.agent.provider).dec()
        ACTIVE_CALLS.labels(self.carrier, agent.provider).inc()
        self.agent = agent
        self._set_formats(agent)

    def _set_formats(self, agent: AgentSession) -> None:
        """Transcoders between the carrier's format and ``agent``'s, or none (fast path)."""
        fmt = self.carrier_format
        self._transcode_in = (
            None if is_passthrough(fmt, agent.input_format) else Transcoder(fmt, agent.input_format)
        )
        self._transcode_out = (
            None
            if is_passthrough(agent.output_format, fmt)
            else Transcoder(agent.output_format, fmt)
        )
        if self._transcode_out is None and not self._whole_frames:
            self._framer = None
        elif self._framer is None:
            # Kept across a failover: what it holds is already in the carrier's format.
            self._framer = Framer(fmt)

    def _whole(self, chunk: AudioChunk) -> AudioChunk | None:
        """Fast-path audio as the carrier takes it. Unchanged for a carrier that plays any
        length; otherwise whole 20 ms frames, the rest carried to the next chunk (and
        padded out by ``_flush_out`` at the end of the response). None when all of it is
        carried. A chunk of whole frames with nothing carried goes on untouched, undecoded."""
        framer = self._framer
        if framer is None:
            return chunk
        size = round(chunk.duration_ms * chunk.format.bytes_per_second / 1000)
        if not framer.pending and size and size % framer.frame_bytes == 0:
            return chunk
        whole = b"".join(framer.push(chunk.to_bytes()))
        if not whole:
            return None
        return AudioChunk.from_bytes(whole, chunk.format, item_id=chunk.item_id)

    def _queue_audio(self, chunk: AudioChunk) -> None:
        if self._transcode_out is not None and self._framer is not None:
            data = self._transcode_out.convert(chunk.to_bytes())
            for frame in self._framer.push(data):
                self._enqueue(
                    AudioChunk.from_bytes(frame, self.carrier_format, item_id=chunk.item_id)
                )
        else:
            self._enqueue(chunk)

    def _flush_out(self) -> None:
        """End of a response: queue what the transcoder and framer hold, the last frame
        padded with silence to a whole one."""
        if self._framer is None:
            return
        held = b"" if self._transcode_out is None else self._transcode_out.flush()
        tail = self._framer.push(held) + self._framer.flush(pad=True)
        for frame in tail:
            self._enqueue(AudioChunk.from_bytes(frame, self.carrier_format, item_id=self._item_id))

    def _enqueue(self, chunk: AudioChunk) -> None:
        self._outbound.append(chunk)
        self._outbound_s += chunk.duration_ms / 1000
        while self._outbound_s > OUTBOUND_QUEUE_S and len(self._outbound) > 1:
            dropped = self._outbound.popleft()
            self._outbound_s -= dropped.duration_ms / 1000
            MEDIA_DROPPED.labels(self.carrier, "to_carrier", "queue_full").inc()
        self._wakeup.set()

    async def _barge_in(self) -> None:
        """The caller spoke over the agent: clear the carrier, stop the agent, drop our queue."""
        dropped = len(self._outbound)
        self._outbound.clear()
        self._outbound_s = 0.0
        if dropped:
            MEDIA_DROPPED.labels(self.carrier, "to_carrier", "barge_in").inc(dropped)
        if self._transcode_out is not None:
            self._transcode_out.reset()
        if self._framer is not None:
            self._framer.clear()  # the carried part of a frame was talked over too
        loop = asyncio.get_running_loop()
        still_playing = self._play_until > loop.time()
        self._play_until = loop.time()
        if still_playing or self._marks:
            await self._send_carrier(self.codec.encode(Clear()))
        item = self._item_id
        played = int(self._heard.get(item, 0.0))
        self._marks.clear()
        await self.agent.send(Interrupt(item_id=item, played_ms=played))

    # -- to_carrier -------------------------------------------------------------------------

    async def _to_carrier(self) -> EndReason:
        """Play queued audio, paced; mark the end of audio once it pauses (``_idle_check``)."""
        loop = self._loop
        while True:
            if self._playing or not self._outbound:
                if self._mark_due and not self._playing:
                    self._mark_due = False
                    if self._since_mark_s > 0:
                        await self._place_mark()
                    continue
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            ahead = self._play_until - loop.time()
            if ahead > OUTBOUND_LEAD_S:
                await asyncio.sleep(ahead - OUTBOUND_LEAD_S)
                continue
            chunk = self._outbound.popleft()
            self._outbound_s -= chunk.duration_ms / 1000
            await self._play(chunk)

    def _idle_check(self) -> None:
        """Timer callback: once no audio has been sent for ``MARK_IDLE_S``, have to_carrier
        mark the end of what was sent (rather than after every chunk that happens to empty
        the queue); while audio flows, check again ``MARK_IDLE_S`` after the last chunk. One
        timer per pause, not one per chunk."""
        self._idle_timer = None
        if self._since_mark_s <= 0:
            return  # marked already (every MARK_EVERY_S); the next chunk re-arms
        due = self._last_played + MARK_IDLE_S
        if self._playing or self._outbound or self._loop.time() < due:
            self._idle_timer = self._loop.call_at(max(due, self._loop.time()), self._idle_check)
            return
        self._mark_due = True
        self._wakeup.set()

    def _may_play_now(self) -> bool:
        """Whether a chunk from the agent can go to the carrier at once: nothing is queued or
        being sent ahead of it, and the carrier holds less than ``OUTBOUND_LEAD_S``."""
        return (
            not self._outbound
            and not self._playing
            and self._play_until - self._loop.time() <= OUTBOUND_LEAD_S
        )

    async def _play(self, chunk: AudioChunk) -> None:
        """Send one chunk to the carrier, then account for it (pacing, recording, marks).
        One task at a time plays (``_playing``), so chunks and their marks go out in order."""
        self._playing = True
        try:
            await self._send_carrier(self.codec.encode(chunk))
            self._meter_out.count()
            seconds = chunk.duration_ms / 1000
            now = self._loop.time()
            starts = self._play_until if self._play_until > now else now  # caller hears it
            self._play_until = starts + seconds
            self._last_played = now
            if self.recorder is not None:
                await self._record(Direction.TO_CARRIER, chunk, self._media_ms(starts))
            if chunk.item_id != self._item_id:
                self._item_id = chunk.item_id
                self._item_ms = 0.0
            self._item_ms += seconds * 1000
            self._since_mark_s += seconds
            if self._since_mark_s >= MARK_EVERY_S:
                await self._place_mark()
        finally:
            self._playing = False
        if self._outbound:
            self._wakeup.set()  # to_carrier: more to play
        if self._since_mark_s > 0 and self._idle_timer is None:
            self._idle_timer = self._loop.call_at(self._last_played + MARK_IDLE_S, self._idle_check)

    async def _place_mark(self) -> None:
        self._mark_seq += 1
        name = f"m{self._mark_seq}"
        self._marks[name] = _Placed(self._item_id, self._item_ms)
        self._since_mark_s = 0.0
        await self._send_carrier(self.codec.encode(Mark(name)))

    def _mark_played(self, name: str) -> None:
        placed = self._marks.pop(name, None)
        if placed is not None:
            self._heard[placed.item_id] = placed.item_ms
            if len(self._heard) > 64:  # keep only recent items
                self._heard.pop(next(iter(self._heard)))

    async def _send_carrier(self, text: str) -> None:
        # The oldest send in progress is the one to watch (_watch_sends): a timer per send
        # would cost more than the send itself.
        if not self._sends:
            self._send_began = self._loop.time()
        self._sends += 1
        try:
            await self.ws.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError):
            raise CarrierGone from None
        finally:
            self._sends -= 1
            if not self._sends:
                self._send_began = None

    async def _watch_sends(self) -> EndReason:
        """End the call once a send to the carrier has waited ``CARRIER_SEND_TIMEOUT_S``:
        the carrier stopped reading. Checks a few times per timeout."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(CARRIER_SEND_TIMEOUT_S / 4)
            began = self._send_began
            if began is not None and loop.time() - began > CARRIER_SEND_TIMEOUT_S:
                log.warning("carrier stopped reading", extra={"call_id": self.call.call_id})
                return EndReason.CARRIER_STALLED
