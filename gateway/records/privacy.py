"""Personal data in call records: sealing numbers, data-subject rights and retention.

``seal_numbers`` turns a call's phone numbers into what a ``CallRecord`` stores (AES-GCM
ciphertexts bound to the call and column, and blind indexes); ``open_numbers`` reverses it.
``seal_turn`` / ``open_turn`` do the same for a transcript turn (bound to the call id and the
turn's seq), and ``rotate_transcripts`` re-encrypts turns under the active key.

``export_subject`` returns everything held about one phone number as JSON-ready data
(portability), transcripts included; ``erase_subject`` removes it: the subject's numbers and
indexes leave every call record, the calls' recordings and transcripts are deleted, and the
blind index is cleared from earlier requests, so nothing left re-identifies the person. Both
are recorded as a ``SubjectRequest`` and in the audit trail (by request id, never by number
or index).

``RetentionSweeper`` deletes call records (with their recordings and transcripts), transcript
turns and audit events older than their retention periods, in batches, and audits what it
removed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

from gateway.records.base import (
    AuditQuery,
    CallRecord,
    LastRun,
    Store,
    SubjectRequest,
    TranscriptTurn,
    TurnRole,
)
from metrics.registry import RETENTION_DELETED
from security.audit import Auditor, DetailValue
from security.crypto import (
    CALL_FROM_COLUMN,
    CALL_TO_COLUMN,
    BlindIndex,
    KeyRing,
    UnknownKeyError,
    normalize_e164,
)
from security.redaction import mask_phone

__all__ = [
    "DAY_S",
    "RETENTION_RUN",
    "TRANSCRIPT_COLUMN",
    "DeleteRecording",
    "Erasure",
    "RetentionPeriods",
    "RetentionSweeper",
    "SealedNumbers",
    "SweepResult",
    "erase_subject",
    "export_subject",
    "open_numbers",
    "open_turn",
    "rotate_transcripts",
    "seal_numbers",
    "seal_turn",
]

logger = logging.getLogger(__name__)

DAY_S: Final = 86_400.0
RETENTION_RUN: Final = "retention.sweep"
"""The ``LastRun`` operation name of a retention pass."""
EXPORT_FORMAT: Final = "voicegw.subject-export.v1"
TRANSCRIPT_COLUMN: Final = "transcripts.text"
"""The column name bound into transcript ciphertexts (with ``call_id:seq`` as record id)."""

DeleteRecording = Callable[[str], Awaitable[None]]
"""Securely deletes one recording by its stored path; a missing file is not an error."""


# -- sealing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SealedNumbers:
    """The number fields of a ``CallRecord``; ``dataclasses.replace(call, **sealed.fields())``."""

    from_number: bytes | None = None
    to_number: bytes | None = None
    from_index: str | None = None
    to_index: str | None = None
    key_id: str | None = None

    def fields(self) -> dict[str, Any]:
        return {
            "from_number": self.from_number,
            "to_number": self.to_number,
            "from_index": self.from_index,
            "to_index": self.to_index,
            "key_id": self.key_id,
        }


def seal_numbers(
    keyring: KeyRing,
    index: BlindIndex,
    *,
    call_id: str,
    from_number: str | None,
    to_number: str | None,
    default_region: str = "US",
) -> SealedNumbers:
    """Encrypt and index a call's numbers (E.164). A value that is not a phone number
    (``anonymous``, ``client:alice``, a SIP URI) is not kept at all."""
    sealed: dict[str, Any] = {}
    for side, raw, column in (
        ("from", from_number, CALL_FROM_COLUMN),
        ("to", to_number, CALL_TO_COLUMN),
    ):
        if raw is None:
            continue
        try:
            e164 = normalize_e164(raw, default_region)
        except ValueError:
            continue
        sealed[f"{side}_number"] = keyring.encrypt_field(e164, record_id=call_id, column=column)
        sealed[f"{side}_index"] = index.of(e164)
        sealed["key_id"] = keyring.active_key_id
    return SealedNumbers(**sealed)


def open_numbers(keyring: KeyRing, call: CallRecord) -> tuple[str | None, str | None]:
    """The call's numbers in clear (E.164). Raises ``DecryptionError``."""
    from_number = to_number = None
    if call.from_number is not None:
        from_number = keyring.decrypt_field(
            call.from_number, record_id=call.call_id, column=CALL_FROM_COLUMN
        )
    if call.to_number is not None:
        to_number = keyring.decrypt_field(
            call.to_number, record_id=call.call_id, column=CALL_TO_COLUMN
        )
    return from_number, to_number


