"""The hash chain, signed checkpoints, verification and the Auditor, over an in-memory log.

The same behaviour on the real backends (and tampering through SQL) is in
tests/records/test_audit_store.py.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest
from nacl.signing import SigningKey

from metrics.logging import correlation_id
from security.audit import (
    CHECKPOINT_ACTION,
    GENESIS_HASH,
    AuditChainer,
    AuditEvent,
    Auditor,
    ChainHead,
    HashChainer,
    event_hash,
    key_fingerprint,
    verify,
)
from security.redaction import hash_ip
from tests.conftest import FakeClock

IP_KEY = b"k" * 32


class MemoryLog:
    """An in-memory audit store with the same append semantics as the real ones."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self.head: ChainHead | None = None
        self.anchor: ChainHead | None = None
        self.fail = False

    async def append_audit(self, event: AuditEvent, chain: AuditChainer) -> AuditEvent:
        if self.fail:
            raise OSError("disk full")
        linked = chain.link(event, self.head)
        self.events.append(linked)
        self.head = ChainHead(linked.seq, linked.hash)
        return linked

    async def iter_audit(self, after_seq: int, limit: int) -> list[AuditEvent]:
        return [e for e in self.events if e.seq > after_seq][:limit]

    async def audit_head(self) -> ChainHead | None:
        return self.head

    async def audit_anchor(self) -> ChainHead | None:
        return self.anchor


def event(i: int = 0, **kw: object) -> AuditEvent:
    return AuditEvent(action="test.event", outcome="success", at=1.0 + i, detail={"i": i}, **kw)  # type: ignore[arg-type]


async def filled(n: int, chain: HashChainer | None = None) -> MemoryLog:
    log = MemoryLog()
    chain = chain or HashChainer()
    for i in range(n):
        await log.append_audit(event(i), chain)
    return log


def test_link_sets_seq_prev_and_hash() -> None:
    chain = HashChainer()
    first = chain.link(event(0), None)
    assert (first.seq, first.prev_hash) == (1, GENESIS_HASH)
    assert first.hash == event_hash(first) and len(first.hash) == 64
    second = chain.link(event(1), ChainHead(first.seq, first.hash))
    assert (second.seq, second.prev_hash) == (2, first.hash)


def test_hash_covers_every_field() -> None:
    base = HashChainer().link(event(0, actor="alice", ip_hash="h", user_agent="ua"), None)
    changes = {
        "action": "x",
        "outcome": "failure",
        "actor": "bob",
        "role": "admin",
        "entity_type": "call",
        "entity_id": "c1",
        "ip_hash": "h2",
        "user_agent": "ua2",
        "correlation_id": "cid",
        "detail": {"i": 1},
        "at": 2.0,
        "seq": 2,
        "prev_hash": "f" * 64,
    }
    for name, value in changes.items():
        assert event_hash(dataclasses.replace(base, **{name: value})) != base.hash, name  # type: ignore[arg-type]


async def test_verify_intact_and_empty() -> None:
    assert (await verify(MemoryLog())).ok
    result = await verify(await filled(5))
    assert result.ok and (result.events, result.first_seq, result.last_seq) == (5, 1, 5)


@pytest.mark.parametrize("field", ["action", "actor", "detail", "at", "prev_hash", "hash"])
async def test_verify_reports_the_changed_event(field: str) -> None:
    log = await filled(6)
    target = log.events[3]
    value = {
        "action": "test.evenT",
        "actor": "systen",
        "detail": {"i": 4},
        "at": target.at + 1e-9,
        "prev_hash": "1" + target.prev_hash[1:],
        "hash": "1" + target.hash[1:],
    }[field]
    log.events[3] = dataclasses.replace(target, **{field: value})  # type: ignore[arg-type]
    result = await verify(log)
    assert not result.ok and result.first_bad_seq == 4, result


