"""``/api/v1/calls/{id}``: one call's detail, and commands on a live call.

* ``GET /api/v1/calls/{id}``: the call's record (agent, carrier, providers, failovers, outcome,
  transfer destination key), its live state from the registry, and its timeline from the audit
  trail (failovers, tool calls, transfers, commands, how it ended). Numbers are masked and the
  transcript left out, except for the roles that may export a data subject's data (numbers in
  clear and the transcript; their read is audited);
* ``POST /api/v1/calls/{id}/hangup``: end a live call (outcome ``operator_hangup``);
* ``POST /api/v1/calls/{id}/transfer`` ``{"destination": KEY}``: move a live call to a key of
  its agent's transfer table.

Commands work from any replica (``gateway.calls.commands``) and are audited with who gave them.
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.calls.commands import Outcome
from gateway.calls.state import Call
from gateway.http import inputs
from gateway.http.errors import json_error
from gateway.operators.api import REGISTRY_ERRORS
from gateway.operators.middleware import requires
from gateway.operators.permissions import Permission, Principal
from gateway.records.base import AuditQuery, CallRecord
from gateway.records.privacy import open_numbers
from providers.events import CallId
from security.crypto import DecryptionError

CALL_ID: Final = re.compile(r"call_[A-Za-z0-9_-]{1,64}")
MAX_COMMAND_BODY: Final = 1024
TIMELINE_LIMIT: Final = 200
_STATUS: Final = {
    Outcome.OK: 200,
    Outcome.NOT_LIVE: 409,
    Outcome.UNKNOWN_DESTINATION: 422,
    Outcome.DENIED_DESTINATION: 403,
    Outcome.BUSY: 409,
    Outcome.FAILED: 502,
    Outcome.UNREACHABLE: 503,
}
_REASONS: Final = {
    Outcome.NOT_LIVE: "the call is not live",
    Outcome.UNKNOWN_DESTINATION: "destination is not in the agent's transfer table",
    Outcome.DENIED_DESTINATION: "the destination is not allowed (toll-fraud guard)",
    Outcome.BUSY: "the call is already ending",
    Outcome.FAILED: "the carrier did not transfer the call",
    Outcome.UNREACHABLE: "the replica holding the call did not answer",
}


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def mask(number: str | None) -> str | None:
    """``+1415555••99``: the country and area part and the last two digits."""
    if number is None:
        return None
    return number[:-4] + "••" + number[-2:] if len(number) > 6 else "••"


def _call_id(request: Request) -> str | None:
    raw = request.path_params["call_id"]
    return raw if CALL_ID.fullmatch(raw) else None


async def _live(request: Request, call_id: str) -> Call | None:
    registry = request.app.state.runtime.registry
    call: Call | None = await registry.get(CallId(call_id))
    return call


def detail(record: CallRecord | None, live: Call | None) -> dict[str, Any]:
    call: dict[str, Any] = {}
    if record is not None:
        call = {
            "call_id": record.call_id,
            "carrier": record.carrier,
            "agent": record.agent,
            "providers": list(record.providers),
            "failovers": record.failovers,
            "started_at": record.started_at,
            "ended_at": record.ended_at,
            "duration_s": None if record.duration_s is None else round(record.duration_s, 1),
            "outcome": record.outcome,
            "transfer_to": record.transfer_to,
            "recorded": record.recording_path is not None,
        }
    if live is not None:
        call.setdefault("call_id", live.call_id)
        call.setdefault("carrier", live.carrier)
        call.setdefault("agent", live.agent)
        call["state"] = live.state.value
        call["provider"] = live.provider
        call["replica"] = live.replica
    else:
        call["state"] = "ended"
    return call


@requires(Permission.CALLS_READ)
async def call_detail(request: Request) -> Response:
    call_id = _call_id(request)
    if call_id is None:
        return json_error(404, "not found")
    runtime = request.app.state.runtime
    principal: Principal = request.state.principal
    record = await runtime.store.get_call(call_id)
    try:
        live = await _live(request, call_id)
    except REGISTRY_ERRORS:
        live = None
    if record is None and live is None:
        return json_error(404, "not found")
    body: dict[str, Any] = {"call": detail(record, live)}
    if record is not None:
        try:
            numbers = open_numbers(runtime.data_keys, record)
        except DecryptionError:  # its key was retired: the numbers are gone, the rest stays
            numbers = (None, None)
        full = principal.can(Permission.SUBJECTS_EXPORT)
        show = (lambda n: n) if full else mask
        body["call"]["from"], body["call"]["to"] = show(numbers[0]), show(numbers[1])
        if full:
            # What was said, for the roles that may read a person's data (decrypted here).
            try:
                turns = await runtime.transcripts.read(call_id)
            except DecryptionError:
                turns = []
            body["transcript"] = [
                {"seq": t.seq, "role": t.role, "at": t.at, "text": t.text} for t in turns
            ]
            if any(numbers) or turns:
                await runtime.auditor.record(
                    "call.read",
                    "success",
                    actor=principal.name,
                    role=principal.role.value,
                    entity_type="call",
                    entity_id=call_id,
                    detail={"numbers": "clear", "transcript_turns": len(turns)},
                )
    events = await runtime.store.query_audit(
        AuditQuery(entity_type="call", entity_id=call_id, limit=TIMELINE_LIMIT)
    )
    body["timeline"] = [
        {
            "at": e.at,
            "action": e.action,
            "outcome": e.outcome,
            "actor": e.actor,
            "detail": e.detail,
        }
        for e in events
        if e.action != "call.read"
    ]
    return _json(body)


async def _command(request: Request, name: str, destination: str | None) -> Response:
    call_id = _call_id(request)
    if call_id is None:
        return json_error(404, "not found")
    runtime = request.app.state.runtime
    principal: Principal = request.state.principal
    try:
        call = await _live(request, call_id)
    except REGISTRY_ERRORS:
        return json_error(503, "live calls unavailable", {"Retry-After": "5"})
    if call is None:
        return json_error(404, "not found")
    if not call.active:
        outcome = Outcome.NOT_LIVE
    elif destination is None:
        outcome = await runtime.commands.hang_up(call)
    else:
        outcome = await runtime.commands.transfer(call, destination)
    await runtime.auditor.record(
        f"call.{name}",
        "success" if outcome is Outcome.OK else "failure",
        actor=principal.name,
        role=principal.role.value,
        entity_type="call",
        entity_id=call_id,
        detail={"outcome": outcome.value, "by": "operator"}
        | ({} if destination is None else {"destination": destination}),
    )
    if outcome is not Outcome.OK:
        return json_error(_STATUS[outcome], _REASONS[outcome])
    return _json({"ok": True, "call_id": call_id})


@requires(Permission.CALLS_CONTROL)
async def hangup(request: Request) -> Response:
    return await _command(request, "hangup", None)


@requires(Permission.CALLS_CONTROL)
async def transfer(request: Request) -> Response:
    try:
        body = await inputs.json_object(request, MAX_COMMAND_BODY)
    except inputs.BadBody as exc:
        return json_error(exc.status, exc.reason)
    destination = body.get("destination")
    if not isinstance(destination, str) or not re.fullmatch(r"[a-z0-9_-]{1,32}", destination):
        return json_error(400, "destination must be a key of the agent's transfer table")
    return await _command(request, "transfer", destination)


def routes() -> list[Route]:
    return [
        Route("/api/v1/calls/{call_id}", call_detail, methods=["GET"]),
        Route("/api/v1/calls/{call_id}/hangup", hangup, methods=["POST"]),
        Route("/api/v1/calls/{call_id}/transfer", transfer, methods=["POST"]),
    ]
