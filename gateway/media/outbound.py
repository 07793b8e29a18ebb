"""Agent audio to the carrier, paced: one call's ``to_carrier`` side of the Bridge.

Audio goes straight to the carrier while nothing is queued and the carrier holds less than
``OUTBOUND_LEAD_S`` of it (the usual case: one task hop less per frame); otherwise it is queued,
and ``Outbound.run`` (the ``to_carrier`` task) paces it so the carrier holds at most
``OUTBOUND_LEAD_S`` (no starvation, no ballooning buffer). A carrier that plays only whole
20 ms frames (Telnyx) gets them on the fast path too: the part of a chunk short of a frame waits
for the next one, and the end of a response is padded with silence to a whole frame.

Marks, every ``MARK_EVERY_S`` of audio sent and once it pauses, tell what the caller heard
(``Marks``: pure bookkeeping). The queue is capped at ``OUTBOUND_QUEUE_S``; beyond it the oldest
audio is dropped and counted. Barge-in drops the queue. Every send is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Final

from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.calls.state import Call, EndReason
from gateway.media.audio import Framer, Transcoder, is_passthrough
from gateway.media.recorder import RecordingTap
from gateway.media.recording import Direction
from metrics.framemeter import FrameMeter
from metrics.registry import MEDIA_DROPPED, MEDIA_FRAMES, MEDIA_RELAY
from providers.codec import CarrierCodec
from providers.events import AudioChunk, AudioFormat, Clear, Interrupt, Mark

log = logging.getLogger("voicegw.media")

CARRIER_SEND_TIMEOUT_S: Final = 5.0
OUTBOUND_LEAD_S: Final = 0.4
OUTBOUND_QUEUE_S: Final = 120.0
MARK_EVERY_S: Final = 0.1
MARK_IDLE_S: Final = 0.06
"""Outbound audio that pauses this long gets a mark at its end (what the caller heard)."""
WHOLE_FRAMES: Final = frozenset({"telnyx"})
"""Carriers that play only whole frames (Telnyx: 20 ms to 30 s per message): agent audio for
them is cut to multiples of 20 ms. Twilio plays any length."""


class CarrierGone(Exception):
    """A send to the carrier failed: it has disconnected."""


async def close_carrier(websocket: WebSocket, code: int) -> None:
    """Close the carrier's stream with ``code``, bounded, ignoring a peer already gone."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CARRIER_SEND_TIMEOUT_S):
            await websocket.close(code=code)


@dataclass(slots=True)
class _Placed:
    """A mark placed after outbound audio: item and how far into it the caller will be."""

    item_id: str | None
    item_ms: float


class Marks:
    """Marks placed after outbound audio, and how much of each agent item the caller has heard
    (the carrier echoes a mark once the audio before it has played). No I/O."""

    def __init__(self) -> None:
        self._placed: dict[str, _Placed] = {}
        self._seq = 0
        self._heard: dict[str | None, float] = {}  # item -> ms the caller has heard

    def __bool__(self) -> bool:
        """Whether any placed mark is still unplayed."""
        return bool(self._placed)

    def place(self, item_id: str | None, item_ms: float) -> str:
        """A new mark after ``item_ms`` of ``item_id``; returns its name."""
        self._seq += 1
        name = f"m{self._seq}"
        self._placed[name] = _Placed(item_id, item_ms)
        return name

    def played(self, name: str) -> None:
        """The carrier played up to mark ``name``; an unknown name changes nothing."""
        placed = self._placed.pop(name, None)
        if placed is not None:
            self._heard[placed.item_id] = placed.item_ms
            if len(self._heard) > 64:  # keep only recent items
                self._heard.pop(next(iter(self._heard)))

    def heard_ms(self, item_id: str | None) -> float:
        """How much of ``item_id`` the caller has heard (0 when no mark of it played)."""
        return self._heard.get(item_id, 0.0)

    def clear(self) -> None:
        """Forget the unplayed marks (barge-in: the carrier drops what they follow)."""
        self._placed.clear()


