"""The tool calls of one bridged call: the agent's own tools run on the customer's backend,
and the two built-ins that act on the call itself.

A ``ToolCall`` from the agent starts a task here; the Bridge's ``from_agent`` loop never waits
for a tool. The task runs the tool through the agents' runner (HTTP or Python; its failures
come back as an error output, never as an exception) and sends the ``ToolResult`` to the agent
session that asked, unless the provider withdrew the call (``ToolCancelled``) or the call has
moved to another provider meanwhile (the new one never made that call).

Built-ins (declared by the profile, see ``gateway.agents.profiles``):

* ``end_call``: the agent's last words are played to the caller (queued audio sent and the
  carrier's mark after it echoed), then the Bridge ends the call and hangs up the line.
* ``transfer_call(destination)``: ``destination`` must be a key of the profile's transfer
  table whose number the toll-fraud guard allows (``gateway.calls.destinations``; the loader
  refuses a table that breaks it, this checks again at the moment of the transfer); after the
  last words are played the carrier is asked to move the caller there. On success the Bridge
  ends the stream with outcome ``transferred``; on failure the agent gets an error output and
  the call goes on.

Arguments and outputs are the caller's data: never logged, never in the audit trail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson

from gateway.agents.profiles import END_CALL, TRANSFER_CALL, AgentProfile
from gateway.agents.tools import ToolContext, ToolOutcome, ToolRunner
from gateway.calls.state import Call, EndReason
from metrics.registry import (
    AGENT_ENDED_CALLS,
    DIALS_BLOCKED,
    TOOL_CALL_SECONDS,
    TOOL_CALLS,
    TRANSFERS,
)
from providers.ai.session import AgentSession
from providers.events import ToolCall, ToolResult
from providers.exceptions import SessionError

log = logging.getLogger("voicegw.media")

PLAYOUT_MAX_S: Final = 15.0
"""The longest an ``end_call`` or transfer waits for the agent's last words to be played."""
PLAYOUT_QUIET_S: Final = 0.5
"""The agent must have sent no audio for this long before its last words count as said."""
PLAYOUT_POLL_S: Final = 0.02
MAX_PENDING: Final = 8
"""Tool calls of one call running at once; more are answered with an error at once."""


class Transfers(Protocol):
    """Moves a live call to another destination (``gateway.calls.control.CallControl``)."""

    async def transfer(
        self,
        call: Call,
        account_id: str | None,
        destination: str,
        *,
        caller_id: str | None = None,
    ) -> bool: ...


