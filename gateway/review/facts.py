"""What the security review observes besides the settings: keys, Redis, files, cookies, CSRF,
Sentry, logging and installed packages.

``collect_facts`` gathers them from the parts a gateway runs with (the command line builds
those parts itself; ``runtime_facts`` takes them from a running ``Runtime``). Everything here
is cheap and bounded (one Redis PING with a timeout, a bounded walk of the data directory), so
it can run at start-up and on every ``GET /api/v1/security/review``. ``Facts`` is a plain
frozen record: the checks are pure functions of it and the settings, so tests can change one
fact at a time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import logging.handlers
import os
import stat
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from redis.exceptions import AuthenticationError, ResponseError
from starlette.requests import Request
from starlette.responses import Response

from gateway.agents.directory import module_rules, tool_endpoints
from gateway.agents.loader import configured_providers, load_agents
from gateway.agents.profiles import AgentBook, AgentsFileError
from gateway.calls.destinations import wide
from gateway.calls.registry import CallRegistry
from gateway.operators.sessions import AuthError, AuthRuntime
from gateway.records.base import Role, Store, UserRecord
from gateway.review.deps import installed_versions
from gateway.review.inventory import key_inventory
from gateway.settings import Settings
from metrics.logging import JsonFormatter
from metrics.sentry import PRIVACY_OPTIONS
from security import crypto
from security.keyinventory import KeyInventory
from security.rediskeys import RedisClient
from security.signing_keys import KeyRing

if TYPE_CHECKING:
    from gateway.runtime import Runtime

REDIS_PROBE_S: Final = 1.0
MAX_WALK: Final = 20_000
"""Entries of the data directory looked at, at most (recordings can be many)."""
PROBE_USER: Final = "security-review-probe"


@dataclass(frozen=True, slots=True)
class RedisFacts:
    reachable: bool  # it answered (even if only to refuse an unauthenticated command)
    error: str | None = None  # the exception's type name when it did not


@dataclass(frozen=True, slots=True)
class CookieFacts:
    name: str
    secure: bool
    http_only: bool
    same_site: str  # lower case; "" when absent


@dataclass(frozen=True, slots=True)
class SentryFacts:
    active: bool  # an SDK client runs in this process
    configured: bool = False  # SENTRY_DSN is set (``voicegw serve`` starts the SDK)
    send_default_pii: bool = False
    request_bodies: str = "never"
    scrubbing: bool = True  # before_send and the event scrubber are set


@dataclass(frozen=True, slots=True)
class AgentsFacts:
    """The agent profiles as the review sees them (``gateway.agents``)."""

    from_file: bool
    problems: tuple[str, ...] = ()  # the file on disk does not load (or a reload was refused)
    http_tools: tuple[str, ...] = ()  # "agent.tool" of every tool that calls a URL
    cleartext_tools: tuple[str, ...] = ()  # ... of those, the ones on http://
    handlers: tuple[str, ...] = ()  # "agent.tool" of every in-process Python handler
    file_mode: int | None = None  # the agents file's permission bits
    transfers: int = 0  # transfer destinations across the profiles
    wide_destinations: tuple[str, ...] = ()  # agents whose allowed_destinations span countries
    deny_overrides: tuple[str, ...] = ()  # "agent (+1900, ...)" of agents lifting the deny list


@dataclass(frozen=True, slots=True)
class Facts:
    now: float
    keys: KeyInventory
    redis: RedisFacts | None = None  # None: no Redis configured
    loose_paths: tuple[str, ...] = ()  # data-directory entries group or others may use
    cookies: tuple[CookieFacts, ...] = ()
    csrf_enforced: bool = True
    sentry: SentryFacts = SentryFacts(active=False)
    plain_log_handlers: tuple[str, ...] = ()  # handlers writing log lines without redaction
    redaction_works: bool = True
    versions: Mapping[str, str] = field(default_factory=dict)
    # Replicas whose call-registry heartbeat is live (Redis); None when not known.
    replicas_seen: int | None = None
    # A loopback peer sent X-Forwarded-For that no trusted proxy vouches for (running gateway).
    untrusted_forwarded: bool = False
    agents: AgentsFacts = AgentsFacts(from_file=False)
    # ("agents.NAME.tools.TOOL" or "VOICEGW_EVENTS_URL", url): the customer's endpoints.
    endpoints: tuple[tuple[str, str], ...] = ()


async def collect_facts(
    settings: Settings,
    *,
    signing: KeyRing,
    data_keys: crypto.KeyRing,
    store: Store | None,
    redis: RedisClient | None,
    auth: AuthRuntime,
    registry: CallRegistry | None = None,
    now: float | None = None,
    agents: AgentBook | None = None,
    agents_problems: tuple[str, ...] = (),
) -> Facts:
    at = time.time() if now is None else now
    inventory = await key_inventory(
        settings, signing=signing, data_keys=data_keys, store=store, redis=redis, now=at
    )
    return Facts(
        now=at,
        keys=inventory,
        redis=None if redis is None else await probe_redis(redis),
        loose_paths=await asyncio.to_thread(loose_paths, settings.data_dir),
        cookies=cookie_facts(auth),
        csrf_enforced=csrf_enforced(auth, settings.public_url),
        sentry=sentry_facts(),
        plain_log_handlers=plain_log_handlers(),
        redaction_works=redaction_works(),
        versions=installed_versions(),
        replicas_seen=None if registry is None else await live_replicas(registry),
        agents=await asyncio.to_thread(agents_facts, settings, agents, agents_problems),
        endpoints=await asyncio.to_thread(customer_endpoints, settings, agents),
    )


def agents_facts(
    settings: Settings, book: AgentBook | None, problems: tuple[str, ...] = ()
) -> AgentsFacts:
    """What the review needs of the agent profiles: ``book`` (those in force, from a running
    gateway) or, without it, the agents file read now."""
    path = settings.agents_file
    if path is None:
        return AgentsFacts(from_file=False)
    try:
        mode: int | None = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = None
    if book is None:
        try:
            book = load_agents(
                path,
                configured_providers=configured_providers(settings),
                production=settings.production,
                modules=module_rules(settings),
            )
        except AgentsFileError as exc:
            return AgentsFacts(from_file=True, problems=tuple(exc.problems), file_mode=mode)
    tools = [(p.name, t) for p in book.profiles.values() for t in p.tools]
    return AgentsFacts(
        from_file=True,
        problems=problems,
        http_tools=tuple(f"{a}.{t.name}" for a, t in tools if t.url is not None),
        cleartext_tools=tuple(
            f"{a}.{t.name}" for a, t in tools if t.url is not None and t.url.startswith("http:")
        ),
        handlers=tuple(f"{a}.{t.name}" for a, t in tools if t.handler is not None),
        file_mode=mode,
        transfers=sum(len(p.transfer) for p in book.profiles.values()),
        wide_destinations=tuple(
            p.name for p in book.profiles.values() if wide(p.allowed_destinations)
        ),
        deny_overrides=tuple(
            f"{p.name} ({', '.join(p.allow_denied_prefixes)})"
            for p in book.profiles.values()
            if p.allow_denied_prefixes
        ),
    )


def customer_endpoints(settings: Settings, book: AgentBook | None) -> tuple[tuple[str, str], ...]:
    """Every tool URL of ``book`` (or of the agents file read now) and ``VOICEGW_EVENTS_URL``,
    labelled as start-up messages name them."""
    if book is None and settings.agents_file is not None:
        try:
            book = load_agents(
                settings.agents_file,
                configured_providers=configured_providers(settings),
                production=settings.production,
                modules=module_rules(settings),
            )
        except AgentsFileError:
            book = None  # the agents.file check reports it
    found = [] if book is None else tool_endpoints(book)
    if settings.events_url is not None:
        found.append(("VOICEGW_EVENTS_URL", settings.events_url))
    return tuple(found)


async def runtime_facts(runtime: Runtime, *, now: float | None = None) -> Facts:
    facts = await collect_facts(
        runtime.settings,
        signing=runtime.auth.tokens.ring,
        data_keys=runtime.data_keys,
        store=runtime.store,
        redis=runtime.redis,
        auth=runtime.auth,
        registry=runtime.registry if runtime.redis is not None else None,
        now=now,
        agents=runtime.agents.book,
        agents_problems=() if (last := runtime.agents.last_reload) is None else last.problems,
    )
    return dataclasses.replace(
        facts, untrusted_forwarded=runtime.clients.resolver.untrusted_forwarded > 0
    )


async def live_replicas(registry: CallRegistry) -> int | None:
    """The replicas the call registry's heartbeats show alive; None when it cannot say."""
    try:
        async with asyncio.timeout(REDIS_PROBE_S):
            return await registry.live_replicas()
    except Exception:
        return None


