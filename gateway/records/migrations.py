"""Schema migrations: an ordered list, each with its SQL for SQLite and for PostgreSQL.

A store applies every migration newer than the highest version in its ``schema_version``
table, each in its own transaction together with the row that records it, when it opens.
Applying is idempotent (an applied version is never run again) and safe when several
processes start at once (SQLite: ``BEGIN IMMEDIATE`` and a re-check; PostgreSQL: an advisory
lock held while migrating). Migrations are append-only: never edit one that has shipped.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["MIGRATIONS", "Dialect", "Migration", "statements"]


class Dialect(enum.StrEnum):
    SQLITE = "sqlite"
    POSTGRES = "postgres"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


SCHEMA_VERSION_TABLE = {
    Dialect.SQLITE: "CREATE TABLE IF NOT EXISTS schema_version "
    "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)",
    Dialect.POSTGRES: "CREATE TABLE IF NOT EXISTS schema_version "
    "(version integer PRIMARY KEY, name text NOT NULL, applied_at double precision NOT NULL)",
}


def _both(template: str) -> tuple[str, str]:
    """One statement in both dialects: ``{real}``, ``{blob}``, ``{bool}``, ``{bigint}``."""
    sqlite = template.format(real="REAL", blob="BLOB", bool="INTEGER", bigint="INTEGER")
    postgres = template.format(
        real="double precision", blob="bytea", bool="boolean", bigint="bigint"
    )
    return sqlite, postgres


_V1_COMMON = [
    _both(
        """CREATE TABLE users (
            user_id TEXT PRIMARY KEY,
            username TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            disabled {bool} NOT NULL DEFAULT FALSE,
            created_at {real} NOT NULL,
            password_changed_at {real} NOT NULL
        )"""
    ),
    _both(
        """CREATE TABLE api_keys (
            key_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            role TEXT NOT NULL,
            key_hash TEXT NOT NULL,
            created_at {real} NOT NULL,
            expires_at {real},
            revoked_at {real},
            last_used_at {real}
        )"""
    ),
    _both(
        """CREATE TABLE calls (
            call_id TEXT PRIMARY KEY,
            carrier TEXT NOT NULL,
            carrier_call_id TEXT NOT NULL,
            started_at {real} NOT NULL,
            ended_at {real},
            outcome TEXT,
            failovers INTEGER NOT NULL DEFAULT 0,
            providers TEXT NOT NULL DEFAULT '[]',
            from_number {blob},
            to_number {blob},
            from_index TEXT,
            to_index TEXT,
            key_id TEXT,
            recording_path TEXT
        )"""
    ),
    _both("CREATE INDEX calls_started_at ON calls (started_at)"),
    _both("CREATE INDEX calls_from_index ON calls (from_index)"),
    _both("CREATE INDEX calls_to_index ON calls (to_index)"),
    _both("CREATE INDEX calls_key_id ON calls (key_id)"),
    _both(
        """CREATE TABLE audit_events (
            seq {bigint} PRIMARY KEY,
            at {real} NOT NULL,
            action TEXT NOT NULL,
            outcome TEXT NOT NULL,
            actor TEXT NOT NULL,
            role TEXT,
            entity_type TEXT,
            entity_id TEXT,
            ip_hash TEXT,
            user_agent TEXT,
            correlation_id TEXT,
            detail TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        )"""
    ),
    _both("CREATE INDEX audit_events_at ON audit_events (at)"),
    _both("CREATE INDEX audit_events_action ON audit_events (action)"),
    _both("CREATE INDEX audit_events_actor ON audit_events (actor)"),
    _both("CREATE INDEX audit_events_entity ON audit_events (entity_type, entity_id)"),
    # One row: the chain head (serialises appends) and the retention anchor.
    _both(
        """CREATE TABLE audit_chain (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            head_seq {bigint} NOT NULL,
            head_hash TEXT NOT NULL,
            anchor_seq {bigint} NOT NULL,
            anchor_hash TEXT NOT NULL
        )"""
    ),
    _both("INSERT INTO audit_chain VALUES (1, 0, '', 0, '')"),
    _both(
        """CREATE TABLE subject_requests (
            request_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            subject_index TEXT NOT NULL,
            requested_by TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at {real} NOT NULL,
            completed_at {real},
            items INTEGER NOT NULL DEFAULT 0
        )"""
    ),
    _both("CREATE INDEX subject_requests_index ON subject_requests (subject_index)"),
    _both("CREATE INDEX subject_requests_created ON subject_requests (created_at)"),
    _both(
        """CREATE TABLE login_failures (
            username TEXT NOT NULL,
            at {real} NOT NULL
        )"""
    ),
    _both("CREATE INDEX login_failures_user ON login_failures (username, at)"),
]

# Audit rows are never updated: the database itself refuses (retention only deletes).
_V1_SQLITE_ONLY = (
    """CREATE TRIGGER audit_events_append_only BEFORE UPDATE ON audit_events
       BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END""",
)
_V1_POSTGRES_ONLY = (
    """CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN RAISE EXCEPTION 'audit events are append-only'; END $$""",
    """CREATE TRIGGER audit_events_append_only BEFORE UPDATE ON audit_events
       FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()""",
)

# Compliance evidence: the last run of each recurring operation (audit verification,
# retention sweep), and webhook rejections counted per hour, carrier and layer (the metrics
# counters live only as long as a process). Neither holds personal data.
_V2_COMMON = [
    _both(
        """CREATE TABLE last_runs (
            operation TEXT PRIMARY KEY,
            at {real} NOT NULL,
            outcome TEXT NOT NULL,
            detail TEXT NOT NULL
        )"""
    ),
    _both(
        """CREATE TABLE webhook_rejections (
            hour {bigint} NOT NULL,
            carrier TEXT NOT NULL,
            layer TEXT NOT NULL,
            count {bigint} NOT NULL,
            PRIMARY KEY (hour, carrier, layer)
        )"""
    ),
]

# Records left without an end time (their process died mid-call) are found by started_at
# among the few open ones, not by scanning every call.
_V3_COMMON = [
    _both("CREATE INDEX calls_open ON calls (started_at) WHERE ended_at IS NULL"),
]

# Failed logins are counted per account and client network (``security.lockout``): the
# network, as the guard's salted hash; rows from before have '' (one unknown network).
_V4_COMMON = [
    _both("ALTER TABLE login_failures ADD COLUMN network TEXT NOT NULL DEFAULT ''"),
    _both("CREATE INDEX login_failures_network ON login_failures (username, network, at)"),
]

# Calls name the agent profile that served them, and where a transferred call went (the key
# of the profile's transfer table, never the number).
_V5_COMMON = [
    _both("ALTER TABLE calls ADD COLUMN agent TEXT"),
    _both("ALTER TABLE calls ADD COLUMN transfer_to TEXT"),
    # The call history pages newest first, by agent or not (``query_calls``).
    _both("CREATE INDEX calls_started ON calls (started_at, call_id)"),
    _both("CREATE INDEX calls_agent ON calls (agent, started_at, call_id)"),
]

# The call events outbox (``gateway.events``): one row per event, written with the call and
# kept until delivered (then until retention). ``body`` is the exact JSON every attempt sends
# (never a phone number); ``claim``/``claimed_until`` lease a row to one sender at a time.
_V6_COMMON = [
    _both(
        """CREATE TABLE event_outbox (
            event_id TEXT PRIMARY KEY,
            call_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            type TEXT NOT NULL,
            body TEXT NOT NULL,
            created_at {real} NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at {real} NOT NULL,
            give_up_at {real} NOT NULL,
            claim TEXT,
            claimed_until {real},
            delivered_at {real},
            last_error TEXT,
            UNIQUE (call_id, seq)
        )"""
    ),
    _both(
        "CREATE INDEX event_outbox_pending ON event_outbox (next_attempt_at) "
        "WHERE state = 'pending'"
    ),
    _both("CREATE INDEX event_outbox_state ON event_outbox (state, created_at)"),
    _both(
        "CREATE INDEX event_outbox_delivered ON event_outbox (delivered_at) "
        "WHERE state = 'delivered'"
    ),
]

# Transcripts: one row per turn, the text an AES-GCM ciphertext bound to the call id and the
# turn's seq (never clear text). ``at`` drives retention, ``key_id`` key rotation.
_V7_COMMON = [
    _both(
        """CREATE TABLE transcripts (
            call_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            role TEXT NOT NULL,
            at {real} NOT NULL,
            text {blob} NOT NULL,
            key_id TEXT NOT NULL,
            PRIMARY KEY (call_id, seq)
        )"""
    ),
    _both("CREATE INDEX transcripts_at ON transcripts (at)"),
    _both("CREATE INDEX transcripts_key_id ON transcripts (key_id)"),
]

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        name="initial schema",
        sqlite=tuple(s for s, _ in _V1_COMMON) + _V1_SQLITE_ONLY,
        postgres=tuple(p for _, p in _V1_COMMON) + _V1_POSTGRES_ONLY,
    ),
    Migration(
        version=2,
        name="compliance evidence",
        sqlite=tuple(s for s, _ in _V2_COMMON),
        postgres=tuple(p for _, p in _V2_COMMON),
    ),
    Migration(
        version=3,
        name="open call records",
        sqlite=tuple(s for s, _ in _V3_COMMON),
        postgres=tuple(p for _, p in _V3_COMMON),
    ),
    Migration(
        version=4,
        name="login failures per network",
        sqlite=tuple(s for s, _ in _V4_COMMON),
        postgres=tuple(p for _, p in _V4_COMMON),
    ),
    Migration(
        version=5,
        name="call agents and transfers",
        sqlite=tuple(s for s, _ in _V5_COMMON),
        postgres=tuple(p for _, p in _V5_COMMON),
    ),
    Migration(
        version=6,
        name="event outbox",
        sqlite=tuple(s for s, _ in _V6_COMMON),
        postgres=tuple(p for _, p in _V6_COMMON),
    ),
    Migration(
        version=7,
        name="transcripts",
        sqlite=tuple(s for s, _ in _V7_COMMON),
        postgres=tuple(p for _, p in _V7_COMMON),
    ),
)


def statements(migration: Migration, dialect: Dialect) -> tuple[str, ...]:
    """The migration's SQL for ``dialect``."""
    return migration.sqlite if dialect is Dialect.SQLITE else migration.postgres


def check_order(migrations: tuple[Migration, ...]) -> None:
    """Raise ``ValueError`` unless versions are 1, 2, 3, ... in order."""
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise ValueError(
                f"migration {migration.name!r} has version {migration.version}, expected {expected}"
            )
