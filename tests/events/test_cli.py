"""``voicegw events list|retry`` on the configured (SQLite) store."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.cli import main as cli
from gateway.records.base import EventState, OutboxEvent
from gateway.services import open_store
from gateway.settings import Settings


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("VOICEGW_DATA_DIR", str(tmp_path / "data"))
    return Settings.from_env({"VOICEGW_DATA_DIR": str(tmp_path / "data")})


async def seed(settings: Settings) -> None:
    store = open_store(settings)
    await store.open()
    now = time.time()
    try:
        for n, call in enumerate(("call-1", "call-2", "call-3")):
            await store.add_event(
                OutboxEvent(f"evt_{n}", call, "call.ended", '{"secret":"body"}', now + n, now, now)
            )
        await store.claim_events(now, "c", now + 30, 10)
        await store.event_failed("evt_0", "c", error="HTTP410", next_attempt_at=None)
        await store.event_failed("evt_1", "c", error="HTTP503", next_attempt_at=None)
        await store.event_delivered("evt_2", now)
    finally:
        await store.close()


async def states(settings: Settings) -> dict[str, EventState]:
    store = open_store(settings)
    await store.open()
    try:
        return {e.event_id: e.state for e in await store.list_events()}
    finally:
        await store.close()


def run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_list_filters_by_state_and_never_shows_bodies(env, capsys):
    asyncio.run(seed(env))
    code, out, _ = run(["events", "list", "--state", "dead"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["evt_1", "evt_0"]  # newest first
    assert "last_error=HTTP410" in lines[1] and "secret" not in out
    code, out, _ = run(["events", "list", "--limit", "1"], capsys)
    assert len(out.splitlines()) == 1


def test_retry_one_and_all_dead(env, capsys):
    asyncio.run(seed(env))
    code, out, _ = run(["events", "retry", "evt_0"], capsys)
    assert code == 0 and "evt_0 put back to pending" in out
    assert asyncio.run(states(env))["evt_0"] is EventState.PENDING
    code, _, err = run(["events", "retry", "evt_2"], capsys)
    assert code == 1 and "is delivered, not dead" in err
    code, _, err = run(["events", "retry", "evt_nope"], capsys)
    assert code == 1 and "no event 'evt_nope'" in err
    code, out, _ = run(["events", "retry", "--all-dead"], capsys)
    assert code == 0 and out.startswith("1 dead event(s)")
    assert set(asyncio.run(states(env)).values()) == {EventState.PENDING, EventState.DELIVERED}


@pytest.mark.parametrize(
    "argv",
    [
        ["events", "retry"],
        ["events", "retry", "evt_0", "--all-dead"],
        ["events", "list", "--limit", "0"],
        ["events", "list", "--state", "gone"],
    ],
)
def test_bad_usage_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
