"""What stands in front of the routes: security headers (and CORS when configured) on every
response, and ``requires``, the authentication, CSRF and permission check of each ``/api/v1``
endpoint."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.operators.permissions import Permission
from gateway.operators.sessions import AuthError, auth_of
from security import csrf

Endpoint = Callable[[Request], Awaitable[Response]]


def requires(permission: Permission) -> Callable[[Endpoint], Endpoint]:
    """Decorate an endpoint: authenticate, check CSRF (cookies, unsafe methods) and
    ``permission``; the principal is at ``request.state.principal``."""

    def wrap(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            auth = auth_of(request)
            try:
                principal = await auth.authenticate(request)
            except AuthError as exc:
                return exc.response()
            if not principal.can(permission):
                await auth.audit(
                    request, "auth.denied", "denied", actor=principal.name,
                    role=principal.role.value, detail={"permission": permission.value},
                )  # fmt: skip
                return AuthError(403, "not allowed for this role").response()
            request.state.principal = principal
            return await endpoint(request)

        guarded.permission = permission  # type: ignore[attr-defined]
        return guarded

    return wrap


CONSOLE_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
API_CSP: Final = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
HSTS: Final = "max-age=63072000; includeSubDomains"


class SecurityHeadersMiddleware:
    """Adds security headers to every HTTP response: a strict CSP (the console's allows only
    its own scripts and styles), ``nosniff``, ``Referrer-Policy: no-referrer``, framing
    refused, and HSTS when ``hsts``. ``/auth/`` and ``/api/`` replies are never cached."""

    def __init__(self, app: ASGIApp, *, hsts: bool = False) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        extra: list[tuple[bytes, bytes]] = [
            (
                b"content-security-policy",
                (CONSOLE_CSP if path.startswith("/console") else API_CSP).encode(),
            ),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
        ]
        if self.hsts:
            extra.append((b"strict-transport-security", HSTS.encode()))
        no_store = path.startswith(("/auth/", "/api/"))

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in extra if h[0] not in present)
                if no_store and b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_wrapper)


def middleware(*, production: bool, cors_origins: Sequence[str] = ()) -> list[Middleware]:
    """Security headers on every response, and CORS for exactly ``cors_origins`` (with
    credentials) when any are configured. Outermost first."""
    stack = [Middleware(SecurityHeadersMiddleware, hsts=production)]
    if cors_origins:
        stack.append(
            Middleware(
                CORSMiddleware,
                allow_origins=[csrf.origin_of(o) for o in cors_origins],
                allow_credentials=True,
                allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                allow_headers=["Content-Type", "X-CSRF-Token", "Authorization"],
                max_age=600,
            )
        )
    return stack
