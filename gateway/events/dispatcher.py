"""``EventDispatcher``: the background sender of the outbox.

Each round it leases up to ``concurrency`` due events (each the oldest pending event of its
call, so a call's events arrive in order), posts them at once, signed per Standard Webhooks
with the event id as ``webhook-id`` (the same on every attempt), and settles each one
(``policy``: delivered, tried again later, or dead). A lease lasts longer than an attempt can:
a replica that dies mid-send loses it and another replica sends the event again (at least
once, under the same id).

The endpoint has one breaker (from the registry the integrator gives): while it refuses,
nothing is claimed, sent or counted as an attempt. Requests go through the egress guard
(``security.egress_http``): a refused endpoint (a name that now resolves to a private address,
say) is a failed attempt, tried again later, that leaves the breaker as it was. Between rounds
the dispatcher sleeps until the next event is due, at most ``poll_s`` (so events written by
another replica are found), and wakes at once when :meth:`wake` is called (``CallEvents``
calls it after each write).

Call order: :meth:`start` once, :meth:`stop` at shutdown (the round in flight finishes within
its timeout or is cancelled, releasing its leases). Bodies are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Final, assert_never

import httpx

from gateway.events.outbox import OutboxStore, retry_dead, retry_event
from gateway.events.policy import (
    DEFAULT_RETRY,
    RetryPolicy,
    Verdict,
    endpoint_failed,
    verdict,
)
from gateway.records.base import EventState, OutboxEvent, StoreError
from metrics.registry import EVENTS_DEAD, EVENTS_DELIVERED, EVENTS_PENDING, EVENTS_RETRIED
from providers.breakers import BreakerOpen, BreakerRegistry, CircuitBreaker, Trial
from security.egress import EgressPolicy, EgressRefused
from security.egress_http import egress_client
from security.secret import Secret
from security.standard_webhooks import Signer, endpoint_breaker_name, user_agent

__all__ = ["EventDispatcher"]

log = logging.getLogger("voicegw.events")

MAX_ANSWER_BYTES: Final = 4096  # read (and dropped) so the connection can be reused
# A round that found nothing to do, though something was due, waits at least this long
# (the breaker refused, or another replica took the events).
_IDLE_S: Final = 0.05


class EventDispatcher:
    """Sends the outbox of ``store`` to ``url``, signed with ``secrets`` (the first is the
    newest; each signs). ``http``: a client to use (otherwise one guarded by ``egress``, by
    default the strict production policy, is made and closed by :meth:`stop`). ``timeout_s``
    bounds an attempt; ``lease_s`` (default: three attempts) must exceed it."""

    def __init__(
        self,
        store: OutboxStore,
        *,
        url: str,
        secrets: Sequence[Secret],
        breakers: BreakerRegistry,
        http: httpx.AsyncClient | None = None,
        egress: EgressPolicy | None = None,
        policy: RetryPolicy = DEFAULT_RETRY,
        concurrency: int = 8,
        timeout_s: float = 10.0,
        poll_s: float = 5.0,
        lease_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        lease = 3 * timeout_s if lease_s is None else lease_s
        if not lease > timeout_s > 0:
            raise ValueError("lease_s must exceed timeout_s, which must be positive")
        self._store = store
        self._url = url
        self._signer = Signer(secrets, "events secret")
        self._breakers = breakers
        self.breaker_name = endpoint_breaker_name(url, "events")
        self._own_http = http is None
        self._http = http or egress_client(
            egress or EgressPolicy.for_mode(production=True), target="events"
        )
        self._policy = policy
        self._concurrency = concurrency
        self._timeout_s = timeout_s
        self._poll_s = poll_s
        self._lease_s = lease
        self._clock = clock
        self._user_agent = user_agent()
        self._doorbell = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def wake(self) -> None:
        """Run a round now (an event was written)."""
        self._doorbell.set()

    def start(self) -> None:
        """Start the background loop (in the running event loop)."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self.run(), name="voicegw-events")

    async def stop(self, timeout_s: float | None = None) -> None:
        """Stop the loop: the round in flight gets ``timeout_s`` (default: one attempt's
        timeout) to settle, then it is cancelled and its leases released. Idempotent."""
        self._stopping = True
        self._doorbell.set()
        task, self._task = self._task, None
        if task is not None:
            with suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, self._timeout_s if timeout_s is None else timeout_s)
        if self._own_http:
            await self._http.aclose()

    async def run(self) -> None:
        """Rounds until :meth:`stop`; a failing store is logged and tried again next round."""
        while not self._stopping:
            try:
                sent = await self.dispatch_once()
            except StoreError as exc:
                log.warning("call events: the store failed (%s); trying again", type(exc).__name__)
                await self._sleep(self._poll_s)
                continue
            if self._stopping:
                break
            if sent < self._concurrency:  # a full round: more may be due at once
                await self._sleep(await self._wait_s(sent))

    async def _wait_s(self, sent: int) -> float:
        try:
            due = await self._store.next_event_due()
        except StoreError:
            return self._poll_s
        if due is None:
            return self._poll_s
        wait = min(max(due - self._clock(), 0.0), self._poll_s)
        return wait if sent else max(wait, _IDLE_S)

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._doorbell.wait()
        self._doorbell.clear()

    # -- one round -----------------------------------------------------------------------------

    async def dispatch_once(self) -> int:
        """Lease the due events, post them, settle them; return how many were leased (0 when
        the breaker refuses). Raises ``StoreError`` when the claim fails."""
        breaker = self._breakers.get(self.breaker_name)
        if await breaker.allows():
            now = self._clock()
            claim = secrets.token_hex(8)
            events = await self._store.claim_events(
                now, claim, now + self._lease_s, self._concurrency
            )
            if events:
                async with asyncio.TaskGroup() as group:
                    for event in events:
                        group.create_task(self._deliver(event, claim, breaker))
        else:
            events = []
        await self.refresh_pending()
        return len(events)

    async def refresh_pending(self) -> None:
        """Set the ``voicegw_events_pending`` gauge from the store."""
        with suppress(StoreError):
            EVENTS_PENDING.set(await self._store.count_events(EventState.PENDING))

    async def _deliver(self, event: OutboxEvent, claim: str, breaker: CircuitBreaker) -> None:
        try:
            trial = await breaker.acquire()
        except BreakerOpen:  # opened since the round began: not an attempt
            with suppress(StoreError):
                await self._store.release_event(event.event_id, claim)
            return
        try:
            status, error = await self._attempt(event, trial)
        except BaseException:
            # Stopped mid-send: nothing is known of this attempt; another round resends.
            await trial.release()
            with suppress(Exception):
                await asyncio.shield(self._store.release_event(event.event_id, claim))
            raise
        try:
            await self._settle(event, claim, status, error)
        except StoreError as exc:
            # The lease runs out and the event is sent again: at least once.
            log.warning("call event %s not settled: %s", event.event_id, type(exc).__name__)

    async def _attempt(self, event: OutboxEvent, trial: Trial) -> tuple[int | None, str]:
        """Post ``event`` once; its status (None: no answer) and a short error name."""
        try:
            async with asyncio.timeout(self._timeout_s):
                status = await self._post(event)
        except TimeoutError:
            await trial.fail("TimeoutError")
            return None, "TimeoutError"
        except EgressRefused as exc:  # counted and logged by the guard; nothing was sent
            await trial.release()
            return None, f"egress_refused:{exc.reason}"
        except httpx.HTTPError as exc:
            await trial.fail(type(exc).__name__)
            return None, type(exc).__name__
        if endpoint_failed(status):
            await trial.fail(f"HTTP{status}")
        else:
            await trial.succeed()
        return status, f"HTTP{status}"

    async def _post(self, event: OutboxEvent) -> int:
        body = event.body.encode()
        headers = self._signer.headers(event.event_id, body)
        headers.update(
            {
                "content-type": "application/json",
                "user-agent": self._user_agent,
                "accept-encoding": "identity",
            }
        )
        request = self._http.build_request("POST", self._url, content=body, headers=headers)
        response = await self._http.send(request, stream=True, follow_redirects=False)
        try:
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read > MAX_ANSWER_BYTES:
                    break
            return response.status_code
        finally:
            await response.aclose()

    async def _settle(self, event: OutboxEvent, claim: str, status: int | None, error: str) -> None:
        now = self._clock()
        outcome = Verdict.RETRY if status is None else verdict(status)
        match outcome:
            case Verdict.DELIVERED:
                if await self._store.event_delivered(event.event_id, now):
                    EVENTS_DELIVERED.labels(event.type).inc()
                log.info("call event %s (%s) delivered", event.event_id, event.type)
            case Verdict.GIVE_UP:
                if await self._store.event_failed(
                    event.event_id, claim, error=error, next_attempt_at=None
                ):
                    EVENTS_DEAD.inc()
                log.warning("call event %s refused for good (%s): dead", event.event_id, error)
            case Verdict.RETRY:
                attempts = event.attempts + 1
                due = self._policy.next_attempt(attempts, now, event.give_up_at)
                settled = await self._store.event_failed(
                    event.event_id, claim, error=error, next_attempt_at=due
                )
                if due is None:
                    if settled:
                        EVENTS_DEAD.inc()
                    log.warning(
                        "call event %s given up after %d attempts", event.event_id, attempts
                    )
                else:
                    if settled:
                        EVENTS_RETRIED.inc()
                    log.info(
                        "call event %s attempt %d failed (%s); next in %.1f s",
                        event.event_id,
                        attempts,
                        error,
                        due - now,
                    )
            case _:  # pragma: no cover - exhaustive
                assert_never(outcome)

    # -- operator operations -------------------------------------------------------------------

    async def retry(self, event_id: str) -> bool:
        """Send dead event ``event_id`` again (a fresh 24 h of retries); False: no such dead
        event."""
        revived = await retry_event(self._store, event_id, self._clock(), self._policy)
        if revived:
            self.wake()
        return revived

    async def retry_dead(self) -> int:
        """Send every dead event again; return how many."""
        revived = await retry_dead(self._store, self._clock(), self._policy)
        if revived:
            self.wake()
        return revived
