"""The audit trail: append-only events in a hash chain, with signed checkpoints.

Each event carries the hash of its predecessor, so changing, removing or reordering any stored
event breaks the chain at that event. The hash is SHA-256 over a canonical JSON form of every
field but the hash itself (the previous hash included). ``HashChainer.link`` computes it; a
store calls it inside the transaction that appends, so concurrent appends never fork the chain.

Every ``checkpoint_every`` events the ``Auditor`` appends an ``audit.checkpoint`` event whose
detail carries an Ed25519 signature over the hash of the event before it. A database writer
can recompute hashes, but not signatures: with the verify key, ``verify`` proves everything up
to the last checkpoint. Retention removes the oldest events as a prefix only; the store keeps
the last removed event's sequence number and hash (the anchor) so the remaining chain still
verifies from its first event.

``Auditor.record`` is what the rest of the gateway calls. It hashes the client address, adds
the correlation id, masks personal data in free text, aggregates floods of
``webhook.rejected`` events and never raises: a failed write is logged and counted.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

import orjson
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from metrics.logging import correlation_id
from metrics.registry import AUDIT_SUPPRESSED, AUDIT_WRITE_FAILURES
from security.redaction import hash_ip, redact

__all__ = [
    "CHECKPOINT_ACTION",
    "GENESIS_HASH",
    "AuditChainer",
    "AuditEvent",
    "AuditLog",
    "AuditSink",
    "Auditor",
    "ChainHead",
    "DetailValue",
    "HashChainer",
    "VerifyResult",
    "event_hash",
    "key_fingerprint",
    "verify",
]

logger = logging.getLogger(__name__)

GENESIS_HASH: Final = "0" * 64
"""The ``prev_hash`` of the first event ever appended."""

CHECKPOINT_ACTION: Final = "audit.checkpoint"
FLOOD_ACTIONS: Final = frozenset({"webhook.rejected"})
"""Actions an outsider can trigger at will; recorded at a bounded rate (see ``Auditor``)."""

_HASH_DOMAIN: Final = b"voicegw-audit-v1\n"
_CHECKPOINT_DOMAIN: Final = "voicegw-audit-checkpoint-v1"
_VERIFY_BATCH: Final = 1000
_UNSTORABLE: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
"""Characters a store or the JSON encoder refuses (PostgreSQL: NUL; UTF-8: lone surrogates),
with the other C0 controls and DEL: text that carries them is recorded with ``?`` instead, so
what an attacker typed can never make an event unwritable."""

DetailValue = str | int | float | bool | None


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
    detail: dict[str, DetailValue] = field(default_factory=dict)
    at: float = 0.0
    seq: int = 0
    prev_hash: str = ""
    hash: str = ""


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last appended event's sequence number and hash."""

    seq: int
    hash: str


class AuditChainer(Protocol):
    """Computes an event's place and hash from the chain head (``None`` for an empty chain);
    the store calls it inside the transaction that appends, so the chain has no forks."""

    def link(self, event: AuditEvent, head: ChainHead | None) -> AuditEvent: ...


class AuditSink(Protocol):
    """Where events are appended (every ``Store`` is one)."""

    async def append_audit(self, event: AuditEvent, chain: AuditChainer) -> AuditEvent: ...


class AuditLog(Protocol):
    """What ``verify`` reads (every ``Store`` is one)."""

    async def iter_audit(self, after_seq: int, limit: int) -> list[AuditEvent]: ...
    async def audit_head(self) -> ChainHead | None: ...
    async def audit_anchor(self) -> ChainHead | None: ...


def canonical_json(event: AuditEvent) -> bytes:
    """The bytes an event's hash covers: every field but ``hash``, sorted keys, no spaces."""
    body = {
        "action": event.action,
        "actor": event.actor,
        "at": event.at,
        "correlation_id": event.correlation_id,
        "detail": event.detail,
        "entity_id": event.entity_id,
        "entity_type": event.entity_type,
        "ip_hash": event.ip_hash,
        "outcome": event.outcome,
        "prev_hash": event.prev_hash,
        "role": event.role,
        "seq": event.seq,
        "user_agent": event.user_agent,
    }
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def event_hash(event: AuditEvent) -> str:
    """SHA-256 (hex) of the event's canonical form."""
    return hashlib.sha256(_HASH_DOMAIN + canonical_json(event)).hexdigest()


