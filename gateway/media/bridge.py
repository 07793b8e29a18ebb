"""The Bridge between one carrier stream and one agent session, until either side ends.

Data takes one path: carrier frame → carrier codec → typed events → Bridge → agent session
(agent codec inside) and back. Per call the Bridge runs four tasks on the shared event loop:

* ``from_carrier`` (``Inbound.run``): carrier audio and DTMF to the agent;
* ``from_agent`` (here): agent events; audio goes to ``Outbound``, barge-in clears it, a
  provider that fails moves the call to the next one (``_fail_over``);
* ``to_carrier`` (``Outbound.run``): queued agent audio to the carrier, paced, with marks;
* ``watchdog`` (``Outbound.watch``): ends the call when the carrier stops reading.

Tool calls of the agent run beside them (``CallTools``), each in a task of its own.

A Bridge receives the few services it uses (``BridgeServices``: narrow ports, so a test can
build one with fakes for exactly those): the agent dialer, the call records, the carrier's
hang-up, the audit trail, the set of live bridges a drain walks, and what the call's tools
use (``ToolServices``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, assert_never

from starlette.websockets import WebSocket

from gateway.agents.profiles import AgentProfile
from gateway.calls.state import Call, EndReason
from gateway.http.errors import CloseCode
from gateway.media.inbound import Inbound
from gateway.media.outbound import CarrierGone, Outbound, close_carrier
from gateway.media.recorder import RecordingTap
from gateway.media.recording import RecordingWriter
from gateway.media.tools import PLAYOUT_QUIET_S, CallTools, ToolServices
from metrics.registry import ACTIVE_CALLS, CALL_DURATION, CALLS, FAILOVERS, PROVIDER_ERRORS
from providers.ai.session import AgentSession
from providers.codec import CarrierCodec
from providers.events import (
    AgentReady,
    AudioChunk,
    Dtmf,
    Error,
    GoAway,
    Hangup,
    ResponseDone,
    ResumptionHandle,
    SpeechStarted,
    StreamStarted,
    ToolCall,
    ToolCancelled,
    Transcript,
)
from providers.exceptions import SessionClosed, SessionError

log = logging.getLogger("voicegw.media")

CARRIER_DRAIN_S: Final = 3.0
"""After a send to the carrier fails, how long the frames it sent before closing may take to
be read (among them ``stop``: the caller hung up). The reader ends at once on a closed socket,
so this bound only matters on a busy machine, where 1 s let a hang-up pass for a vanished
stream."""

_CLOSE_CODES: Final = {
    EndReason.FLOOD: CloseCode.POLICY_VIOLATION,
    EndReason.AGENT_FAILED: CloseCode.INTERNAL_ERROR,
    EndReason.DRAINING: CloseCode.GOING_AWAY,
}


# -- the services a Bridge uses ---------------------------------------------------------------


class Dialer(Protocol):
    """Opens a call's agent through its provider's breaker (``gateway.media.dialer``)."""

    async def open_agent(
        self, call: Call, profile: AgentProfile, *, after: str | None = None
    ) -> AgentSession | None: ...

    async def provider_failed(self, provider: str, error: str) -> None: ...


class Records(Protocol):
    """Ends a call in the registry and completes its record (``gateway.calls.records``)."""

    async def end_call_eventually(self, call: Call, reason: str) -> None: ...

    async def close_call_record(
        self,
        call: Call,
        outcome: str,
        providers: tuple[str, ...],
        failovers: int,
        *,
        transfer_to: str | None = None,
        include_transcript: bool = False,
    ) -> None: ...


class HangUp(Protocol):
    """Hangs up a phone line over the carrier's API (``gateway.calls.control``)."""

    def hang_up(self, call: Call, account_id: str | None) -> None: ...


class Transcripts(Protocol):
    """Stores a call's turns, encrypted (``gateway.calls.transcripts.TranscriptLog``)."""

    async def append(self, call: Call, role: str, text: str) -> bool: ...

    def end(self, call_id: str) -> None: ...


