"""The Store contract, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import stat
from pathlib import Path

import pytest

from gateway.records import create_store
from gateway.records.base import (
    ApiKeyRecord,
    AuditEvent,
    AuditQuery,
    CallRecord,
    DuplicateError,
    NotFoundError,
    Role,
    StoreError,
    StoreUnavailable,
    SubjectRequest,
    UserRecord,
)
from gateway.records.migrations import MIGRATIONS, Migration
from gateway.records.postgres import PostgresStore
from gateway.records.sql import SqlStore
from gateway.records.sqlite import SqliteStore
from security.audit import HashChainer, verify
from tests.conftest import UNIT
from tests.records.backends import DATABASE_URL, Backend, open_backend

NOW = 1_700_000_000.0


def user(name: str = "alice", **kw: object) -> UserRecord:
    fields: dict[str, object] = {
        "user_id": f"u-{name}",
        "username": name,
        "role": Role.OPERATOR,
        "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
        "created_at": NOW,
        "password_changed_at": NOW,
    }
    fields.update(kw)
    return UserRecord(**fields)  # type: ignore[arg-type]


def call(call_id: str = "c1", started_at: float = NOW, **kw: object) -> CallRecord:
    fields: dict[str, object] = {
        "call_id": call_id,
        "carrier": "twilio",
        "carrier_call_id": f"CA{call_id}",
        "started_at": started_at,
    }
    fields.update(kw)
    return CallRecord(**fields)  # type: ignore[arg-type]


# -- users -------------------------------------------------------------------------------------


async def test_users_crud(store: SqlStore) -> None:
    assert await store.get_user("alice") is None
    alice = user("alice", disabled=True, role=Role.ADMIN)
    await store.add_user(alice)
    await store.add_user(user("bob"))
    assert await store.get_user("alice") == alice
    assert await store.get_user_by_id("u-bob") == user("bob")
    assert [u.username for u in await store.list_users()] == ["alice", "bob"]

    with pytest.raises(DuplicateError):
        await store.add_user(user("alice", user_id="other"))
    with pytest.raises(KeyError):  # DuplicateError is a KeyError too
        await store.add_user(user("carol", user_id="u-alice"))

    changed = dataclasses.replace(alice, disabled=False, password_hash="new", role=Role.AUDITOR)
    await store.update_user(changed)
    assert await store.get_user("alice") == changed
    with pytest.raises(NotFoundError):
        await store.update_user(user("nobody"))
    assert await store.delete_user("u-bob")
    assert not await store.delete_user("u-bob")
    assert await store.get_user("bob") is None


async def test_login_failures(store: SqlStore) -> None:
    for offset in (0, 10, 20):
        await store.add_login_failure("alice", NOW + offset)
    await store.add_login_failure("bob", NOW)
    assert await store.count_login_failures("alice", NOW + 5) == 2
    assert await store.count_login_failures("alice", NOW) == 3
    await store.clear_login_failures("alice")
    assert await store.count_login_failures("alice", 0) == 0
    assert await store.count_login_failures("bob", 0) == 1


# -- API keys ----------------------------------------------------------------------------------


async def test_api_keys_crud(store: SqlStore) -> None:
    key = ApiKeyRecord(
        key_id="vgw_abc", name="billing", role=Role.AUDITOR, key_hash="h1", created_at=NOW
    )
    await store.add_api_key(key)
    await store.add_api_key(dataclasses.replace(key, key_id="vgw_def", created_at=NOW + 1))
    assert await store.get_api_key("vgw_abc") == key
    assert await store.get_api_key("missing") is None
    with pytest.raises(DuplicateError):
        await store.add_api_key(key)
    rotated = dataclasses.replace(key, expires_at=NOW + 3600, revoked_at=NOW + 7200)
    await store.update_api_key(rotated)
    await store.touch_api_key("vgw_abc", NOW + 5)
    assert await store.get_api_key("vgw_abc") == dataclasses.replace(rotated, last_used_at=NOW + 5)
    assert [k.key_id for k in await store.list_api_keys()] == ["vgw_abc", "vgw_def"]
    with pytest.raises(NotFoundError):
        await store.update_api_key(dataclasses.replace(key, key_id="missing"))


# -- calls -------------------------------------------------------------------------------------


async def test_calls_crud_and_listing(store: SqlStore) -> None:
    first = call(
        "c1",
        providers=("openai", "gemini"),
        ended_at=NOW + 42.5,
        outcome="completed",
        failovers=1,
        from_number=b"\x01\x00binary\xff",
        from_index="idx-a",
        key_id="k1",
        recording_path="rec/c1",
    )
    await store.put_call(first)
    assert await store.get_call("c1") == first
    assert first.duration_s == 42.5
    await store.put_call(dataclasses.replace(first, outcome="failed"))  # replace by id
    assert (await store.get_call("c1")).outcome == "failed"  # type: ignore[union-attr]
    for i in range(2, 6):
        await store.put_call(call(f"c{i}", NOW + i))
    assert [c.call_id for c in await store.list_calls(limit=3)] == ["c5", "c4", "c3"]
    assert [c.call_id for c in await store.list_calls(limit=3, before=NOW + 3)] == ["c2", "c1"]
    assert await store.get_call("nope") is None


async def test_find_and_erase_numbers(store: SqlStore) -> None:
    await store.put_call(
        call(
            "c1",
            from_number=b"A",
            from_index="S",
            to_number=b"B",
            to_index="T",
            key_id="k1",
            recording_path="r1",
        )
    )
    await store.put_call(
        call(
            "c2",
            NOW + 1,
            from_number=b"C",
            from_index="T",
            to_number=b"D",
            to_index="S",
            key_id="k1",
        )
    )
    await store.put_call(call("c3", NOW + 2, from_number=b"E", from_index="T", key_id="k1"))
    assert [c.call_id for c in await store.find_calls("S")] == ["c1", "c2"]

    before = await store.erase_call_numbers("S")
    assert [c.call_id for c in before] == ["c1", "c2"]
    assert before[0].recording_path == "r1"
    assert await store.find_calls("S") == []
    c1, c2 = await store.get_call("c1"), await store.get_call("c2")
    assert c1 is not None and c2 is not None
    # Only the subject's side goes; the other party's stays (with its key id).
    assert (c1.from_number, c1.from_index, c1.to_number, c1.to_index) == (None, None, b"B", "T")
    assert (c2.from_number, c2.from_index, c2.to_number, c2.to_index) == (b"C", "T", None, None)
    assert c1.recording_path is None and c1.key_id == "k1"
    assert [c.call_id for c in await store.find_calls("T")] == ["c1", "c2", "c3"]
    await store.erase_call_numbers("T")
    assert all(c.key_id is None for c in await store.list_calls())


async def test_delete_calls_before(store: SqlStore) -> None:
    for i in range(7):
        await store.put_call(call(f"c{i}", NOW + i))
    first = await store.delete_calls_before(NOW + 5, limit=3)
    assert [c.call_id for c in first] == ["c0", "c1", "c2"]
    second = await store.delete_calls_before(NOW + 5, limit=3)
    assert [c.call_id for c in second] == ["c3", "c4"]
    assert [c.call_id for c in await store.list_calls()] == ["c6", "c5"]


async def test_open_calls_are_found_oldest_first_page_by_page(store: SqlStore) -> None:
    for i in range(6):
        await store.put_call(call(f"c{i}", NOW + i))
    await store.put_call(call("done", NOW + 2.5, ended_at=NOW + 3, outcome="carrier_hangup"))
    first = await store.open_calls(NOW + 5, 3)
    assert [c.call_id for c in first] == ["c0", "c1", "c2"]
    second = await store.open_calls(NOW + 5, 3, after=first[-1].started_at)
    assert [c.call_id for c in second] == ["c3", "c4"]  # not "done", not c5 (too recent)
    await store.put_call(dataclasses.replace(first[0], ended_at=NOW + 9, outcome="replica_lost"))
    assert [c.call_id for c in await store.open_calls(NOW + 5, 10)] == ["c1", "c2", "c3", "c4"]


async def test_key_bookkeeping(store: SqlStore) -> None:
    await store.put_call(call("c1", key_id="k1", from_number=b"x"))
    await store.put_call(call("c2", key_id="k1", from_number=b"y"))
    await store.put_call(call("c3", key_id="k2", from_number=b"z"))
    await store.put_call(call("c4"))
    assert await store.count_calls_by_key() == {"k1": 2, "k2": 1}
    assert [c.call_id for c in await store.calls_with_key("k1", 10)] == ["c1", "c2"]
    assert await store.reencrypt_call("c1", "k1", b"new", None, "k2")
    assert not await store.reencrypt_call("c1", "k1", b"newer", None, "k2")  # compare-and-set
    assert (await store.get_call("c1")).from_number == b"new"  # type: ignore[union-attr]
    assert await store.count_calls_by_key() == {"k1": 1, "k2": 2}


# -- data-subject requests ---------------------------------------------------------------------


async def test_subject_requests(store: SqlStore) -> None:
    req = SubjectRequest("r1", "export", "idx", "alice", "pending", NOW)
    await store.put_subject_request(req)
    done = dataclasses.replace(req, status="done", completed_at=NOW + 1, items=3)
    await store.put_subject_request(done)
    await store.put_subject_request(SubjectRequest("r2", "erase", "other", "bob", "done", NOW + 2))
    assert await store.get_subject_request("r1") == done
    assert [r.request_id for r in await store.list_subject_requests()] == ["r2", "r1"]
    assert await store.find_subject_requests("idx") == [done]
    assert await store.forget_subject_index("idx") == 1
    assert await store.find_subject_requests("idx") == []
    assert (await store.get_subject_request("r1")).subject_index == ""  # type: ignore[union-attr]


# -- audit -------------------------------------------------------------------------------------


async def test_audit_append_and_query(store: SqlStore) -> None:
    chain = HashChainer()
    assert await store.audit_head() is None
    actions = ["auth.login", "auth.logout", "dsr.export", "auth.login", "call.failover"]
    for i, action in enumerate(actions):
        stored = await store.append_audit(
            AuditEvent(
                action=action,
                outcome="success" if i % 2 == 0 else "failure",
                actor="alice" if i < 3 else "bob",
                entity_type="call" if action == "call.failover" else None,
                entity_id="c1" if action == "call.failover" else None,
                detail={"n": i, "f": 0.1 * i, "ok": True, "none": None, "s": "text"},
                at=NOW + i,
            ),
            chain,
        )
        assert stored.seq == i + 1
    head = await store.audit_head()
    assert head is not None and head.seq == 5
    events = await store.iter_audit(0, 100)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events[0].prev_hash == "0" * 64
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(events))
    assert events[2].detail == {"n": 2, "f": 0.2, "ok": True, "none": None, "s": "text"}

    async def seqs(**kw: object) -> list[int]:
        return [e.seq for e in await store.query_audit(AuditQuery(**kw))]  # type: ignore[arg-type]

    assert await seqs(action="auth.login") == [1, 4]
    assert await seqs(action="auth.") == [1, 2, 4]
    assert await seqs(actor="bob") == [4, 5]
    assert await seqs(outcome="failure") == [2, 4]
    assert await seqs(entity_type="call", entity_id="c1") == [5]
    assert await seqs(since=NOW + 1, until=NOW + 3) == [2, 3]
    assert await seqs(after_seq=2, limit=2) == [3, 4]
    assert await seqs(newest_first=True, limit=2) == [5, 4]
    assert await seqs(newest_first=True, before_seq=4, limit=2) == [3, 2]
    result = await verify(store)
    assert result.ok and result.events == 5


async def test_audit_rows_are_append_only(store: SqlStore, backend: Backend) -> None:
    await store.append_audit(AuditEvent(action="a", outcome="success", at=NOW), HashChainer())
    with pytest.raises(Exception, match="append-only"):
        await backend.raw("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1")


async def test_concurrent_appends_form_one_chain(store: SqlStore, backend: Backend) -> None:
    # Two stores on one database: two replicas (PostgreSQL) or two processes (SQLite).
    other = backend.make()
    await other.open()
    try:
        chain = HashChainer()
        stores = [store, other]
        await asyncio.gather(
            *(
                stores[i % 2].append_audit(
                    AuditEvent(
                        action="test.concurrent", outcome="success", at=NOW, detail={"i": i}
                    ),
                    chain,
                )
                for i in range(50)
            )
        )
    finally:
        await other.close()
    events = await store.iter_audit(0, 1000)
    assert [e.seq for e in events] == list(range(1, 51))
    assert sorted(e.detail["i"] for e in events) == list(range(50))  # type: ignore[type-var]
    result = await verify(store)
    assert result.ok and result.events == 50


async def test_audit_retention_keeps_a_verifiable_chain(store: SqlStore) -> None:
    chain = HashChainer()
    for i in range(10):
        await store.append_audit(AuditEvent(action="a", outcome="success", at=NOW + i), chain)
    assert await store.delete_audit_before(NOW + 4, limit=3) == 3
    assert await store.delete_audit_before(NOW + 4, limit=3) == 1
    assert await store.delete_audit_before(NOW + 4, limit=3) == 0
    anchor = await store.audit_anchor()
    assert anchor is not None and anchor.seq == 4
    result = await verify(store)
    assert result.ok and (result.first_seq, result.last_seq) == (5, 10)
    # Appends continue the chain after a prune.
    await store.append_audit(AuditEvent(action="a", outcome="success", at=NOW + 99), chain)
    assert (await verify(store)).ok


# -- lifecycle and migrations ------------------------------------------------------------------


async def test_migrations_are_idempotent(store: SqlStore, backend: Backend) -> None:
    await store.add_user(user("alice"))
    await store.open()  # already open: nothing happens
    again = backend.make()
    await again.open()  # a second start applies nothing twice and keeps the data
    try:
        assert await again.schema_version() == len(MIGRATIONS)
        assert await again.get_user("alice") == user("alice")
        rows = await backend.raw("SELECT version FROM schema_version ORDER BY version")
        assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]
    finally:
        await again.close()


async def test_new_migration_applies_on_next_start(store: SqlStore, backend: Backend) -> None:
    extra = Migration(
        version=len(MIGRATIONS) + 1,
        name="test column",
        sqlite=("ALTER TABLE users ADD COLUMN note TEXT",),
        postgres=("ALTER TABLE users ADD COLUMN note text",),
    )
    upgraded = backend.make((*MIGRATIONS, extra))
    await upgraded.open()
    try:
        assert await upgraded.schema_version() == extra.version
        await backend.raw("UPDATE users SET note = 'x' WHERE 1 = 0")  # the column exists
    finally:
        await upgraded.close()
    with pytest.raises(ValueError, match="expected"):
        backend.make((extra,))


async def test_concurrent_starts_migrate_once(backend: Backend, store: SqlStore) -> None:
    fresh = Backend(backend.kind, backend.path.parent.parent / "fresh")
    stores = [fresh.make() for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        rows = await fresh.raw("SELECT version FROM schema_version")
        assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]
    finally:
        for s in stores:
            await s.close()
        await fresh.cleanup()


async def test_close_is_idempotent_and_ping(store: SqlStore, backend: Backend) -> None:
    assert await store.ping()
    await store.close()
    await store.close()
    assert not await store.ping()
    with pytest.raises(StoreError):
        await store.get_user("alice")


# -- SQLite specifics --------------------------------------------------------------------------


def modes(db: Path) -> dict[str, int]:
    found = {"dir": stat.S_IMODE(db.parent.stat().st_mode)}
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{db}{suffix}")
        if path.exists():
            found[suffix] = stat.S_IMODE(path.stat().st_mode)
    return found


async def test_sqlite_file_modes_and_wal(tmp_path: Path) -> None:
    async with open_backend("sqlite", tmp_path) as (backend, store):
        await store.add_user(user("alice"))
        assert modes(backend.path) == {"dir": 0o700, "": 0o600, "-wal": 0o600, "-shm": 0o600}
        assert (await backend.raw("PRAGMA journal_mode"))[0][0] == "wal"


async def test_sqlite_tightens_an_existing_directory(tmp_path: Path) -> None:
    directory = tmp_path / "loose"
    directory.mkdir(mode=0o755)
    store = SqliteStore(directory / "db.sqlite3")
    await store.open()
    await store.close()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


async def test_sqlite_work_runs_off_the_event_loop(tmp_path: Path) -> None:
    import threading

    store = SqliteStore(tmp_path / "db.sqlite3")
    await store.open()
    try:
        seen: list[str] = []
        original = store._run

        async def spy(fn):  # type: ignore[no-untyped-def]
            def traced(conn):  # type: ignore[no-untyped-def]
                seen.append(threading.current_thread().name)
                return fn(conn)

            return await original(traced)

        store._run = spy  # type: ignore[method-assign]
        await store.add_user(user("alice"))
        assert seen and all(name.startswith("voicegw-sqlite") for name in seen)
    finally:
        await store.close()


async def test_cancelled_transactions_leave_the_store_usable(store: SqlStore) -> None:
    # Cancel an audit append (a multi-statement transaction) at every point it can stop.
    chain = HashChainer()
    for ticks in range(12):
        task = asyncio.create_task(
            store.append_audit(AuditEvent(action="a", outcome="success", at=NOW), chain)
        )
        for _ in range(ticks):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await store.add_user(user("bob"))
    assert await store.get_user("bob") is not None
    stored = await store.append_audit(AuditEvent(action="b", outcome="success", at=NOW), chain)
    events = await store.iter_audit(0, 100)
    assert events[-1] == stored and [e.seq for e in events] == list(range(1, stored.seq + 1))
    assert (await verify(store)).ok


async def test_sqlite_leaves_shared_directories_alone(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    store = SqliteStore(shared / "db.sqlite3")
    await store.open()
    await store.close()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert stat.S_IMODE((shared / "db.sqlite3").stat().st_mode) == 0o600


async def test_sqlite_tightens_an_existing_loose_file(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    path.touch(mode=0o644)
    store = SqliteStore(path)
    await store.open()
    await store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_create_store_picks_the_backend(tmp_path: Path) -> None:
    sqlite_store = create_store(data_dir=tmp_path)
    assert isinstance(sqlite_store, SqliteStore)
    assert sqlite_store.path == tmp_path / "voicegw.sqlite3"
    pg_store = create_store(data_dir=tmp_path, database_url=DATABASE_URL, schema="vg_x")
    assert isinstance(pg_store, PostgresStore) and pg_store.schema == "vg_x"
    assert "postgres@" not in repr(pg_store)  # the DSN (and any password) never shows


async def test_postgres_that_does_not_answer_is_unavailable() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/test", timeout_s=0.5 * UNIT)
    with pytest.raises(StoreUnavailable):
        await store.open()
    assert not await store.ping()
    with pytest.raises(ValueError):
        PostgresStore(DATABASE_URL, "Bad-Schema; DROP")
