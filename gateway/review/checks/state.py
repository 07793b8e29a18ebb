"""Shared state and sessions: Redis (configured for several replicas, reachable,
authenticated, TLS off-host), session cookies, lifetimes, CSRF and CORS."""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

from gateway.review.checks.base import Outcome, Registry, days, failed, passed, warned
from gateway.review.facts import Facts
from gateway.review.model import Severity
from gateway.settings import Settings
from security.allowlist import is_loopback_host

MAX_REFRESH_TTL_S: Final = 30 * 86400
"""Refresh tokens (the longest session) within 30 days."""
MAX_STREAM_TOKEN_TTL_S: Final = 300

REGISTRY = Registry()
check = REGISTRY.check
CHECKS = REGISTRY.checks


def _redis_host_is_local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "unix" or is_loopback_host(parts.hostname)


def _replicas(s: Settings, f: Facts) -> tuple[int, str]:
    """How many replicas share this deployment, and where that figure comes from: the call
    registry's live heartbeats, or ``VOICEGW_REPLICAS`` when it says more (an override for
    replicas not yet started, or state the heartbeats cannot see)."""
    seen = f.replicas_seen or 0
    if s.replicas > seen:
        return s.replicas, "VOICEGW_REPLICAS"
    return seen, "live heartbeats"


@check("redis.configured", Severity.CRITICAL, "VOICEGW_REDIS_URL=rediss://...")
def _redis_configured(s: Settings, f: Facts) -> Outcome:
    replicas, source = _replicas(s, f)
    if s.redis_url is not None:
        return passed(
            f"Redis configured: limits, replay, revocation and calls are shared "
            f"({replicas} replica(s), from {source})"
        )
    if replicas > 1:
        return failed(
            f"{replicas} replicas ({source}) but no Redis: each replica "
            "keeps its own rate limits, replay cache and revocations"
        )
    return passed("single replica: in-process state")


@check("store.shared", Severity.WARNING, "VOICEGW_DATABASE_URL=postgresql://...")
def _store_shared(s: Settings, f: Facts) -> Outcome:
    replicas, source = _replicas(s, f)
    if replicas > 1 and s.database_url is None:
        return failed(
            f"{replicas} replicas ({source}) each keep their own SQLite store: call records, "
            "operators, lockouts and the audit chain are split between them"
        )
    if s.database_url is not None:
        return passed("records in PostgreSQL, shared by every replica")
    return passed("single replica: records in SQLite")


@check("redis.reachable", Severity.WARNING, "check VOICEGW_REDIS_URL and the Redis server")
def _redis_reachable(s: Settings, f: Facts) -> Outcome:
    if s.redis_url is None or f.redis is None:
        return passed("no Redis configured")
    if f.redis.reachable:
        return passed("Redis answers")
    return warned(
        f"Redis does not answer ({f.redis.error}): shared state runs on in-process fallbacks"
    )


@check(
    "redis.auth",
    Severity.CRITICAL,
    "require a password (ACL user) on Redis and put it in VOICEGW_REDIS_URL",
)
def _redis_auth(s: Settings, f: Facts) -> Outcome:
    if s.redis_url is None:
        return passed("no Redis configured")
    url = s.redis_url.get()
    if urlsplit(url).password:
        return passed("Redis connection authenticates")
    if _redis_host_is_local(url):
        return failed("Redis URL carries no password (local server)", severity=Severity.WARNING)
    return failed("Redis URL carries no password: anyone who reaches Redis can change state")


@check("redis.tls", Severity.CRITICAL, "VOICEGW_REDIS_URL=rediss://... (TLS)")
def _redis_tls(s: Settings, f: Facts) -> Outcome:
    if s.redis_url is None:
        return passed("no Redis configured")
    url = s.redis_url.get()
    scheme = urlsplit(url).scheme
    if scheme == "rediss":
        return passed("Redis over TLS (rediss://)")
    if _redis_host_is_local(url):
        return passed(f"Redis on this host ({scheme}://): TLS not needed")
    return failed("plain redis:// to another host: state and credentials travel in clear")


@check(
    "sessions.cookies",
    Severity.CRITICAL,
    "VOICEGW_PUBLIC_URL=https://... (cookies are Secure and __Host- over https)",
)
def _cookies(s: Settings, f: Facts) -> Outcome:
    if not f.cookies:
        return failed("no session cookies observed")
    bad = [
        c.name
        for c in f.cookies
        if c.same_site != "strict" or (c.name.endswith(("_access", "_refresh")) and not c.http_only)
    ]
    if bad:
        return failed(f"cookie attributes wrong: {', '.join(bad)} (HttpOnly / SameSite=Strict)")
    secure = all(c.secure for c in f.cookies)
    if secure and all(c.name.startswith(("__Host-", "__Secure-")) for c in f.cookies):
        return passed("session cookies HttpOnly, Secure, SameSite=Strict, __Host-/__Secure-")
    if secure:
        return failed("session cookies are Secure but lack the __Host-/__Secure- prefix")
    # Browsers refuse Secure cookies over http; url.https reports the plain-http URL.
    return passed("session cookies HttpOnly, SameSite=Strict; Secure off over http (url.https)")


@check(
    "sessions.lifetimes",
    Severity.WARNING,
    "VOICEGW_REFRESH_TTL_S<=2592000, VOICEGW_STREAM_TOKEN_TTL_S<=300",
)
def _lifetimes(s: Settings, f: Facts) -> Outcome:
    problems = []
    if s.refresh_ttl_s > MAX_REFRESH_TTL_S:
        problems.append(f"sessions last {days(s.refresh_ttl_s)} days (policy: 30)")
    if s.stream_token_ttl_s > MAX_STREAM_TOKEN_TTL_S:
        problems.append(f"stream tokens live {s.stream_token_ttl_s} s (policy: 300)")
    if problems:
        return warned("; ".join(problems))
    return passed(
        f"access {s.session_ttl_s // 3600} h, session {days(s.refresh_ttl_s)} d, "
        f"stream token {s.stream_token_ttl_s} s"
    )


@check("sessions.csrf", Severity.CRITICAL, "a code defect: do not deploy this build")
def _csrf(s: Settings, f: Facts) -> Outcome:
    if f.csrf_enforced:
        return passed("CSRF on: signed double submit and Origin checked on unsafe requests")
    return failed("the CSRF check accepted a forged request")


@check("cors.explicit", Severity.WARNING, "VOICEGW_CORS_ORIGINS=https://... (exact origins)")
def _cors(s: Settings, f: Facts) -> Outcome:
    if not s.cors_origins:
        return passed("no cross-origin callers allowed")
    plain = [o for o in s.cors_origins if not o.startswith("https://")]
    if plain:
        return warned(f"CORS allows credentials from plain-http origin(s): {', '.join(plain)}")
    return passed(f"{len(s.cors_origins)} explicit https origin(s)")
