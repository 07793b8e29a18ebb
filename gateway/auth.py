"""Operator sessions and service authentication: the ``/auth/*`` routes, the JWKS, the
authentication + role check every ``/api/v1`` route uses, and the security-header and CORS
middleware.

Browser sessions (see README "Session model"):

* ``POST /auth/login`` checks the password (scrypt) and the lockout, then starts a refresh
  family (its id is the session id ``sid``) and sets three cookies: the access token (EdDSA
  JWT, HttpOnly, ``__Host-``), the refresh token (HttpOnly, ``__Secure-``, ``Path=/auth/refresh``)
  and the CSRF token (readable by the page, ``__Host-``), all ``SameSite=Strict``. Over plain
  ``http://`` (development only: production requires https) the ``Secure`` attribute and the
  prefixes, which browsers would refuse there, are left out.
* ``POST /auth/refresh`` rotates the refresh token; a reused one revokes its family and session.
* ``POST /auth/logout`` revokes the session; ``POST /auth/logout-all`` every session of the user.

Services send ``Authorization: Bearer vgk_...`` (``security.apikeys``) instead of cookies.
``AuthRuntime`` holds everything this needs; the app finds it at ``app.state.runtime.auth``.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import orjson
import redis.asyncio as aioredis
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.http import inputs
from gateway.http.errors import json_error
from gateway.store.base import ApiKeyRecord, Role, Store, UserRecord
from metrics.registry import AUTH_FAILURES, LOGIN_LOCKOUTS
from security import apikeys, csrf
from security.allowlist import DEFAULT_IPV6_CLIENT_PREFIX, client_network
from security.apikeys import KeyPolicy
from security.exceptions import StateUnavailable
from security.lockout import LockoutPolicy, LoginGuard
from security.passwords import MAX_PASSWORD_BYTES, PasswordHasher
from security.ratelimit import FallbackLimiter, InProcessLimiter, Limiter, RedisLimiter
from security.refresh import (
    InProcessRefreshFamilies,
    Outcome,
    RedisRefreshFamilies,
    RefreshFamilies,
)
from security.replay import Degradation
from security.revocation import (
    InProcessRevocationList,
    RedisRevocationList,
    RevocationList,
    jti_key,
    sid_key,
)
from security.sessions import AccessClaims, InvalidToken, TokenService
from security.signing_keys import FileKeyRing, KeyRing, default_path

log = logging.getLogger("voicegw.auth")

MAX_LOGIN_BODY: Final = 4096
FAILED_LOGIN_FLOOR_S: Final = 0.4
"""Every failed login answers after at least this long, whatever failed."""
API_KEY_TOUCH_INTERVAL_S: Final = 60.0
SAFE_METHODS: Final = csrf.SAFE_METHODS


class Permission(enum.StrEnum):
    CALLS_READ = "calls:read"
    PROVIDERS_READ = "providers:read"
    AUDIT_READ = "audit:read"
    SUBJECTS_EXPORT = "subjects:export"  # data-subject access requests
    SUBJECTS_ERASE = "subjects:erase"
    SECURITY_REVIEW = "security:review"  # admin only: the security review and key inventory


ROLE_PERMISSIONS: Final[dict[Role, frozenset[Permission]]] = {
    Role.ADMIN: frozenset(Permission),
    Role.OPERATOR: frozenset({Permission.CALLS_READ, Permission.PROVIDERS_READ}),
    # Data-subject requests (export and erasure) are the auditor's job (issue: "auditor or
    # admin role"); everything else the auditor sees is read-only.
    Role.AUDITOR: frozenset(
        {Permission.AUDIT_READ, Permission.SUBJECTS_EXPORT, Permission.SUBJECTS_ERASE}
    ),
}


class AuditSink(Protocol):
    """What ``security.audit.Auditor`` offers; ``record`` never raises."""

    async def record(
        self,
        action: str,
        outcome: str,
        *,
        actor: str = ...,
        role: str | None = ...,
        entity_type: str | None = ...,
        entity_id: str | None = ...,
        ip: str | None = ...,
        user_agent: str | None = ...,
        detail: dict[str, Any] | None = ...,
    ) -> None: ...


class AuthError(Exception):
    """Authentication or authorisation failed: ``status`` and a short, safe ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    def response(self) -> Response:
        if self.status in (401, 403):
            # Reasons are fixed strings of this module and security.csrf: a bounded label.
            AUTH_FAILURES.labels(self.reason).inc()
        headers = {"WWW-Authenticate": 'Bearer realm="voicegw"'} if self.status == 401 else {}
        return json_error(self.status, self.reason, headers)


