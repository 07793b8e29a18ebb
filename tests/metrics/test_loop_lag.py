"""The event-loop lag monitor: a blocked loop is measured, and reported once with the stack
of the code that blocked it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from metrics.loop_lag import LoopLagMonitor
from metrics.registry import REGISTRY
from tests.conftest import UNIT


def lag(suffix: str) -> float:
    value = REGISTRY.get_sample_value(f"voicegw_event_loop_lag_seconds_{suffix}")
    return value or 0.0


def hold_the_loop_for(seconds: float) -> None:
    time.sleep(seconds)  # what a blocking call in a coroutine does to every other one


async def test_a_blocked_loop_is_measured_and_reported_with_its_stack(caplog):
    # Far above what a busy machine's scheduling adds, far below the hold.
    monitor = LoopLagMonitor(interval_s=0.005, warn_s=0.5 * UNIT)
    caplog.set_level(logging.WARNING, logger="voicegw.loop")
    count_before, sum_before = lag("count"), lag("sum")
    task = asyncio.create_task(monitor.run())
    try:
        await asyncio.sleep(0.1 * UNIT)  # sampling, nothing blocked
        held = 2.0 * UNIT
        hold_the_loop_for(held)
        await asyncio.sleep(0.1 * UNIT)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert lag("count") > count_before + 1
    # One sample waited at least as long as the loop was held (sleep never returns early).
    assert lag("sum") - sum_before >= held - 0.005
    warnings = [r for r in caplog.records if r.getMessage() == "event loop blocked"]
    assert len(warnings) == monitor.stalls == 1
    (warning,) = warnings
    assert "hold_the_loop_for" in warning.stack and "time.sleep(seconds)" in warning.stack
    assert warning.blocked_ms >= 500 * UNIT


async def test_a_quiet_loop_reports_nothing(caplog):
    monitor = LoopLagMonitor(interval_s=0.005, warn_s=5.0 * UNIT)
    caplog.set_level(logging.WARNING, logger="voicegw.loop")
    task = asyncio.create_task(monitor.run())
    await asyncio.sleep(0.05 * UNIT)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert monitor.stalls == 0
    assert not [r for r in caplog.records if r.getMessage() == "event loop blocked"]
