"""The outbox queries on both backends: numbering per call, leases, settling, revival,
retention."""

from __future__ import annotations

import asyncio

from gateway.records.base import EventState, OutboxEvent

NOW = 1_700_000_000.0


def event(event_id: str, call_id: str = "call-1", at: float = NOW) -> OutboxEvent:
    return OutboxEvent(
        event_id=event_id,
        call_id=call_id,
        type="call.started",
        body=f'{{"id":"{event_id}"}}',
        created_at=at,
        next_attempt_at=at,
        give_up_at=at + 86400,
    )


async def test_events_are_numbered_per_call(store):
    assert await store.add_event(event("evt_a")) == 1
    assert await store.add_event(event("evt_b")) == 2
    assert await store.add_event(event("evt_c", "call-2")) == 1
    stored = await store.get_event("evt_b")
    assert stored is not None and stored.seq == 2 and stored.state is EventState.PENDING
    assert stored.body == '{"id":"evt_b"}' and stored.attempts == 0


async def test_only_the_oldest_pending_event_of_each_call_is_claimed(store):
    for name in ("evt_a", "evt_b"):
        await store.add_event(event(name))
    await store.add_event(event("evt_c", "call-2"))
    claimed = await store.claim_events(NOW, "c1", NOW + 30, 10)
    assert sorted(e.event_id for e in claimed) == ["evt_a", "evt_c"]
    assert all(e.claim == "c1" and e.claimed_until == NOW + 30 for e in claimed)
    # Leased: nobody else gets them, and evt_b waits behind evt_a.
    assert await store.claim_events(NOW + 1, "c2", NOW + 31, 10) == []
    assert await store.next_event_due() == NOW + 30
    assert await store.event_delivered("evt_a", NOW + 2)
    claimed = await store.claim_events(NOW + 2, "c3", NOW + 32, 10)
    assert [e.event_id for e in claimed] == ["evt_b"]


async def test_a_lease_that_ran_out_is_claimed_again(store):
    await store.add_event(event("evt_a"))
    assert len(await store.claim_events(NOW, "dead-replica", NOW + 30, 10)) == 1
    assert await store.claim_events(NOW + 29, "other", NOW + 59, 10) == []
    again = await store.claim_events(NOW + 30, "other", NOW + 60, 10)
    assert [e.claim for e in again] == ["other"]
    # The first holder's late failure report changes nothing: it lost the lease.
    assert not await store.event_failed("evt_a", "dead-replica", error="X", next_attempt_at=NOW)
    assert (await store.get_event("evt_a")).claim == "other"


async def test_a_failed_attempt_is_counted_and_scheduled_or_dead(store):
    await store.add_event(event("evt_a"))
    await store.add_event(event("evt_b", "call-2"))
    await store.claim_events(NOW, "c", NOW + 30, 10)
    assert await store.event_failed("evt_a", "c", error="HTTP503", next_attempt_at=NOW + 4)
    assert await store.event_failed("evt_b", "c", error="HTTP410", next_attempt_at=None)
    a, b = await store.get_event("evt_a"), await store.get_event("evt_b")
    assert (a.state, a.attempts, a.next_attempt_at, a.last_error, a.claim) == (
        EventState.PENDING,
        1,
        NOW + 4,
        "HTTP503",
        None,
    )
    assert (b.state, b.attempts) == (EventState.DEAD, 1)
    assert await store.claim_events(NOW + 3, "c", NOW + 33, 10) == []  # not due yet
    assert await store.next_event_due() == NOW + 4
    assert await store.count_events(EventState.DEAD) == 1
    assert [e.event_id for e in await store.list_events(state=EventState.DEAD)] == ["evt_b"]


async def test_a_dead_event_does_not_hold_back_the_next_one(store):
    await store.add_event(event("evt_a"))
    await store.add_event(event("evt_b"))
    await store.claim_events(NOW, "c", NOW + 30, 10)
    await store.event_failed("evt_a", "c", error="HTTP410", next_attempt_at=None)
    assert [e.event_id for e in await store.claim_events(NOW, "d", NOW + 30, 10)] == ["evt_b"]


async def test_released_events_are_not_attempts(store):
    await store.add_event(event("evt_a"))
    await store.claim_events(NOW, "c", NOW + 30, 10)
    assert not await store.release_event("evt_a", "other")
    assert await store.release_event("evt_a", "c")
    again = await store.claim_events(NOW, "d", NOW + 30, 10)
    assert [(e.event_id, e.attempts) for e in again] == [("evt_a", 0)]


async def test_dead_events_are_revived_with_a_fresh_deadline(store):
    for name in ("evt_a", "evt_b", "evt_c"):
        await store.add_event(event(name, call_id=name))
    await store.claim_events(NOW, "c", NOW + 30, 10)
    for name in ("evt_a", "evt_b"):
        await store.event_failed(name, "c", error="HTTP410", next_attempt_at=None)
    assert not await store.requeue_event("evt_c", NOW + 100, NOW + 200)  # not dead
    assert not await store.requeue_event("evt_nope", NOW + 100, NOW + 200)
    assert await store.requeue_event("evt_a", NOW + 100, NOW + 200)
    a = await store.get_event("evt_a")
    assert (a.state, a.next_attempt_at, a.give_up_at) == (EventState.PENDING, NOW + 100, NOW + 200)
    assert await store.requeue_dead_events(NOW + 100, NOW + 200) == 1
    assert await store.count_events(EventState.DEAD) == 0


async def test_retention_deletes_old_delivered_events_only(store):
    for i in range(5):
        await store.add_event(event(f"evt_{i}", call_id=f"call-{i}"))
    await store.claim_events(NOW, "c", NOW + 30, 10)
    for i in range(4):
        await store.event_delivered(f"evt_{i}", NOW + i)
    # Delivered before NOW + 2: evt_0, evt_1; two per batch.
    assert await store.delete_delivered_events_before(NOW + 2, 1) == 1
    assert await store.delete_delivered_events_before(NOW + 2, 10) == 1
    assert await store.get_event("evt_0") is None and await store.get_event("evt_1") is None
    assert await store.get_event("evt_2") is not None
    assert (await store.get_event("evt_4")).state is EventState.PENDING


async def test_concurrent_claims_from_two_stores_never_share_an_event(backend, store):
    for i in range(60):
        await store.add_event(event(f"evt_{i:02}", call_id=f"call-{i}"))
    other = backend.make()
    await other.open()
    try:
        results = await asyncio.gather(
            *(s.claim_events(NOW, f"c{n}", NOW + 30, 7) for n, s in enumerate([store, other] * 6))
        )
    finally:
        await other.close()
    ids = [e.event_id for batch in results for e in batch]
    assert len(ids) == len(set(ids)) == 60
