"""Data-subject rights and retention on both real backends.

The central promise: a phone number that entered through a call record can be found by its
blind index, exported, then erased, after which no byte of the SQLite files (database and
WAL) and no row of any PostgreSQL table holds the number in any form, its blind index, or the
ciphertexts that held it; and both requests appear in a verifiable audit trail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from gateway.records.base import AuditQuery, CallRecord
from gateway.records.privacy import (
    DAY_S,
    RetentionPeriods,
    RetentionSweeper,
    SweepResult,
    erase_subject,
    export_subject,
    open_numbers,
    seal_numbers,
)
from gateway.records.sql import SqlStore
from security.audit import AuditEvent, Auditor, HashChainer, verify
from security.crypto import BlindIndex, KeyRing
from tests.conftest import UNIT, FakeClock
from tests.records.backends import BACKENDS, Backend, open_backend

RING = KeyRing([("k1", bytes([7]) * 32)])
INDEX = BlindIndex(bytes([9]) * 32)
SIGNING_KEY = SigningKey(b"c" * 32)
NOW = 1_750_000_000.0

SUBJECT = "(415) 555-0123"
SUBJECT_FORMS = ("+14155550123", "4155550123", "(415) 555-0123", "415-555-0123", "5550123")
BUSINESS = "+14155559876"
STRANGER = "+442079460958"


class Recordings:
    """Stands in for the recordings module's secure deletion."""

    def __init__(self, fail: bool = False) -> None:
        self.deleted: list[str] = []
        self.fail = fail

    async def delete(self, path: str) -> None:
        if self.fail:
            raise OSError("disk error")
        self.deleted.append(path)


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
    return Auditor(
        env[1], HashChainer(SIGNING_KEY), ip_hash_key=b"h" * 32, checkpoint_every=5, clock=clock
    )


async def add_call(
    store: SqlStore,
    call_id: str,
    from_number: str | None,
    to_number: str | None,
    *,
    started_at: float = NOW,
    recording_path: str | None = None,
) -> CallRecord:
    sealed = seal_numbers(
        RING, INDEX, call_id=call_id, from_number=from_number, to_number=to_number
    )
    call = CallRecord(
        call_id=call_id,
        carrier="twilio",
        carrier_call_id=f"CA{call_id}",
        started_at=started_at,
        ended_at=started_at + 30,
        outcome="completed",
        providers=("openai",),
        recording_path=recording_path,
        **sealed.fields(),
    )
    await store.put_call(call)
    return call


def read_sqlite_files(path: Path) -> str:
    parts = []
    for suffix in ("", "-wal"):
        file = Path(f"{path}{suffix}")
        if file.exists():
            parts.append(file.read_bytes().decode("latin-1"))
    return "\n".join(parts)


async def scan(backend: Backend, store: SqlStore) -> str:
    """Everything the database holds, as text: the SQLite files' bytes (database, WAL), or
    every PostgreSQL table of the store's schema cast to text."""
    if backend.kind == "sqlite":
        return read_sqlite_files(backend.path)
    tables = await backend.raw(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = ?",
        (backend.schema,),
    )
    assert {"calls", "audit_events", "subject_requests", "users"} <= {t[0] for t in tables}
    rows: list[str] = []
    for (table,) in tables:
        for (text,) in await backend.raw(f'SELECT t::text FROM "{table}" t'):
            rows.append(str(text))
    return "\n".join(rows)


def ciphertext_forms(blob: bytes | None) -> list[str]:
    """How a ciphertext would appear in a scan: raw bytes (SQLite) or bytea hex (PostgreSQL)."""
    return [] if blob is None else [blob.decode("latin-1"), blob.hex()]