async def test_verify_detects_removed_and_truncated_events() -> None:
    log = await filled(6)
    del log.events[2]
    assert (await verify(log)).first_bad_seq == 3
    log = await filled(6)
    del log.events[-2:]
    result = await verify(log)
    assert not result.ok and result.first_bad_seq == 5


class GrowingLog(MemoryLog):
    """A log that another writer appends to while ``verify`` reads it (a live deployment):
    one event after each read of ``reading`` until ``pending`` runs out."""

    def __init__(self, reading: str, pending: int) -> None:
        super().__init__()
        self.reading = reading
        self.pending = pending

    async def _another_writer(self, read: str) -> None:
        if read == self.reading and self.pending:
            self.pending -= 1
            await self.append_audit(event(100 + self.pending), HashChainer())

    async def iter_audit(self, after_seq: int, limit: int) -> list[AuditEvent]:
        batch = await super().iter_audit(after_seq, limit)
        await self._another_writer("iter_audit")
        return batch

    async def audit_head(self) -> ChainHead | None:
        await self._another_writer("audit_head")
        return await super().audit_head()


@pytest.mark.parametrize("reading", ["iter_audit", "audit_head"])
async def test_verify_passes_while_another_writer_appends(reading: str) -> None:
    log = GrowingLog(reading, pending=0)
    for i in range(5):
        await log.append_audit(event(i), HashChainer())
    log.pending = 3
    result = await verify(log)
    assert result.ok, result
    assert (result.events, log.pending) == (8, 0)


async def test_checkpoints_are_signed_and_checked() -> None:
    key = SigningKey(b"s" * 32)
    chain = HashChainer(key, key_id="jwt-2026")
    log = await filled(3, chain)
    checkpoint = await log.append_audit(
        AuditEvent(action=CHECKPOINT_ACTION, outcome="success"), chain
    )
    assert checkpoint.detail["head_seq"] == 3
    assert checkpoint.detail["head_hash"] == log.events[2].hash
    assert checkpoint.detail["kid"] == "jwt-2026"
    result = await verify(log, key.verify_key)
    assert result.ok and (result.checkpoints, result.signatures_verified) == (1, 1)
    other = SigningKey(b"o" * 32).verify_key
    assert (await verify(log, [other, key.verify_key])).ok  # rotated keys
    bad = await verify(log, other)
    assert (bad.ok, bad.first_bad_seq, bad.reason) == (False, 4, "checkpoint signature is invalid")
    assert (
        key_fingerprint(key.verify_key)
        == HashChainer(key)
        .link(AuditEvent(action=CHECKPOINT_ACTION, outcome="success"), None)
        .detail["kid"]
    )


async def test_an_attacker_who_rewrites_the_chain_cannot_forge_checkpoints() -> None:
    key = SigningKey(b"s" * 32)
    log = await filled(2, HashChainer(key))
    await log.append_audit(
        AuditEvent(action=CHECKPOINT_ACTION, outcome="success"), HashChainer(key)
    )
    # Rewrite event 1 and recompute every hash after it with the attacker's own chainer.
    forged = MemoryLog()
    mallory = HashChainer(SigningKey(b"m" * 32))
    for original in log.events:
        changed = dataclasses.replace(original, actor="mallory") if original.seq == 1 else original
        await forged.append_audit(
            dataclasses.replace(changed, seq=0, prev_hash="", hash=""), mallory
        )
    assert (await verify(forged)).ok  # without the key, only consistency is provable
    result = await verify(forged, key.verify_key)
    assert not result.ok and result.first_bad_seq == 3
    unsigned = await filled(3)
    await unsigned.append_audit(
        AuditEvent(action=CHECKPOINT_ACTION, outcome="success"), HashChainer()
    )
    assert (await verify(unsigned, key.verify_key)).reason == "checkpoint is not signed"