@dataclass(frozen=True, slots=True)
class CookieNames:
    access: str
    refresh: str
    csrf: str

    @classmethod
    def for_scheme(cls, secure: bool) -> CookieNames:
        if secure:
            return cls("__Host-voicegw_access", "__Secure-voicegw_refresh", "__Host-voicegw_csrf")
        return cls("voicegw_access", "voicegw_refresh", "voicegw_csrf")


REFRESH_PATH: Final = "/auth/refresh"


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Session settings, explicit so tests and the runtime build them the same way."""

    public_url: str
    access_ttl_s: int = 24 * 3600
    refresh_ttl_s: int = 30 * 86400
    cors_origins: tuple[str, ...] = ()
    lockout: LockoutPolicy = field(default_factory=LockoutPolicy)
    login_rate_per_minute: int = 10  # per client network, before any password is checked
    login_ipv6_prefix: int = DEFAULT_IPV6_CLIENT_PREFIX  # an IPv6 client's network (32-128)
    api_keys: KeyPolicy = field(default_factory=KeyPolicy)
    production: bool = False

    def __post_init__(self) -> None:
        if not 32 <= self.login_ipv6_prefix <= 128:
            raise ValueError("login_ipv6_prefix must be 32-128")

    @property
    def secure_cookies(self) -> bool:
        return self.public_url.startswith("https://")

    @property
    def cookies(self) -> CookieNames:
        return CookieNames.for_scheme(self.secure_cookies)

    @property
    def issuer(self) -> str:
        return self.public_url.rstrip("/")

    @property
    def audience(self) -> str:
        return self.public_url.rstrip("/") + "/api"

    @property
    def allowed_origins(self) -> frozenset[str]:
        return frozenset({csrf.origin_of(self.public_url), *map(csrf.origin_of, self.cors_origins)})


def signing_ring(
    data_dir: Path, *, key_file: Path | None = None, seeds: Sequence[str] = ()
) -> KeyRing:
    """The key ring: ``seeds`` (from ``VOICEGW_SIGNING_KEY``) if given, else the key file
    (``VOICEGW_SIGNING_KEY_FILE``, default ``<data dir>/signing-keys.json``), made if missing."""
    if seeds:
        return KeyRing.from_seeds(seeds)
    return FileKeyRing(key_file or default_path(data_dir))


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for: a user's session or a service's API key."""

    name: str
    role: Role
    via: Literal["session", "api_key"]
    claims: AccessClaims | None = None
    key_id: str | None = None

    def can(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]


@dataclass(frozen=True, slots=True)
class Minted:
    token: str
    claims: AccessClaims
    csrf_token: str