async def test_find_export_erase_leaves_no_trace(
    env: tuple[Backend, SqlStore], auditor: Auditor, clock: FakeClock
) -> None:
    backend, store = env
    recordings = Recordings()
    inbound = await add_call(store, "c-in", SUBJECT, BUSINESS, recording_path="rec/c-in")
    outbound = await add_call(store, "c-out", BUSINESS, "+1 415 555 0123", started_at=NOW + 60)
    other = await add_call(store, "c-other", STRANGER, BUSINESS, started_at=NOW + 120)
    await auditor.record(
        "call.failover",
        "success",
        entity_type="call",
        entity_id="c-in",
        detail={"from_provider": "openai", "to_provider": "gemini"},
    )
    subject_index = INDEX.of(SUBJECT)
    traces = [subject_index]
    for call in (inbound, outbound):
        traces += ciphertext_forms(call.from_number if call is inbound else call.to_number)

    # Before: the number's ciphertexts and index are there (so the scan can see them) ...
    before = await scan(backend, store)
    assert subject_index in before
    assert any(trace in before for trace in traces[1:])
    # ... but never the number in clear.
    assert not [form for form in SUBJECT_FORMS if form in before]

    # Found by the blind index, whatever the formatting.
    found = await store.find_calls(INDEX.of("tel:+14155550123"))
    assert [c.call_id for c in found] == ["c-in", "c-out"]

    # Exported.
    exported = await export_subject(
        store, RING, INDEX, SUBJECT, auditor=auditor, actor="auditor1", role="auditor"
    )
    json.dumps(exported)  # JSON-ready
    assert exported["subject"] == {"number": "+14155550123"}
    calls = {c["call_id"]: c for c in exported["calls"]}
    assert set(calls) == {"c-in", "c-out"}
    assert calls["c-in"]["subject_role"] == "caller"
    assert calls["c-in"]["subject_number"] == "+14155550123"
    assert calls["c-in"]["counterpart_number"] != BUSINESS  # someone else's data: masked
    assert calls["c-in"]["counterpart_number"].endswith("76")
    assert calls["c-in"]["recording"] is True
    assert calls["c-in"]["duration_s"] == 30
    assert [e["action"] for e in calls["c-in"]["events"]] == ["call.failover"]
    assert calls["c-out"]["subject_role"] == "callee"
    assert calls["c-out"]["subject_number"] == "+14155550123"
    export_request = await store.get_subject_request(exported["request_id"])
    assert export_request is not None
    assert (export_request.status, export_request.kind, export_request.items) == (
        "done",
        "export",
        2,
    )

    # Erased.
    clock.now += 10
    erased = await erase_subject(
        store,
        INDEX,
        "+1-415-555-0123",
        auditor=auditor,
        delete_recording=recordings.delete,
        actor="admin1",
        role="admin",
    )
    assert (erased.calls, erased.recordings) == (2, 1)
    assert recordings.deleted == ["rec/c-in"]
    assert await store.find_calls(subject_index) == []
    kept_in = await store.get_call("c-in")
    assert kept_in is not None
    assert (kept_in.from_number, kept_in.from_index, kept_in.recording_path) == (None, None, None)
    assert open_numbers(RING, kept_in) == (None, BUSINESS)  # the business line stays
    kept_other = await store.get_call("c-other")
    assert kept_other == other and open_numbers(RING, other) == (STRANGER, BUSINESS)
    requests = await store.list_subject_requests()
    assert {(r.kind, r.status) for r in requests} == {("export", "done"), ("erase", "done")}
    assert all(r.subject_index == "" for r in requests)  # nothing links them to the person

    # No trace anywhere in the database.
    after = await scan(backend, store)
    for form in (*SUBJECT_FORMS, *traces):
        assert form not in after, f"{form[:20]!r} survived erasure"
    assert BUSINESS[2:] not in after  # numbers are never stored in clear at all

    # Both requests are in the audit trail, by request id only, and the trail verifies.
    events = await store.query_audit(AuditQuery(action="dsr."))
    assert [(e.action, e.outcome, e.actor, e.entity_id) for e in events] == [
        ("dsr.export", "success", "auditor1", exported["request_id"]),
        (
            "dsr.erase",
            "success",
            "admin1",
            next(r.request_id for r in requests if r.kind == "erase"),
        ),
    ]
    erase_detail = dict(events[1].detail)
    assert isinstance(erase_detail.pop("duration_ms"), float)  # how long the person waited
    assert erase_detail == {"records": 2, "recordings": 1, "transcript_turns": 0}
    everything = repr(await store.iter_audit(0, 1000))
    assert subject_index not in everything and "0123" not in everything
    result = await verify(store, SIGNING_KEY.verify_key)
    assert result.ok, result


