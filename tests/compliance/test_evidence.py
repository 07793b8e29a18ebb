"""The evidence the compliance report reads, on both store backends: data-subject requests
and their latency from the audit trail, the retention sweeper's last pass and deletions, the
audit chain's last verification, and the report built from all of it (no personal data)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path

import orjson
import pytest
from nacl.signing import SigningKey

from gateway.compliance import build_report
from gateway.compliance.evidence import (
    AUDIT_VERIFY_RUN,
    record_audit_verification,
    retention_deleted,
    subject_request_stats,
    verify_periodically,
)
from gateway.records.base import ApiKeyRecord, AuditEvent, LastRun, Role, UserRecord
from gateway.records.privacy import (
    DAY_S,
    RETENTION_RUN,
    RetentionPeriods,
    RetentionSweeper,
    SweepResult,
    erase_subject,
    export_subject,
)
from gateway.records.sql import SqlStore
from gateway.settings import Settings
from security.audit import Auditor, HashChainer, VerifyResult, verify
from tests.conftest import FakeClock
from tests.gateway.test_calls import eventually
from tests.records.test_privacy import BUSINESS, INDEX, RING, SUBJECT, SUBJECT_FORMS, add_call

NOW = 1_750_000_000.0
KEY = SigningKey(b"e" * 32)


class Ticking:
    """A clock that moves ``step`` seconds every time it is read: a request that reads it at
    its start and at its end took exactly ``step``."""

    def __init__(self, now: float, step: float) -> None:
        self.now = now
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class FailingDeleter:
    async def delete(self, path: str) -> None:
        raise OSError("disk error")


def auditor_for(store: SqlStore, clock: FakeClock) -> Auditor:
    return Auditor(store, HashChainer(KEY), ip_hash_key=b"h" * 32, clock=clock)


async def test_last_runs_are_kept_one_per_operation(store: SqlStore) -> None:
    assert await store.get_last_run("audit.verify") is None
    first = LastRun("audit.verify", NOW, "success", {"events": 3, "reason": None})
    await store.put_last_run(first)
    assert await store.get_last_run("audit.verify") == first
    second = LastRun("audit.verify", NOW + 60, "failure", {"first_bad_seq": 2, "ok": False})
    await store.put_last_run(second)
    await store.put_last_run(LastRun("retention.sweep", NOW, "success", {"calls": 1}))
    assert await store.get_last_run("audit.verify") == second


async def test_subject_requests_served_failed_and_how_long_they_took(store: SqlStore) -> None:
    audit_clock = FakeClock(NOW - 40 * DAY_S)
    auditor = auditor_for(store, audit_clock)
    await add_call(store, "c1", SUBJECT, BUSINESS, recording_path="rec/c1")
    # Before the window: not counted.
    await export_subject(store, RING, INDEX, SUBJECT, auditor=auditor, clock=Ticking(NOW, 9.0))
    audit_clock.now = NOW
    for step in (0.1, 0.3, 0.2):  # served in 100, 300 and 200 ms
        await export_subject(store, RING, INDEX, SUBJECT, auditor=auditor, clock=Ticking(NOW, step))
    # An export recorded before durations were: counted, not timed.
    await store.append_audit(
        AuditEvent(action="dsr.export", outcome="success", detail={"records": 1}, at=NOW),
        HashChainer(KEY),
    )
    with pytest.raises(OSError):
        await erase_subject(
            store, INDEX, SUBJECT, auditor=auditor, delete_recording=FailingDeleter().delete
        )
    erased = await erase_subject(
        store,
        INDEX,
        SUBJECT,
        auditor=auditor,
        delete_recording=lambda path: asyncio.sleep(0),
        clock=Ticking(NOW, 0.5),
    )
    assert erased.calls == 1

    stats = await subject_request_stats(store, since=NOW - 30 * DAY_S)
    export, erase = stats["export"], stats["erase"]
    assert (export.served, export.failed, export.timed) == (4, 0, 3)
    assert (export.p50_ms, export.max_ms) == (200.0, 300.0)
    assert (erase.served, erase.failed, erase.timed) == (1, 1, 1)
    assert (erase.p50_ms, erase.max_ms) == (500.0, 500.0)
    everything = await subject_request_stats(store, since=0)
    assert everything["export"].served == 5 and everything["export"].max_ms == 9000.0


async def test_the_sweepers_last_pass_and_what_retention_deleted(store: SqlStore) -> None:
    clock = FakeClock(NOW)
    auditor = auditor_for(store, clock)
    await add_call(store, "old", SUBJECT, BUSINESS, started_at=NOW - 40 * DAY_S)
    await add_call(store, "new", SUBJECT, BUSINESS, started_at=NOW - DAY_S)
    sweeper = RetentionSweeper(store, RetentionPeriods(), auditor, clock=clock)
    await sweeper.sweep_once()
    run = await store.get_last_run(RETENTION_RUN)
    assert run is not None and (run.at, run.outcome) == (NOW, "success")
    assert (run.detail["calls"], run.detail["recordings"], run.detail["audit_events"]) == (1, 0, 0)

    clock.advance(3600)
    await sweeper.sweep_once()  # nothing left to delete: still recorded as a pass
    run = await store.get_last_run(RETENTION_RUN)
    assert run is not None and (run.at, run.detail["calls"]) == (NOW + 3600, 0)
    deleted = await retention_deleted(store, since=NOW - DAY_S)
    assert deleted == {"calls": 1, "recordings": 0, "audit_events": 0}
    assert await retention_deleted(store, since=NOW + 1) == dict.fromkeys(deleted, 0)


async def test_a_failing_pass_is_recorded_as_the_last_run(store: SqlStore) -> None:
    class Broken(RetentionSweeper):
        async def sweep_once(self) -> SweepResult:
            raise OSError("database went away")

    sweeper = Broken(store, RetentionPeriods(), auditor_for(store, FakeClock(NOW)))
    task = asyncio.create_task(sweeper.run(3600))

    async def recorded() -> bool:
        return await store.get_last_run(RETENTION_RUN) is not None

    try:
        await eventually(recorded, "the failed pass recorded")
    finally:
        task.cancel()
    run = await store.get_last_run(RETENTION_RUN)
    assert run is not None and (run.outcome, run.detail) == ("failure", {"error": "OSError"})


async def test_verification_results_are_recorded(store: SqlStore) -> None:
    auditor = auditor_for(store, FakeClock(NOW))
    for _ in range(3):
        await auditor.record("auth.login", "success", actor="ada")
    await auditor.checkpoint()
    run = await record_audit_verification(store, await verify(store, KEY.verify_key), at=NOW)
    assert await store.get_last_run(AUDIT_VERIFY_RUN) == run
    assert run.outcome == "success"
    assert (run.detail["events"], run.detail["signatures_verified"], run.detail["last_seq"]) == (
        4,
        1,
        4,
    )
    broken = VerifyResult(
        ok=False, events=2, checkpoints=0, signatures_verified=0, first_bad_seq=3, reason="x"
    )
    run = await record_audit_verification(store, broken, at=NOW + 1)
    assert (run.outcome, run.detail["first_bad_seq"], run.detail["reason"]) == ("failure", 3, "x")


async def test_a_running_gateway_verifies_the_chain_by_itself(
    store: SqlStore, caplog: pytest.LogCaptureFixture
) -> None:
    auditor = auditor_for(store, FakeClock(NOW))
    for _ in range(2):
        await auditor.record("auth.login", "success", actor="ada")
    await auditor.checkpoint()
    loop = asyncio.create_task(
        verify_periodically(store, lambda: [KEY.verify_key], first_s=0, interval_s=0.01)
    )
    try:
        await eventually(lambda: _last_verification(store, "success"), "first verification")
        run = await store.get_last_run(AUDIT_VERIFY_RUN)
        assert run is not None and run.detail["signatures_verified"] == 1
        # A checkpoint signed by a key the ring no longer holds breaks the chain: the next
        # pass records the failure and logs it at error level.
        other = Auditor(store, HashChainer(SigningKey(b"f" * 32)), ip_hash_key=b"h" * 32)
        await other.checkpoint()
        await eventually(lambda: _last_verification(store, "failure"), "broken chain noticed")
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    assert any(
        r.levelname == "ERROR" and r.getMessage() == "audit chain broken" for r in caplog.records
    )


async def _last_verification(store: SqlStore, outcome: str) -> bool:
    run = await store.get_last_run(AUDIT_VERIFY_RUN)
    return run is not None and run.outcome == outcome


async def test_the_report_from_a_seeded_store(store: SqlStore, tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    auditor = auditor_for(store, clock)
    await store.add_user(
        UserRecord("u1", "grace", Role.AUDITOR, "x", created_at=NOW, password_changed_at=NOW)
    )
    await store.add_user(
        UserRecord("u2", "linus", Role.ADMIN, "x", disabled=True, created_at=NOW)
    )  # disabled: not counted
    await store.add_api_key(ApiKeyRecord("k" * 12, "svc", Role.OPERATOR, "h", created_at=NOW))
    await add_call(store, "c1", SUBJECT, BUSINESS)
    await add_call(store, "old", BUSINESS, SUBJECT, started_at=NOW - 40 * DAY_S)
    exported = await export_subject(
        store, RING, INDEX, SUBJECT, auditor=auditor, actor="grace", clock=Ticking(NOW, 0.25)
    )
    await RetentionSweeper(store, RetentionPeriods(), auditor, clock=clock).sweep_once()
    await record_audit_verification(store, await verify(store, KEY.verify_key), at=NOW)
    await store.add_rejection_counts([])  # an empty batch is fine

    settings = Settings(data_dir=tmp_path / "data")
    report = await build_report(settings, store, now=NOW + 60)
    evidence = report["evidence"]
    assert evidence["subject_requests"]["export"] == {
        "served": 1,
        "failed": 0,
        "timed": 1,
        "latency_p50_ms": 250.0,
        "latency_max_ms": 250.0,
    }
    assert evidence["subject_requests"]["erase"]["served"] == 0
    verification = evidence["audit_trail"]["last_verification"]
    assert verification["outcome"] == "success" and verification["events_since"] == 0
    assert evidence["audit_trail"]["events_appended"] == verification["last_seq"]
    assert evidence["retention"]["last_run"]["calls"] == 1
    assert evidence["retention"]["deleted_in_window"]["calls"] == 1
    assert evidence["access"] == {
        "active_users": {"admin": 0, "operator": 0, "auditor": 1, "dialer": 0},
        "usable_api_keys": {"admin": 0, "operator": 1, "auditor": 0, "dialer": 0},
    }
    assert evidence["key_ages"]["available"] is False
    enabled = {c["id"]: c["enabled"] for c in report["controls"]}
    assert enabled["gdpr-15"] and enabled["hipaa-164-312-c"] and enabled["gdpr-5-1-e"]
    assert not enabled["gdpr-32"]  # development keys, http public URL

    # Three hours later the sweeper has not run again: storage limitation is not enabled.
    later = await build_report(settings, store, now=NOW + 3 * 3600)
    assert not {c["id"]: c["enabled"] for c in later["controls"]}["gdpr-5-1-e"]
    # Without the auditor, nobody can serve a data-subject request.
    auditor_user = await store.get_user("grace")
    assert auditor_user is not None
    await store.update_user(dataclasses.replace(auditor_user, disabled=True))
    nobody = await build_report(settings, store, now=NOW + 60)
    off = {c["id"] for c in nobody["controls"] if not c["enabled"]} - {
        c["id"] for c in report["controls"] if not c["enabled"]
    }
    assert off == {"gdpr-15", "gdpr-17", "gdpr-20"}

    text = orjson.dumps(report).decode()
    for secret in (*SUBJECT_FORMS, BUSINESS, BUSINESS[2:], INDEX.of(SUBJECT), "grace", "linus"):
        assert secret not in text, secret
    assert exported["request_id"] not in text
