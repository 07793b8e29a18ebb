"""Durable call records, and ending calls in the registry even while it is down.

``CallRecords`` writes a new call's record (its numbers encrypted and blind-indexed), completes
it when the call ends, and ends calls in the live-call registry: at once, or (``eventually``)
in the background once Redis answers again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, Protocol

from redis.exceptions import RedisError

from gateway.calls.registry import CallRegistry, when_registry_answers
from gateway.calls.state import Call, CallError, CallState, CallStateError
from gateway.calls.transcripts import Turn
from gateway.events.payload import EventType
from gateway.events.producer import CallEvents
from gateway.lifecycle import Tasks
from gateway.records.base import CallRecord, Store
from gateway.records.privacy import open_numbers, seal_numbers
from security.crypto import BlindIndex, KeyRing

log = logging.getLogger("voicegw.runtime")


class TranscriptReader(Protocol):
    """Reads a call's turns in clear (``gateway.calls.transcripts.TranscriptLog``)."""

    async def read(self, call_id: str) -> Sequence[Turn]: ...


class CallUsage(Protocol):
    """Counts what a placed call used once it ends (``gateway.calls.dialcaps.DialCaps``)."""

    async def ended(self, call_id: str, outcome: str, seconds: float) -> None: ...


FAILED_OUTCOMES: Final = frozenset(
    {
        "agent_failed",
        "no_provider",
        "carrier_error",
        "stream_failed",
        "answer_failed",
        "unsupported_codec",
        "dial_failed",
        "stream_not_opened",
        "replica_lost",
    }
)
"""Outcomes the customer hears of as ``call.failed``: the call was not served to its end."""


