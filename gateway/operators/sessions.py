"""Operator sessions and service authentication: ``AuthRuntime``, the service behind the
``/auth/*`` routes (``gateway.operators.routes``) and the request check of every ``/api/v1``
route (``gateway.operators.middleware.requires``).

Browser sessions (see README "Session model"): a login starts a refresh family (its id is the
session id ``sid``); ``mint`` issues the access token (EdDSA JWT) and CSRF token of the session,
and the cookies carry them: the access token (HttpOnly, ``__Host-``), the refresh token
(HttpOnly, ``__Secure-``, ``Path=/auth/refresh``) and the CSRF token (readable by the page,
``__Host-``), all ``SameSite=Strict``. Over plain ``http://`` (development only: production
requires https) the ``Secure`` attribute and the prefixes, which browsers would refuse there,
are left out. A refresh rotates the refresh token; a reused one revokes its family and session.

Services send ``Authorization: Bearer vgk_...`` (``security.apikeys``) instead of cookies.
``AuthRuntime`` holds everything this needs; the app finds it at ``app.state.runtime.auth``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from starlette.requests import Request
from starlette.responses import Response

from gateway.http import inputs
from gateway.http.clients import ClientAddresses
from gateway.http.errors import json_error
from gateway.operators.permissions import Principal
from gateway.records.base import ApiKeyRecord, Role, Store, UserRecord
from metrics.registry import AUTH_FAILURES
from security import apikeys, csrf
from security.allowlist import DEFAULT_IPV6_CLIENT_PREFIX
from security.apikeys import KeyPolicy
from security.exceptions import Rejection, StateUnavailable
from security.lockout import LockoutPolicy, LoginGuard
from security.passwords import PasswordHasher
from security.ratelimit import FallbackLimiter, InProcessLimiter, Limiter, RedisLimiter
from security.rediskeys import RedisClient
from security.refresh import InProcessRefreshFamilies, RedisRefreshFamilies, RefreshFamilies
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

API_KEY_TOUCH_INTERVAL_S: Final = 60.0
SAFE_METHODS: Final = csrf.SAFE_METHODS


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
        redis: RedisClient | None = None,
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


def _client_ip(request: Request) -> str | None:
    clients: ClientAddresses = request.app.state.runtime.clients
    try:
        return str(clients.address(request))
    except Rejection:  # a forwarded chain it cannot walk
        return None


def _user_agent(request: Request) -> str | None:
    value = request.headers.get("user-agent")
    return None if value is None else inputs.printable(value, max_len=256)
