"""Webhook rejections by carrier and layer over the last day, kept durably in hourly buckets.

The Prometheus counter ``voicegw_webhook_rejections_total`` lives as long as one process; the
compliance report needs the last 24 hours whatever restarted meanwhile. ``RejectionLedger``
sits beside the counter: ``count`` is what a request calls, a dict increment with no I/O and
no await. A background flush writes what was counted to the store ``flush_interval_s`` after
the first unwritten count (and at shutdown): one upsert per (hour, carrier, layer) touched, so
a flood of rejected requests costs one short store transaction per interval, whatever its rate.

Why the store rather than a Redis hash per hour: the counts are evidence, and the store is the
durable part of the deployment (Redis often runs without persistence, and is optional); one
code path serves every deployment; replicas that share PostgreSQL add into the same buckets,
like they share one audit trail; and the store suite runs the queries on both backends. What a
crash loses is the counts of at most one flush interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from gateway.records.base import RejectionCount, Store
from security.exceptions import Layer

__all__ = [
    "FLUSH_INTERVAL_S",
    "HOUR_S",
    "KEEP_HOURS",
    "LAYERS",
    "RejectionLedger",
    "RejectionWindow",
    "rejection_window",
]

log = logging.getLogger("voicegw.compliance")

HOUR_S: Final = 3600
FLUSH_INTERVAL_S: Final = 30.0
KEEP_HOURS: Final = 48
"""Buckets older than this are deleted at each flush (the report reads 24)."""
LAYERS: Final = tuple(layer.value for layer in Layer)
"""Every layer, in pipeline order; ``replay`` counts verified re-deliveries answered without
being processed again."""

Key = tuple[int, str, str]  # (hour, carrier, layer)


class RejectionLedger:
    """Counts rejections in memory and writes them to the store in batches.

    ``count`` needs a running event loop (it starts the flush task). ``flush`` writes now;
    ``close`` writes what is left and stops (call it before the store closes). A flush that
    fails keeps its counts for the next attempt; ``failures`` says how many failed.
    """

    __slots__ = ("_clock", "_closing", "_interval_s", "_pending", "_store", "_task", "failures")

    def __init__(
        self,
        store: Store,
        *,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not flush_interval_s > 0:
            raise ValueError("flush_interval_s must be positive")
        self._store = store
        self._interval_s = flush_interval_s
        self._clock = clock
        self._pending: dict[Key, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self.failures = 0

    def count(self, carrier: str, layer: str) -> None:
        """One rejection now. No I/O: the write happens in the background flush."""
        key = (int(self._clock() // HOUR_S), carrier, layer)
        self._pending[key] = self._pending.get(key, 0) + 1
        if (self._task is None or self._task.done()) and not self._closing.is_set():
            self._task = asyncio.get_running_loop().create_task(
                self._flush_later(), name="rejection-ledger"
            )

    @property
    def pending(self) -> int:
        """Rejections counted but not yet written."""
        return sum(self._pending.values())

    async def flush(self) -> None:
        """Write what was counted since the last flush and drop old buckets. Never raises."""
        hour = int(self._clock() // HOUR_S)
        batch, self._pending = self._pending, {}
        if batch:
            rows = [RejectionCount(h, c, layer, n) for (h, c, layer), n in sorted(batch.items())]
            try:
                await self._store.add_rejection_counts(rows)
            except Exception as exc:
                self.failures += 1
                for key, n in batch.items():
                    if key[0] >= hour - KEEP_HOURS:
                        self._pending[key] = self._pending.get(key, 0) + n
                log.warning(
                    "webhook rejection counts not written", extra={"error": type(exc).__name__}
                )
                return
        try:
            await self._store.delete_rejection_counts_before(hour - KEEP_HOURS)
        except Exception as exc:
            log.warning("old rejection counts not deleted", extra={"error": type(exc).__name__})

    async def close(self) -> None:
        """Write everything counted and stop the flush task."""
        self._closing.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()

    async def _flush_later(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._closing.wait()
            await self.flush()
            # Counts that arrived during the flush (or that it could not write) wait for the
            # next round; ``count`` starts a new task only once this one has returned.
            if self._closing.is_set() or not self._pending:
                return


@dataclass(frozen=True, slots=True)
class RejectionWindow:
    """Rejections in the hourly buckets from ``since`` (a whole hour) to now."""

    since: float
    hours: int
    by_layer: dict[str, int]
    by_carrier: dict[str, dict[str, int]]

    @property
    def total(self) -> int:
        return sum(self.by_layer.values())


async def rejection_window(
    store: Store, carriers: tuple[str, ...], *, now: float, hours: int = 24
) -> RejectionWindow:
    """The last ``hours`` hourly buckets (the current one included), every layer and each of
    ``carriers`` listed even when zero."""
    first = int(now // HOUR_S) - hours + 1
    by_layer = dict.fromkeys(LAYERS, 0)
    by_carrier = {carrier: dict.fromkeys(LAYERS, 0) for carrier in carriers}
    for row in await store.rejection_counts(first):
        by_layer[row.layer] = by_layer.get(row.layer, 0) + row.count
        layers = by_carrier.setdefault(row.carrier, dict.fromkeys(LAYERS, 0))
        layers[row.layer] = layers.get(row.layer, 0) + row.count
    return RejectionWindow(
        since=float(first * HOUR_S), hours=hours, by_layer=by_layer, by_carrier=by_carrier
    )
