"""The dispatcher against a real receiver on loopback, on both backends: signed, in order per
call, at least once under stable ids across outages, restarts and replicas."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import httpx
import pytest

from gateway.events import CallEvents, EventDispatcher, EventType, RetryPolicy
from gateway.records.base import EventState
from metrics.registry import (
    EGRESS_REFUSED,
    EVENTS_DEAD,
    EVENTS_DELIVERED,
    EVENTS_RETRIED,
    EVENTS_WRITE_FAILURES,
)
from providers.breakers import BreakerPolicy, BreakerRegistry
from security.egress import EgressPolicy
from security.egress_http import egress_client
from security.secret import Secret
from tests.conftest import UNIT
from tests.events.receiver import Receiver, until
from tests.resolver import TableResolver

FAST = RetryPolicy(first_delay_s=0.01 * UNIT, max_delay_s=0.05 * UNIT)
QUICK_BREAKER = BreakerPolicy(failure_threshold=3, open_s=0.1 * UNIT)


def dispatcher(store, receiver: Receiver, secret: str, **kw) -> EventDispatcher:
    options = {
        "url": receiver.url,
        "secrets": [Secret(secret)],
        "breakers": kw.pop("breakers", None) or BreakerRegistry.in_process(QUICK_BREAKER),
        "policy": FAST,
        "poll_s": 0.05 * UNIT,
        "timeout_s": 2 * UNIT,
        "concurrency": 4,
        "egress": EgressPolicy.for_mode(production=False),  # the receiver is on loopback
    }
    options.update(kw)
    return EventDispatcher(store, **options)


async def emit_calls(events: CallEvents, calls: int) -> None:
    for n in range(calls):
        call_id = f"call-{n}"
        await events.emit(call_id, EventType.STARTED, {"carrier": "twilio", "agent": "support"})
        await events.emit(call_id, EventType.ANSWERED, {})
        await events.emit(call_id, EventType.ENDED, {"outcome": "completed", "duration_s": 3.5})


def check_order_and_ids(received, calls: int) -> None:
    """Every event arrived; each call's in order; one id per event, one event per id."""
    per_call = defaultdict(list)
    body_of = {}
    for r in received:
        assert r.payload["id"] == r.webhook_id
        assert body_of.setdefault(r.webhook_id, r.payload) == r.payload
        if r.webhook_id not in [x.webhook_id for x in per_call[r.payload["data"]["call_id"]]]:
            per_call[r.payload["data"]["call_id"]].append(r)
    assert len(per_call) == calls
    for items in per_call.values():
        assert [r.payload["type"] for r in items] == ["call.started", "call.answered", "call.ended"]
    assert len(body_of) == 3 * calls


async def test_events_arrive_signed_in_order_per_call(store, receiver, secret):
    sender = dispatcher(store, receiver, secret)
    events = CallEvents(store, notify=sender.wake)
    before = EVENTS_DELIVERED.labels("call.ended")._value.get()
    sender.start()
    try:
        await emit_calls(events, 5)
        received = await receiver.wait_for(15)
    finally:
        await sender.stop()
    assert receiver.forged == 0
    check_order_and_ids(received, 5)
    assert EVENTS_DELIVERED.labels("call.ended")._value.get() - before == 5
    ended = next(r for r in received if r.payload["type"] == "call.ended")
    assert ended.payload["data"] == {
        "call_id": ended.payload["data"]["call_id"],
        "outcome": "completed",
        "duration_s": 3.5,
    }
    assert await store.count_events(EventState.DELIVERED) == 15
    assert await store.count_events(EventState.PENDING) == 0


async def test_a_rotated_secret_list_signs_with_each(store, receiver, secret):
    from security.standard_webhooks import new_secret

    sender = dispatcher(store, receiver, secret, secrets=[Secret(new_secret()), Secret(secret)])
    events = CallEvents(store, notify=sender.wake)
    sender.start()
    try:
        await events.emit("call-r", EventType.STARTED, {})
        await receiver.wait_for(1)
    finally:
        await sender.stop()
    assert receiver.forged == 0


async def test_an_endpoint_failing_for_a_while_gets_every_event_later(store, receiver, secret):
    receiver.status = 503
    sender = dispatcher(store, receiver, secret)
    events = CallEvents(store, notify=sender.wake)
    retried = EVENTS_RETRIED._value.get()
    sender.start()
    try:
        await emit_calls(events, 4)

        async def piled_up() -> bool:
            return len(receiver.received) >= 8  # refused attempts

        await until(piled_up, "8 refused attempts")
        receiver.status = 200
        received = await receiver.wait_for(12)
    finally:
        await sender.stop()
    assert EVENTS_RETRIED._value.get() > retried
    check_order_and_ids(received, 4)
    # A refused attempt and the delivery of one event carry the same id.
    refused = {r.webhook_id for r in receiver.received if r.status == 503}
    assert refused <= {r.webhook_id for r in received}


