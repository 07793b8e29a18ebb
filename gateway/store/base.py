"""The durable store's records and interface; backends (``sqlite.py``, ``postgres.py``) sit
beside this module and pass the same test suite.

Every method is a coroutine and bounded (a backend never blocks the event loop: SQLite runs in
a worker thread, PostgreSQL through an async driver). Personal data arrives already encrypted
(``bytes`` columns) with its blind index; the store never sees a key.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol


class Role(enum.StrEnum):
    ADMIN = "admin"  # everything
    OPERATOR = "operator"  # calls and providers
    AUDITOR = "auditor"  # audit trail and data-subject requests, read-only


@dataclass(frozen=True, slots=True)
class UserRecord:
    user_id: str
    username: str
    role: Role
    password_hash: str  # the KDF's self-describing string (algorithm, parameters, salt, hash)
    disabled: bool = False
    created_at: float = 0.0
    password_changed_at: float = 0.0


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    key_id: str  # the public, prefix-identifiable part of the key (shown in lists and logs)
    name: str
    role: Role
    key_hash: str  # hash of the secret part; the key itself is shown once, never stored
    created_at: float
    expires_at: float | None = None  # set when rotated: the grace period's end
    revoked_at: float | None = None
    last_used_at: float | None = None


@dataclass(frozen=True, slots=True)
class CallRecord:
    """A call's durable record. Numbers are AES-GCM ciphertexts (associated data binds them
    to this call id and column) with HMAC blind indexes for lookup; never clear text."""

    call_id: str
    carrier: str
    carrier_call_id: str
    started_at: float
    providers: tuple[str, ...] = ()
    ended_at: float | None = None
    outcome: str | None = None
    failovers: int = 0
    from_number: bytes | None = None
    to_number: bytes | None = None
    from_index: str | None = None
    to_index: str | None = None
    key_id: str | None = None  # data key the numbers are encrypted with
    recording_path: str | None = None

    @property
    def duration_s(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.started_at


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One link of the hash chain. ``seq``, ``prev_hash`` and ``hash`` are set by the store's
    append (which serialises appends); everything else by the caller."""

    action: str  # e.g. "auth.login", "dsr.export", "call.failover", "webhook.rejected"
    outcome: str  # "success" | "failure" | "denied"
    actor: str = "system"
    role: str | None = None
    entity_type: str | None = None
    entity_id: str | None = None
    ip_hash: str | None = None
    user_agent: str | None = None
    correlation_id: str | None = None
    detail: dict[str, str | int | float | bool | None] = field(default_factory=dict)
    at: float = 0.0
    seq: int = 0
    prev_hash: str = ""
    hash: str = ""


@dataclass(frozen=True, slots=True)
class AuditQuery:
    action: str | None = None
    actor: str | None = None
    entity_type: str | None = None
    entity_id: str | None = None
    since: float | None = None
    until: float | None = None
    after_seq: int = 0  # pagination cursor
    limit: int = 100


@dataclass(frozen=True, slots=True)
class SubjectRequest:
    """A data-subject request (export or erasure), recorded with its status."""

    request_id: str
    kind: str  # "export" | "erase"
    subject_index: str  # blind index of the subject's number (never the number)
    requested_by: str
    status: str  # "pending" | "done" | "failed"
    created_at: float
    completed_at: float | None = None


class Store(Protocol):
    """Durable records. ``open`` applies pending schema migrations; ``close`` is idempotent."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> bool: ...

    # users
    async def add_user(self, user: UserRecord) -> None: ...  # raises KeyError if name taken
    async def get_user(self, username: str) -> UserRecord | None: ...
    async def list_users(self) -> list[UserRecord]: ...
    async def update_user(self, user: UserRecord) -> None: ...
    async def add_login_failure(self, username: str, at: float) -> None: ...
    async def count_login_failures(self, username: str, since: float) -> int: ...
    async def clear_login_failures(self, username: str) -> None: ...

    # service API keys
    async def add_api_key(self, key: ApiKeyRecord) -> None: ...
    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None: ...
    async def list_api_keys(self) -> list[ApiKeyRecord]: ...
    async def update_api_key(self, key: ApiKeyRecord) -> None: ...

    # calls
    async def put_call(self, call: CallRecord) -> None: ...  # insert or replace by call_id
    async def get_call(self, call_id: str) -> CallRecord | None: ...
    async def list_calls(
        self, *, limit: int = 100, before: float | None = None
    ) -> list[CallRecord]: ...
    async def find_calls(self, number_index: str) -> list[CallRecord]: ...  # from or to
    async def delete_calls_before(self, cutoff: float, limit: int) -> list[CallRecord]: ...
    async def calls_with_key(self, key_id: str, limit: int) -> list[CallRecord]: ...

    # audit trail (append-only)
    async def append_audit(self, event: AuditEvent, chain: AuditChainer) -> AuditEvent: ...
    async def query_audit(self, query: AuditQuery) -> list[AuditEvent]: ...
    async def iter_audit(self, after_seq: int, limit: int) -> list[AuditEvent]: ...
    async def delete_audit_before(self, cutoff: float, limit: int) -> int: ...

    # data-subject requests
    async def put_subject_request(self, request: SubjectRequest) -> None: ...
    async def list_subject_requests(self, limit: int = 100) -> list[SubjectRequest]: ...


class AuditChainer(Protocol):
    """Computes an event's hash from its predecessor (``security.audit``); the store calls it
    inside the transaction that appends, so the chain has no forks."""

    def link(self, event: AuditEvent, prev: AuditEvent | None) -> AuditEvent: ...
