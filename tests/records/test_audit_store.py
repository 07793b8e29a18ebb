"""The audit trail on the real backends: an Auditor's events verify, and changing one byte of
any column of any stored row (through SQL, as someone with database access could) makes
verification fail at exactly that row."""

from __future__ import annotations

import struct

import pytest
from nacl.signing import SigningKey

from gateway.records.sql import SqlStore
from metrics.logging import correlation_id
from security.audit import Auditor, HashChainer, verify
from tests.records.backends import Backend

COLUMNS = (
    "seq",
    "at",
    "action",
    "outcome",
    "actor",
    "role",
    "entity_type",
    "entity_id",
    "ip_hash",
    "user_agent",
    "correlation_id",
    "detail",
    "prev_hash",
    "hash",
)
SIGNING_KEY = SigningKey(b"a" * 32)


async def fill(store: SqlStore, n: int = 6) -> None:
    auditor = Auditor(store, HashChainer(SIGNING_KEY), ip_hash_key=b"i" * 32, checkpoint_every=4)
    token = correlation_id.set("corr-1")
    try:
        for i in range(n):
            await auditor.record(
                "auth.login",
                "success",
                actor=f"user{i}",
                role="admin",
                entity_type="user",
                entity_id=f"u{i}",
                ip="198.51.100.9",
                user_agent="curl/8.5",
                detail={"attempt": i, "method": "password", "ratio": 0.25},
            )
    finally:
        correlation_id.reset(token)


def one_byte_changed(value: object) -> object:
    if value is None:  # an empty column of a checkpoint row gains a byte
        return "x"
    if isinstance(value, float):
        packed = bytearray(struct.pack("<d", value))
        packed[0] ^= 0x01
        return struct.unpack("<d", bytes(packed))[0]
    if isinstance(value, int):
        return value + 30
    assert isinstance(value, str) and value, value
    middle = len(value) // 2
    return value[:middle] + chr(ord(value[middle]) ^ 0x01) + value[middle + 1 :]


async def allow_updates(backend: Backend) -> None:
    """What an attacker with the database owner's rights does first."""
    if backend.kind == "sqlite":
        await backend.raw("DROP TRIGGER audit_events_append_only")
    else:
        await backend.raw("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")


async def test_auditor_events_verify_with_checkpoints(store: SqlStore) -> None:
    await fill(store, 9)
    result = await verify(store, SIGNING_KEY.verify_key, max_checkpoint_gap=4)
    assert result.ok, result
    assert result.checkpoints == 2 and result.signatures_verified == 2
    assert result.events == 11


@pytest.mark.parametrize("seq", [1, 3, 5, 7])
@pytest.mark.parametrize("column", COLUMNS)
async def test_one_changed_byte_fails_at_that_row(
    store: SqlStore, backend: Backend, column: str, seq: int
) -> None:
    await fill(store)  # 6 events and a checkpoint (seq 5)
    assert (await verify(store, SIGNING_KEY.verify_key)).ok
    await allow_updates(backend)
    [(value,)] = await backend.raw(f"SELECT {column} FROM audit_events WHERE seq = ?", (seq,))
    changed = one_byte_changed(value)
    await backend.raw(f"UPDATE audit_events SET {column} = ? WHERE seq = ?", (changed, seq))
    result = await verify(store, SIGNING_KEY.verify_key)
    assert not result.ok
    assert result.first_bad_seq == seq, result


async def test_deleting_the_newest_rows_is_detected(store: SqlStore, backend: Backend) -> None:
    await fill(store)
    await backend.raw("DELETE FROM audit_events WHERE seq >= 6")
    result = await verify(store)
    assert (result.ok, result.first_bad_seq) == (False, 6)


async def test_deleting_the_oldest_rows_outside_retention_is_detected(
    store: SqlStore, backend: Backend
) -> None:
    await fill(store)
    await backend.raw("DELETE FROM audit_events WHERE seq <= 2")
    result = await verify(store)
    assert (result.ok, result.first_bad_seq) == (False, 1)


async def test_text_a_store_cannot_hold_is_recorded_not_lost(store: SqlStore):
    """NUL (PostgreSQL refuses it), a lone surrogate (not UTF-8) and other control characters
    in any text an event carries: the event is written, with ``?`` in their place, and the
    chain verifies."""
    auditor = Auditor(store, HashChainer(SIGNING_KEY), ip_hash_key=b"i" * 32)
    hostile = "a\x00b\ud800c\x1bd"
    await auditor.record(
        "webhook.rejected",
        "denied",
        actor=hostile,
        entity_type="webhook",
        entity_id=hostile,
        user_agent=hostile,
        detail={hostile: hostile, "layer": "request"},
    )
    [event] = await store.iter_audit(0, 10)
    assert event.actor == event.entity_id == event.user_agent == "a?b?c?d"
    assert event.detail == {"a?b?c?d": "a?b?c?d", "layer": "request"}
    assert (await verify(store)).ok