class AuditTrail(Protocol):
    """Records one audit event (``security.audit.Auditor``)."""

    async def record(
        self,
        action: str,
        outcome: str,
        *,
        entity_type: str | None = None,
        entity_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None: ...


class LiveBridges(Protocol):
    """The bridges running on this replica (``gateway.lifecycle``)."""

    def add(self, bridge: Bridge) -> None: ...

    def remove(self, bridge: Bridge) -> None: ...


@dataclass(frozen=True, slots=True)
class BridgeServices:
    dialer: Dialer
    records: Records
    control: HangUp
    auditor: AuditTrail
    live: LiveBridges
    tools: ToolServices
    transcripts: Transcripts


# -- the bridge -------------------------------------------------------------------------------


class Bridge:
    """Joins one carrier stream to one agent session until either side ends."""

    def __init__(
        self,
        services: BridgeServices,
        websocket: WebSocket,
        codec: CarrierCodec,
        agent: AgentSession,
        call: Call,
        started: StreamStarted,
        *,
        profile: AgentProfile,
        recorder: RecordingWriter | None = None,
    ) -> None:
        self.services = services
        self.ws = websocket
        self.codec = codec
        self.agent = agent
        self.call = call
        self.carrier = codec.carrier
        self.started = started
        self.carrier_format = started.format
        self._providers: list[str] = [agent.provider]  # every provider the call used
        origin = asyncio.get_running_loop().time()
        self.tap = None if recorder is None else RecordingTap(recorder, started.format, origin)
        self.outbound = Outbound(websocket, codec, call, started.format, tap=self.tap)
        self.outbound.use_format(agent.output_format)
        self.inbound = Inbound(
            websocket, codec, call, started.format, agent, self.outbound, tap=self.tap
        )
        self.ended = asyncio.Event()
        self._stop_reason: EndReason | None = None
        self.profile = profile
        self.tools = CallTools(services.tools, profile, call, self, account_id=started.account_id)
        self._transfer_to: str | None = None
        self._transcribing: set[asyncio.Task[bool]] = set()
        self._agent_audio_at = 0.0  # perf_counter of the agent's last audio chunk

    def stop(self, reason: EndReason) -> None:
        """Ask the bridge to end (e.g. draining); returns at once."""
        self._stop_reason = reason
        self.ended.set()

    def end(self, reason: EndReason, *, transfer_to: str | None = None) -> None:
        """End the call as the agent asked (its ``end_call`` or a transfer that succeeded)."""
        self._transfer_to = transfer_to
        self.stop(reason)

    async def transfer(self, destination: str) -> str:
        """An operator's transfer to the profile's ``destination`` key, at once (see
        ``CallTools.transfer`` for the outcomes)."""
        return await self.tools.transfer(destination, by="operator", after_last_words=False)

    def playing_or_speaking(self) -> bool:
        """Whether the agent is still talking or the caller has not heard all of it yet."""
        speaking = time.perf_counter() - self._agent_audio_at < PLAYOUT_QUIET_S
        return speaking or not self.outbound.played_out()

    def allow_backlog(self, seconds: float) -> None:
        """Admit the frames a carrier queued during ``seconds`` before the bridge read them."""
        self.inbound.flood.allow_backlog(seconds)

    async def run(self, early: list[Dtmf]) -> EndReason:
        started = time.monotonic()
        ACTIVE_CALLS.labels(self.carrier, self.agent.provider, self.call.agent).inc()
        self.services.live.add(self)
        reason = EndReason.CARRIER_ERROR
        reader = asyncio.create_task(self.inbound.run(early), name="from_carrier")
        tasks: list[asyncio.Task[Any]] = [
            reader,
            asyncio.create_task(self._from_agent(), name="from_agent"),
            asyncio.create_task(self.outbound.run(), name="to_carrier"),
            asyncio.create_task(self.outbound.watch(), name="watchdog"),
            asyncio.create_task(self.ended.wait(), name="stop"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            reason = self._reason(done)
            if reason is EndReason.CARRIER_GONE:
                # Also when the reader is among ``done``: tasks finishing in the same step
                # come back as a set, and the reader's ``stop`` must win over a failed send.
                reason = await self._carrier_ending(reader)
        finally:
            for task in tasks:
                task.cancel()
            self.outbound.stop_timer()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.tools.close()
            await asyncio.gather(*self._transcribing, return_exceptions=True)
            self.services.transcripts.end(self.call.call_id)
            self.services.live.remove(self)
            ACTIVE_CALLS.labels(self.carrier, self.agent.provider, self.call.agent).dec()
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

    async def _finish(self, reason: EndReason, duration_s: float) -> None:
        self.inbound.meter.flush()
        self.outbound.meter.flush()
        await self.agent.close()
        if self.tap is not None:
            await self.tap.close(self.carrier, self.call)
        records, control = self.services.records, self.services.control
        # Ended in the registry before the stream closes or the line is hung up, so that the
        # carrier's report of that (Telnyx ``streaming.stopped``) finds the call ended by us.
        await records.end_call_eventually(self.call, reason.value)
        match reason:
            case EndReason.CARRIER_HANGUP:
                pass  # the caller hung up: the carrier has ended the call
            case EndReason.TRANSFERRED:
                # The carrier has moved the caller on; the stream closes, the line stays up.
                await close_carrier(self.ws, CloseCode.NORMAL)
            case EndReason.CARRIER_GONE:
                # The stream vanished without ``stop``; the phone line may still be up (a
                # Telnyx stream ends without ending the call). "Already ended" is fine.
                control.hang_up(self.call, self.started.account_id)
            case _:
                await close_carrier(self.ws, _CLOSE_CODES.get(reason, CloseCode.NORMAL))
                # We or the agent ended the call: hang up the phone line too.
                control.hang_up(self.call, self.started.account_id)
        CALLS.labels(self.carrier, self.agent.provider, reason.value, self.call.agent).inc()
        CALL_DURATION.observe(duration_s)
        await records.close_call_record(
            self.call,
            reason.value,
            tuple(self._providers),
            len(self._providers) - 1,
            transfer_to=self._transfer_to,
            include_transcript=self.profile.include_transcript,
        )
        log.info(
            "call ended",
            extra={
                "call_id": self.call.call_id,
                "reason": reason.value,
                "duration_s": round(duration_s, 3),
            },
        )

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
                    self._agent_audio_at = received
                    await self.outbound.audio(event, received)
                case SpeechStarted():
                    # The caller spoke over the agent: clear the carrier, stop the agent.
                    await self.agent.send(await self.outbound.barge_in())
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
                    self.outbound.response_done()
                case ToolCall():
                    self.tools.called(event)
                case ToolCancelled(call_ids=call_ids):
                    self.tools.cancelled(call_ids)
                case Transcript(role=role, text=text):
                    if self.profile.transcripts:
                        # Stored beside the call (numbered now, so turns keep their order).
                        self._transcribing.add(
                            asyncio.create_task(
                                self.services.transcripts.append(self.call, role, text),
                                name="transcript",
                            )
                        )
                        self._transcribing = {t for t in self._transcribing if not t.done()}
                case AgentReady() | GoAway() | ResumptionHandle():
                    pass
                case _:
                    assert_never(event)

    async def _fail_over(self, error: str) -> bool:
        """Move the call to the next available provider without touching the carrier stream.
        Caller audio is held (up to 1 s) meanwhile and replayed to the new provider. Returns
        False when no provider is left."""
        failed = self.agent
        dialer = self.services.dialer
        self.inbound.switching = True
        began = time.perf_counter()
        PROVIDER_ERRORS.labels(failed.provider, "session").inc()
        log.warning("provider failed mid-call", extra={"provider": failed.provider, "error": error})
        await dialer.provider_failed(failed.provider, error)
        await failed.close()
        replacement = await dialer.open_agent(self.call, self.profile, after=failed.provider)
        if replacement is None:
            return False
        self._use_agent(replacement)
        await self.inbound.replay_held()
        self.inbound.switching = False
        FAILOVERS.labels(failed.provider, replacement.provider).inc()
        self._providers.append(replacement.provider)
        await self.services.auditor.record(
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
        ACTIVE_CALLS.labels(self.carrier, self.agent.provider, self.call.agent).dec()
        ACTIVE_CALLS.labels(self.carrier, agent.provider, self.call.agent).inc()
        self.agent = agent
        self.inbound.use_agent(agent)
        self.outbound.use_format(agent.output_format)