async def probe_redis(client: RedisClient) -> RedisFacts:
    try:
        async with asyncio.timeout(REDIS_PROBE_S):
            await client.ping()
    except AuthenticationError:
        return RedisFacts(reachable=True, error="AuthenticationError")
    except ResponseError as exc:  # NOAUTH and the like: the server is there
        return RedisFacts(reachable=True, error=type(exc).__name__)
    except Exception as exc:
        return RedisFacts(reachable=False, error=type(exc).__name__)
    return RedisFacts(reachable=True)


def loose_paths(data_dir: Path, limit: int = MAX_WALK) -> tuple[str, ...]:
    """Entries of ``data_dir`` (itself included) that group or others may read, write or
    enter, as paths relative to it. Symbolic links are not followed."""
    try:
        mode = data_dir.lstat().st_mode
    except OSError:
        return ()
    found: list[str] = ["."] if mode & 0o077 else []
    seen = 0
    for root, dirs, files in os.walk(data_dir):
        for name in (*dirs, *files):
            seen += 1
            if seen > limit:
                return tuple(found)
            path = Path(root, name)
            try:
                st = path.lstat()
            except OSError:
                continue
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
                found.append(str(path.relative_to(data_dir)))
    return tuple(found)


def _probe_user() -> UserRecord:
    return UserRecord(user_id=PROBE_USER, username=PROBE_USER, role=Role.OPERATOR, password_hash="")