def key_fingerprint(key: VerifyKey) -> str:
    """A short public identifier of an Ed25519 verify key (SHA-256, first 16 hex digits)."""
    return hashlib.sha256(bytes(key)).hexdigest()[:16]


def _checkpoint_message(head_seq: int, head_hash: str) -> bytes:
    return f"{_CHECKPOINT_DOMAIN}:{head_seq}:{head_hash}".encode()


class HashChainer:
    """Links events into the chain; signs checkpoint events when given a signing key.

    A checkpoint's detail (``head_seq``, ``head_hash``, ``kid``, ``signature``) is filled in
    here, inside the appending transaction, so it always names its true predecessor.
    ``key_id`` labels the signing key in checkpoints (default: its fingerprint).
    """

    __slots__ = ("_key_id", "_signing_key")

    def __init__(self, signing_key: SigningKey | None = None, *, key_id: str | None = None) -> None:
        self._signing_key = signing_key
        if signing_key is None:
            self._key_id = None
        else:
            self._key_id = key_id or key_fingerprint(signing_key.verify_key)

    @property
    def signs(self) -> bool:
        return self._signing_key is not None

    def link(self, event: AuditEvent, head: ChainHead | None) -> AuditEvent:
        head = head or ChainHead(0, GENESIS_HASH)
        if event.action == CHECKPOINT_ACTION:
            detail: dict[str, DetailValue] = {"head_seq": head.seq, "head_hash": head.hash}
            if self._signing_key is not None:
                signed = self._signing_key.sign(_checkpoint_message(head.seq, head.hash))
                detail["kid"] = self._key_id
                detail["signature"] = base64.b64encode(signed.signature).decode()
            event = replace(event, detail=detail)
        linked = replace(event, seq=head.seq + 1, prev_hash=head.hash, hash="")
        return replace(linked, hash=event_hash(linked))


@dataclass(slots=True)
class _FloodWindow:
    start: float
    recorded: int = 0
    suppressed: int = 0