def _turn_record_id(call_id: str, seq: int) -> str:
    # seq is an integer, so the last ":" separates it: no two (call, seq) pairs share an id.
    return f"{call_id}:{seq}"


def seal_turn(
    keyring: KeyRing, *, call_id: str, seq: int, role: TurnRole, text: str, at: float
) -> TranscriptTurn:
    """A transcript turn as the store keeps it: ``text`` encrypted with the active key, bound
    to ``call_id`` and ``seq``. Text that is not valid Unicode (lone surrogates) is kept with
    those characters replaced."""
    clean = text.encode("utf-8", "replace").decode("utf-8")
    return TranscriptTurn(
        call_id=call_id,
        seq=seq,
        role=role,
        at=at,
        text=keyring.encrypt_field(
            clean, record_id=_turn_record_id(call_id, seq), column=TRANSCRIPT_COLUMN
        ),
        key_id=keyring.active_key_id,
    )


def open_turn(keyring: KeyRing, turn: TranscriptTurn) -> str:
    """The turn's text in clear. Raises ``DecryptionError`` (also for a ciphertext moved to
    another call or seq)."""
    return keyring.decrypt_field(
        turn.text, record_id=_turn_record_id(turn.call_id, turn.seq), column=TRANSCRIPT_COLUMN
    )


