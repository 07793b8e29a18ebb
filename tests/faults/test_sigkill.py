"""A ``voicegw serve`` process killed with SIGKILL mid-call, while it writes to SQLite.

No drain, no clean-up, no last heartbeat: live calls are streaming, new calls are being
recorded and audit events appended when the process dies. Afterwards its calls leave the
shared registry within ``VOICEGW_CALL_TTL_S``; the SQLite database passes ``PRAGMA
integrity_check``; a new process on the same data directory starts and serves calls;
``voicegw audit verify`` finds the hash chain intact; and every call the dead process
acknowledged has a whole record (its numbers decrypt under their authenticated encryption).
``tests/e2e/test_replica_loss.py`` proves the registry part beside a surviving replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sqlite3
import sys
import time

import httpx
import pytest
import redis.asyncio as aioredis

from gateway import devkeys
from gateway.calls.redis_registry import RedisCallRegistry
from gateway.cli.admin import add_user
from gateway.records.base import Role
from gateway.records.privacy import open_numbers
from gateway.services import load_data_keys, open_store
from gateway.settings import Settings
from tests.conftest import UNIT
from tests.e2e.carrier import (
    Gateway,
    Leg,
    free_port,
    gateway_env,
    place_call,
    post_twilio,
    twilio_params,
)
from tests.e2e.processes import PROCESSES, serve_process
from tests.sessions.harness import PASSWORD, TEST_HASHER

pytestmark = pytest.mark.e2e

CALL_TTL_S = 2
QUIET = bytes([0xFE]) * 160
CALLER, CALLEE = "+15550100001", "+15550100002"  # what tests.e2e.carrier.twilio_params sends


async def keep_busy(gw: Gateway, accepted: list[str], stop: asyncio.Event) -> None:
    """New calls, each recorded in SQLite, and audited refusals, until ``stop`` or the
    gateway dies; ``accepted`` gets the CallSid of every call it acknowledged."""
    async with httpx.AsyncClient(base_url=gw.url, timeout=2 * UNIT) as http:
        while not stop.is_set():
            params = twilio_params("CA" + secrets.token_hex(16), "AC" + secrets.token_hex(16))
            try:
                reply = await post_twilio(gw, "/webhooks/twilio/voice", params)
                await http.post(
                    "/webhooks/twilio/voice",
                    data=params,
                    headers={"X-Twilio-Signature": "A" * 27 + "="},  # audited as rejected
                )
            except httpx.TransportError:
                return
            if reply.status_code == 200:
                accepted.append(params["CallSid"])


async def stream(leg: Leg, stop: asyncio.Event) -> None:
    with contextlib.suppress(Exception):  # the stream dies with the process
        while not stop.is_set():
            await leg.play(QUIET * 5)


async def test_a_process_killed_mid_call_leaves_no_ghost_and_no_corrupt_record(
    tmp_path, rest, redis_server
):
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        **gateway_env(
            tmp_path,
            port,
            rest,
            VOICEGW_REDIS_URL=redis_server.url(),
            VOICEGW_CALL_TTL_S=str(CALL_TTL_S),
            VOICEGW_PROVIDERS="echo",
            VOICEGW_LOG_LEVEL="WARNING",
        ),
    }
    settings = devkeys.apply(Settings.from_env(env))
    store = open_store(settings)
    await store.open()
    try:
        await add_user(store, TEST_HASHER, "ada", Role.ADMIN, PASSWORD)
    finally:
        await store.close()
    client = aioredis.Redis.from_url(redis_server.url())
    registry = RedisCallRegistry(client, settings.redis_key_prefix + "calls:")
    accepted: list[str] = []
    try:
        async with serve_process(env, port, tmp_path / "killed.log") as url:
            gw = Gateway(url, settings, None, rest)  # type: ignore[arg-type]
            async with httpx.AsyncClient(base_url=url, timeout=5 * UNIT) as http:
                login = {"username": "ada", "password": PASSWORD}
                reply = await http.post("/auth/login", json=login, headers={"Origin": url})
                assert reply.status_code == 200, reply.text  # an audited login
            legs = [await place_call(gw, "twilio") for _ in range(3)]
            for leg in legs:
                await leg.play(QUIET * 3, realtime=False)
                await leg.wait_audio(3)
            live = {leg.ticket.call_id for leg in legs}
            assert live <= {c.carrier_call_id for c in await registry.list_active()}

            stop = asyncio.Event()
            work = [
                asyncio.create_task(keep_busy(gw, accepted, stop)),
                *(asyncio.create_task(stream(leg, stop)) for leg in legs),
            ]
            await asyncio.sleep(0.5 * UNIT)
            PROCESSES[port].send_signal(signal.SIGKILL)  # mid-call, mid-write
            async with asyncio.timeout(5 * UNIT):
                assert await PROCESSES[port].wait() == -signal.SIGKILL
            killed = time.monotonic()
            stop.set()
            await asyncio.gather(*work)
            for leg in legs:
                assert await leg.wait_closed() == 1006  # the stream just vanished

            # Its calls (streaming, or answered and awaiting their stream) leave the shared
            # registry once their TTL runs out: no ghosts.
            while await registry.list_active():
                assert time.monotonic() - killed < CALL_TTL_S + 5 * UNIT, "ghost calls"
                await asyncio.sleep(0.1)

        database = settings.data_dir / "voicegw.sqlite3"
        with contextlib.closing(sqlite3.connect(database)) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]

        # A new process on the same data directory starts and serves. Every call of the dead
        # one started more than a registry TTL before it: at start-up the new process closes
        # the records the dead one left open.
        await asyncio.sleep(max(0.0, killed + CALL_TTL_S + 0.5 - time.monotonic()))
        async with serve_process(env, port, tmp_path / "restarted.log") as url:
            gw = Gateway(url, settings, None, rest)  # type: ignore[arg-type]
            leg = await place_call(gw, "twilio")
            await leg.play(QUIET * 10)
            await leg.wait_audio(10)
            await leg.stop()
            await asyncio.sleep(0.2 * UNIT)
    finally:
        await client.delete(*[k async for k in client.scan_iter(match="voicegw:*")] or ["-"])
        await client.aclose()

    verify = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "audit",
        "verify",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(20 * UNIT):
        output, _ = await verify.communicate()
    assert verify.returncode == 0, output.decode()
    assert output.startswith(b"audit trail intact"), output.decode()

    # Every call the dead process acknowledged was recorded, whole.
    store = open_store(settings)
    await store.open()
    try:
        records = await store.list_calls(limit=1000)
    finally:
        await store.close()
    keyring, _ = load_data_keys(settings)
    by_sid = {r.carrier_call_id: r for r in records}
    assert accepted and set(accepted) <= set(by_sid), "an acknowledged call has no record"
    for record in records:
        assert open_numbers(keyring, record) == (CALLER, CALLEE)
    # None is left without an end: the live calls the kill dropped were closed by the
    # restarted process as lost.
    assert [r.call_id for r in records if r.ended_at is None] == []
    lost = {r.carrier_call_id for r in records if r.outcome == "replica_lost"}
    assert {leg.ticket.call_id for leg in legs} <= lost
    print(
        f"\nSIGKILL: {len(accepted)} calls acknowledged while dying, {len(records)} records, "
        f"0 lost, 0 corrupt; {len(lost)} left open by the kill, closed as replica_lost by the "
        f"restarted process; {len(legs)} live calls dropped by the kill"
    )
