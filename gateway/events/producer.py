"""``CallEvents``: the producer the call lifecycle calls. ``emit`` writes one outbox row and
rings the dispatcher; it never touches the network and never raises into the call."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from gateway.events.payload import EventType, clean_data, event_body, new_event_id
from gateway.events.policy import DEFAULT_RETRY, RetryPolicy
from gateway.records.base import DuplicateError, OutboxEvent
from metrics.registry import EVENTS_WRITE_FAILURES

__all__ = ["CallEvents", "EventWriter"]

log = logging.getLogger("voicegw.events")

# Two writers numbering one call's events at once: the loser takes the next number.
_NUMBERING_TRIES: Final = 3


class EventWriter(Protocol):
    async def add_event(self, event: OutboxEvent) -> int: ...


def _nothing() -> None:
    return None


class CallEvents:
    """Writes call events to the outbox of ``store``; a None ``store`` (no
    ``VOICEGW_EVENTS_URL``) makes :meth:`emit` do nothing. ``notify`` is called after each
    write (the dispatcher's ``wake``)."""

    __slots__ = ("_clock", "_notify", "_policy", "_store")

    def __init__(
        self,
        store: EventWriter | None,
        *,
        notify: Callable[[], None] = _nothing,
        policy: RetryPolicy = DEFAULT_RETRY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._notify = notify
        self._policy = policy
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return self._store is not None

    async def emit(self, call_id: str, type: EventType, data: Mapping[str, Any]) -> None:
        """Queue event ``type`` of call ``call_id`` with ``data`` (the fields of
        ``payload.DATA_FIELDS``; others and phone-like text are dropped). A store failure is
        logged and counted, never raised."""
        if self._store is None:
            return
        clean, dropped = clean_data(call_id, data)
        if dropped:
            log.warning("call event %s: fields dropped: %s", type.value, ", ".join(dropped))
        now = self._clock()
        event_id = new_event_id()
        event = OutboxEvent(
            event_id=event_id,
            call_id=call_id,
            type=type.value,
            body=event_body(event_id, type, now, clean),
            created_at=now,
            next_attempt_at=now,
            give_up_at=self._policy.give_up_at(now),
        )
        for attempt in range(1, _NUMBERING_TRIES + 1):
            try:
                await self._store.add_event(event)
                break
            except DuplicateError:
                if attempt == _NUMBERING_TRIES:
                    self._failed(type, "DuplicateError")
                    return
            except Exception as exc:  # the call goes on without its event
                self._failed(type, type_name(exc))
                return
        self._notify()

    @staticmethod
    def _failed(type: EventType, error: str) -> None:
        EVENTS_WRITE_FAILURES.inc()
        log.error("call event %s not written: %s", type.value, error)


def type_name(exc: BaseException) -> str:
    return type(exc).__name__
