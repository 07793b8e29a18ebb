"""``TranscriptLog`` on a real SQLite store: turns of a call stored encrypted, in the order they
were appended, read back decrypted; hostile text bounded; a failing store never reaches the
call, and its log lines never carry the text."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.calls.state import Call, new_call
from gateway.calls.transcripts import MAX_TURN_CHARS, TranscriptLog, Turn, turn_role
from gateway.records.base import TurnRole
from gateway.records.sqlite import SqliteStore
from gateway.settings import Settings, SettingsError
from security.crypto import DecryptionError, KeyRing
from tests.cli.test_cli import run
from tests.conftest import FakeClock

RING = KeyRing([("k1", bytes([7]) * 32)])
NOW = 1_750_000_000.0
SECRET = "my PIN is pomegranate-9093"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "data" / "voicegw.sqlite3")
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def call() -> Call:
    return new_call("twilio", "CA123", "openai", "replica-1", None, agent="support")


def log_for(store: SqliteStore, clock: FakeClock | None = None) -> TranscriptLog:
    return TranscriptLog(store=store, data_keys=RING, clock=clock or FakeClock(NOW))


def database_bytes(store: SqliteStore) -> bytes:
    return b"".join(
        Path(f"{store.path}{suffix}").read_bytes()
        for suffix in ("", "-wal")
        if Path(f"{store.path}{suffix}").exists()
    )


async def test_turns_round_trip_and_the_file_holds_no_text(store: SqliteStore, call: Call) -> None:
    clock = FakeClock(NOW)
    log = log_for(store, clock)
    assert await log.append(call, "user", SECRET)
    clock.advance(2)
    assert await log.append(call, "agent", "Thank you, noted.")
    assert await log.append(call, "assistant", "Anything else?")  # Deepgram's word
    turns = await log.read(call.call_id)
    assert turns == [
        Turn(1, TurnRole.CALLER, NOW, SECRET),
        Turn(2, TurnRole.AGENT, NOW + 2, "Thank you, noted."),
        Turn(3, TurnRole.AGENT, NOW + 2, "Anything else?"),
    ]
    assert SECRET not in repr(turns)
    assert (log.stored, log.failures, log.dropped) == (3, 0, 0)
    raw = await asyncio.to_thread(database_bytes, store)
    assert b"pomegranate" not in raw and b"noted" not in raw
    assert await log.read("another-call") == []


async def test_concurrent_appends_keep_their_order(store: SqliteStore, call: Call) -> None:
    log = log_for(store)
    texts = [f"turn number {i}" for i in range(20)]
    results = await asyncio.gather(*(log.append(call, "user", t) for t in texts))
    assert all(results)
    assert [(t.seq, t.text) for t in await log.read(call.call_id)] == list(
        enumerate(texts, start=1)
    )


async def test_calls_are_numbered_separately(store: SqliteStore, call: Call) -> None:
    other = new_call("telnyx", "v3:abc", "gemini", "replica-1", None)
    log = log_for(store)
    for c in (call, other, call):
        assert await log.append(c, "agent", "hello")
    assert [t.seq for t in await log.read(call.call_id)] == [1, 2]
    assert [t.seq for t in await log.read(other.call_id)] == [1]


async def test_a_new_process_continues_after_the_stored_turns(
    store: SqliteStore, call: Call
) -> None:
    first = log_for(store)
    assert await first.append(call, "user", "one")
    assert await first.append(call, "agent", "two")
    first.end(call.call_id)
    restarted = log_for(store)  # knows nothing of the call: its seq 1 is taken
    assert await restarted.append(call, "user", "three")
    assert await restarted.append(call, "agent", "four")
    assert [(t.seq, t.text) for t in await restarted.read(call.call_id)] == [
        (1, "one"),
        (2, "two"),
        (3, "three"),
        (4, "four"),
    ]
    assert restarted.failures == 0


async def test_hostile_or_empty_turns(store: SqliteStore, call: Call) -> None:
    log = log_for(store)
    assert not await log.append(call, "user", "")
    assert not await log.append(call, "agent", " \n\t ")
    assert not await log.append(call, "system", "instructions the provider echoed")
    assert not await log.append(call, "", "text")
    assert log.dropped == 4
    assert await log.append(call, "user", "x" * (MAX_TURN_CHARS * 3))
    assert await log.append(call, "user", "bad \ud800 surrogate \x00 nul")
    long, odd = await log.read(call.call_id)
    assert len(long.text) == MAX_TURN_CHARS and log.truncated == 1
    assert odd.text == "bad ? surrogate \x00 nul"
    assert [turn_role(r) for r in ("user", "caller", "agent", "assistant", "User")] == [
        TurnRole.CALLER,
        TurnRole.CALLER,
        TurnRole.AGENT,
        TurnRole.AGENT,
        None,
    ]


async def test_a_failing_store_never_reaches_the_call_nor_the_logs(
    store: SqliteStore, call: Call, caplog: pytest.LogCaptureFixture
) -> None:
    log = log_for(store)
    await store.close()
    with caplog.at_level(logging.DEBUG):
        assert not await log.append(call, "user", SECRET)
    assert (log.stored, log.failures) == (0, 1)
    [record] = [r for r in caplog.records if r.name == "voicegw.transcripts"]
    assert record.levelno == logging.ERROR
    assert record.__dict__["call_id"] == call.call_id
    assert record.__dict__["error"] == "StoreUnavailable"
    for r in caplog.records:
        assert "pomegranate" not in r.getMessage()
        assert "pomegranate" not in repr(r.__dict__)


async def test_a_key_ring_without_the_key_cannot_read(store: SqliteStore, call: Call) -> None:
    assert await log_for(store).append(call, "user", SECRET)
    stranger = TranscriptLog(store=store, data_keys=KeyRing([("k1", bytes([8]) * 32)]))
    with pytest.raises(DecryptionError):
        await stranger.read(call.call_id)


# -- configuration and key rotation -----------------------------------------------------------


def test_transcript_retention_setting(tmp_path: Path) -> None:
    assert Settings.from_env({}).retention_transcripts_days == 30
    days = Settings.from_env({"VOICEGW_RETENTION_TRANSCRIPTS_DAYS": "7"})
    assert days.retention_transcripts_days == 7
    for bad in ("0", "forever", "5000"):
        with pytest.raises(SettingsError, match="VOICEGW_RETENTION_TRANSCRIPTS_DAYS"):
            Settings.from_env({"VOICEGW_RETENTION_TRANSCRIPTS_DAYS": bad})


async def test_keys_rotate_data_reencrypts_transcripts(tmp_path: Path, call: Call) -> None:
    k1, k2 = bytes([7]) * 32, bytes([8]) * 32
    old = KeyRing([("k1", k1)])
    store = SqliteStore(tmp_path / "data" / "voicegw.sqlite3")
    await store.open()
    try:
        assert await TranscriptLog(store=store, data_keys=old).append(call, "user", SECRET)
    finally:
        await store.close()
    spec = f"k2:{base64.b64encode(k2).decode()},k1:{base64.b64encode(k1).decode()}"
    result = await asyncio.to_thread(
        run,
        tmp_path,
        "keys",
        "rotate-data",
        VOICEGW_ENCRYPTION_KEYS=spec,
        VOICEGW_BLIND_INDEX_KEY=base64.b64encode(bytes([9]) * 32).decode(),
    )
    assert result.returncode == 0, result.stderr
    assert "1 transcript turns" in result.stdout
    assert SECRET not in result.stdout + result.stderr
    await store.open()
    try:
        assert await store.count_turns_by_key() == {"k2": 1}
        only_new = TranscriptLog(store=store, data_keys=KeyRing([("k2", k2)]))
        assert [t.text for t in await only_new.read(call.call_id)] == [SECRET]
    finally:
        await store.close()
