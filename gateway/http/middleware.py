"""The middleware every HTTP request passes: timing by route template, a correlation id, and a
bare 500 for any uncaught exception.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.http.errors import json_error
from metrics.logging import correlation_id
from metrics.registry import HTTP_DURATION

log = logging.getLogger("voicegw.app")


class HttpMiddleware:
    """Times every HTTP request by route template, sets a correlation id, and turns any
    uncaught exception into a bare 500 JSON reply (logged, never shown to the client). A
    client that leaves mid-request is no error: it is timed with status 499."""

    def __init__(self, app: ASGIApp, templates: dict[Callable[..., Any], str]) -> None:
        self.app = app
        self.templates = templates  # route endpoint -> its path template

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = correlation_id.set(secrets.token_hex(8))
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except ClientDisconnect:
            # The client left before its request was all in: nobody to answer, nothing wrong.
            status = 499  # nginx's "client closed request", for the duration metric
        except Exception:
            log.exception("unhandled error", extra={"path_template": self._template(scope)})
            if not response_started:
                await json_error(500, "internal error")(scope, receive, send)
            status = 500
        finally:
            HTTP_DURATION.labels(self._template(scope), scope["method"], str(status)).observe(
                time.perf_counter() - started
            )
            correlation_id.reset(token)

    def _template(self, scope: Scope) -> str:
        endpoint = scope.get("endpoint")
        return self.templates.get(endpoint, "unmatched") if endpoint is not None else "unmatched"
