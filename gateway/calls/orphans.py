"""Call records left without an end time because their process died mid-call.

A gateway killed with SIGKILL (or lost with its node) cannot complete the durable records of
its live calls. Its calls leave the live-call registry once their TTL runs out
(``VOICEGW_CALL_TTL_S``; at once for an in-process registry after a restart). From then on a
record that has no end time and whose call the registry no longer holds as active is an
orphan: it is closed with the registry's end reason when the registry still knows the call,
else with ``replica_lost``, and an end time that is the moment it was found (an upper bound:
nobody saw the call end). A call still live anywhere is never touched, and if its own bridge
completes the record later, the bridge's outcome replaces this one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Final

from redis.exceptions import RedisError

from gateway.calls.registry import CallRegistry
from gateway.records import Store
from metrics.registry import ORPHANS_CLOSED
from providers.events import CallId

log = logging.getLogger("voicegw.orphans")

LOST: Final = "replica_lost"
PAGE: Final = 200
SCAN_EVERY_S: Final = 600.0


async def close_orphans(
    store: Store,
    registry: CallRegistry,
    *,
    older_than_s: float,
    clock: Callable[[], float] = time.time,
) -> int:
    """Close every orphaned record that started more than ``older_than_s`` ago; return how
    many. Stops early (and says so) while the registry cannot be asked."""
    now = clock()
    closed = 0
    after: float | None = None
    while True:
        page = await store.open_calls(now - older_than_s, PAGE, after=after)
        for record in page:
            try:
                call = await registry.get(CallId(record.call_id))
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("orphan scan stopped", extra={"error": type(exc).__name__})
                return closed
            if call is not None and call.active:
                continue  # live on some replica
            if call is not None and call.ended_reason is not None:
                ended_at, outcome = call.updated_at, call.ended_reason  # the registry saw it end
            else:
                ended_at, outcome = now, LOST
            await store.put_call(dataclasses.replace(record, ended_at=ended_at, outcome=outcome))
            closed += 1
        if len(page) < PAGE:
            break
        after = page[-1].started_at
    if closed:
        ORPHANS_CLOSED.inc(closed)
        log.warning("call records closed after their process was lost", extra={"count": closed})
    return closed


async def close_orphans_periodically(
    store: Store, registry: CallRegistry, *, older_than_s: float, every_s: float = SCAN_EVERY_S
) -> None:
    """``close_orphans`` at once, then every ``every_s`` seconds, until cancelled. A failing
    store is logged and retried at the next round."""
    while True:
        try:
            await close_orphans(store, registry, older_than_s=older_than_s)
        except Exception as exc:  # the store failed: try again next round
            log.warning("orphan scan failed", extra={"error": type(exc).__name__})
        await asyncio.sleep(every_s)