def cookie_facts(auth: AuthRuntime) -> tuple[CookieFacts, ...]:
    """The attributes of the session cookies this gateway sets, read back from a response its
    own code filled (a token is signed but never sent anywhere)."""
    response = Response()
    auth.set_session(response, auth.mint(_probe_user(), "review"), 60)
    auth.set_refresh(response, "review", 60)
    found: list[CookieFacts] = []
    for header in response.headers.getlist("set-cookie"):
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        for name, morsel in jar.items():
            found.append(
                CookieFacts(
                    name=name,
                    secure=bool(morsel["secure"]),
                    http_only=bool(morsel["httponly"]),
                    same_site=str(morsel["samesite"]).lower(),
                )
            )
    return tuple(found)


def csrf_enforced(auth: AuthRuntime, public_url: str) -> bool:
    """Whether this gateway's CSRF check accepts a correct request and refuses a foreign
    origin, a mismatched token and a token not bound to the session."""
    minted = auth.mint(_probe_user(), "review")
    names = auth.config.cookies
    good = minted.csrf_token

    def request(origin: str, header: str, cookie: str) -> Request:
        headers = [
            (b"origin", origin.encode()),
            (b"x-csrf-token", header.encode()),
            (b"cookie", f"{names.csrf}={cookie}".encode()),
        ]
        return Request({"type": "http", "method": "POST", "path": "/", "headers": headers})

    def refused(req: Request) -> bool:
        try:
            auth.check_csrf(req, minted.claims)
        except AuthError:
            return True
        return False

    own = public_url.rstrip("/")
    other = auth.mint(_probe_user(), "review").csrf_token
    return (
        not refused(request(own, good, good))
        and refused(request("https://attacker.invalid", good, good))
        and refused(request(own, good, other))
        and refused(request(own, other, other))
    )