class AuditTrail(Protocol):
    async def record(
        self,
        action: str,
        outcome: str,
        *,
        entity_type: str | None = None,
        entity_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None: ...


class CallSide(Protocol):
    """What the tools need of their Bridge."""

    @property
    def agent(self) -> AgentSession: ...

    def playing_or_speaking(self) -> bool:
        """Whether the caller has not yet heard all the agent said (or it is still saying it)."""
        ...

    def end(self, reason: EndReason, *, transfer_to: str | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class ToolServices:
    runner: ToolRunner
    transfers: Transfers
    auditor: AuditTrail
    caller_number: Callable[[Call], Awaitable[str | None]]


def _error(code: str) -> str:
    return orjson.dumps({"error": code}).decode()


class CallTools:
    """Tool calls of ``call`` (served by ``profile``) for the Bridge ``side``."""

    def __init__(
        self,
        services: ToolServices,
        profile: AgentProfile,
        call: Call,
        side: CallSide,
        *,
        account_id: str | None,
    ) -> None:
        self.services = services
        self.profile = profile
        self.call = call
        self.side = side
        self.account_id = account_id
        self._running: dict[str, asyncio.Task[None]] = {}
        self._acting = False  # an end_call or transfer is under way: one at a time

    def called(self, event: ToolCall) -> None:
        """The agent called a tool: run it in the background."""
        if event.call_id in self._running:
            return  # a provider repeating a call it made: one answer
        if len(self._running) >= MAX_PENDING:
            self._answer_later(event, self.side.agent, _error("too_many_tool_calls"))
            return
        task = asyncio.create_task(self._run(event, self.side.agent), name="tool")
        self._running[event.call_id] = task
        task.add_done_callback(lambda _: self._running.pop(event.call_id, None))

    def cancelled(self, call_ids: tuple[str, ...]) -> None:
        """The provider withdrew these calls: stop them, send no result."""
        for call_id in call_ids:
            task = self._running.pop(call_id, None)
            if task is not None:
                task.cancel()

    async def close(self) -> None:
        """The call is over: stop every tool still running."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- running one call ---------------------------------------------------------------------

    async def _run(self, event: ToolCall, agent: AgentSession) -> None:
        match event.name:
            case name if name == END_CALL and self.profile.end_call:
                await self._end_call(event, agent)
            case name if name == TRANSFER_CALL and self.profile.transfer:
                await self._transfer(event, agent)
            case name:
                spec = self.profile.tool(name)
                if spec is None:
                    # A name the model made up: one label for all of them (bounded series).
                    self._count("unknown", "unknown_tool", 0.0)
                    await self._answer(event, agent, _error("unknown_tool"))
                    return
                caller = await self.services.caller_number(self.call) if spec.send_caller else None
                context = ToolContext(
                    call_id=self.call.call_id,
                    agent=self.profile.name,
                    carrier=self.call.carrier,
                    caller=caller,
                )
                outcome = await self.services.runner.run(self.profile, spec, event, context)
                await self._audit_tool(spec.name, outcome)
                await self._answer(event, agent, outcome.output)

    async def _answer(self, event: ToolCall, agent: AgentSession, output: str) -> None:
        """Send the result to ``agent`` if it is still the call's agent."""
        if agent is not self.side.agent:
            return  # the call moved to another provider, which never made this call
        with contextlib.suppress(SessionError):  # a failing provider: from_agent fails over
            await agent.send(ToolResult(event.call_id, event.name, output))

    def _answer_later(self, event: ToolCall, agent: AgentSession, output: str) -> None:
        task = asyncio.create_task(self._answer(event, agent, output), name="tool")
        self._running[event.call_id] = task
        task.add_done_callback(lambda _: self._running.pop(event.call_id, None))

    async def _audit_tool(self, tool: str, outcome: ToolOutcome) -> None:
        await self.services.auditor.record(
            "call.tool",
            "success" if outcome.outcome == "ok" else "failure",
            entity_type="call",
            entity_id=self.call.call_id,
            detail={
                "agent": self.profile.name,
                "tool": tool,
                "outcome": outcome.outcome,
                "ms": round(outcome.seconds * 1000, 1),
            },
        )

    def _count(self, tool: str, outcome: str, seconds: float) -> None:
        TOOL_CALLS.labels(self.profile.name, tool, outcome).inc()
        TOOL_CALL_SECONDS.labels(self.profile.name, tool).observe(seconds)

    # -- built-ins ------------------------------------------------------------------------------

    async def _end_call(self, event: ToolCall, agent: AgentSession) -> None:
        if self._acting:
            await self._answer(event, agent, _error("already_ending"))
            return
        self._acting = True
        began = time.perf_counter()
        await self._last_words_played()
        seconds = time.perf_counter() - began
        self._count(END_CALL, "ok", seconds)
        AGENT_ENDED_CALLS.labels(self.profile.name).inc()
        await self.services.auditor.record(
            "call.end_call",
            "success",
            entity_type="call",
            entity_id=self.call.call_id,
            detail={"agent": self.profile.name, "ms": round(seconds * 1000, 1)},
        )
        self.side.end(EndReason.AGENT_ENDED)

    async def _transfer(self, event: ToolCall, agent: AgentSession) -> None:
        key = _destination(event.arguments)
        outcome = await self.transfer(key or "", by="agent", after_last_words=True)
        if outcome == "ok":
            return
        if outcome == "unknown_destination":
            self._count(TRANSFER_CALL, "bad_arguments", 0.0)
        error = {
            "busy": "already_ending",
            "failed": "transfer_failed",
            "denied_destination": "destination_not_allowed",
        }.get(outcome, outcome)
        await self._answer(event, agent, _error(error))

    async def transfer(self, key: str, *, by: str, after_last_words: bool) -> str:
        """Move the call to the profile's transfer destination ``key`` (the agent's
        ``transfer_call``, or an operator's command: ``by``). Returns ``ok`` (the Bridge is
        ending, outcome ``transferred``), ``unknown_destination``, ``denied_destination``
        (the toll-fraud guard refused its number: counted and audited, the carrier never
        asked), ``busy`` (already ending) or ``failed`` (the carrier did not move the call;
        it goes on)."""
        began = time.perf_counter()
        destination = self.profile.transfer.get(key)
        if destination is None:
            # Only a key of the table: the model (or a caller of the API) never dials a number
            # of its choosing.
            TRANSFERS.labels(self.profile.name, "bad_destination").inc()
            return "unknown_destination"
        refusal = self.profile.destinations.check(destination)
        if refusal is not None:
            DIALS_BLOCKED.labels("transfer", refusal).inc()
            TRANSFERS.labels(self.profile.name, "blocked").inc()
            if by == "agent":
                self._count(TRANSFER_CALL, "blocked", 0.0)
            await self.services.auditor.record(
                "call.transfer",
                "denied",
                entity_type="call",
                entity_id=self.call.call_id,
                detail={
                    "agent": self.profile.name,
                    "destination": key,
                    "by": by,
                    "blocked": refusal.value,
                },
            )
            log.warning(
                "transfer refused by the toll-fraud guard", extra={"call_id": self.call.call_id}
            )
            return "denied_destination"
        if self._acting:
            return "busy"
        self._acting = True
        if after_last_words:
            await self._last_words_played()
        caller_id = self.profile.caller_ids[0] if self.profile.caller_ids else None
        moved = await self.services.transfers.transfer(
            self.call, self.account_id, destination, caller_id=caller_id
        )
        seconds = time.perf_counter() - began
        outcome = "ok" if moved else "failed"
        if by == "agent":
            self._count(TRANSFER_CALL, outcome, seconds)
        TRANSFERS.labels(self.profile.name, outcome).inc()
        await self.services.auditor.record(
            "call.transfer",
            "success" if moved else "failure",
            entity_type="call",
            entity_id=self.call.call_id,
            detail={
                "agent": self.profile.name,
                "destination": key,
                "by": by,
                "ms": round(seconds * 1000, 1),
            },
        )
        if moved:
            self.side.end(EndReason.TRANSFERRED, transfer_to=key)
            return "ok"
        self._acting = False
        log.warning("transfer failed", extra={"call_id": self.call.call_id})
        return "failed"

    async def _last_words_played(self) -> None:
        """Wait (at most ``PLAYOUT_MAX_S``) until the caller has heard all the agent said: at
        least ``PLAYOUT_QUIET_S`` from now (audio of the same turn may still be on its way),
        then until the agent has been quiet that long and its audio has been played."""
        loop = asyncio.get_running_loop()
        quiet_from = loop.time() + PLAYOUT_QUIET_S
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PLAYOUT_MAX_S):
                # Polled: "played" joins the outbound queue, the carrier's mark echoes and the
                # agent's last audio; one wait per call's ending, not per frame.
                while loop.time() < quiet_from or self.side.playing_or_speaking():  # noqa: ASYNC110
                    await asyncio.sleep(PLAYOUT_POLL_S)


def _destination(arguments: str) -> str | None:
    """The ``destination`` key from ``transfer_call``'s JSON arguments; None if absent."""
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict):
        return None
    value = parsed.get("destination")
    return value if isinstance(value, str) and 0 < len(value) <= 64 else None
