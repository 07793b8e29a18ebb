"""``/api/v1/security``: the security review and the key inventory, for admins.

* ``GET /api/v1/security/review``: the review of this replica, as ``voicegw security review
  --json`` prints it; every call is audited (``security.review``, with the counts).
* ``GET /api/v1/security/keys``: the key inventory (kinds, public ids, ages, rotation due);
  the console's key panel reads it.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.operators.middleware import requires
from gateway.operators.permissions import Permission, Principal
from gateway.review.checks import review
from gateway.review.facts import runtime_facts
from gateway.review.inventory import runtime_key_inventory


def _json(body: object) -> Response:
    return Response(
        orjson.dumps(body), media_type="application/json", headers={"Cache-Control": "no-store"}
    )


@requires(Permission.SECURITY_REVIEW)
async def security_review(request: Request) -> Response:
    runtime = request.app.state.runtime
    principal: Principal = request.state.principal
    report = review(runtime.settings, await runtime_facts(runtime))
    counts = report.counts()
    await runtime.auditor.record(
        "security.review",
        "success",
        actor=principal.name,
        role=principal.role.value,
        entity_type="report",
        entity_id="security-review",
        detail={"exit_code": report.exit_code, **counts},
    )
    return _json(report.as_dict())


@requires(Permission.SECURITY_REVIEW)
async def security_keys(request: Request) -> Response:
    inventory = await runtime_key_inventory(request.app.state.runtime)
    return _json(inventory.as_dict())


def routes() -> list[Route]:
    return [
        Route("/api/v1/security/review", security_review, methods=["GET"]),
        Route("/api/v1/security/keys", security_keys, methods=["GET"]),
    ]
