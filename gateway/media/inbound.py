"""Carrier frames to the agent: one call's ``from_carrier`` side of the Bridge.

The reader takes each carrier frame through the codec and forwards audio and DTMF to the
agent. On the fast path (both sides G.711 mu-law 8 kHz) the base64 payload is forwarded
untouched. Inbound audio is never queued: each frame is sent before the next is read (a
provider that stops reading fails the send after its timeout). While the call moves to another
provider, caller audio is held (up to ``FAILOVER_BUFFER_FRAMES``) and replayed to the new one.

A flood (more than ``MAX_FRAMES_PER_S`` sustained, ``FloodGate``) or more than ``MAX_MALFORMED``
malformed frames ends the call.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import Final, assert_never

from starlette.websockets import WebSocket

from gateway.calls.state import Call, EndReason
from gateway.media.audio import Transcoder, is_passthrough
from gateway.media.outbound import Outbound
from gateway.media.recorder import RecordingTap
from gateway.media.recording import Direction
from gateway.media.setup import SetupClock
from metrics.framemeter import FrameMeter
from metrics.registry import MEDIA_DROPPED, MEDIA_FRAMES, MEDIA_RELAY
from providers.ai.session import AgentSession
from providers.codec import CarrierCodec, Frame
from providers.events import (
    AudioChunk,
    AudioFormat,
    Dtmf,
    Error,
    Mark,
    StreamConnected,
    StreamStarted,
    StreamStopped,
)
from providers.exceptions import ProtocolError, SessionError

log = logging.getLogger("voicegw.media")

FAILOVER_BUFFER_FRAMES: Final = 50
"""Caller audio held (1 s at 20 ms frames) while a call moves to another provider."""
MAX_MALFORMED: Final = 25
"""Malformed frames tolerated per stream (each counted and dropped); one more closes it."""
MAX_FRAMES_PER_S: Final = 250.0
"""Sustained inbound frame rate above which the stream is a flood (Twilio sends 50/s)."""
FRAME_BURST: Final = 500.0
CARRIER_FRAMES_PER_S: Final = 50.0
"""Frames a carrier sends per second (20 ms each): its backlog rate while a provider connects."""


class FloodGate:
    """Token bucket on inbound frames: ``MAX_FRAMES_PER_S`` sustained, bursts of
    ``FRAME_BURST``. No I/O: ``admit`` takes the time."""

    def __init__(self, now: float) -> None:
        self._burst = FRAME_BURST
        self._tokens = FRAME_BURST
        self._tokens_at = now

    def allow_backlog(self, seconds: float) -> None:
        """Admit the frames a carrier queued during ``seconds`` before the bridge read them."""
        self._burst = FRAME_BURST + seconds * CARRIER_FRAMES_PER_S
        self._tokens = self._burst

    def admit(self, now: float) -> bool:
        """One frame at ``now`` (``time.perf_counter``); False means a flood."""
        self._tokens = min(self._burst, self._tokens + (now - self._tokens_at) * MAX_FRAMES_PER_S)
        self._tokens_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class Inbound:
    """Carrier frames to the current agent session. ``run`` is the ``from_carrier`` task; marks
    the carrier echoes go to ``outbound``."""

    def __init__(
        self,
        websocket: WebSocket,
        codec: CarrierCodec,
        call: Call,
        carrier_format: AudioFormat,
        agent: AgentSession,
        outbound: Outbound,
        *,
        tap: RecordingTap | None,
    ) -> None:
        self.ws = websocket
        self.codec = codec
        self.call = call
        self.carrier = codec.carrier
        self.carrier_format = carrier_format
        self.outbound = outbound
        self.tap = tap
        self._transcode_in: Transcoder | None = None
        self.use_agent(agent)
        self.switching = False  # a failover is in progress: hold caller audio
        self.setup: SetupClock | None = None  # closed by the first caller frame forwarded
        self._held: collections.deque[AudioChunk] = collections.deque(maxlen=FAILOVER_BUFFER_FRAMES)
        self._loop = asyncio.get_running_loop()
        self._malformed = 0
        self.flood = FloodGate(time.perf_counter())
        self.meter = FrameMeter(
            MEDIA_FRAMES.labels(self.carrier, "from_carrier"), MEDIA_RELAY.labels("from_carrier")
        )

    def use_agent(self, agent: AgentSession) -> None:
        """Send to ``agent`` from now on, converting to its input format unless it takes the
        carrier's (fast path)."""
        self.agent = agent
        fmt = self.carrier_format
        self._transcode_in = (
            None if is_passthrough(fmt, agent.input_format) else Transcoder(fmt, agent.input_format)
        )

    async def run(self, early: list[Dtmf]) -> EndReason:
        for dtmf in early:
            await self._send_to_agent(dtmf)
        ws = self.ws
        while True:
            message = await ws.receive()
            received = time.perf_counter()
            if message["type"] == "websocket.disconnect":
                return EndReason.CARRIER_GONE
            if not self.flood.admit(received):
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
                        if self.setup is not None:
                            self.setup.first_frame()
                            self.setup = None
                        self.meter.count()
                        self.meter.time(time.perf_counter() - received)
                        if self.tap is not None:
                            at_ms = event.timestamp_ms
                            if at_ms is None:
                                at_ms = self.tap.media_ms(self._loop.time())
                            await self.tap.write(Direction.FROM_CARRIER, event, at_ms)
                    case Dtmf():
                        await self._send_to_agent(event)
                    case Mark(name=name):
                        self.outbound.marks.played(name)
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

    async def _audio_to_agent(self, chunk: AudioChunk) -> None:
        if self.switching:
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
        if self.switching:
            return
        with contextlib.suppress(SessionError):
            await self.agent.send(event)

    async def replay_held(self) -> None:
        """Send the caller audio held during a failover to the (new) agent, oldest first; stop
        at a failed send (the new provider failed too: from_agent sees it on recv)."""
        while self._held:
            chunk = self._held.popleft()
            try:
                await self._send_audio(chunk)
            except SessionError:
                break
