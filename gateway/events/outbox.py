"""The outbox as the events room uses it: the narrow store port, and the operator's
operations on it (revive dead events, delete old delivered ones)."""

from __future__ import annotations

from typing import Protocol

from gateway.events.policy import DEFAULT_RETRY, RetryPolicy
from gateway.records.base import EventState, OutboxEvent

__all__ = ["OutboxStore", "delete_delivered_events", "retry_dead", "retry_event"]


class OutboxStore(Protocol):
    """The ``Store`` methods of the outbox (``gateway.records.base.Store``)."""

    async def add_event(self, event: OutboxEvent) -> int: ...
    async def claim_events(
        self, now: float, claim: str, claimed_until: float, limit: int
    ) -> list[OutboxEvent]: ...
    async def next_event_due(self) -> float | None: ...
    async def event_delivered(self, event_id: str, at: float) -> bool: ...
    async def event_failed(
        self, event_id: str, claim: str, *, error: str, next_attempt_at: float | None
    ) -> bool: ...
    async def release_event(self, event_id: str, claim: str) -> bool: ...
    async def count_events(self, state: EventState) -> int: ...
    async def requeue_event(self, event_id: str, now: float, give_up_at: float) -> bool: ...
    async def requeue_dead_events(self, now: float, give_up_at: float) -> int: ...
    async def delete_delivered_events_before(self, cutoff: float, limit: int) -> int: ...


async def retry_event(
    store: OutboxStore, event_id: str, now: float, policy: RetryPolicy = DEFAULT_RETRY
) -> bool:
    """Put dead event ``event_id`` back to pending, due now, with a fresh deadline; False when
    there is no such dead event."""
    return await store.requeue_event(event_id, now, policy.give_up_at(now))


async def retry_dead(store: OutboxStore, now: float, policy: RetryPolicy = DEFAULT_RETRY) -> int:
    """Put every dead event back to pending (each call's in order); return how many."""
    return await store.requeue_dead_events(now, policy.give_up_at(now))


async def delete_delivered_events(
    store: OutboxStore, *, older_than_s: float, now: float, batch: int = 500
) -> int:
    """Delete the events delivered more than ``older_than_s`` ago, ``batch`` per transaction;
    return how many (the retention sweeper calls it; pending and dead events stay)."""
    cutoff = now - older_than_s
    total = 0
    while True:
        deleted = await store.delete_delivered_events_before(cutoff, batch)
        total += deleted
        if deleted < batch:
            return total
