"""The operator console: static HTML, CSS and JavaScript served from this package.

No build step and nothing from elsewhere: the files below are the whole console. Only
these names are served (no directory walking), with a short cache lifetime; the security
headers middleware gives ``/console`` its Content-Security-Policy (own scripts and styles only,
no inline script).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from gateway.http.errors import json_error

HERE: Final = Path(__file__).resolve().parent
ASSETS: Final = {
    "": ("index.html", "text/html; charset=utf-8"),
    "index.html": ("index.html", "text/html; charset=utf-8"),
    "app.js": ("app.js", "text/javascript; charset=utf-8"),
    "style.css": ("style.css", "text/css; charset=utf-8"),
    "favicon.svg": ("favicon.svg", "image/svg+xml"),
}


async def asset(request: Request) -> Response:
    entry = ASSETS.get(request.path_params["name"])
    if entry is None:
        return json_error(404, "not found")
    filename, media_type = entry
    return Response(
        (HERE / filename).read_bytes(),
        media_type=media_type,
        headers={"Cache-Control": "no-cache"},
    )


async def root(request: Request) -> Response:
    return RedirectResponse("/console/", status_code=308)


def routes() -> list[Route]:
    return [
        Route("/console", root, methods=["GET", "HEAD"]),
        Route("/console/{name:path}", asset, methods=["GET", "HEAD"]),
    ]
