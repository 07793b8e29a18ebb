"""``voicegw_asyncio_tasks`` counts the event loop's unfinished tasks when scraped (the soak's
leak check reads it), and is NaN, not an error, when scraped from a thread without a loop."""

from __future__ import annotations

import asyncio
import math

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from metrics.registry import REGISTRY


def scraped_tasks() -> float:
    text = generate_latest(REGISTRY).decode()
    for family in text_string_to_metric_families(text):
        if family.name == "voicegw_asyncio_tasks":
            (sample,) = family.samples
            return sample.value
    raise AssertionError("voicegw_asyncio_tasks not exposed")


async def test_the_gauge_follows_tasks_started_and_finished():
    before = scraped_tasks()
    assert before >= 1  # this test's own task
    gate = asyncio.Event()
    waiting = [asyncio.create_task(gate.wait()) for _ in range(5)]
    assert scraped_tasks() == before + 5
    gate.set()
    await asyncio.gather(*waiting)
    assert scraped_tasks() == before


def test_outside_an_event_loop_it_is_nan():
    assert math.isnan(scraped_tasks())