async def rotate_transcripts(store: Store, keyring: KeyRing, batch: int = 500) -> int:
    """Re-encrypt every transcript turn not under the active key; return how many changed.

    Like ``security.crypto.rotate_data`` for call records: batches of ``batch``, each turn
    replaced only if it still has the key it was read with. Raises ``UnknownKeyError`` when
    turns use a key the ring does not hold. Afterwards ``store.count_turns_by_key()`` names
    only the active key.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    active = keyring.active_key_id
    in_use = await store.count_turns_by_key()
    missing = sorted(k for k in in_use if k not in keyring)
    if missing:
        raise UnknownKeyError(f"transcripts use keys not in the key ring: {', '.join(missing)}")
    total = 0
    for key_id in sorted(k for k in in_use if k != active):
        while True:
            turns = await store.turns_with_key(key_id, batch)
            if not turns:
                break
            changed = 0
            for turn in turns:
                text = keyring.reencrypt_field(
                    turn.text,
                    record_id=_turn_record_id(turn.call_id, turn.seq),
                    column=TRANSCRIPT_COLUMN,
                )
                if await store.reencrypt_turn(turn.call_id, turn.seq, key_id, text, active):
                    changed += 1
            total += changed
            if not changed:  # another writer keeps using the old key; stop rather than spin
                break
    return total


# -- data-subject rights ---------------------------------------------------------------------


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat()


def _new_request(kind: str, subject_index: str, actor: str, now: float) -> SubjectRequest:
    return SubjectRequest(
        request_id=str(uuid.uuid4()),
        kind=kind,
        subject_index=subject_index,
        requested_by=actor,
        status="pending",
        created_at=now,
    )


async def export_subject(
    store: Store,
    keyring: KeyRing,
    index: BlindIndex,
    number: str,
    *,
    auditor: Auditor,
    actor: str = "system",
    role: str | None = None,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Everything held about ``number``, decrypted, as JSON-ready data.

    Per call: identifiers, times, outcome, providers, which side the subject was on, the
    subject's number in clear and the other party's number masked (it is someone else's
    data), and the call's transcript (every turn, decrypted, in order). Also the earlier
    data-subject requests about this number and the audit events that concern those calls.
    Raises ``ValueError`` if ``number`` is not a phone number and ``DecryptionError`` if a
    record does not decrypt (the request is then recorded failed).
    """
    e164 = index.normalize(number)
    subject_index = index.of(e164)
    request = _new_request("export", subject_index, actor, clock())
    await store.put_subject_request(request)
    try:
        calls = await store.find_calls(subject_index)
        exported_calls = []
        for call in calls:
            from_number, to_number = open_numbers(keyring, call)
            as_caller = call.from_index == subject_index
            counterpart = to_number if as_caller else from_number
            events = await store.query_audit(
                AuditQuery(entity_type="call", entity_id=call.call_id, limit=1000)
            )
            transcript = [
                {
                    "seq": turn.seq,
                    "role": str(turn.role),
                    "at": _iso(turn.at),
                    "text": open_turn(keyring, turn),
                }
                for turn in await store.get_transcript(call.call_id)
            ]
            exported_calls.append(
                {
                    "call_id": call.call_id,
                    "carrier": call.carrier,
                    "carrier_call_id": call.carrier_call_id,
                    "subject_role": "caller" if as_caller else "callee",
                    "subject_number": from_number if as_caller else to_number,
                    "counterpart_number": None if counterpart is None else mask_phone(counterpart),
                    "started_at": _iso(call.started_at),
                    "ended_at": _iso(call.ended_at),
                    "duration_s": call.duration_s,
                    "outcome": call.outcome,
                    "providers": list(call.providers),
                    "failovers": call.failovers,
                    "recording": call.recording_path is not None,
                    "events": [
                        {"at": _iso(e.at), "action": e.action, "outcome": e.outcome} for e in events
                    ],
                    "transcript": transcript,
                }
            )
        earlier = [
            {
                "request_id": r.request_id,
                "kind": r.kind,
                "status": r.status,
                "created_at": _iso(r.created_at),
                "completed_at": _iso(r.completed_at),
            }
            for r in await store.find_subject_requests(subject_index)
            if r.request_id != request.request_id
        ]
    except BaseException:
        await _finish(store, auditor, request, "failed", 0, actor, role, clock)
        raise
    await _finish(store, auditor, request, "done", len(calls), actor, role, clock)
    return {
        "format": EXPORT_FORMAT,
        "request_id": request.request_id,
        "generated_at": _iso(clock()),
        "subject": {"number": e164},
        "calls": exported_calls,
        "subject_requests": earlier,
    }


@dataclass(frozen=True, slots=True)
class Erasure:
    request_id: str
    calls: int
    recordings: int
    transcript_turns: int = 0


async def erase_subject(
    store: Store,
    index: BlindIndex,
    number: str,
    *,
    auditor: Auditor,
    delete_recording: DeleteRecording | None = None,
    actor: str = "system",
    role: str | None = None,
    clock: Callable[[], float] = time.time,
) -> Erasure:
    """Erase ``number`` from every record; return the request id (the requester's receipt)
    and how many call records were anonymised, recordings deleted and transcript turns
    deleted.

    Recordings of those calls are deleted first (so a failure leaves them referenced and the
    request can be repeated), then the subject's numbers and indexes leave the calls in one
    transaction, the calls' transcripts are deleted, the index is cleared from earlier
    requests, and deleted data is pushed out of the database files. Raises ``ValueError`` if
    ``number`` is not a phone number, and whatever ``delete_recording`` or the store raises
    (the request is then recorded failed).
    """
    subject_index = index.of(number)
    request = _new_request("erase", subject_index, actor, clock())
    await store.put_subject_request(request)
    deleted: set[str] = set()
    erased: list[CallRecord] = []
    turns = 0
    try:
        found = await store.find_calls(subject_index)
        for call in found:
            await _delete_recording(call, delete_recording, deleted)
        erased = await store.erase_call_numbers(subject_index)
        for call in erased:  # recordings that appeared meanwhile
            await _delete_recording(call, delete_recording, deleted)
        call_ids = list(dict.fromkeys(c.call_id for c in (*found, *erased)))
        turns = await store.delete_transcripts(call_ids)
        await store.forget_subject_index(subject_index)
        await store.purge_residue()
    except BaseException:
        await _finish(
            store,
            auditor,
            replace(request, subject_index=""),
            "failed",
            len(erased),
            actor,
            role,
            clock,
            detail={"recordings": len(deleted), "transcript_turns": turns},
        )
        raise
    await _finish(
        store,
        auditor,
        replace(request, subject_index=""),
        "done",
        len(erased),
        actor,
        role,
        clock,
        detail={"recordings": len(deleted), "transcript_turns": turns},
    )
    return Erasure(
        request_id=request.request_id,
        calls=len(erased),
        recordings=len(deleted),
        transcript_turns=turns,
    )