async def test_failed_erasure_is_recorded_and_can_be_repeated(
    env: tuple[Backend, SqlStore], auditor: Auditor
) -> None:
    _, store = env
    await add_call(store, "c1", SUBJECT, BUSINESS, recording_path="rec/c1")
    with pytest.raises(OSError):
        await erase_subject(
            store, INDEX, SUBJECT, auditor=auditor, delete_recording=Recordings(fail=True).delete
        )
    # Nothing half-done: the call still holds its number and recording reference.
    assert [c.call_id for c in await store.find_calls(INDEX.of(SUBJECT))] == ["c1"]
    [failed] = await store.list_subject_requests()
    assert (failed.status, failed.subject_index) == ("failed", "")
    [event] = await store.query_audit(AuditQuery(action="dsr.erase"))
    assert event.outcome == "failure"
    recordings = Recordings()
    erased = await erase_subject(
        store, INDEX, SUBJECT, auditor=auditor, delete_recording=recordings.delete
    )
    assert erased.calls == 1
    assert recordings.deleted == ["rec/c1"]


async def test_erasing_a_recorded_call_without_a_deleter_fails_safely(
    env: tuple[Backend, SqlStore], auditor: Auditor
) -> None:
    _, store = env
    await add_call(store, "c1", SUBJECT, BUSINESS, recording_path="rec/c1")
    with pytest.raises(RuntimeError, match="recording"):
        await erase_subject(store, INDEX, SUBJECT, auditor=auditor)
    assert len(await store.find_calls(INDEX.of(SUBJECT))) == 1


async def test_requests_for_garbage_numbers_are_refused(
    env: tuple[Backend, SqlStore], auditor: Auditor
) -> None:
    _, store = env
    with pytest.raises(ValueError):
        await export_subject(store, RING, INDEX, "anonymous", auditor=auditor)
    with pytest.raises(ValueError):
        await erase_subject(store, INDEX, "client:alice", auditor=auditor)
    assert await store.list_subject_requests() == []


async def test_export_of_an_unknown_number_is_empty(
    env: tuple[Backend, SqlStore], auditor: Auditor
) -> None:
    _, store = env
    exported = await export_subject(store, RING, INDEX, STRANGER, auditor=auditor)
    assert exported["calls"] == [] and exported["subject"] == {"number": STRANGER}


def test_seal_numbers_skips_what_is_not_a_number() -> None:
    sealed = seal_numbers(RING, INDEX, call_id="c", from_number="anonymous", to_number=BUSINESS)
    assert sealed.from_number is None and sealed.from_index is None
    assert sealed.to_index == INDEX.of(BUSINESS) and sealed.key_id == "k1"
    assert seal_numbers(RING, INDEX, call_id="c", from_number=None, to_number=None).key_id is None


# -- retention ---------------------------------------------------------------------------------