async def test_nothing_is_lost_across_an_outage_and_a_restart(backend, store, receiver, secret):
    await receiver.stop()  # connection refused
    first = dispatcher(store, receiver, secret)
    events = CallEvents(store, notify=first.wake)
    first.start()
    await emit_calls(events, 3)

    async def tried() -> bool:
        return any(e.attempts for e in await store.list_events(limit=1000))

    await until(tried, "an attempt at the endpoint that is down")
    await first.stop()
    # The gateway restarts: a new store and a new dispatcher on the same database.
    again = backend.make()
    await again.open()
    try:
        await receiver.start()
        second = dispatcher(again, receiver, secret)
        second.start()
        try:
            received = await receiver.wait_for(9)
        finally:
            await second.stop()
    finally:
        await again.close()
    check_order_and_ids(received, 3)


async def test_a_replica_that_dies_mid_send_loses_its_lease(store, receiver, secret):
    events = CallEvents(store)
    await events.emit("call-x", EventType.STARTED, {})
    # Another replica leased the event, then died without settling it.
    claimed = await store.claim_events(time.time(), "dead", time.time() + 0.2 * UNIT, 10)
    assert len(claimed) == 1
    sender = dispatcher(store, receiver, secret)
    sender.start()
    try:
        received = await receiver.wait_for(1)
    finally:
        await sender.stop()
    assert received[0].webhook_id == claimed[0].event_id


@pytest.mark.parametrize("backend_and_store", ["postgres"], indirect=True)
async def test_two_replicas_deliver_each_event_once(backend, store, receiver, secret):
    other = backend.make()
    await other.open()
    senders = [dispatcher(store, receiver, secret), dispatcher(other, receiver, secret)]
    events = [CallEvents(s, notify=d.wake) for s, d in zip([store, other], senders, strict=True)]
    for sender in senders:
        sender.start()
    try:
        for n in range(10):
            producer = events[n % 2]
            await producer.emit(f"call-{n}", EventType.STARTED, {})
            await producer.emit(f"call-{n}", EventType.ANSWERED, {})
            await producer.emit(f"call-{n}", EventType.ENDED, {})
        received = await receiver.wait_for(30)
        await asyncio.sleep(0.2 * UNIT)  # time for a second delivery, if there were one
    finally:
        for sender in senders:
            await sender.stop()
        await other.close()
    check_order_and_ids(received, 10)
    ids = [r.webhook_id for r in receiver.received]
    assert len(ids) == len(set(ids)) == 30


async def test_410_makes_an_event_dead_and_retry_sends_it_again(store, receiver, secret):
    receiver.status = 410
    sender = dispatcher(store, receiver, secret)
    events = CallEvents(store, notify=sender.wake)
    dead_before = EVENTS_DEAD._value.get()
    sender.start()
    try:
        await events.emit("call-g", EventType.FAILED, {"outcome": "provider_error"})

        async def dead() -> bool:
            return await store.count_events(EventState.DEAD) > 0

        await until(dead, "a dead event")
        assert EVENTS_DEAD._value.get() == dead_before + 1
        (gone,) = await store.list_events(state=EventState.DEAD)
        assert gone.last_error == "HTTP410" and gone.attempts == 1
        receiver.status = 200
        assert await sender.retry(gone.event_id)
        assert not await sender.retry(gone.event_id)  # no longer dead
        received = await receiver.wait_for(1)
    finally:
        await sender.stop()
    assert received[0].webhook_id == gone.event_id
    assert len(receiver.received) == 2  # the 410, then the delivery


async def test_events_past_their_deadline_are_dead(store, receiver, secret):
    receiver.status = 500
    policy = RetryPolicy(
        first_delay_s=0.01 * UNIT, max_delay_s=0.02 * UNIT, give_up_after_s=0.2 * UNIT
    )
    sender = dispatcher(
        store,
        receiver,
        secret,
        policy=policy,
        breakers=BreakerRegistry.in_process(BreakerPolicy(failure_threshold=1000)),
    )
    events = CallEvents(store, notify=sender.wake, policy=policy)
    sender.start()
    try:
        await events.emit("call-d", EventType.STARTED, {})

        async def dead() -> bool:
            return await store.count_events(EventState.DEAD) > 0

        await until(dead, "a dead event")
        attempts = len(receiver.received)
        assert attempts >= 2
        receiver.status = 200
        assert await sender.retry_dead() == 1
        await receiver.wait_for(1)
    finally:
        await sender.stop()