class CallRecords:
    """Call records in ``store``; calls ended in ``registry``. ``recording_path`` says where a
    recorded call's file goes; retries run as ``tasks``; ``usage`` learns how long each call
    lasted (the dial caps' minutes per day)."""

    def __init__(
        self,
        *,
        store: Store,
        data_keys: KeyRing,
        blind_index: BlindIndex,
        registry: CallRegistry,
        tasks: Tasks,
        recording_path: Callable[[Call], Path],
        events: CallEvents | None = None,
        transcripts: TranscriptReader | None = None,
        usage: CallUsage | None = None,
    ) -> None:
        self.store = store
        self.data_keys = data_keys
        self.blind_index = blind_index
        self.registry = registry
        self.tasks = tasks
        self.recording_path = recording_path
        self.events = CallEvents(None) if events is None else events
        self.transcripts = transcripts
        self.usage = usage

    async def record_call(
        self, call: Call, *, from_number: str | None, to_number: str | None, record: bool = False
    ) -> None:
        """Write the durable record of a new call; its numbers encrypted and blind-indexed.
        ``record``: the call will be recorded (consent checked by the caller)."""
        sealed = seal_numbers(
            self.data_keys,
            self.blind_index,
            call_id=call.call_id,
            from_number=from_number,
            to_number=to_number,
        )
        durable = CallRecord(
            call_id=call.call_id,
            carrier=call.carrier,
            carrier_call_id=call.carrier_call_id,
            started_at=call.created_at,
            providers=(call.provider,),
            recording_path=str(self.recording_path(call)) if record else None,
            agent=call.agent,
            **sealed.fields(),
        )
        try:
            await self.store.put_call(durable)
        except Exception as exc:  # the call goes on; the gap is logged
            log.error(
                "call record not written",
                extra={"call_id": call.call_id, "error": type(exc).__name__},
            )
        await self.events.emit(
            call.call_id,
            EventType.STARTED,
            {"call_id": call.call_id, "agent": call.agent, "carrier": call.carrier},
        )

    async def call_answered(self, call: Call, provider: str) -> None:
        """The call's stream is bridged to its agent: the customer's ``call.answered``."""
        await self.events.emit(
            call.call_id,
            EventType.ANSWERED,
            {
                "call_id": call.call_id,
                "agent": call.agent,
                "carrier": call.carrier,
                "providers": [provider],
            },
        )

    async def close_call_record(
        self,
        call: Call,
        outcome: str,
        providers: tuple[str, ...],
        failovers: int,
        *,
        transfer_to: str | None = None,
        include_transcript: bool = False,
    ) -> None:
        """Complete the durable record of an ended call; ``transfer_to`` is the destination key
        of a transferred call; ``include_transcript``: its last event carries what was said."""
        await self._count_usage(call, outcome)
        closed: CallRecord | None = None
        try:
            record = await self.store.get_call(call.call_id)
            if record is None:
                return
            merged = tuple(dict.fromkeys(record.providers + providers))
            closed = dataclasses.replace(
                record,
                ended_at=time.time(),
                outcome=outcome,
                providers=merged,
                failovers=record.failovers + failovers,
                transfer_to=transfer_to or record.transfer_to,
            )
            await self.store.put_call(closed)
        except Exception as exc:
            log.error(
                "call record not completed",
                extra={"call_id": call.call_id, "error": type(exc).__name__},
            )
        await self._ended(call, outcome, closed, transfer_to, include_transcript)

    async def _count_usage(self, call: Call, outcome: str) -> None:
        if self.usage is None:
            return
        try:
            await self.usage.ended(call.call_id, outcome, time.time() - call.created_at)
        except Exception as exc:  # the call is over either way; the gap is logged
            log.error(
                "call minutes not counted",
                extra={"call_id": call.call_id, "error": type(exc).__name__},
            )

    async def _ended(
        self,
        call: Call,
        outcome: str,
        record: CallRecord | None,
        transfer_to: str | None,
        include_transcript: bool,
    ) -> None:
        """The customer's last event of the call: ``call.transferred``, ``call.failed`` (no
        agent could serve it, or its carrier leg failed) or ``call.ended``."""
        if transfer_to is not None or outcome == "transferred":
            kind = EventType.TRANSFERRED
        elif outcome in FAILED_OUTCOMES:
            kind = EventType.FAILED
        else:
            kind = EventType.ENDED
        data: dict[str, object] = {
            "call_id": call.call_id,
            "agent": call.agent,
            "carrier": call.carrier,
            "outcome": outcome,
        }
        if record is not None:
            data["providers"] = list(record.providers)
            data["failovers"] = record.failovers
            if record.duration_s is not None:
                data["duration_s"] = round(record.duration_s, 3)
        if transfer_to is not None:
            data["transfer_to"] = transfer_to
        if include_transcript and self.transcripts is not None and self.events.enabled:
            try:
                turns = await self.transcripts.read(call.call_id)
                data["transcript"] = [{"role": t.role, "text": t.text} for t in turns]
            except Exception as exc:  # the event goes without it; the gap is logged
                log.error(
                    "transcript not read for the call event",
                    extra={"call_id": call.call_id, "error": type(exc).__name__},
                )
        await self.events.emit(call.call_id, kind, data)

    async def caller_number(self, call: Call) -> str | None:
        """The caller's number from the call's record (decrypted), for a tool that was granted
        it (``send_caller``); None when there is no record or the number was erased."""
        try:
            record = await self.store.get_call(call.call_id)
            return None if record is None else open_numbers(self.data_keys, record)[0]
        except Exception as exc:  # the tool goes on without it; the gap is logged
            log.error(
                "caller number not read",
                extra={"call_id": call.call_id, "error": type(exc).__name__},
            )
            return None

    async def end_call(self, call: Call, reason: str) -> None:
        current = await self.registry.get(call.call_id)
        if current is not None and current.state is not CallState.ENDED:
            # Another request (a duplicate hang-up, the bridge) may end it first.
            with contextlib.suppress(CallStateError):
                await self.registry.transition(call.call_id, CallState.ENDED, reason=reason)

    async def end_call_eventually(self, call: Call, reason: str) -> None:
        """``end_call`` for a call whose media has ended; never raises. While shared state is
        down the registry is updated in the background once Redis answers again, so the call
        is not kept alive by this replica's heartbeat as a ghost (until then it is still
        listed; if this process dies first, the registry's TTL ends it)."""
        try:
            await self.end_call(call, reason)
        except (RedisError, OSError, TimeoutError, CallError) as exc:
            log.warning(
                "call not ended in the registry yet",
                extra={"call_id": call.call_id, "error": type(exc).__name__},
            )
            self.tasks.spawn(
                when_registry_answers(call, lambda: self.end_call(call, reason)), "end-call"
            )
