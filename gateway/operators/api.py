"""``/api/v1``: what the operator console and services read. Every route states the permission
it needs (``gateway.operators.middleware.requires``); see README "Roles" for who holds which.

* ``GET /api/v1/calls``: live calls (from the call registry, every replica) and recent ones
  (from the durable store);
* ``GET /api/v1/providers``: each provider's breaker state;
* ``GET /api/v1/audit``: the audit trail, filtered and paged (proxied to the store);
* ``GET /api/v1/events``: a Server-Sent Events stream of the live calls, sent whenever the set
  changes; it ends when the session that opened it expires or is revoked.
* ``GET /api/v1/users/{subject}/data``: everything held about a phone number (data-subject
  access / portability), decrypted, audited;
* ``POST /api/v1/users/{subject}/delete``: erase it (call records anonymised, recordings
  securely deleted), audited without re-identifying the person;
* ``GET /api/v1/compliance/report``: the compliance evidence report, audited.

Phone numbers never appear here: the registry holds none, and the store's are encrypted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final, Literal

import orjson
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.calls.state import Call, CallError
from gateway.compliance import render_markdown, report_of_runtime
from gateway.http import inputs
from gateway.http.errors import json_error
from gateway.media.recorder import RECORDING_KEY_USE
from gateway.media.recording import Direction, RecordingError, delete_recording_file, export_wav
from gateway.operators.middleware import requires
from gateway.operators.permissions import Permission, Principal
from gateway.operators.sessions import auth_of
from gateway.records.base import MAX_PAGE, AuditEvent, AuditQuery, CallQuery, CallRecord
from gateway.records.privacy import erase_subject, export_subject
from security.exceptions import StateUnavailable
from security.revocation import jti_key, sid_key

EVENTS_INTERVAL_S: Final = 1.0
"""How often the event stream looks for changes."""
EVENTS_KEEPALIVE_S: Final = 15.0
EVENTS_SESSION_CHECK_S: Final = 5.0
AUDIT_FILTERS: Final = ("action", "actor", "outcome", "entity_type", "entity_id")


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def live_call(call: Call, now: float) -> dict[str, Any]:
    return {
        "call_id": call.call_id,
        "carrier": call.carrier,
        "provider": call.provider,
        "agent": call.agent,
        "state": call.state.value,
        "started_at": call.created_at,
        "duration_s": round(max(0.0, now - call.created_at), 1),
        "replica": call.replica,
    }


def recent_call(record: CallRecord) -> dict[str, Any]:
    return {
        "call_id": record.call_id,
        "carrier": record.carrier,
        "agent": record.agent,
        "providers": list(record.providers),
        "started_at": record.started_at,
        "ended_at": record.ended_at,
        "duration_s": None if record.duration_s is None else round(record.duration_s, 1),
        "outcome": record.outcome,
        "failovers": record.failovers,
        "transfer_to": record.transfer_to,
    }


def audit_event(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "at": event.at,
        "action": event.action,
        "outcome": event.outcome,
        "actor": event.actor,
        "role": event.role,
        "entity_type": event.entity_type,
        "entity_id": event.entity_id,
        "detail": event.detail,
        "hash": event.hash,
    }


REGISTRY_ERRORS: Final = (RedisError, OSError, TimeoutError, CallError)
"""What the live-call registry raises while its shared state (Redis) is unavailable."""


async def _live(request: Request) -> list[dict[str, Any]]:
    calls = await request.app.state.runtime.registry.list_active()
    now = time.time()
    return [live_call(c, now) for c in sorted(calls, key=lambda c: c.created_at)]


@requires(Permission.CALLS_READ)
async def calls(request: Request) -> Response:
    """Live calls (every replica's) and the call history, newest first: filtered by
    ``agent``, ``carrier``, ``outcome``, ``state`` (``ended`` or ``open``), ``since`` /
    ``until`` (Unix seconds, of the start), paged with ``limit`` and the ``cursor`` of the
    previous page's ``next``."""
    limit = _int(request, "limit", 50, hi=MAX_PAGE)
    if limit is None:
        return json_error(400, "limit must be a whole number from 0 to 1000")
    try:
        query = _call_query(request, limit)
    except inputs.BadInput as exc:
        return json_error(400, exc.reason)
    records = await auth_of(request).store.query_calls(query) if limit else []
    try:
        live = await _live(request)
    except REGISTRY_ERRORS:
        # Without the shared registry the live list would be a guess: say so, briefly.
        return json_error(503, "live calls unavailable", {"Retry-After": "5"})
    last = records[-1] if len(records) == limit and records else None
    cursor = None if last is None else f"{last.started_at!r}:{last.call_id}"
    return _json({"live": live, "recent": [recent_call(r) for r in records], "next": cursor})


def _call_query(request: Request, limit: int) -> CallQuery:
    params = request.query_params
    names = {}
    for name in ("agent", "carrier", "outcome"):
        value = params.get(name)
        names[name] = None if value is None else inputs.text(value, name, max_len=64)
    state = params.get("state")
    if state not in (None, "ended", "open"):
        raise inputs.BadInput("state must be ended or open")
    since = params.get("since")
    until = params.get("until")
    before = None
    if (cursor := params.get("cursor")) is not None:
        at, _, call_id = inputs.text(cursor, "cursor", max_len=128).partition(":")
        if not call_id:
            raise inputs.BadInput("cursor is not one this API gave")
        before = (inputs.finite(at, "cursor"), call_id)
    return CallQuery(
        agent=names["agent"],
        carrier=names["carrier"],
        outcome=names["outcome"],
        ended=None if state is None else state == "ended",
        since=None if since is None else inputs.finite(since, "since"),
        until=None if until is None else inputs.finite(until, "until"),
        before=before,
        limit=limit,
    )


@requires(Permission.PROVIDERS_READ)
async def providers(request: Request) -> Response:
    snapshots = await request.app.state.runtime.breakers.snapshots()
    return _json(
        {
            "providers": [
                {
                    "name": s.name,
                    "state": s.state.name.lower(),
                    "consecutive_failures": s.consecutive_failures,
                    "opened_at": s.opened_at,
                    "last_failure": s.last_failure,
                    "last_success_at": s.last_success_at,
                }
                for s in snapshots
            ]
        }
    )


@requires(Permission.AUDIT_READ)
async def audit(request: Request) -> Response:
    params = request.query_params
    filters: dict[str, Any] = {}
    try:
        for name in AUDIT_FILTERS:
            value = inputs.text(params.get(name, "").strip(), name, max_len=128)
            if value:
                filters[name] = value
        for name in ("since", "until"):
            if params.get(name):
                filters[name] = inputs.finite(params[name], name)
    except inputs.BadInput as exc:
        return json_error(400, exc.reason)
    after_seq = _int(request, "after_seq", 0, hi=2**62)
    before_seq = _int(request, "before_seq", 0, hi=2**62)
    limit = _int(request, "limit", 100, hi=MAX_PAGE)
    if after_seq is None or before_seq is None or limit is None:
        return json_error(400, "after_seq, before_seq and limit must be whole numbers")
    query = AuditQuery(
        **filters,
        after_seq=after_seq,
        before_seq=before_seq or None,
        newest_first=params.get("order", "newest") != "oldest",
        limit=max(1, limit),
    )
    events = await auth_of(request).store.query_audit(query)
    return _json({"events": [audit_event(e) for e in events]})


@requires(Permission.CALLS_READ)
async def events(request: Request) -> Response:
    """Server-Sent Events: ``calls`` (the live calls, on every change) and ``session-ended``."""
    principal: Principal = request.state.principal

    async def stream() -> AsyncIterator[bytes]:
        yield b"retry: 3000\n\n"
        last: bytes | None = None
        last_sent = last_check = time.monotonic()
        while True:
            now = time.monotonic()
            if now - last_check >= EVENTS_SESSION_CHECK_S:
                last_check = now
                if not await _still_valid(request, principal):
                    yield b"event: session-ended\ndata: {}\n\n"
                    return
            payload: bytes | None
            try:
                payload = orjson.dumps(await _live(request))
            except REGISTRY_ERRORS:
                payload = None  # registry unavailable: the stream stays open, says nothing new
            if payload is not None and payload != last:
                last = payload
                last_sent = now
                yield b"event: calls\ndata: " + payload + b"\n\n"
            elif now - last_sent >= EVENTS_KEEPALIVE_S:
                last_sent = now
                yield b": keep-alive\n\n"
            await asyncio.sleep(EVENTS_INTERVAL_S)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _still_valid(request: Request, principal: Principal) -> bool:
    auth = auth_of(request)
    claims = principal.claims
    if claims is None:
        return await auth.api_key_valid(principal.key_id)
    if claims.exp <= time.time():
        return False
    try:
        return not await auth.revocations.is_revoked([jti_key(claims.jti), sid_key(claims.sid)])
    except StateUnavailable:
        return False


def _int(request: Request, name: str, default: int, *, hi: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    # isdigit() alone passes "²" and other digits int() refuses; 19 digits bound int()'s work.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or int(raw) > hi:
        return None
    return int(raw)


@requires(Permission.SUBJECTS_EXPORT)
async def subject_data(request: Request) -> Response:
    runtime = request.app.state.runtime
    principal: Principal = request.state.principal
    try:
        export = await export_subject(
            runtime.store,
            runtime.data_keys,
            runtime.blind_index,
            inputs.text(request.path_params["subject"], "subject", max_len=64),
            auditor=runtime.auditor,
            actor=principal.name,
            role=principal.role.value,
        )
    except ValueError:
        return json_error(400, "subject must be a phone number")
    return _json(export)


@requires(Permission.SUBJECTS_ERASE)
async def subject_delete(request: Request) -> Response:
    runtime = request.app.state.runtime
    principal: Principal = request.state.principal
    try:
        erasure = await erase_subject(
            runtime.store,
            runtime.blind_index,
            inputs.text(request.path_params["subject"], "subject", max_len=64),
            auditor=runtime.auditor,
            delete_recording=delete_recording_file,
            actor=principal.name,
            role=principal.role.value,
        )
    except ValueError:
        return json_error(400, "subject must be a phone number")
    return _json(
        {
            "request_id": erasure.request_id,
            "calls_anonymised": erasure.calls,
            "recordings_deleted": erasure.recordings,
        }
    )


@requires(Permission.SUBJECTS_EXPORT)
async def recording(request: Request) -> Response:
    """A call's recording as an 8 kHz mu-law WAV (both directions mixed, or ``?direction=``
    from_carrier / to_carrier); every export is audited."""
    runtime = request.app.state.runtime
    principal: Principal = request.state.principal
    direction = request.query_params.get("direction", "mixed")
    if direction not in ("mixed", "from_carrier", "to_carrier"):
        return json_error(400, "direction must be mixed, from_carrier or to_carrier")
    try:
        call_id = inputs.text(request.path_params["call_id"], "call id", max_len=64)
    except inputs.BadInput as exc:
        return json_error(400, exc.reason)
    record = await runtime.store.get_call(call_id)
    if record is None or record.recording_path is None:
        return json_error(404, "no recording")

    def lookup(key_id: str) -> bytes:
        key: bytes = runtime.data_keys.derive(key_id, RECORDING_KEY_USE)
        return key

    which: Direction | Literal["mixed"] = "mixed" if direction == "mixed" else Direction(direction)
    try:
        wav = await asyncio.to_thread(export_wav, Path(record.recording_path), lookup, which)
    except (RecordingError, OSError):
        outcome = "failure"
        wav = None
    else:
        outcome = "success"
    await runtime.auditor.record(
        "recording.export",
        outcome,
        actor=principal.name,
        role=principal.role.value,
        entity_type="call",
        entity_id=call_id,
    )
    if wav is None:
        return json_error(409, "recording unavailable")
    return Response(wav, media_type="audio/wav")


@requires(Permission.AUDIT_READ)
async def compliance_report(request: Request) -> Response:
    """The compliance evidence report (``gateway.compliance``): JSON, or Markdown tables with
    ``?format=markdown``. Auditors and admins (the audit-reading roles); every read audited."""
    runtime = request.app.state.runtime
    principal: Principal = request.state.principal
    form = request.query_params.get("format", "json")
    if form not in ("json", "markdown"):
        return json_error(400, "format must be json or markdown")
    report = await report_of_runtime(runtime)
    await runtime.auditor.record(
        "compliance.report",
        "success",
        actor=principal.name,
        role=principal.role.value,
        entity_type="report",
        entity_id=form,
    )
    if form == "markdown":
        return Response(render_markdown(report), media_type="text/markdown; charset=utf-8")
    return _json(report)


def routes() -> list[Route]:
    return [
        Route("/api/v1/compliance/report", compliance_report, methods=["GET"]),
        Route("/api/v1/calls/{call_id}/recording", recording, methods=["GET"]),
        Route("/api/v1/users/{subject}/data", subject_data, methods=["GET"]),
        Route("/api/v1/users/{subject}/delete", subject_delete, methods=["POST"]),
        Route("/api/v1/calls", calls, methods=["GET"]),
        Route("/api/v1/providers", providers, methods=["GET"]),
        Route("/api/v1/audit", audit, methods=["GET"]),
        Route("/api/v1/events", events, methods=["GET"]),
    ]