async def _delete_recording(
    call: CallRecord, delete_recording: DeleteRecording | None, deleted: set[str]
) -> None:
    path = call.recording_path
    if path is None or path in deleted:
        return
    if delete_recording is None:
        raise RuntimeError("a call has a recording but no recording deleter was configured")
    await delete_recording(path)
    deleted.add(path)


async def _finish(
    store: Store,
    auditor: Auditor,
    request: SubjectRequest,
    status: str,
    items: int,
    actor: str,
    role: str | None,
    clock: Callable[[], float],
    *,
    detail: dict[str, Any] | None = None,
) -> None:
    completed = clock()
    done = replace(request, status=status, items=items, completed_at=completed)
    # How long the person waited, as evidence that requests are served promptly.
    duration_ms = round(max(0.0, completed - request.created_at) * 1000, 1)
    try:
        await store.put_subject_request(done)
    finally:
        await auditor.record(
            f"dsr.{request.kind}",
            "success" if status == "done" else "failure",
            actor=actor,
            role=role,
            entity_type="subject_request",
            entity_id=request.request_id,
            detail={"records": items, "duration_ms": duration_ms, **(detail or {})},
        )


# -- retention -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetentionPeriods:
    """How long each kind of record is kept, in seconds (recordings and transcripts go with
    their call, and transcript turns also after ``transcripts_s``)."""

    calls_s: float = 30 * DAY_S
    audit_s: float = 7 * 365 * DAY_S
    # Failed-login rows only matter within the lockout window; they may hold whatever a
    # person typed as a name (an e-mail address, a password by mistake).
    login_failures_s: float = 900.0
    transcripts_s: float = 30 * DAY_S

    def __post_init__(self) -> None:
        periods = (self.calls_s, self.audit_s, self.login_failures_s, self.transcripts_s)
        if not all(period > 0 for period in periods):
            raise ValueError("retention periods must be positive")


@dataclass(frozen=True, slots=True)
class SweepResult:
    calls: int = 0
    recordings: int = 0
    audit_events: int = 0
    login_failures: int = 0
    transcript_turns: int = 0


