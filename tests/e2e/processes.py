"""``voicegw serve`` in real subprocesses, for the tests that need several gateways (scale-out,
replica loss, the multi-replica suite in ``tests/cluster``).

``serve_process`` runs one; ``serve_processes`` runs several that start together (so their
start-up overlaps) and stop together (SIGTERM to all, then wait for each), which is also how a
deployment rolls. Each process writes its JSON log lines to its own ``*.log`` file: ``tail``
reads the end of one for a failure message, and the session's PII scan reads them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from tests.conftest import REDIS_URL, UNIT

# The scale-out and replica-loss gateways keep the default key prefix, so they get a database of
# their own (the cluster suite shares db 15 under a prefix unique to its run instead).
REDIS_DB = int(os.environ.get("VOICEGW_TEST_E2E_REDIS_DB", "14"))
SHARED_REDIS = REDIS_URL.rsplit("/", 1)[0] + f"/{REDIS_DB}"

PROCESSES: dict[int, asyncio.subprocess.Process] = {}
"""The running gateway subprocesses by port (for tests that signal or kill one)."""


async def clear_gateway_keys(url: str = SHARED_REDIS, prefix: str = "voicegw:") -> None:
    """Delete every key under ``prefix`` in the Redis database at ``url``."""
    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def tail(log: Path, chars: int = 4000) -> str:
    """The end of a gateway's log file (empty when it wrote none)."""
    try:
        return log.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return ""


def coverage_env() -> dict[str, str]:
    """The variables that make coverage measure a child process too (set by ``pytest
    --cov`` with ``patch = ["subprocess"]``; empty otherwise)."""
    return {k: v for k, v in os.environ.items() if k.startswith("COVERAGE_")}


async def _spawn(
    env: dict[str, str], port: int, log: Path, args: Sequence[str] = ()
) -> asyncio.subprocess.Process:
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--port",
            str(port),
            *args,
            env={**env, **coverage_env()},
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    PROCESSES[port] = proc
    return proc


async def _wait_ready(
    proc: asyncio.subprocess.Process, url: str, log: Path, deadline: float
) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=UNIT) as http:
        while True:
            assert proc.returncode is None, f"gateway exited ({proc.returncode}):\n{tail(log)}"
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/readyz")).status_code == 200:
                    return
            assert time.monotonic() < deadline, "gateway did not start:\n" + tail(log)
            await asyncio.sleep(0.05)


async def stop_processes(procs: Sequence[asyncio.subprocess.Process]) -> None:
    """SIGTERM to every process still running, then wait for each (SIGKILL after a bound)."""
    for proc in procs:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            async with asyncio.timeout(10 * UNIT):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def serve_processes(
    specs: Sequence[tuple[dict[str, str], int, Path]],
    args: Sequence[str] = (),
) -> AsyncIterator[list[str]]:
    """``voicegw serve [args]`` once per ``(env, port, log)``, all started before any is waited
    for; yields their base URLs once every one answers ``/readyz``. On exit (or a failed start)
    all are stopped together and always reaped."""
    procs: list[asyncio.subprocess.Process] = []
    try:
        for env, port, log in specs:
            procs.append(await _spawn(env, port, log, args))
        deadline = time.monotonic() + 20 * UNIT
        urls = [f"http://127.0.0.1:{port}" for _, port, _ in specs]
        for proc, url, (_, _, log) in zip(procs, urls, specs, strict=True):
            await _wait_ready(proc, url, log, deadline)
        yield urls
    finally:
        for _, port, _ in specs:
            PROCESSES.pop(port, None)
        await stop_processes(procs)


@contextlib.asynccontextmanager
async def serve_process(
    env: dict[str, str], port: int, log: Path, args: Sequence[str] = ()
) -> AsyncIterator[str]:
    """``voicegw serve [args]`` in a subprocess on ``port``; stopped on exit."""
    async with serve_processes([(env, port, log)], args) as (url,):
        yield url