async def test_retention_sweep(
    env: tuple[Backend, SqlStore], auditor: Auditor, clock: FakeClock
) -> None:
    backend, store = env
    recordings = Recordings()
    # Calls 40, 35 and 31 days old go; 29 and 1 days old stay.
    doomed: list[str] = []
    for i, age_days in enumerate((40, 35, 31, 29, 1)):
        call = await add_call(
            store,
            f"c{i}",
            STRANGER,
            BUSINESS,
            started_at=NOW - age_days * DAY_S,
            recording_path=f"rec/c{i}" if i % 2 == 0 else None,
        )
        if age_days > 30:
            doomed += ciphertext_forms(call.from_number) + ciphertext_forms(call.to_number)
    # Audit events: three 8 years old, one recent.
    chain = HashChainer(SIGNING_KEY)
    for i in range(3):
        await store.append_audit(
            AuditEvent(action="old", outcome="success", at=NOW - 8 * 365 * DAY_S + i), chain
        )
    await auditor.record("recent", "success")
    sweeper = RetentionSweeper(
        store, RetentionPeriods(), auditor, batch=2, delete_recording=recordings.delete, clock=clock
    )
    result = await sweeper.sweep_once()
    assert (result.calls, result.recordings, result.audit_events) == (3, 2, 3)
    assert sorted(recordings.deleted) == ["rec/c0", "rec/c2"]
    assert sorted(c.call_id for c in await store.list_calls()) == ["c3", "c4"]
    actions = [e.action for e in await store.iter_audit(0, 100)]
    assert [a for a in actions if a != "audit.checkpoint"] == ["recent", "retention.sweep"]
    [sweep] = await store.query_audit(AuditQuery(action="retention.sweep"))
    assert sweep.detail["calls"] == 3 and sweep.detail["audit_events"] == 3
    assert (await verify(store, SIGNING_KEY.verify_key)).ok  # from the retention anchor
    again = await sweeper.sweep_once()
    assert (again.calls, again.recordings, again.audit_events) == (0, 0, 0)
    assert sweeper.totals.calls == 3
    # The deleted calls' ciphertexts are gone from the files too.
    after = await scan(backend, store)
    assert not [form for form in doomed if form in after]


async def test_failed_logins_are_kept_only_for_the_lockout_window(
    env: tuple[Backend, SqlStore], auditor: Auditor, clock: FakeClock
) -> None:
    _, store = env
    typed = "someone@example.com"  # what people type as a name: personal data
    for age_s in (3600, 901, 899, 10):
        await store.add_login_failure(typed, NOW - age_s)
    sweeper = RetentionSweeper(store, RetentionPeriods(login_failures_s=900), auditor, clock=clock)
    result = await sweeper.sweep_once()
    assert result.login_failures == 2
    assert await store.count_login_failures(typed, 0) == 2  # the lockout still sees these
    assert await store.count_login_failures(typed, NOW - 900) == 2
    assert (await sweeper.sweep_once()).login_failures == 0
    assert sweeper.totals.login_failures == 2


async def test_a_failing_recording_deleter_does_not_stop_the_sweep(
    env: tuple[Backend, SqlStore], auditor: Auditor, clock: FakeClock
) -> None:
    _, store = env
    await add_call(
        store, "c0", STRANGER, BUSINESS, started_at=NOW - 40 * DAY_S, recording_path="rec/c0"
    )
    sweeper = RetentionSweeper(
        store,
        RetentionPeriods(),
        auditor,
        delete_recording=Recordings(fail=True).delete,
        clock=clock,
    )
    result = await sweeper.sweep_once()
    assert (result.calls, result.recordings, sweeper.recording_failures) == (1, 0, 1)


async def test_retention_periods_are_validated() -> None:
    with pytest.raises(ValueError):
        RetentionPeriods(calls_s=0)
    with pytest.raises(ValueError):
        RetentionPeriods(login_failures_s=0)
    with pytest.raises(ValueError):
        RetentionPeriods(transcripts_s=-1)
    assert dataclasses.asdict(RetentionPeriods()) == {
        "calls_s": 30 * DAY_S,
        "audit_s": 7 * 365 * DAY_S,
        "login_failures_s": 900.0,
        "transcripts_s": 30 * DAY_S,
    }


async def test_run_keeps_sweeping_after_a_failure(
    env: tuple[Backend, SqlStore], auditor: Auditor, clock: FakeClock
) -> None:
    _, store = env
    third_pass = asyncio.Event()

    class Flaky(RetentionSweeper):
        passes = 0

        async def sweep_once(self) -> SweepResult:
            Flaky.passes += 1
            if Flaky.passes == 3:
                third_pass.set()
            if Flaky.passes == 1:
                raise OSError("database went away")
            return await super().sweep_once()

    sweeper = Flaky(store, RetentionPeriods(), auditor, clock=clock)
    task = asyncio.create_task(sweeper.run(0.001))
    async with asyncio.timeout(5 * UNIT):
        await third_pass.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sweeper.failures == 1
    with pytest.raises(ValueError):
        await sweeper.run(0)