class RetentionSweeper:
    """Deletes what has outlived its retention period, ``batch`` records per transaction.

    ``sweep_once`` runs one pass and returns what it removed (and adds it to ``totals``);
    ``run`` repeats it every ``interval_s`` until cancelled. A recording that cannot be
    deleted is logged and counted in ``recording_failures``; its call record is already gone,
    so the recordings module's own sweep of orphaned files must catch it.
    """

    __slots__ = (
        "_auditor",
        "_batch",
        "_clock",
        "_delete_recording",
        "_periods",
        "_store",
        "failures",
        "recording_failures",
        "totals",
    )

    def __init__(
        self,
        store: Store,
        periods: RetentionPeriods,
        auditor: Auditor,
        batch: int = 500,
        *,
        delete_recording: DeleteRecording | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self._store = store
        self._periods = periods
        self._auditor = auditor
        self._batch = batch
        self._delete_recording = delete_recording
        self._clock = clock
        self.totals = SweepResult()
        self.failures = 0
        self.recording_failures = 0

    async def sweep_once(self) -> SweepResult:
        now = self._clock()
        calls = recordings = turns = 0
        while True:
            removed = await self._store.delete_calls_before(
                now - self._periods.calls_s, self._batch
            )
            calls += len(removed)
            for call in removed:
                recordings += await self._remove_recording(call)
            # A transcript never outlives its call record.
            turns += await self._store.delete_transcripts([c.call_id for c in removed])
            if len(removed) < self._batch:
                break
            await asyncio.sleep(0)  # let calls and requests run between batches
        while True:
            count = await self._store.delete_turns_before(
                now - self._periods.transcripts_s, self._batch
            )
            turns += count
            if count < self._batch:
                break
            await asyncio.sleep(0)
        audit_events = 0
        while True:
            count = await self._store.delete_audit_before(now - self._periods.audit_s, self._batch)
            audit_events += count
            if count < self._batch:
                break
            await asyncio.sleep(0)
        login_failures = await self._store.delete_login_failures_before(
            now - self._periods.login_failures_s
        )
        result = SweepResult(calls, recordings, audit_events, login_failures, turns)
        RETENTION_DELETED.labels("calls").inc(calls)
        RETENTION_DELETED.labels("transcript_turns").inc(turns)
        RETENTION_DELETED.labels("recordings").inc(recordings)
        RETENTION_DELETED.labels("audit_events").inc(audit_events)
        RETENTION_DELETED.labels("login_failures").inc(login_failures)
        self.totals = SweepResult(
            calls=self.totals.calls + calls,
            recordings=self.totals.recordings + recordings,
            audit_events=self.totals.audit_events + audit_events,
            login_failures=self.totals.login_failures + login_failures,
            transcript_turns=self.totals.transcript_turns + turns,
        )
        if calls or audit_events or turns:
            await self._store.purge_residue()
            await self._auditor.record(
                "retention.sweep",
                "success",
                detail={
                    "calls": calls,
                    "recordings": recordings,
                    "audit_events": audit_events,
                    "transcript_turns": turns,
                    "calls_before": now - self._periods.calls_s,
                    "audit_before": now - self._periods.audit_s,
                    "transcripts_before": now - self._periods.transcripts_s,
                },
            )
        await self._record_run(
            "success",
            {
                "calls": calls,
                "recordings": recordings,
                "audit_events": audit_events,
                "login_failures": login_failures,
                "transcript_turns": turns,
                "duration_ms": round(max(0.0, self._clock() - now) * 1000, 1),
            },
        )
        return result

    async def _record_run(self, outcome: str, detail: dict[str, DetailValue]) -> None:
        """Keep this pass as the sweeper's last run (compliance evidence); never raises."""
        try:
            await self._store.put_last_run(LastRun(RETENTION_RUN, self._clock(), outcome, detail))
        except Exception as exc:
            logger.warning("retention run not recorded", extra={"error": type(exc).__name__})

    async def _remove_recording(self, call: CallRecord) -> int:
        if call.recording_path is None:
            return 0
        if self._delete_recording is None:
            self.recording_failures += 1
            logger.error("call record had a recording but no recording deleter is configured")
            return 0
        try:
            await self._delete_recording(call.recording_path)
        except Exception:
            self.recording_failures += 1
            logger.exception("retention could not delete a recording")
            return 0
        return 1

    async def run(self, interval_s: float) -> None:
        """Sweep now and then every ``interval_s`` seconds until cancelled; never raises
        otherwise (a failed pass is logged, counted in ``failures`` and retried next time)."""
        if not interval_s > 0:
            raise ValueError("interval_s must be positive")
        while True:
            try:
                await self.sweep_once()
            except Exception as exc:
                self.failures += 1
                logger.exception("retention sweep failed")
                await self._record_run("failure", {"error": type(exc).__name__})
            await asyncio.sleep(interval_s)