async def test_an_open_breaker_sends_nothing_and_counts_no_attempt(store, receiver, secret):
    breakers = BreakerRegistry.in_process(BreakerPolicy(failure_threshold=1, open_s=3600))
    sender = dispatcher(store, receiver, secret, breakers=breakers)
    await breakers.get(sender.breaker_name).record_failure("ConnectError")
    events = CallEvents(store, notify=sender.wake)
    sender.start()
    try:
        await events.emit("call-b", EventType.STARTED, {})
        for _ in range(5):
            assert await sender.dispatch_once() == 0
        await asyncio.sleep(0.2 * UNIT)
    finally:
        await sender.stop()
    (pending,) = await store.list_events()
    assert receiver.received == [] and pending.attempts == 0 and pending.claim is None


async def test_redirects_are_not_followed(store, receiver, secret):
    target = Receiver(secret)
    await target.start()
    receiver.status, receiver.location = 307, target.url
    sender = dispatcher(store, receiver, secret)
    events = CallEvents(store, notify=sender.wake)
    sender.start()
    try:
        await events.emit("call-3", EventType.STARTED, {})

        async def redirected_twice() -> bool:
            return len(receiver.received) >= 2

        await until(redirected_twice, "two redirected attempts")
    finally:
        await sender.stop()
        await target.stop()
    assert target.received == []
    (event,) = await store.list_events()
    assert event.state is EventState.PENDING and event.last_error == "HTTP307"


async def test_without_a_store_emit_writes_nothing(store):
    await CallEvents(None).emit("call-n", EventType.STARTED, {})
    assert await store.list_events() == []


async def test_a_store_failure_never_reaches_the_call(backend, caplog):
    broken = backend.make()  # never opened: every write fails
    failures = EVENTS_WRITE_FAILURES._value.get()
    woken = []
    await CallEvents(broken, notify=lambda: woken.append(1)).emit(
        "call-f", EventType.ENDED, {"outcome": "completed"}
    )
    assert EVENTS_WRITE_FAILURES._value.get() == failures + 1
    assert woken == []
    assert "not written: StoreUnavailable" in caplog.text


async def test_the_sender_uses_the_given_client_and_leaves_it_open(store, receiver, secret):
    async with httpx.AsyncClient() as http:
        sender = dispatcher(store, receiver, secret, http=http)
        events = CallEvents(store, notify=sender.wake)
        sender.start()
        await events.emit("call-h", EventType.STARTED, {})
        await receiver.wait_for(1)
        await sender.stop()
        assert not http.is_closed


async def test_a_refused_endpoint_is_a_failed_attempt_sent_later(store, receiver, secret):
    """The name resolves to a private address: nothing is sent, the attempt counts as failed
    (the breaker untouched) and the event is tried again; once the name resolves to an allowed
    address (loopback, in development) it is delivered."""
    port = receiver.url.split(":")[2].split("/")[0]
    resolver = TableResolver(hooks_example_test="10.0.0.9")
    refused = EGRESS_REFUSED.labels("events", "private")._value.get()
    retried = EVENTS_RETRIED._value.get()
    breakers = BreakerRegistry.in_process(QUICK_BREAKER)
    async with egress_client(
        EgressPolicy.for_mode(production=False), target="events", resolver=resolver
    ) as http:
        sender = dispatcher(
            store,
            receiver,
            secret,
            url=f"http://hooks.example.test:{port}/events?token=s3cr3t",
            http=http,
            breakers=breakers,
        )
        events = CallEvents(store)
        await events.emit("call-x", EventType.STARTED, {})
        assert await sender.dispatch_once() == 1
        (event,) = await store.list_events(limit=10)
        assert (event.state, event.attempts) == (EventState.PENDING, 1)
        assert event.last_error == "egress_refused:private"
        assert receiver.received == []
        assert EGRESS_REFUSED.labels("events", "private")._value.get() == refused + 1
        assert EVENTS_RETRIED._value.get() == retried + 1
        assert await breakers.get(sender.breaker_name).allows()
        resolver.answers["hooks.example.test"] = "127.0.0.1"
        sender.start()
        try:
            await receiver.wait_for(1)
        finally:
            await sender.stop()
    assert await store.count_events(EventState.DELIVERED) == 1