class Outbound:
    """Agent audio to one carrier stream: conversion to the carrier's format, the queue, pacing,
    marks and barge-in. ``run`` is the ``to_carrier`` task, ``watch`` the send watchdog."""

    def __init__(
        self,
        websocket: WebSocket,
        codec: CarrierCodec,
        call: Call,
        carrier_format: AudioFormat,
        *,
        tap: RecordingTap | None,
    ) -> None:
        self.ws = websocket
        self.codec = codec
        self.call = call
        self.carrier = codec.carrier
        self.carrier_format = carrier_format
        self.tap = tap
        self._transcode_out: Transcoder | None = None
        self._whole_frames = self.carrier in WHOLE_FRAMES
        self._framer: Framer | None = None
        self._loop = asyncio.get_running_loop()
        self._outbound: collections.deque[AudioChunk] = collections.deque()
        self._outbound_s = 0.0
        self._wakeup = asyncio.Event()
        self._playing = False  # a chunk is being sent to the carrier (_play)
        self._idle_timer: asyncio.TimerHandle | None = None  # checks for a pause (_idle_check)
        self._mark_due = False  # audio paused: to_carrier marks its end
        self._play_until = 0.0  # loop time when everything sent so far will have played
        self._last_played = 0.0  # loop time the last chunk was sent
        self.marks = Marks()
        self._since_mark_s = 0.0
        self._item_id: str | None = None  # item of the audio last sent to the carrier
        self._item_ms = 0.0  # how much of it has been sent
        self._sends = 0  # carrier sends in progress
        self._send_began: float | None = None  # loop time the oldest of them began
        self.meter = FrameMeter(
            MEDIA_FRAMES.labels(self.carrier, "to_carrier"), MEDIA_RELAY.labels("to_carrier")
        )

    def use_format(self, agent_format: AudioFormat) -> None:
        """Convert from ``agent_format`` (an agent's output) to the carrier's, or not at all
        (fast path)."""
        fmt = self.carrier_format
        self._transcode_out = (
            None if is_passthrough(agent_format, fmt) else Transcoder(agent_format, fmt)
        )
        if self._transcode_out is None and not self._whole_frames:
            self._framer = None
        elif self._framer is None:
            # Kept across a failover: what it holds is already in the carrier's format.
            self._framer = Framer(fmt)

    def stop_timer(self) -> None:
        """The call is over: no more checks for a pause."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()

    # -- from the agent -----------------------------------------------------------------------

    async def audio(self, event: AudioChunk, received: float) -> None:
        """An agent's audio chunk (read at ``time.perf_counter`` ``received``): played now,
        queued, or carried to the next chunk (less than a whole frame so far)."""
        if self._transcode_out is not None:
            self._queue_audio(event)
        elif (chunk := self._whole(event)) is None:
            pass  # shorter than a frame so far: carried to the next chunk
        elif self._may_play_now():
            await self._play(chunk)  # nothing queued ahead: no hop to to_carrier
        else:
            self._enqueue(chunk)
        self.meter.time(time.perf_counter() - received)

    def _whole(self, chunk: AudioChunk) -> AudioChunk | None:
        """Fast-path audio as the carrier takes it. Unchanged for a carrier that plays any
        length; otherwise whole 20 ms frames, the rest carried to the next chunk (and
        padded out by ``response_done`` at the end of the response). None when all of it is
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

    def response_done(self) -> None:
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

    async def barge_in(self) -> Interrupt:
        """The caller spoke over the agent: clear the carrier and drop our queue. Returns the
        interrupt to send the agent: its item and how much of it the caller heard."""
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
        if still_playing or self.marks:
            await self.send(self.codec.encode(Clear()))
        item = self._item_id
        played = int(self.marks.heard_ms(item))
        self.marks.clear()
        return Interrupt(item_id=item, played_ms=played)

    def played_out(self) -> bool:
        """Whether the caller has heard everything sent so far: nothing queued or being sent,
        and the carrier has echoed the mark after the last audio (so it has been played, not
        only sent). Audio sent since the last mark gets one: ``to_carrier`` places it."""
        if self._outbound or self._playing:
            return False
        if self._since_mark_s > 0:
            self._mark_due = True
            self._wakeup.set()
            return False
        return not self.marks

    # -- to_carrier ---------------------------------------------------------------------------

    async def run(self) -> EndReason:
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
            await self.send(self.codec.encode(chunk))
            self.meter.count()
            seconds = chunk.duration_ms / 1000
            now = self._loop.time()
            starts = self._play_until if self._play_until > now else now  # caller hears it
            self._play_until = starts + seconds
            self._last_played = now
            if self.tap is not None:
                await self.tap.write(Direction.TO_CARRIER, chunk, self.tap.media_ms(starts))
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
        name = self.marks.place(self._item_id, self._item_ms)
        self._since_mark_s = 0.0
        await self.send(self.codec.encode(Mark(name)))

    # -- the socket ---------------------------------------------------------------------------

    async def send(self, text: str) -> None:
        """Send one frame to the carrier. Raises CarrierGone once it has disconnected."""
        # The oldest send in progress is the one to watch (watch): a timer per send would cost
        # more than the send itself.
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

    async def watch(self) -> EndReason:
        """End the call once a send to the carrier has waited ``CARRIER_SEND_TIMEOUT_S``:
        the carrier stopped reading. Checks a few times per timeout."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(CARRIER_SEND_TIMEOUT_S / 4)
            began = self._send_began
            if began is not None and loop.time() - began > CARRIER_SEND_TIMEOUT_S:
                log.warning("carrier stopped reading", extra={"call_id": self.call.call_id})
                return EndReason.CARRIER_STALLED
