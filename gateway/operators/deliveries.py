"""``/api/v1/deliveries``: the call events of the outbox (``gateway.events``), for admins.

* ``GET /api/v1/deliveries?state=pending|delivered|dead&limit=N``: events newest first, with
  their delivery state, attempts and last error (never their body's data beyond its type);
* ``POST /api/v1/deliveries/{event_id}/retry``: put a dead event back to pending (409 when it
  is not dead); ``POST /api/v1/deliveries/retry-dead``: all of them. Both audited.
"""

from __future__ import annotations

import re
import time
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.events.outbox import retry_dead, retry_event
from gateway.http.errors import json_error
from gateway.operators.middleware import requires
from gateway.operators.permissions import Permission, Principal
from gateway.records.base import MAX_PAGE, EventState, OutboxEvent

EVENT_ID: Final = re.compile(r"evt_[A-Za-z0-9_-]{1,64}")


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def delivery(event: OutboxEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "call_id": event.call_id,
        "seq": event.seq,
        "type": event.type,
        "state": event.state.value,
        "attempts": event.attempts,
        "created_at": event.created_at,
        "next_attempt_at": event.next_attempt_at,
        "delivered_at": event.delivered_at,
        "last_error": event.last_error,
    }


@requires(Permission.EVENTS_MANAGE)
async def deliveries(request: Request) -> Response:
    raw_state = request.query_params.get("state")
    try:
        state = None if raw_state is None else EventState(raw_state)
    except ValueError:
        return json_error(400, "state must be pending, delivered or dead")
    raw_limit = request.query_params.get("limit", "100")
    if not (raw_limit.isascii() and raw_limit.isdigit()) or not 0 < int(raw_limit) <= MAX_PAGE:
        return json_error(400, "limit must be a whole number from 1 to 1000")
    events = await request.app.state.runtime.store.list_events(state=state, limit=int(raw_limit))
    return _json({"deliveries": [delivery(e) for e in events]})


async def _audit(request: Request, entity_id: str, outcome: str, detail: dict[str, Any]) -> None:
    principal: Principal = request.state.principal
    await request.app.state.runtime.auditor.record(
        "event.retry",
        outcome,
        actor=principal.name,
        role=principal.role.value,
        entity_type="event",
        entity_id=entity_id,
        detail=detail,
    )


@requires(Permission.EVENTS_MANAGE)
async def retry(request: Request) -> Response:
    event_id = request.path_params["event_id"]
    if not EVENT_ID.fullmatch(event_id):
        return json_error(404, "not found")
    runtime = request.app.state.runtime
    requeued = await retry_event(runtime.store, event_id, time.time())
    await _audit(request, event_id, "success" if requeued else "failure", {})
    if not requeued:
        return json_error(409, "no dead event with this id")
    if runtime.event_dispatcher is not None:
        runtime.event_dispatcher.wake()
    return _json({"ok": True, "event_id": event_id})


@requires(Permission.EVENTS_MANAGE)
async def retry_all(request: Request) -> Response:
    runtime = request.app.state.runtime
    count = await retry_dead(runtime.store, time.time())
    await _audit(request, "dead", "success", {"events": count})
    if runtime.event_dispatcher is not None and count:
        runtime.event_dispatcher.wake()
    return _json({"ok": True, "requeued": count})


def routes() -> list[Route]:
    return [
        Route("/api/v1/deliveries", deliveries, methods=["GET"]),
        Route("/api/v1/deliveries/retry-dead", retry_all, methods=["POST"]),
        Route("/api/v1/deliveries/{event_id}/retry", retry, methods=["POST"]),
    ]
