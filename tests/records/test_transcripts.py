"""Transcripts at rest, on both real backends: turns are stored encrypted (no byte of their
text in the database files or tables), exported to the data subject, erased without a trace
(SQLite database and WAL, PostgreSQL rows), deleted by retention and re-encrypted on key
rotation."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from gateway.records.base import DuplicateError, TranscriptTurn, TurnRole
from gateway.records.privacy import (
    DAY_S,
    TRANSCRIPT_COLUMN,
    RetentionPeriods,
    RetentionSweeper,
    erase_subject,
    export_subject,
    open_turn,
    rotate_transcripts,
    seal_turn,
)
from gateway.records.sql import SqlStore
from security.audit import Auditor, HashChainer
from security.crypto import DecryptionError, KeyRing, UnknownKeyError
from tests.conftest import FakeClock
from tests.records.backends import BACKENDS, Backend, open_backend
from tests.records.test_privacy import (
    BUSINESS,
    INDEX,
    NOW,
    RING,
    STRANGER,
    SUBJECT,
    add_call,
    ciphertext_forms,
    scan,
)

SECRET_TURNS = (
    (TurnRole.CALLER, "My account number is tangerine-4471-quokka"),
    (TurnRole.AGENT, "Thanks, I have noted tangerine-4471-quokka for you"),
    (TurnRole.CALLER, "Und meine Adresse ist Grünstraße 12, Zürich"),
)
"""Text that appears nowhere else, so a scan that finds it found the transcript."""


@pytest.fixture(params=BACKENDS)
async def env(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Backend, SqlStore]]:
    async with open_backend(str(request.param), tmp_path) as pair:
        yield pair


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def auditor(env: tuple[Backend, SqlStore], clock: FakeClock) -> Auditor:
    return Auditor(env[1], HashChainer(SigningKey(b"t" * 32)), ip_hash_key=b"h" * 32, clock=clock)


async def add_turns(
    store: SqlStore,
    call_id: str,
    turns: tuple[tuple[TurnRole, str], ...] = SECRET_TURNS,
    *,
    at: float = NOW,
    ring: KeyRing = RING,
) -> list[TranscriptTurn]:
    sealed = [
        seal_turn(ring, call_id=call_id, seq=seq, role=role, text=text, at=at + seq)
        for seq, (role, text) in enumerate(turns, start=1)
    ]
    for turn in sealed:
        await store.add_turn(turn)
    return sealed


def text_forms(text: str) -> list[str]:
    """How clear text would appear in a scan: UTF-8 bytes (SQLite) or text (PostgreSQL)."""
    return [text.encode().decode("latin-1"), text]


# -- the store --------------------------------------------------------------------------------


async def test_turns_round_trip_encrypted(env: tuple[Backend, SqlStore]) -> None:
    backend, store = env
    sealed = await add_turns(store, "c1")
    stored = await store.get_transcript("c1")
    assert stored == sealed  # in seq order, ciphertexts byte for byte
    assert [(t.role, open_turn(RING, t)) for t in stored] == list(SECRET_TURNS)
    assert {t.key_id for t in stored} == {"k1"}
    assert await store.last_turn_seq("c1") == 3
    assert await store.last_turn_seq("nobody") == 0
    assert await store.get_transcript("nobody") == []
    # The rows hold ciphertext only: not one of the words is anywhere in the database.
    everything = await scan(backend, store)
    assert any(form in everything for t in sealed for form in ciphertext_forms(t.text))
    for word in ("tangerine-4471-quokka", "Grünstraße", "Zürich"):
        assert not [f for f in text_forms(word) if f in everything], word


async def test_a_seq_is_stored_once(env: tuple[Backend, SqlStore]) -> None:
    _, store = env
    [first] = await add_turns(store, "c1", SECRET_TURNS[:1])
    with pytest.raises(DuplicateError):
        await store.add_turn(dataclasses.replace(first, text=b"other"))
    assert [t.text for t in await store.get_transcript("c1")] == [first.text]


async def test_a_ciphertext_opens_only_for_its_own_call_and_seq(
    env: tuple[Backend, SqlStore],
) -> None:
    _, store = env
    one, two, _ = await add_turns(store, "c1")
    await add_turns(store, "c2", SECRET_TURNS[:1])
    # Moved to another seq of the same call, or to the same seq of another call: refused.
    for moved in (
        dataclasses.replace(two, text=one.text),
        dataclasses.replace(one, call_id="c2"),
    ):
        with pytest.raises(DecryptionError):
            open_turn(RING, moved)
    tampered = bytearray(one.text)
    tampered[-1] ^= 1
    with pytest.raises(DecryptionError):
        open_turn(RING, dataclasses.replace(one, text=bytes(tampered)))
    # Nor does a number's column open it: the transcript column is bound in.
    assert TRANSCRIPT_COLUMN == "transcripts.text"
    with pytest.raises(DecryptionError):
        RING.decrypt_field(one.text, record_id="c1:1", column="calls.from_number")


def test_text_that_is_not_unicode_is_kept_with_replacements() -> None:
    turn = seal_turn(RING, call_id="c", seq=1, role=TurnRole.CALLER, text="a\ud800b", at=NOW)
    assert open_turn(RING, turn) == "a?b"
    empty = seal_turn(RING, call_id="c", seq=2, role=TurnRole.AGENT, text="", at=NOW)
    assert open_turn(RING, empty) == ""


async def test_delete_transcripts_of_many_calls(env: tuple[Backend, SqlStore]) -> None:
    _, store = env
    ids = [f"c{i:04d}" for i in range(1200)]  # more than one statement's chunk
    for call_id in ids[:3] + ids[-2:]:
        await add_turns(store, call_id, SECRET_TURNS[:2])
    assert await store.delete_transcripts([]) == 0
    assert await store.delete_transcripts(ids[:-1]) == 8
    assert [await store.last_turn_seq(c) for c in (ids[0], ids[-2], ids[-1])] == [0, 0, 2]


# -- export and erasure -----------------------------------------------------------------------


async def test_export_contains_the_transcript_and_erasure_leaves_no_byte(
    env: tuple[Backend, SqlStore], auditor: Auditor
) -> None:
    backend, store = env
    await add_call(store, "c-in", SUBJECT, BUSINESS)
    await add_call(store, "c-other", STRANGER, BUSINESS, started_at=NOW + 60)
    subject_turns = await add_turns(store, "c-in")
    other_turns = await add_turns(store, "c-other", ((TurnRole.CALLER, "kept-words-of-another"),))

    exported = await export_subject(store, RING, INDEX, SUBJECT, auditor=auditor)
    json.dumps(exported)
    [call] = exported["calls"]
    assert call["call_id"] == "c-in"
    assert [(t["seq"], t["role"], t["text"]) for t in call["transcript"]] == [
        (1, "caller", SECRET_TURNS[0][1]),
        (2, "agent", SECRET_TURNS[1][1]),
        (3, "caller", SECRET_TURNS[2][1]),
    ]
    assert call["transcript"][0]["at"].startswith("2025-")

    before = await scan(backend, store)
    traces = [form for t in subject_turns for form in ciphertext_forms(t.text)]
    for turn in subject_turns:  # the scan sees them while they exist
        assert any(form in before for form in ciphertext_forms(turn.text))

    erased = await erase_subject(store, INDEX, SUBJECT, auditor=auditor)
    assert (erased.calls, erased.transcript_turns) == (1, 3)
    assert await store.get_transcript("c-in") == []
    assert await store.get_transcript("c-other") == other_turns  # someone else's call stays

    after = await scan(backend, store)
    for trace in traces:
        assert trace not in after, "a transcript ciphertext survived erasure"
    assert any(form in after for form in ciphertext_forms(other_turns[0].text))


async def test_erasure_removes_turns_added_to_an_erased_call_again(
    env: tuple[Backend, SqlStore], auditor: Auditor
) -> None:
    # A repeated request (the first one failed half way, or turns arrived since) finds the
    # call by its other side no more, but its own remaining turns still go with the subject.
    _, store = env
    await add_call(store, "c-in", SUBJECT, BUSINESS)
    await add_turns(store, "c-in")
    first = await erase_subject(store, INDEX, SUBJECT, auditor=auditor)
    assert first.transcript_turns == 3
    second = await erase_subject(store, INDEX, SUBJECT, auditor=auditor)
    assert (second.calls, second.transcript_turns) == (0, 0)


# -- retention --------------------------------------------------------------------------------


async def test_retention_deletes_old_turns_and_the_turns_of_deleted_calls(
    env: tuple[Backend, SqlStore], auditor: Auditor, clock: FakeClock
) -> None:
    backend, store = env
    # A recent call whose early turns are older than the transcript period (a shorter one).
    await add_call(store, "recent", STRANGER, BUSINESS, started_at=NOW - DAY_S)
    old_turns = await add_turns(store, "recent", SECRET_TURNS[:2], at=NOW - 8 * DAY_S)
    new_turns = await add_turns(
        store, "recent-2", ((TurnRole.AGENT, "fresh words"),), at=NOW - DAY_S
    )
    # An old call: its record goes, and its (newer) turns with it.
    await add_call(store, "old", STRANGER, BUSINESS, started_at=NOW - 40 * DAY_S)
    call_turns = await add_turns(store, "old", SECRET_TURNS, at=NOW - 2 * DAY_S)
    sweeper = RetentionSweeper(
        store, RetentionPeriods(transcripts_s=7 * DAY_S), auditor, batch=1, clock=clock
    )
    result = await sweeper.sweep_once()
    assert (result.calls, result.transcript_turns) == (1, 5)
    assert await store.get_transcript("recent") == []
    assert await store.get_transcript("old") == []
    assert await store.get_transcript("recent-2") == new_turns
    assert (await sweeper.sweep_once()).transcript_turns == 0
    assert sweeper.totals.transcript_turns == 5
    run = await store.get_last_run("retention.sweep")
    assert run is not None and run.detail["transcript_turns"] == 0
    after = await scan(backend, store)
    for turn in (*old_turns, *call_turns):
        assert not [f for f in ciphertext_forms(turn.text) if f in after]


async def test_default_transcript_retention_is_thirty_days(
    env: tuple[Backend, SqlStore], auditor: Auditor, clock: FakeClock
) -> None:
    _, store = env
    await add_turns(store, "c-old", SECRET_TURNS[:1], at=NOW - 31 * DAY_S)
    await add_turns(store, "c-new", SECRET_TURNS[:1], at=NOW - 29 * DAY_S)
    result = await RetentionSweeper(store, RetentionPeriods(), auditor, clock=clock).sweep_once()
    assert result.transcript_turns == 1
    assert (await store.last_turn_seq("c-old"), await store.last_turn_seq("c-new")) == (0, 1)


# -- key rotation -----------------------------------------------------------------------------


async def test_rotation_reencrypts_transcripts(env: tuple[Backend, SqlStore]) -> None:
    _, store = env
    old = KeyRing([("k1", bytes([7]) * 32)])
    await add_turns(store, "c1", ring=old)
    await add_turns(store, "c2", SECRET_TURNS[:1], ring=old)
    new = KeyRing([("k2", bytes([8]) * 32), ("k1", bytes([7]) * 32)])
    await add_turns(store, "c3", SECRET_TURNS[:1], ring=new)
    assert await store.count_turns_by_key() == {"k1": 4, "k2": 1}

    assert await rotate_transcripts(store, new, batch=3) == 4
    assert await store.count_turns_by_key() == {"k2": 5}
    only_new = KeyRing([("k2", bytes([8]) * 32)])
    turns = await store.get_transcript("c1")
    assert [open_turn(only_new, t) for t in turns] == [text for _, text in SECRET_TURNS]
    assert await rotate_transcripts(store, new) == 0  # nothing left to do

    # Compare-and-set: a turn already moved on is not overwritten with a stale ciphertext.
    [turn] = await store.get_transcript("c2")
    assert not await store.reencrypt_turn("c2", 1, "k1", b"stale", "k2")
    assert await store.get_transcript("c2") == [turn]


async def test_rotation_refuses_keys_it_does_not_hold(env: tuple[Backend, SqlStore]) -> None:
    _, store = env
    await add_turns(store, "c1", SECRET_TURNS[:1], ring=KeyRing([("lost", bytes([1]) * 32)]))
    with pytest.raises(UnknownKeyError):
        await rotate_transcripts(store, RING)
    with pytest.raises(ValueError):
        await rotate_transcripts(store, RING, batch=0)
    assert await store.count_turns_by_key() == {"lost": 1}
