"""The durable store's records and interface; backends (``sqlite.py``, ``postgres.py``) sit
beside this module and pass the same test suite.

Every method is a coroutine and bounded (a backend never blocks the event loop: SQLite runs in
a worker thread, PostgreSQL through an async driver). Personal data arrives already encrypted
(``bytes`` columns) with its blind index; the store never sees a key.

The audit records (``AuditEvent``, ``ChainHead``, ``AuditChainer``) are defined in
``security.audit`` and re-exported here.

Errors::

    StoreError               root: everything a backend raises on purpose
    ├── StoreUnavailable     the database did not answer in time or failed
    ├── DuplicateError       a unique name or id is taken (also a KeyError)
    └── NotFoundError        the record to update does not exist (also a KeyError)
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from security.audit import AuditChainer, AuditEvent, ChainHead, DetailValue
from security.lockout import FailureCounts

__all__ = [
    "MAX_PAGE",
    "ApiKeyRecord",
    "AuditChainer",
    "AuditEvent",
    "AuditQuery",
    "CallRecord",
    "ChainHead",
    "DuplicateError",
    "EventState",
    "LastRun",
    "NotFoundError",
    "OutboxEvent",
    "RejectionCount",
    "Role",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "SubjectRequest",
    "TranscriptTurn",
    "TurnRole",
    "UserRecord",
]


class StoreError(Exception):
    """Root of the errors a store raises on purpose."""


class StoreUnavailable(StoreError):
    """The database did not answer in time or failed."""


class DuplicateError(StoreError, KeyError):
    """A unique name or id is already taken."""


class NotFoundError(StoreError, KeyError):
    """The record to update does not exist."""


class Role(enum.StrEnum):
    ADMIN = "admin"  # everything
    OPERATOR = "operator"  # calls and providers
    AUDITOR = "auditor"  # audit trail and data-subject requests, read-only
    DIALER = "dialer"  # places outbound calls (a service's API key), nothing else


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
    agent: str | None = None  # the agent profile that served the call
    transfer_to: str | None = None  # the transfer destination's key, for a transferred call

    @property
    def duration_s(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.started_at


class TurnRole(enum.StrEnum):
    CALLER = "caller"
    AGENT = "agent"


@dataclass(frozen=True, slots=True)
class TranscriptTurn:
    """One turn of a call's transcript as stored. ``text`` is an AES-GCM ciphertext whose
    associated data binds it to this call id and ``seq`` (``privacy.seal_turn``); never clear
    text. ``seq`` counts the call's turns from 1; ``key_id`` names the data key."""

    call_id: str
    seq: int
    role: TurnRole
    at: float
    text: bytes = field(repr=False)
    key_id: str


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters (all optional, combined with AND) and a page. Oldest first by default, from
    ``after_seq``; with ``newest_first``, newest first from below ``before_seq``."""

    action: str | None = None  # exact, or a prefix ending in "." ("auth." matches "auth.login")
    actor: str | None = None
    outcome: str | None = None
    entity_type: str | None = None
    entity_id: str | None = None
    since: float | None = None
    until: float | None = None  # exclusive
    after_seq: int = 0  # pagination cursor, oldest first
    before_seq: int | None = None  # pagination cursor, newest first
    newest_first: bool = False
    limit: int = 100  # at most MAX_PAGE


@dataclass(frozen=True, slots=True)
class CallQuery:
    """Filters of call records (all optional, combined with AND) and a page, newest first.
    ``ended``: True only ended calls, False only open ones. ``before`` is the cursor: the
    (started_at, call_id) of the last record of the previous page."""

    agent: str | None = None
    carrier: str | None = None
    outcome: str | None = None
    ended: bool | None = None
    since: float | None = None  # started at or after
    until: float | None = None  # started before (exclusive)
    before: tuple[float, str] | None = None
    limit: int = 100  # at most MAX_PAGE


MAX_PAGE = 1000
"""The largest page a listing or query returns, whatever limit is asked for."""


@dataclass(frozen=True, slots=True)
class SubjectRequest:
    """A data-subject request (export or erasure), recorded with its status.

    ``subject_index`` is the blind index of the subject's number (never the number); an
    erasure clears it from every request about that subject, so what remains does not
    re-identify the person. ``items`` counts the records the request concerned."""

    request_id: str
    kind: str  # "export" | "erase"
    subject_index: str
    requested_by: str
    status: str  # "pending" | "done" | "failed"
    created_at: float
    completed_at: float | None = None
    items: int = 0


@dataclass(frozen=True, slots=True)
class LastRun:
    """The latest run of a recurring operation (``"audit.verify"``, ``"retention.sweep"``),
    kept as evidence that it runs: when, how it ended, and counts (never personal data)."""

    operation: str
    at: float
    outcome: str  # "success" | "failure"
    detail: dict[str, DetailValue]


@dataclass(frozen=True, slots=True)
class RejectionCount:
    """Webhook requests one security layer refused (or, for ``replay``, answered without
    processing) for one carrier within one clock hour (``hour`` = unix seconds // 3600)."""

    hour: int
    carrier: str
    layer: str
    count: int


class EventState(enum.StrEnum):
    PENDING = "pending"  # waiting for its (next) attempt
    DELIVERED = "delivered"  # the endpoint answered 2xx
    DEAD = "dead"  # failed for good (24 h of retries, or 410 Gone); ``requeue_*`` revives it


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One call event in the outbox (``gateway.events``). ``body`` is the JSON every attempt
    sends, unchanged (it never holds a phone number); ``seq`` numbers a call's events from 1
    (0 until stored). ``claim``/``claimed_until``: the sender holding the lease, and its end."""

    event_id: str
    call_id: str
    type: str
    body: str
    created_at: float
    next_attempt_at: float
    give_up_at: float
    seq: int = 0
    state: EventState = EventState.PENDING
    attempts: int = 0
    claim: str | None = None
    claimed_until: float | None = None
    delivered_at: float | None = None
    last_error: str | None = None  # a short reason: "HTTP503", "ConnectError"


class Store(Protocol):
    """Durable records. ``open`` applies pending schema migrations; ``close`` is idempotent.

    Every method raises ``StoreUnavailable`` when the database fails or times out.
    """

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> bool: ...  # never raises

    # users
    async def add_user(self, user: UserRecord) -> None: ...  # DuplicateError: id or name taken
    async def get_user(self, username: str) -> UserRecord | None: ...
    async def get_user_by_id(self, user_id: str) -> UserRecord | None: ...
    async def list_users(self) -> list[UserRecord]: ...
    async def update_user(self, user: UserRecord) -> None: ...  # NotFoundError: no such id
    async def delete_user(self, user_id: str) -> bool: ...
    async def add_login_failure(self, username: str, at: float, network: str = "") -> None: ...
    async def count_login_failures(self, username: str, since: float) -> int: ...  # all networks
    async def login_failure_counts(
        self, username: str, network: str, since: float, cap: int
    ) -> FailureCounts:
        """Failures of ``username`` since ``since``: from ``network``, from every network
        (each counting at most ``cap``), and the latest one's time."""
        ...

    async def clear_login_failures(self, username: str, network: str | None = None) -> int:
        """Remove the failures of ``username`` from ``network`` (None: every network);
        return how many."""
        ...

    async def delete_login_failures_before(self, cutoff: float) -> int: ...  # how many

    # service API keys
    async def add_api_key(self, key: ApiKeyRecord) -> None: ...  # DuplicateError
    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None: ...
    async def list_api_keys(self) -> list[ApiKeyRecord]: ...
    async def update_api_key(self, key: ApiKeyRecord) -> None: ...  # NotFoundError
    async def touch_api_key(self, key_id: str, at: float) -> None: ...  # sets last_used_at

    # calls
    async def put_call(self, call: CallRecord) -> None: ...  # insert or replace by call_id
    async def get_call(self, call_id: str) -> CallRecord | None: ...
    async def list_calls(
        self, *, limit: int = 100, before: float | None = None
    ) -> list[CallRecord]: ...  # newest first; ``before``: started_at cursor (exclusive)
    async def query_calls(self, query: CallQuery) -> list[CallRecord]: ...  # newest first
    async def find_calls(self, number_index: str) -> list[CallRecord]: ...  # from or to
    async def erase_call_numbers(self, number_index: str) -> list[CallRecord]:
        """Remove the number (ciphertext and index) on each side that matches, and the
        recording path, from every matching call, atomically; return the records as they
        were before (so their recordings can be deleted)."""
        ...

    async def delete_calls_before(self, cutoff: float, limit: int) -> list[CallRecord]: ...
    async def open_calls(
        self, started_before: float, limit: int, *, after: float | None = None
    ) -> list[CallRecord]:
        """Records without an end time that started before ``started_before`` (and after
        ``after``: the page cursor), oldest first."""
        ...

    async def calls_with_key(self, key_id: str, limit: int) -> list[CallRecord]: ...
    async def count_calls_by_key(self) -> dict[str, int]: ...  # key id -> calls using it
    async def reencrypt_call(
        self,
        call_id: str,
        old_key_id: str,
        from_number: bytes | None,
        to_number: bytes | None,
        key_id: str,
    ) -> bool:
        """Replace the call's ciphertexts if it still uses ``old_key_id``; say whether it did."""
        ...

    # transcripts (encrypted turns, one row each)
    async def add_turn(self, turn: TranscriptTurn) -> None: ...  # DuplicateError: seq taken
    async def get_transcript(self, call_id: str) -> list[TranscriptTurn]: ...  # by seq
    async def last_turn_seq(self, call_id: str) -> int: ...  # 0 when the call has none
    async def delete_transcripts(self, call_ids: Sequence[str]) -> int:
        """Remove every turn of these calls; return how many."""
        ...

    async def delete_turns_before(self, cutoff: float, limit: int) -> int:
        """Remove up to ``limit`` of the oldest turns with ``at < cutoff``; return how many."""
        ...

    async def turns_with_key(self, key_id: str, limit: int) -> list[TranscriptTurn]: ...
    async def count_turns_by_key(self) -> dict[str, int]: ...  # key id -> turns using it
    async def reencrypt_turn(
        self, call_id: str, seq: int, old_key_id: str, text: bytes, key_id: str
    ) -> bool:
        """Replace the turn's ciphertext if it still uses ``old_key_id``; say whether it did."""
        ...

    # audit trail (append-only)
    async def append_audit(self, event: AuditEvent, chain: AuditChainer) -> AuditEvent: ...
    async def query_audit(self, query: AuditQuery) -> list[AuditEvent]: ...
    async def iter_audit(self, after_seq: int, limit: int) -> list[AuditEvent]: ...
    async def audit_head(self) -> ChainHead | None: ...  # the last event ever appended
    async def audit_anchor(self) -> ChainHead | None: ...  # the last event retention removed
    async def delete_audit_before(self, cutoff: float, limit: int) -> int:
        """Remove up to ``limit`` of the oldest events with ``at < cutoff``, as a prefix of
        the chain (never a gap), and move the anchor to the last one removed."""
        ...

    # data-subject requests
    async def put_subject_request(self, request: SubjectRequest) -> None: ...  # insert/replace
    async def get_subject_request(self, request_id: str) -> SubjectRequest | None: ...
    async def list_subject_requests(self, limit: int = 100) -> list[SubjectRequest]: ...
    async def find_subject_requests(self, subject_index: str) -> list[SubjectRequest]: ...
    async def forget_subject_index(self, subject_index: str) -> int: ...  # clear it; count

    # compliance evidence
    async def put_last_run(self, run: LastRun) -> None: ...  # replaces the operation's last run
    async def get_last_run(self, operation: str) -> LastRun | None: ...
    async def add_rejection_counts(self, counts: list[RejectionCount]) -> None:
        """Add each count to its (hour, carrier, layer) bucket, atomically."""
        ...

    async def rejection_counts(self, since_hour: int) -> list[RejectionCount]: ...
    async def delete_rejection_counts_before(self, hour: int) -> int: ...

    # call events outbox (gateway.events)
    async def add_event(self, event: OutboxEvent) -> int:
        """Store ``event`` numbered after its call's last event; return that ``seq``
        (``DuplicateError``: the id is taken, or another writer took the number: try again)."""
        ...

    async def claim_events(
        self, now: float, claim: str, claimed_until: float, limit: int
    ) -> list[OutboxEvent]:
        """Lease up to ``limit`` due events to ``claim`` until ``claimed_until``: pending, due
        by ``now``, not leased (or the lease ended), and each the oldest pending event of its
        call. Concurrent claims never get the same event; oldest due first."""
        ...

    async def next_event_due(self) -> float | None:
        """When the next claimable event is due (its lease's end if later); None: none."""
        ...

    async def event_delivered(self, event_id: str, at: float) -> bool:
        """Mark a pending event delivered (whoever holds the lease); say whether it was."""
        ...

    async def event_failed(
        self, event_id: str, claim: str, *, error: str, next_attempt_at: float | None
    ) -> bool:
        """Count a failed attempt of an event ``claim`` still holds and end the lease: pending
        again from ``next_attempt_at``, or dead when None. False: the lease was lost."""
        ...

    async def release_event(self, event_id: str, claim: str) -> bool:
        """End ``claim``'s lease without counting an attempt (nothing was sent)."""
        ...

    async def get_event(self, event_id: str) -> OutboxEvent | None: ...
    async def list_events(
        self, *, state: EventState | None = None, limit: int = 100
    ) -> list[OutboxEvent]: ...  # newest first
    async def count_events(self, state: EventState) -> int: ...
    async def requeue_event(self, event_id: str, now: float, give_up_at: float) -> bool:
        """Put a dead event back to pending, due ``now``, retried until ``give_up_at``."""
        ...

    async def requeue_dead_events(self, now: float, give_up_at: float) -> int: ...  # how many
    async def delete_delivered_events_before(self, cutoff: float, limit: int) -> int:
        """Remove up to ``limit`` events delivered before ``cutoff``; return how many."""
        ...

    async def purge_residue(self) -> None:
        """Push deleted data out of places queries do not see (SQLite: checkpoint and
        truncate the WAL, with secure_delete zeroing freed pages; PostgreSQL: VACUUM)."""
        ...
