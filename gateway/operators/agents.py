"""``/api/v1/agents``: the agent profiles in force, read-only, and reloading their file.

* ``GET /api/v1/agents``: each profile (name, whether it is the default, its numbers masked,
  providers, tools, transfer keys, greeting and instructions) and where they come from;
* ``POST /api/v1/agents/reload``: read ``VOICEGW_AGENTS_FILE`` again (as ``SIGHUP`` does). A
  valid file applies to new calls at once; a file with problems is refused (422, the problems
  listed) and the profiles in force stay. Audited either way.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.agents.directory import AgentDirectory, audit_agents_file
from gateway.agents.profiles import book_summary
from gateway.operators.middleware import requires
from gateway.operators.permissions import Permission, Principal


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def agents_view(directory: AgentDirectory) -> dict[str, Any]:
    """The profiles in force (``agents``, a list) and where they come from (``source``,
    ``count``, ``digest``, ``last_reload``)."""
    return {**directory.state(), "agents": book_summary(directory.book)}


@requires(Permission.AGENTS_READ)
async def agents(request: Request) -> Response:
    return _json(agents_view(request.app.state.runtime.agents))


@requires(Permission.AGENTS_RELOAD)
async def reload(request: Request) -> Response:
    runtime = request.app.state.runtime
    principal: Principal = request.state.principal
    result = await runtime.agents.reload()
    await audit_agents_file(
        runtime.auditor,
        runtime.agents,
        result,
        via="api",
        actor=principal.name,
        role=principal.role.value,
    )
    if not result.ok:
        return _json({"ok": False, "problems": list(result.problems)}, 422)
    return _json({"ok": True, **agents_view(runtime.agents)})


def routes() -> list[Route]:
    return [
        Route("/api/v1/agents", agents, methods=["GET"]),
        Route("/api/v1/agents/reload", reload, methods=["POST"]),
    ]
