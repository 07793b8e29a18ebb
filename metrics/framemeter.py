"""Per-call tallies of media frames, added to the Prometheus families in batches.

A call relays 50 frames a second each way. ``prometheus_client`` takes a lock per counter
increment and walks the bucket list under a lock per histogram observation: about a
microsecond per frame and direction, more than the rest of the bookkeeping of a frame.
``FrameMeter`` counts frames and sorts relay times into the histogram's buckets in plain
attributes (``bisect``, no lock: one call's frames are handled by one event loop), and adds the
tallies to the labelled children every ``FLUSH_FRAMES`` frames and at ``flush()``, which the
call's end calls. A scrape therefore lags a live call by at most ``FLUSH_FRAMES`` frames per
direction (0.5 s of audio); totals are exact once the call has ended.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Final

from prometheus_client import Counter, Histogram

__all__ = ["FLUSH_FRAMES", "FrameMeter"]

FLUSH_FRAMES: Final = 25
"""Frames (counted or timed) tallied locally before they are added to the metric families."""


class FrameMeter:
    """Frames relayed in one direction of one call, and the time frames spent inside the
    gateway. ``frames`` and ``relay`` are labelled children (``.labels(...)``) of a counter
    and a histogram; ``count()`` and ``time()`` may be called independently."""

    __slots__ = ("_bounds", "_buckets", "_frames", "_pending", "_relay", "_sum", "_timed")

    def __init__(self, frames: Counter, relay: Histogram) -> None:
        self._frames = frames
        self._relay = relay
        # The histogram's upper bounds, +Inf last; a time goes to the first bound >= it, as
        # Histogram.observe does.
        self._bounds: tuple[float, ...] = tuple(relay._upper_bounds)
        self._buckets = [0] * len(self._bounds)
        self._sum = 0.0
        self._timed = 0
        self._pending = 0  # frames counted since the last flush

    def count(self) -> None:
        """One more frame relayed."""
        self._pending += 1
        if self._pending >= FLUSH_FRAMES:
            self.flush()

    def time(self, seconds: float) -> None:
        """One frame spent ``seconds`` inside the gateway."""
        self._buckets[bisect_left(self._bounds, seconds)] += 1
        self._sum += seconds
        self._timed += 1
        if self._timed >= FLUSH_FRAMES:
            self.flush()

    def flush(self) -> None:
        """Add what was tallied since the last flush to the metric families."""
        if self._pending:
            self._frames.inc(self._pending)
            self._pending = 0
        if self._timed:
            # Histogram.observe() per frame is what this avoids; its children keep one value
            # per bucket (not cumulative) and the sum, which is what is added here.
            relay = self._relay
            for i, n in enumerate(self._buckets):
                if n:
                    relay._buckets[i].inc(n)
                    self._buckets[i] = 0
            relay._sum.inc(self._sum)
            self._sum = 0.0
            self._timed = 0
