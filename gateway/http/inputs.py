"""Text and numbers the operator routes take from a request, checked once at the edge.

Every query parameter, path parameter and JSON field that ``gateway.operators.routes`` and
``gateway.operators.api`` pass on to the store, a parser or the audit trail goes through
``text`` or ``finite`` first. What they refuse would otherwise surface later as a 500:
PostgreSQL refuses NUL in text, other control characters and lone surrogates (what invalid
UTF-8 decodes to) have no place in a name, a filter or an id, and an overlong value is refused
before anything looks it up. ``BadInput.reason`` is short and safe to send to the client,
which gets it as a 400.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

import orjson
from starlette.requests import Request

_NOT_ALLOWED: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
"""C0 and C1 control characters (NUL included), DEL, and lone surrogates."""


class BadInput(ValueError):
    """A request value the routes refuse; ``reason`` names the field, never echoes it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def text(value: str, name: str, *, max_len: int) -> str:
    """``value`` unchanged when it is at most ``max_len`` characters of text a store can
    hold; raises ``BadInput`` naming ``name`` otherwise."""
    if len(value) > max_len:
        raise BadInput(f"{name} is too long")
    if _NOT_ALLOWED.search(value):
        raise BadInput(f"{name} has a character that is not allowed")
    return value


def finite(raw: str, name: str) -> float:
    """``raw`` as a finite number (at most 32 characters); raises ``BadInput`` otherwise
    (``nan``, ``inf`` and ``1e309`` included)."""
    try:
        value = float(text(raw, name, max_len=32))
    except ValueError:
        raise BadInput(f"{name} must be a number") from None
    if not math.isfinite(value):
        raise BadInput(f"{name} must be a number")
    return value


def printable(value: str, *, max_len: int) -> str:
    """``value`` cut to ``max_len`` characters, each character ``text`` refuses replaced by
    ``?``: for values recorded as they came (a User-Agent in the audit trail), not refused."""
    return _NOT_ALLOWED.sub("?", value[:max_len])


class BadBody(ValueError):
    """A request body the routes refuse: ``status`` (400, 413, 415) and a short ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def json_object(request: Request, limit: int) -> dict[str, Any]:
    """The request's body as a JSON object: ``application/json``, at most ``limit`` bytes
    (read no further). Raises :class:`BadBody`."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise BadBody(415, "content type must be application/json")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadBody(413, "body too large")
        chunks.append(chunk)
    try:
        body = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise BadBody(400, "body must be JSON") from None
    if not isinstance(body, dict):
        raise BadBody(400, "body must be a JSON object")
    return body