class Auditor:
    """Records audit events; the one object the gateway uses to write the trail.

    ``record`` never raises (a failed write is logged and counted in ``failures``), so
    auditing can never break the request or call it describes. Events whose action is in
    ``FLOOD_ACTIONS`` are recorded at most ``flood_limit`` times per ``flood_window_s`` per
    ``detail["layer"]``; the rest are counted and summarised in one event with
    ``detail["aggregated"] = True`` and ``detail["suppressed"] = n`` when the window closes
    (on the next such event, or on ``flush``). Every ``checkpoint_every`` events (``None``:
    never) a checkpoint event is appended.
    """

    __slots__ = (
        "_chainer",
        "_checkpoint_every",
        "_clock",
        "_flood_limit",
        "_flood_window_s",
        "_floods",
        "_ip_hash_key",
        "_store",
        "failures",
        "recorded",
        "suppressed",
    )

    _MAX_FLOOD_SCOPES: Final = 64

    def __init__(
        self,
        store: AuditSink,
        chainer: AuditChainer,
        *,
        ip_hash_key: bytes,
        checkpoint_every: int | None = 1000,
        flood_limit: int = 20,
        flood_window_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not ip_hash_key:
            raise ValueError("Auditor needs a non-empty ip_hash_key")
        if checkpoint_every is not None and checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        if flood_limit < 1 or not flood_window_s > 0:
            raise ValueError("flood_limit must be at least 1 and flood_window_s positive")
        self._store = store
        self._chainer = chainer
        self._ip_hash_key = ip_hash_key
        self._checkpoint_every = checkpoint_every
        self._flood_limit = flood_limit
        self._flood_window_s = flood_window_s
        self._clock = clock
        self._floods: dict[str, _FloodWindow] = {}
        self.failures = 0
        self.recorded = 0
        self.suppressed = 0

    async def record(
        self,
        action: str,
        outcome: str,
        *,
        actor: str = "system",
        role: str | None = None,
        entity_type: str | None = None,
        entity_id: str | None = None,
        ip: str | None = None,
        user_agent: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Append one event (or count it, under a flood). Never raises."""
        try:
            clean = _clean_detail(detail)
            # Under a flood most events are only counted: decide before building one.
            if action in FLOOD_ACTIONS and not await self._flood_admits(action, clean):
                return
            event = AuditEvent(
                action=_storable(action),
                outcome=_storable(outcome),
                actor=_storable(actor),
                role=None if role is None else _storable(str(role)),
                entity_type=None if entity_type is None else _storable(entity_type),
                entity_id=None if entity_id is None else _storable(entity_id),
                ip_hash=None if ip is None else hash_ip(ip, self._ip_hash_key),
                user_agent=None if user_agent is None else _storable(redact(user_agent[:256])),
                correlation_id=correlation_id.get(),
                detail=clean,
            )
            await self._append(event)
        except Exception:
            self._failed(action)

    async def checkpoint(self) -> None:
        """Append a checkpoint now (for example at shutdown). Never raises."""
        try:
            await self._append(AuditEvent(action=CHECKPOINT_ACTION, outcome="success"))
        except Exception:
            self._failed(CHECKPOINT_ACTION)

    async def flush(self) -> None:
        """Write the summaries of every flood window that suppressed events. Never raises."""
        for scope in list(self._floods):
            window = self._floods.pop(scope)
            await self._summarise(scope, window)

    async def _flood_admits(self, action: str, detail: Mapping[str, DetailValue]) -> bool:
        """Whether this event of a flood-prone action is recorded (else it is only counted)."""
        now = self._clock()
        scope = f"{action}:{detail.get('layer')}"
        window = self._floods.get(scope)
        if window is not None and now - window.start >= self._flood_window_s:
            del self._floods[scope]
            await self._summarise(scope, window)
            window = None
        if window is None:
            while len(self._floods) >= self._MAX_FLOOD_SCOPES:
                oldest = next(iter(self._floods))
                await self._summarise(oldest, self._floods.pop(oldest))
            window = self._floods[scope] = _FloodWindow(start=now)
        if window.recorded >= self._flood_limit:
            window.suppressed += 1
            self.suppressed += 1
            AUDIT_SUPPRESSED.labels(action).inc()
            return False
        window.recorded += 1
        return True

    async def _summarise(self, scope: str, window: _FloodWindow) -> None:
        if not window.suppressed:
            return
        action, _, layer = scope.partition(":")
        try:
            await self._append(
                AuditEvent(
                    action=action,
                    outcome="denied",
                    detail={
                        "aggregated": True,
                        "layer": None if layer == "None" else layer,
                        "suppressed": window.suppressed,
                        "window_start": window.start,
                        "window_s": self._flood_window_s,
                    },
                )
            )
        except Exception:
            self._failed(action)

    async def _append(self, event: AuditEvent) -> None:
        stored = await self._store.append_audit(replace(event, at=self._clock()), self._chainer)
        self.recorded += 1
        every = self._checkpoint_every
        if every is not None and stored.action != CHECKPOINT_ACTION and stored.seq % every == 0:
            await self._store.append_audit(
                AuditEvent(action=CHECKPOINT_ACTION, outcome="success", at=self._clock()),
                self._chainer,
            )
            self.recorded += 1

    def _failed(self, action: str) -> None:
        self.failures += 1
        AUDIT_WRITE_FAILURES.inc()
        logger.error("audit event could not be written", extra={"action": action}, exc_info=True)


def _storable(text: str) -> str:
    return _UNSTORABLE.sub("?", text)


def _clean_detail(detail: Mapping[str, Any] | None) -> dict[str, DetailValue]:
    """JSON scalars only; free text masked and storable; non-finite floats and other types as
    text."""
    clean: dict[str, DetailValue] = {}
    for key, value in (detail or {}).items():
        name = _storable(str(key))
        if isinstance(value, str):
            clean[name] = _storable(redact(value))
        elif value is None or isinstance(value, bool | int):
            clean[name] = value
        elif isinstance(value, float) and math.isfinite(value):
            clean[name] = value
        else:
            clean[name] = _storable(redact(str(value)))
    return clean


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """What ``verify`` found. ``first_bad_seq`` is the sequence number of the first event
    that breaks the chain (``None`` when intact) and ``reason`` says how."""

    ok: bool
    events: int
    checkpoints: int
    signatures_verified: int
    first_seq: int | None = None
    last_seq: int | None = None
    first_bad_seq: int | None = None
    reason: str | None = None


async def verify(
    store: AuditLog,
    verify_key: VerifyKey | Iterable[VerifyKey] | None = None,
    *,
    max_checkpoint_gap: int | None = None,
) -> VerifyResult:
    """Walk the whole chain and report the first broken link.

    Checks, for every event in order: consecutive sequence numbers from the anchor, the
    previous hash, the event's own hash and, for checkpoints, that they name their
    predecessor. With ``verify_key`` (one key or several, for rotated signing keys) every
    checkpoint must carry a valid signature, and with ``max_checkpoint_gap`` no more than that
    many events may follow the last checkpoint (or the start) without one. The last event must
    match the store's recorded head (a truncated tail is detected).

    The chain may grow while it is walked (replicas appending to a live trail). The head is
    read only once the walk has reached the last stored event: an append stores its event and
    the head in one transaction, so that head covers every event read before it, and a head
    further on means events were appended meanwhile (the walk goes on) or are missing.
    """
    keys: list[VerifyKey] = []
    if isinstance(verify_key, VerifyKey):
        keys = [verify_key]
    elif verify_key is not None:
        keys = list(verify_key)
    anchor = await store.audit_anchor()
    head: ChainHead | None = None
    prev = anchor or ChainHead(0, GENESIS_HASH)
    first_seq: int | None = None
    events = checkpoints = signed = 0
    since_checkpoint = 0

    def result(bad: int | None = None, reason: str | None = None) -> VerifyResult:
        return VerifyResult(
            ok=bad is None,
            events=events,
            checkpoints=checkpoints,
            signatures_verified=signed,
            first_seq=first_seq,
            last_seq=prev.seq if events else None,
            first_bad_seq=bad,
            reason=reason,
        )

    while True:
        batch = await store.iter_audit(prev.seq, _VERIFY_BATCH)
        if not batch:
            head = await store.audit_head()
            if head is None or head.seq <= prev.seq:
                break
            batch = await store.iter_audit(prev.seq, _VERIFY_BATCH)
            if not batch:
                break
        for event in batch:
            expected = prev.seq + 1
            if event.seq != expected:
                return result(expected, "event missing or out of order")
            if event.prev_hash != prev.hash:
                return result(event.seq, "previous hash does not match")
            if event_hash(event) != event.hash:
                return result(event.seq, "event hash does not match its content")
            if event.action == CHECKPOINT_ACTION:
                problem = _check_checkpoint(event, prev, keys)
                if problem is not None:
                    return result(event.seq, problem)
                checkpoints += 1
                signed += bool(keys)
                since_checkpoint = 0
            else:
                since_checkpoint += 1
                if max_checkpoint_gap is not None and since_checkpoint > max_checkpoint_gap:
                    return result(event.seq, "checkpoint missing")
            if first_seq is None:
                first_seq = event.seq
            events += 1
            prev = ChainHead(event.seq, event.hash)
    if head is not None and (head.seq, head.hash) != (prev.seq, prev.hash):
        if head.seq > prev.seq:
            return result(prev.seq + 1, "events missing after the last stored one")
        return result(prev.seq, "chain head does not match the last event")
    return result()


def _check_checkpoint(event: AuditEvent, prev: ChainHead, keys: list[VerifyKey]) -> str | None:
    detail = event.detail
    if detail.get("head_seq") != prev.seq or detail.get("head_hash") != prev.hash:
        return "checkpoint does not name its predecessor"
    if not keys:
        return None
    signature = detail.get("signature")
    if not isinstance(signature, str):
        return "checkpoint is not signed"
    try:
        raw = base64.b64decode(signature, validate=True)
    except ValueError:
        return "checkpoint signature is malformed"
    message = _checkpoint_message(prev.seq, prev.hash)
    for key in keys:
        try:
            key.verify(message, raw)
        except (BadSignatureError, ValueError):
            continue
        return None
    return "checkpoint signature is invalid"
