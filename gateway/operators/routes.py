"""The ``/auth/*`` routes of browser sessions, and the JWKS.

* ``POST /auth/login`` checks the password (scrypt) and the lockout, then starts a refresh
  family and sets the session's cookies (see ``gateway.operators.sessions``);
* ``POST /auth/refresh`` rotates the refresh token; a reused one revokes its family and session;
* ``POST /auth/logout`` revokes the session; ``POST /auth/logout-all`` every session of the user;
* ``GET /auth/session`` says who the session is; ``GET /.well-known/jwks.json`` publishes the
  public signing keys.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.http import inputs
from gateway.http.clients import ClientAddresses
from gateway.http.errors import json_error
from gateway.operators.permissions import ROLE_PERMISSIONS
from gateway.operators.sessions import AuthError, Minted, auth_of
from gateway.records.base import Role
from metrics.registry import AUTH_FAILURES, LOGIN_LOCKOUTS
from security.allowlist import client_network
from security.exceptions import Rejection, StateUnavailable
from security.passwords import MAX_PASSWORD_BYTES
from security.refresh import Outcome
from security.revocation import sid_key

MAX_LOGIN_BODY: Final = 4096
FAILED_LOGIN_FLOOR_S: Final = 0.4
"""Every failed login answers after at least this long, whatever failed."""


async def login(request: Request) -> Response:
    auth = auth_of(request)
    started = time.perf_counter()
    try:
        auth.check_origin(request)
        body = await _json_body(request, MAX_LOGIN_BODY)
    except AuthError as exc:
        return exc.response()
    # Per client network, before any work: a password spray across many names (which the
    # per-name lockout does not see) and a flood of scrypt work are both capped.
    network = _client_network(request)
    decision = await auth.login_limiter.hit(f"login:{network}")
    if not decision.allowed:
        AUTH_FAILURES.labels("login_rate").inc()
        return json_error(429, "too many login attempts", decision.headers())
    username, password = body.get("username"), body.get("password")
    if (
        not isinstance(username, str)
        or not isinstance(password, str)
        or not 0 < len(username) <= 64
        or not 0 < len(password.encode("utf-8", "surrogatepass")) <= MAX_PASSWORD_BYTES
    ):
        return json_error(400, "username and password required")
    try:
        username = inputs.text(username, "username", max_len=64).strip().lower()
    except inputs.BadInput as exc:
        return json_error(400, exc.reason)
    verdict = await auth.guard.check(username, network)
    if verdict.retry_after_s > 0:
        # Failures from several networks: every network waits (see security.lockout).
        AUTH_FAILURES.labels("login_throttled").inc()
        retry_after = str(max(1, math.ceil(verdict.retry_after_s)))
        return json_error(429, "too many failed logins", {"Retry-After": retry_after})
    # The same work whatever fails: one user lookup, one scrypt.
    user = await auth.store.get_user(username)
    if user is not None:
        ok = await asyncio.to_thread(auth.hasher.verify, password, user.password_hash)
    else:
        ok = await asyncio.to_thread(auth.hasher.verify_dummy, password)
    if verdict.locked or not ok or user is None or user.disabled:
        locked = verdict.locked
        # An attempt refused by the lock is not counted again: a network cannot keep itself
        # locked, nor slow the account down for everyone, by hammering.
        crossed = [] if locked else await auth.guard.failed(username, network)
        reason = (
            "locked" if locked else "unknown_user" if user is None
            else "disabled" if user.disabled else "bad_password"
        )  # fmt: skip
        actor = user.username if user else "anonymous"
        await auth.audit(request, "auth.login", "failure", actor=actor, detail={"reason": reason})
        for lockout in crossed:
            LOGIN_LOCKOUTS.labels(lockout.value).inc()
            await auth.audit(
                request, "auth.lockout", "denied", actor=actor,
                entity_type=None if user is None else "user",
                entity_id=None if user is None else user.username,
                detail={"scope": lockout.value, "failures": auth.config.lockout.failures},
            )  # fmt: skip
        await asyncio.sleep(max(0.0, FAILED_LOGIN_FLOOR_S - (time.perf_counter() - started)))
        return json_error(401, "invalid username or password, or account locked")
    await auth.guard.succeeded(username, network)
    try:
        refresh_token, family = await auth.families.create(user.username, auth.config.refresh_ttl_s)
    except StateUnavailable:
        return json_error(503, "session state unavailable")
    minted = auth.mint(user, family.family_id)
    response = _json(_session_body(minted, family.expires_at))
    auth.set_session(response, minted, auth.config.refresh_ttl_s)
    auth.set_refresh(response, refresh_token, auth.config.refresh_ttl_s)
    await auth.audit(request, "auth.login", "success", actor=user.username, role=user.role.value)
    return response


async def refresh(request: Request) -> Response:
    auth = auth_of(request)
    try:
        auth.check_csrf(request, None)
    except AuthError as exc:
        return exc.response()
    token = request.cookies.get(auth.config.cookies.refresh)
    if not token:
        return AuthError(401, "no refresh token").response()
    try:
        rotation = await auth.families.rotate(token)
    except StateUnavailable:
        return json_error(503, "session state unavailable")
    if rotation.outcome is not Outcome.ROTATED or rotation.family is None or rotation.token is None:
        if rotation.outcome is Outcome.REUSED and rotation.family is not None:
            family = rotation.family
            # A copy of a spent token: whoever holds the family's tokens loses the session.
            await auth.revocations.revoke(sid_key(family.family_id), auth.config.access_ttl_s + 60)
            await auth.audit(
                request, "auth.refresh_reuse", "denied", actor=family.user,
                entity_type="session", entity_id=family.family_id,
            )  # fmt: skip
        response = AuthError(401, "invalid refresh token").response()
        auth.clear(response)
        return response
    family = rotation.family
    user = await auth.store.get_user(family.user)
    if user is None or user.disabled or user.password_changed_at > family.created_at:
        await auth.families.revoke(family.family_id)
        response = AuthError(401, "session no longer valid").response()
        auth.clear(response)
        return response
    remaining = family.remaining_s(auth.clock())
    minted = auth.mint(user, family.family_id)
    response = _json(_session_body(minted, family.expires_at))
    auth.set_session(response, minted, remaining)
    auth.set_refresh(response, rotation.token, remaining)
    return response


async def logout(request: Request) -> Response:
    auth = auth_of(request)
    try:
        auth.check_origin(request)
    except AuthError as exc:
        return exc.response()
    response = Response(status_code=204)
    token = request.cookies.get(auth.config.cookies.access)
    if token:
        try:
            claims = await auth.session_claims(token, allow_expired=True)
            auth.check_csrf(request, claims)
        except AuthError as exc:
            if exc.status != 401:
                return exc.response()
        else:
            try:
                await auth.end_session(claims)
            except StateUnavailable:
                return json_error(503, "session state unavailable")
            await auth.audit(
                request, "auth.logout", "success", actor=claims.sub, role=claims.role,
                entity_type="session", entity_id=claims.sid,
            )  # fmt: skip
    auth.clear(response)
    return response


async def logout_all(request: Request) -> Response:
    auth = auth_of(request)
    try:
        principal = await auth.authenticate(request)
        if principal.claims is None:
            raise AuthError(400, "only a browser session can log out")
        families = await auth.families.revoke_user(principal.name)
        for family in families:
            await auth.revocations.revoke(sid_key(family.family_id), auth.config.access_ttl_s + 60)
        await auth.end_session(principal.claims)
    except AuthError as exc:
        return exc.response()
    except StateUnavailable:
        return json_error(503, "session state unavailable")
    await auth.audit(
        request, "auth.logout_all", "success", actor=principal.name,
        role=principal.role.value, detail={"sessions": len(families)},
    )  # fmt: skip
    response = _json({"revoked_sessions": len(families)})
    auth.clear(response)
    return response


async def session(request: Request) -> Response:
    auth = auth_of(request)
    try:
        principal = await auth.authenticate(request)
    except AuthError as exc:
        return exc.response()
    claims = principal.claims
    body: dict[str, Any] = {
        "user": principal.name,
        "role": principal.role.value,
        "via": principal.via,
        "permissions": sorted(p.value for p in ROLE_PERMISSIONS[principal.role]),
    }
    if claims is not None:
        body["expires_at"] = claims.exp
    return _json(body)


async def jwks(request: Request) -> Response:
    ring = auth_of(request).tokens.ring
    return Response(
        orjson.dumps(ring.jwks()),
        media_type="application/jwk-set+json",
        headers={"Cache-Control": "public, max-age=300"},
    )


def routes() -> list[Route]:
    return [
        Route("/auth/login", login, methods=["POST"]),
        Route("/auth/refresh", refresh, methods=["POST"]),
        Route("/auth/logout", logout, methods=["POST"]),
        Route("/auth/logout-all", logout_all, methods=["POST"]),
        Route("/auth/session", session, methods=["GET"]),
        Route("/.well-known/jwks.json", jwks, methods=["GET", "HEAD"]),
    ]


def _session_body(minted: Minted, refresh_expires_at: float) -> Any:
    claims, csrf_token = minted.claims, minted.csrf_token
    return {
        "user": claims.sub,
        "role": claims.role,
        "expires_at": claims.exp,
        "refresh_expires_at": int(refresh_expires_at),
        "csrf_token": csrf_token,
        "permissions": sorted(p.value for p in ROLE_PERMISSIONS[Role(claims.role)]),
    }


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def _json_body(request: Request, limit: int) -> dict[str, Any]:
    try:
        return await inputs.json_object(request, limit)
    except inputs.BadBody as exc:
        raise AuthError(exc.status, exc.reason) from None


def _client_network(request: Request) -> str:
    """The client's network (through trusted proxies), which keys the login limit and the
    lockout: an IPv4 address, or an IPv6 address's ``/login_ipv6_prefix``."""
    clients: ClientAddresses = request.app.state.runtime.clients
    try:
        address = clients.address(request)
    except Rejection:  # a forwarded chain it cannot walk
        return "unknown"
    return str(client_network(address, auth_of(request).config.login_ipv6_prefix))
