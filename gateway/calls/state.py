"""The call state machine: a call's states and the moves between them, the ``Call`` record, and
how a call ended.

A call moves ``ringing -> connecting -> streaming`` and may end from any of those; ``ended`` is
terminal. The replica that moves a call to ``connecting`` or ``streaming`` holds its media
stream and becomes its ``replica``. A record carries identifiers and state only: never a phone
number, a transcript or a stream token. The functions here are pure: each registry backend
(``gateway.calls.registry``) applies them atomically.

Errors::

    CallError
    ├── CallNotFoundError    no such call (never existed, or expired)
    └── CallStateError       the state machine forbids the change
"""

from __future__ import annotations

import enum
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final, assert_never

from providers.events import CallId

CARRIERS: Final = frozenset({"twilio", "telnyx"})
"""Carriers a call can come from; ``Call.carrier`` is one of these strings."""


class CallState(enum.StrEnum):
    RINGING = "ringing"
    CONNECTING = "connecting"
    STREAMING = "streaming"
    ENDED = "ended"


def can_transition(current: CallState, new: CallState) -> bool:
    """Whether the state machine allows ``current -> new``."""
    if new is CallState.ENDED:
        return current is not CallState.ENDED
    match current:
        case CallState.RINGING:
            return new is CallState.CONNECTING
        case CallState.CONNECTING:
            return new is CallState.STREAMING
        case CallState.STREAMING | CallState.ENDED:
            return False
        case _:
            assert_never(current)


class CallError(Exception):
    """Root of the errors this module raises."""


class CallNotFoundError(CallError, LookupError):
    def __init__(self, call_id: CallId) -> None:
        super().__init__(f"no call {call_id}")
        self.call_id = call_id


class CallStateError(CallError):
    """``requested`` is not allowed from ``current`` (e.g. anything after ``ended``)."""

    def __init__(self, call_id: CallId, current: CallState, requested: str) -> None:
        super().__init__(f"call {call_id} is {current.value}: cannot {requested}")
        self.call_id = call_id
        self.current = current
        self.requested = requested


@dataclass(frozen=True, slots=True)
class Call:
    """One call as the registry knows it. Times are Unix seconds.

    ``ended_reason`` is a short code ("hangup", "replica_lost", ...), never free text.
    ``account_id`` is the carrier account the call belongs to (Twilio's AccountSid, which its
    REST API needs to hang the call up), when the carrier named one.
    """

    call_id: CallId
    carrier: str
    carrier_call_id: str  # Twilio CallSid, Telnyx call_control_id
    provider: str
    state: CallState
    created_at: float
    updated_at: float
    replica: str
    ended_reason: str | None = None
    account_id: str | None = None
    agent: str = "default"
    """The name of the agent profile serving the call (chosen by the dialled number)."""

    @property
    def active(self) -> bool:
        return self.state is not CallState.ENDED


def new_call_id() -> CallId:
    """A fresh, unguessable gateway call id."""
    return CallId("call_" + secrets.token_urlsafe(16))


def new_call(
    carrier: str,
    carrier_call_id: str,
    provider: str,
    replica: str,
    account_id: str | None,
    agent: str = "default",
    call_id: CallId | None = None,
) -> Call:
    """A ringing call; ``call_id`` a gateway call id made for it beforehand (a call the
    gateway places names its stream URL before the carrier names the call), else a new one."""
    if carrier not in CARRIERS:
        raise ValueError(f"unknown carrier {carrier!r}")
    if not carrier_call_id:
        raise ValueError("empty carrier call id")
    if not provider:
        raise ValueError("empty provider")
    now = time.time()
    return Call(
        call_id or new_call_id(),
        carrier,
        carrier_call_id,
        provider,
        CallState.RINGING,
        now,
        now,
        replica,
        account_id=account_id,
        agent=agent,
    )


def transitioned(call: Call, new_state: CallState, reason: str | None, replica: str) -> Call:
    if not can_transition(call.state, new_state):
        raise CallStateError(call.call_id, call.state, f"move to {new_state.value}")
    match new_state:
        case CallState.ENDED:
            return replace(
                call, state=new_state, updated_at=time.time(), ended_reason=reason or "normal"
            )
        case CallState.CONNECTING | CallState.STREAMING:
            return replace(call, state=new_state, updated_at=time.time(), replica=replica)
        case CallState.RINGING:  # never allowed: can_transition said no
            raise AssertionError("unreachable")
        case _:
            assert_never(new_state)


def with_provider(call: Call, provider: str) -> Call:
    if not provider:
        raise ValueError("empty provider")
    if not call.active:
        raise CallStateError(call.call_id, call.state, "change provider")
    return replace(call, provider=provider, updated_at=time.time())


def ended_by_replica_loss(replica_id: str) -> Callable[[Call], Call | None]:
    def change(call: Call) -> Call | None:
        if not call.active or call.replica != replica_id:
            return None
        return transitioned(call, CallState.ENDED, "replica_lost", call.replica)

    return change


class EndReason(enum.StrEnum):
    """How a bridged call ended: the outcome its record, metrics and registry entry carry."""

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
    AGENT_ENDED = "agent_ended"
    """The agent called its ``end_call`` tool; the line was hung up after its last words."""
    TRANSFERRED = "transferred"
    """The carrier moved the caller to a destination (the agent's ``transfer_call``, or an
    operator's command)."""
    OPERATOR_HANGUP = "operator_hangup"
    """An operator or the customer's system hung the call up (``/api/v1/calls/{id}/hangup``)."""
