"""``POST /api/v1/calls``: place an outbound call (``calls:dial``: admins and dialers).

Body ``{"to", "from", "agent", "carrier"?, "machine_detection"?}``: ``to`` and ``from`` in
E.164, ``from`` one of the agent's ``caller_ids``, ``carrier`` ``twilio`` or ``telnyx`` (default:
the first configured for calling out). Answers ``201 {"call_id", "carrier_call_id", "state"}``;
400 for a malformed body, 403 for a destination the toll-fraud guard refuses, 422 for a call the
agents file does not allow, 429 over a cap of the caller or the agent (with ``Retry-After``),
502/503 when the carrier or shared state failed (see ``gateway.calls.outbound``). Every decision
past the body's checks is audited as ``call.dial``, without the numbers; every refusal of the
guard is counted in ``voicegw_dials_blocked_total{action="dial"}``.
"""

from __future__ import annotations

import math
from typing import Any, Final, cast

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.calls.outbound import DialError, DialRequest, OutboundCarrier
from gateway.calls.webhooks import BodyError, read_body
from gateway.http import inputs
from gateway.http.errors import json_error
from gateway.operators.middleware import requires
from gateway.operators.permissions import Permission, Principal
from metrics.registry import DIALS_BLOCKED

MAX_DIAL_BODY: Final = 4096
FIELDS: Final = frozenset({"to", "from", "agent", "carrier", "machine_detection"})
MAX_FIELD: Final = 64


class _Malformed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _dial_request(raw: bytes) -> DialRequest:
    """The body as a ``DialRequest``; raises ``_Malformed`` with a reason naming the field."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _Malformed("body must be JSON") from None
    if not isinstance(body, dict):
        raise _Malformed("body must be a JSON object")
    unknown = set(body) - FIELDS
    if unknown:
        raise _Malformed("unknown field: " + sorted(unknown)[0][:32])
    text: dict[str, str] = {}
    for name in ("to", "from", "agent"):
        value = body.get(name)
        if not isinstance(value, str) or not value:
            raise _Malformed(f"{name} is required (a string)")
        try:
            text[name] = inputs.text(value, name, max_len=MAX_FIELD)
        except inputs.BadInput as exc:
            raise _Malformed(exc.reason) from None
    carrier = body.get("carrier")
    if carrier is not None and carrier not in ("twilio", "telnyx"):
        raise _Malformed("carrier must be twilio or telnyx")
    machine_detection = body.get("machine_detection", False)
    if not isinstance(machine_detection, bool):
        raise _Malformed("machine_detection must be true or false")
    return DialRequest(
        to=text["to"],
        from_=text["from"],
        agent=text["agent"],
        carrier=cast(OutboundCarrier | None, carrier),
        machine_detection=machine_detection,
    )


def _json(body: Any, status: int) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


@requires(Permission.CALLS_DIAL)
async def place_call(request: Request) -> Response:
    runtime = request.app.state.runtime
    principal: Principal = request.state.principal
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        return json_error(415, "body must be application/json")
    try:
        raw = await read_body(request, MAX_DIAL_BODY, runtime.settings.body_timeout_s)
        dial = _dial_request(raw)
    except BodyError as exc:
        return json_error(exc.status, exc.reason)
    except _Malformed as exc:
        return json_error(400, exc.reason)
    scope = principal.key_id or f"user:{principal.name}"
    try:
        call = await runtime.outbound.place(dial, scope=scope)
    except DialError as exc:
        outcome = "denied" if exc.status < 500 else "failure"
        guard = {}
        if exc.blocked is not None:
            DIALS_BLOCKED.labels("dial", exc.blocked).inc()
            guard = {"blocked": exc.blocked}
            if exc.scope:
                guard["scope"] = exc.scope.partition(":")[0]
        await _audit(request, principal, dial, outcome, exc.status, guard=guard)
        headers = {}
        if exc.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        return json_error(exc.status, exc.reason, headers)
    await _audit(request, principal, dial, "success", 201, call.call_id, call.carrier)
    return _json(
        {"call_id": call.call_id, "carrier_call_id": call.carrier_call_id, "state": call.state},
        201,
    )


async def _audit(
    request: Request,
    principal: Principal,
    dial: DialRequest,
    outcome: str,
    status: int,
    call_id: str | None = None,
    carrier: str | None = None,
    *,
    guard: dict[str, str] | None = None,
) -> None:
    """``call.dial``: who asked, for which agent, through which carrier, and what the
    toll-fraud guard refused (``guard``: its reason and whose cap, ``key`` or ``agent``);
    never the numbers."""
    await request.app.state.runtime.auditor.record(
        "call.dial",
        outcome,
        actor=principal.name,
        role=principal.role.value,
        entity_type="call",
        entity_id=call_id,
        ip=request.client.host if request.client else None,
        detail={
            "agent": dial.agent,
            "carrier": carrier or dial.carrier,
            "machine_detection": dial.machine_detection,
            "status": status,
        }
        | (guard or {}),
    )


def routes() -> list[Route]:
    return [Route("/api/v1/calls", place_call, methods=["POST"])]