@dataclass(eq=False)
class AuthRuntime:
    config: AuthConfig
    tokens: TokenService
    families: RefreshFamilies
    revocations: RevocationList
    store: Store
    guard: LoginGuard
    hasher: PasswordHasher
    login_limiter: Limiter
    auditor: AuditSink | None = None
    clock: Callable[[], float] = time.time
    _key_touched: dict[str, float] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        config: AuthConfig,
        *,
        ring: KeyRing,
        store: Store,
        redis: aioredis.Redis | None = None,
        redis_prefix: str = "voicegw:",
        auditor: AuditSink | None = None,
        hasher: PasswordHasher | None = None,
    ) -> AuthRuntime:
        """In-process session state, or Redis when ``redis`` is given."""
        families: RefreshFamilies
        revocations: RevocationList
        login_limiter: Limiter
        rate = config.login_rate_per_minute
        if redis is not None:
            families = RedisRefreshFamilies(redis, redis_prefix + "auth:")
            revocations = RedisRevocationList(redis, redis_prefix + "auth:revoked:")
            # Shared by the replicas; while Redis is down each replica limits on its own.
            login_limiter = FallbackLimiter(
                RedisLimiter(redis, redis_prefix + "auth:loginrl:", rate),
                InProcessLimiter(rate),
                degradation=Degradation("login_rate"),
            )
        else:
            families = InProcessRefreshFamilies()
            revocations = InProcessRevocationList()
            login_limiter = InProcessLimiter(rate)
        tokens = TokenService(
            ring,
            issuer=config.issuer,
            audience=config.audience,
            ttl_s=config.access_ttl_s,
            roles=[r.value for r in Role],
            expired_grace_s=config.refresh_ttl_s,
        )
        return cls(
            config=config,
            tokens=tokens,
            families=families,
            revocations=revocations,
            store=store,
            guard=LoginGuard(store, config.lockout),
            hasher=hasher or PasswordHasher(),
            login_limiter=login_limiter,
            auditor=auditor,
        )

    async def audit(self, request: Request, action: str, outcome: str, **kw: Any) -> None:
        if self.auditor is None:
            return
        await self.auditor.record(
            action,
            outcome,
            ip=_client_ip(request),
            user_agent=_user_agent(request),
            **kw,
        )

    # -- authentication -------------------------------------------------------------------

    async def authenticate(self, request: Request) -> Principal:
        """The principal of ``request``: API key (Authorization) or session cookie, with the
        CSRF checks for unsafe methods on cookies. Raises ``AuthError``."""
        authorization = request.headers.get("authorization")
        if authorization is not None:
            return await self._api_key(authorization)
        token = request.cookies.get(self.config.cookies.access)
        if not token:
            raise AuthError(401, "authentication required")
        claims = await self.session_claims(token)
        user = await self.store.get_user(claims.sub)
        if (
            user is None
            or user.disabled
            or user.role.value != claims.role
            or user.password_changed_at > claims.iat
        ):
            raise AuthError(401, "session no longer valid")
        if request.method not in SAFE_METHODS:
            self.check_csrf(request, claims)
        return Principal(user.username, user.role, "session", claims=claims)

    async def session_claims(self, token: str, *, allow_expired: bool = False) -> AccessClaims:
        try:
            claims = self.tokens.verify(token, allow_expired=allow_expired)
        except InvalidToken as exc:
            raise AuthError(401, "invalid session") from exc
        try:
            revoked = await self.revocations.is_revoked([jti_key(claims.jti), sid_key(claims.sid)])
        except StateUnavailable:
            log.warning("revocation list unavailable: refusing session")
            raise AuthError(503, "session state unavailable") from None
        if revoked:
            raise AuthError(401, "session revoked")
        return claims

    def check_origin(self, request: Request) -> None:
        try:
            csrf.check_origin(
                request.headers.get("origin"),
                request.headers.get("sec-fetch-site"),
                self.config.allowed_origins,
            )
        except csrf.CsrfRejected as exc:
            raise AuthError(403, exc.reason) from None

    def check_csrf(self, request: Request, claims: AccessClaims | None) -> None:
        self.check_origin(request)
        try:
            csrf.check_double_submit(
                request.headers.get(csrf.HEADER),
                request.cookies.get(self.config.cookies.csrf),
                None if claims is None else claims.csrf,
            )
        except csrf.CsrfRejected as exc:
            raise AuthError(403, exc.reason) from None

    async def _api_key(self, authorization: str) -> Principal:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(401, "bearer API key required")
        record = await self.check_api_key(token.strip())
        if record is None:
            raise AuthError(401, "invalid API key")
        return Principal(f"apikey:{record.key_id}", record.role, "api_key", key_id=record.key_id)

    async def check_api_key(self, token: str) -> ApiKeyRecord | None:
        """The stored record of a valid, accepted API key ``token``, else None."""
        parsed = apikeys.parse(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        record = await self.store.get_api_key(key_id)
        if record is None or not apikeys.matches(secret, record.key_hash):
            return None
        now = self.clock()
        state = self.config.api_keys.state(
            created_at=record.created_at,
            expires_at=record.expires_at,
            revoked_at=record.revoked_at,
            now=now,
        )
        if not state.accepted:
            return None
        if now - self._key_touched.get(key_id, 0.0) >= API_KEY_TOUCH_INTERVAL_S:
            self._key_touched[key_id] = now
            await self.store.touch_api_key(key_id, now)
        return record

    async def api_key_valid(self, key_id: str | None) -> bool:
        """Whether API key ``key_id`` is still accepted (not revoked, not expired)."""
        record = None if key_id is None else await self.store.get_api_key(key_id)
        return (
            record is not None
            and self.config.api_keys.state(
                created_at=record.created_at,
                expires_at=record.expires_at,
                revoked_at=record.revoked_at,
                now=self.clock(),
            ).accepted
        )

    # -- issuing --------------------------------------------------------------------------

    def mint(self, user: UserRecord, family_id: str) -> Minted:
        """A new access token and CSRF token for session ``family_id``."""
        csrf_token = csrf.new_token()
        token, claims = self.tokens.issue(
            user.username, user.role.value, sid=family_id, csrf=csrf.token_hash(csrf_token)
        )
        return Minted(token, claims, csrf_token)

    def set_session(self, response: Response, minted: Minted, remaining_s: float) -> None:
        """Set the access and CSRF cookies on ``response``; neither outlives the session."""
        names, secure = self.config.cookies, self.config.secure_cookies
        access_age = min(self.config.access_ttl_s, int(remaining_s))
        response.set_cookie(
            names.access, minted.token, max_age=access_age, path="/", secure=secure,
            httponly=True, samesite="strict",
        )  # fmt: skip
        response.set_cookie(
            names.csrf, minted.csrf_token, max_age=int(remaining_s), path="/", secure=secure,
            httponly=False, samesite="strict",
        )  # fmt: skip

    def set_refresh(self, response: Response, token: str, remaining_s: float) -> None:
        response.set_cookie(
            self.config.cookies.refresh, token, max_age=int(remaining_s), path=REFRESH_PATH,
            secure=self.config.secure_cookies, httponly=True, samesite="strict",
        )  # fmt: skip

    def clear(self, response: Response) -> None:
        names, secure = self.config.cookies, self.config.secure_cookies
        for name, path, http_only in (
            (names.access, "/", True),
            (names.csrf, "/", False),
            (names.refresh, REFRESH_PATH, True),
        ):
            response.delete_cookie(
                name, path=path, secure=secure, httponly=http_only, samesite="strict"
            )

    async def end_session(self, claims: AccessClaims) -> None:
        """Revoke the access token, its session and the session's refresh family."""
        now = self.clock()
        await self.revocations.revoke(jti_key(claims.jti), claims.exp - now + 60)
        await self.revocations.revoke(sid_key(claims.sid), self.config.access_ttl_s + 60)
        await self.families.revoke(claims.sid)


def auth_of(request: Request) -> AuthRuntime:
    auth: AuthRuntime = request.app.state.runtime.auth
    return auth


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


# -- routes -------------------------------------------------------------------------------


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
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise AuthError(415, "content type must be application/json")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise AuthError(413, "body too large")
        chunks.append(chunk)
    try:
        body = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise AuthError(400, "body must be JSON") from None
    if not isinstance(body, dict):
        raise AuthError(400, "body must be a JSON object")
    return body


def _client_network(request: Request) -> str:
    """The client's network (through trusted proxies), which keys the login limit and the
    lockout: an IPv4 address, or an IPv6 address's ``/login_ipv6_prefix``."""
    runtime = request.app.state.runtime
    try:
        address = runtime.clients.address(request)
    except Exception:
        return "unknown"
    return str(client_network(address, auth_of(request).config.login_ipv6_prefix))


def _client_ip(request: Request) -> str | None:
    runtime = request.app.state.runtime
    try:
        return str(runtime.clients.address(request))
    except Exception:
        return None


def _user_agent(request: Request) -> str | None:
    value = request.headers.get("user-agent")
    return None if value is None else inputs.printable(value, max_len=256)


# -- middleware ---------------------------------------------------------------------------

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