async def test_checkpoint_gap_limit() -> None:
    log = await filled(5)
    assert (await verify(log, max_checkpoint_gap=5)).ok
    result = await verify(log, max_checkpoint_gap=4)
    assert (result.first_bad_seq, result.reason) == (5, "checkpoint missing")


# -- Auditor -----------------------------------------------------------------------------------


async def test_record_hashes_ip_and_adds_correlation_id(clock: FakeClock) -> None:
    log = MemoryLog()
    auditor = Auditor(log, HashChainer(), ip_hash_key=IP_KEY, clock=clock)
    token = correlation_id.set("req-123")
    try:
        await auditor.record(
            "auth.login",
            "success",
            actor="alice",
            role="admin",
            entity_type="user",
            entity_id="u1",
            ip="203.0.113.7",
            user_agent="Mozilla/5.0 call me +14155550123",
            detail={"method": "password", "note": "from +14155550123", "obj": object, "n": 3},
        )
    finally:
        correlation_id.reset(token)
    [stored] = log.events
    assert stored.ip_hash == hash_ip("203.0.113.7", IP_KEY)
    assert "203.0.113.7" not in repr(stored)
    assert stored.correlation_id == "req-123"
    assert stored.at == clock.now
    assert "4155550123" not in repr(stored)  # personal data masked in free text
    assert stored.detail["method"] == "password" and stored.detail["n"] == 3
    assert isinstance(stored.detail["obj"], str)


async def test_record_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    log = MemoryLog()
    log.fail = True
    auditor = Auditor(log, HashChainer(), ip_hash_key=IP_KEY)
    with caplog.at_level(logging.ERROR, logger="security.audit"):
        await auditor.record("auth.login", "success")
        await auditor.checkpoint()
    assert auditor.failures == 2
    assert "audit event could not be written" in caplog.text


async def test_periodic_checkpoints() -> None:
    key = SigningKey(b"s" * 32)
    log = MemoryLog()
    auditor = Auditor(log, HashChainer(key), ip_hash_key=IP_KEY, checkpoint_every=3)
    for _ in range(7):
        await auditor.record("test.event", "success")
    # A checkpoint follows every event whose sequence number is a multiple of 3 (the
    # checkpoints count too, so every replica agrees where they go).
    actions = [e.action for e in log.events]
    assert [i + 1 for i, a in enumerate(actions) if a == CHECKPOINT_ACTION] == [4, 7, 10]
    result = await verify(log, key.verify_key, max_checkpoint_gap=3)
    assert result.ok and result.signatures_verified == 3


async def test_webhook_rejections_are_aggregated_under_a_flood(clock: FakeClock) -> None:
    log = MemoryLog()
    auditor = Auditor(
        log, HashChainer(), ip_hash_key=IP_KEY, flood_limit=3, flood_window_s=60, clock=clock
    )
    for _ in range(100):
        await auditor.record("webhook.rejected", "denied", detail={"layer": "signature"})
    for _ in range(5):
        await auditor.record("webhook.rejected", "denied", detail={"layer": "allowlist"})
    assert len(log.events) == 6  # 3 per layer
    assert auditor.suppressed == 99
    clock.advance(61)
    await auditor.record("webhook.rejected", "denied", detail={"layer": "signature"})
    summary = log.events[6]
    assert summary.detail["aggregated"] is True
    assert (summary.detail["layer"], summary.detail["suppressed"]) == ("signature", 97)
    assert log.events[7].detail == {"layer": "signature"}  # the new window's first event
    await auditor.flush()
    assert log.events[-1].detail["layer"] == "allowlist"
    assert log.events[-1].detail["suppressed"] == 2
    assert (await verify(log)).ok


def test_auditor_validates_its_settings() -> None:
    with pytest.raises(ValueError):
        Auditor(MemoryLog(), HashChainer(), ip_hash_key=b"")
    with pytest.raises(ValueError):
        Auditor(MemoryLog(), HashChainer(), ip_hash_key=IP_KEY, checkpoint_every=0)
