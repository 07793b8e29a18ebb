"""What a fault test observes of a gateway from outside: bounded requests, scraped metrics,
readiness, and the JSON log lines a ``voicegw serve`` process wrote."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import UNIT

T = TypeVar("T")

BOUND_S = 5 * UNIT
"""No request may take longer than this, whatever is broken: a fault ends in an answer."""


async def bounded(awaitable: Awaitable[T], within: float = BOUND_S) -> T:
    """``await awaitable``, failing the test if it has not finished ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            return await awaitable
    except TimeoutError:
        raise AssertionError(f"no answer within {within:g} s: the request hung") from None


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str) -> Samples:
    """Every sample of the gateway's ``/metrics`` (from loopback, so no token is needed)."""
    async with httpx.AsyncClient(base_url=url, timeout=BOUND_S) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def readiness(url: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=url, timeout=BOUND_S) as http:
        response = await bounded(http.get("/readyz"))
    return response.status_code, response.json()


async def wait_ready(url: str, within: float = 10 * UNIT) -> dict[str, Any]:
    """Poll ``/readyz`` until the gateway is ready and not degraded; its last report."""
    deadline = time.monotonic() + within
    while True:
        status, report = await readiness(url)
        if status == 200 and not report["degraded"]:
            return report
        assert time.monotonic() < deadline, f"not ready within {within:g} s: {status} {report}"
        await asyncio.sleep(0.1)


def log_lines(log: Path) -> list[dict[str, Any]]:
    """The JSON log lines a gateway process wrote (other lines skipped)."""
    lines = []
    for raw in log.read_bytes().splitlines():
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(line, dict):
            lines.append(line)
    return lines