def sentry_facts(client: Any = None) -> SentryFacts:
    """The options of ``client`` (default: this process's Sentry client). When none runs here
    but ``SENTRY_DSN`` is set (the command line), the options ``metrics.sentry.init`` would
    pass."""
    import sentry_sdk

    configured = bool(os.environ.get("SENTRY_DSN"))
    current = sentry_sdk.get_client() if client is None else client
    if not current.is_active():
        return SentryFacts(
            active=False,
            configured=configured,
            send_default_pii=bool(PRIVACY_OPTIONS["send_default_pii"]),
            request_bodies=str(PRIVACY_OPTIONS["max_request_body_size"]),
        )
    options = current.options
    # Newer SDKs also take ``data_collection``; given explicitly, it decides what is sent.
    collection = options.get("data_collection") or {}
    explicit = bool(collection.get("provided_by_user"))
    bodies = str(options.get("max_request_body_size"))
    if explicit and collection.get("http_bodies"):
        bodies = "data_collection.http_bodies"
    return SentryFacts(
        active=True,
        configured=configured,
        send_default_pii=bool(current.should_send_default_pii())
        or (explicit and bool(collection.get("user_info"))),
        request_bodies=bodies,
        scrubbing=options.get("before_send") is not None
        and options.get("event_scrubber") is not None,
    )


_STD_STREAMS: Final = (sys.__stdout__, sys.__stderr__)
LOGGERS_REVIEWED: Final = ("", "voicegw", "uvicorn", "uvicorn.error", "uvicorn.access")


def plain_log_handlers() -> tuple[str, ...]:
    """Handlers of the root, voicegw and uvicorn loggers that write lines out (a console, a
    file, the network) without voicegw's redacting JSON formatter."""
    found: list[str] = []
    for name in LOGGERS_REVIEWED:
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if isinstance(handler.formatter, JsonFormatter) or not writes_out(handler):
                continue
            found.append(f"{name or 'root'}:{type(handler).__name__}")
    return tuple(found)


def writes_out(handler: logging.Handler) -> bool:
    if isinstance(handler, logging.FileHandler):
        return handler.baseFilename != os.devnull
    if isinstance(
        handler,
        logging.handlers.SysLogHandler
        | logging.handlers.SocketHandler
        | logging.handlers.HTTPHandler
        | logging.handlers.SMTPHandler,
    ):
        return True
    if isinstance(handler, logging.StreamHandler):
        stream = handler.stream
        return stream in (sys.stdout, sys.stderr) or stream in _STD_STREAMS
    return False


_CANARY: Final = {
    "phone": "+14155550123",
    "email": "review.canary@example.com",
    "secret": "canary-secret-value",
    "ip": "203.0.113.77",
}


def redaction_works() -> bool:
    """Whether the log formatter masks a phone number, an email, a credential field and a
    client address (one canary record, formatted, never emitted)."""
    record = logging.makeLogRecord(
        {
            "name": "voicegw.review",
            "levelname": "INFO",
            "levelno": logging.INFO,
            "msg": f"call from {_CANARY['phone']} for {_CANARY['email']}",
            "token": _CANARY["secret"],
            "client_ip": _CANARY["ip"],
        }
    )
    line = JsonFormatter(ip_hash_key=b"\0" * 32).format(record)
    return not any(
        value in line
        for value in (_CANARY["phone"][2:], _CANARY["email"], _CANARY["secret"], _CANARY["ip"])
    )
