"""What this deployment is configured to do, read from ``Settings`` and the store: the facts
each compliance control's "enabled" is derived from.

Only facts, never values: which secrets are set (never the secrets), how many users hold a
role (never who), whether a connection is encrypted (never its address).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from gateway.records.base import Role, Store
from gateway.settings import Settings, is_dev_secret, uses_dev_telnyx_key
from security.allowlist import is_loopback_host
from security.apikeys import KeyPolicy

__all__ = ["Facts", "Link", "gather_facts", "link_of"]

TLS_SSLMODES = frozenset({"require", "verify-ca", "verify-full"})


@dataclass(frozen=True, slots=True)
class Link:
    """One connection the gateway makes: ``protected`` when it is encrypted (TLS) or never
    leaves the machine (loopback, a Unix socket, a local file)."""

    name: str
    how: str  # "tls", "local", "plaintext", "not used"

    @property
    def protected(self) -> bool:
        return self.how != "plaintext"


@dataclass(frozen=True, slots=True)
class Facts:
    production: bool
    https: bool
    data_keys_configured: bool  # VOICEGW_ENCRYPTION_KEYS and VOICEGW_BLIND_INDEX_KEY set
    carriers: tuple[str, ...]
    carrier_secrets: dict[str, str]  # carrier -> "configured" | "development key" | "missing"
    allowlists: dict[str, str]  # carrier -> "any" | "N networks"
    trusted_proxy_wildcard: bool
    links: tuple[Link, ...]
    metrics_token: bool
    recording: bool
    recording_consent: str
    retention_calls_days: float
    retention_audit_days: float
    providers: tuple[str, ...]
    session_ttl_s: int
    lockout: str
    api_key_max_age_days: int
    store: str  # "sqlite" | "postgres"
    shared_state: str  # "in-process" | "redis"
    users: dict[str, int]  # role -> active users
    api_keys: dict[str, int]  # role -> keys that are accepted now

    @property
    def carriers_authenticated(self) -> bool:
        return all(self.carrier_secrets.get(c) == "configured" for c in self.carriers)

    @property
    def transmission_protected(self) -> bool:
        return all(link.protected for link in self.links)

    @property
    def subject_request_handlers(self) -> int:
        """Active users and usable API keys that may serve data-subject requests."""
        roles = (Role.ADMIN.value, Role.AUDITOR.value)
        return sum(self.users.get(r, 0) + self.api_keys.get(r, 0) for r in roles)


def _loopback(host: str | None) -> bool:
    if not host or host.startswith("/"):
        return True  # a Unix socket
    return is_loopback_host(host)


def link_of(name: str, url: str | None) -> Link:
    """How a connection to ``url`` travels: TLS by scheme (or ``sslmode``), else local or not."""
    if url is None:
        return Link(name, "not used")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("https", "wss", "rediss"):
        return Link(name, "tls")
    if scheme == "unix":
        return Link(name, "local")
    query = parse_qs(parts.query)
    if scheme in ("postgresql", "postgres"):
        if query.get("sslmode", [""])[-1] in TLS_SSLMODES:
            return Link(name, "tls")
        host = query.get("host", [parts.hostname or ""])[-1]
        return Link(name, "local" if _loopback(host) else "plaintext")
    return Link(name, "local" if _loopback(parts.hostname) else "plaintext")


def _links(s: Settings) -> tuple[Link, ...]:
    # The public URL is not among them: only https protects it whatever its host (a
    # loopback URL is a development set-up), and the controls check it as such.
    links = [
        link_of("Redis", s.redis_url.get() if s.redis_url else None),
        link_of("database", s.database_url.get())
        if s.database_url
        else Link("database (SQLite file)", "local"),
        link_of("Twilio REST API", s.twilio_api_url if "twilio" in s.carriers else None),
        link_of("Telnyx REST API", s.telnyx_api_url if "telnyx" in s.carriers else None),
    ]
    overrides = {
        "openai": s.openai_realtime_url,
        "deepgram": s.deepgram_agent_url,
        "gemini": s.gemini_live_url,
    }
    for provider in s.providers:
        url = overrides.get(provider)
        if url is not None:  # the providers' own URLs are wss://
            links.append(link_of(f"{provider} provider", url))
    return tuple(links)


def _carrier_secrets(s: Settings) -> dict[str, str]:
    found: dict[str, str] = {}
    for carrier in s.carriers:
        if carrier == "twilio":
            token = s.twilio_auth_token
            if token is None:
                found[carrier] = "missing"
            elif is_dev_secret(token.get()):
                found[carrier] = "development key"
            else:
                found[carrier] = "configured"
        else:
            if not s.telnyx_public_keys:
                found[carrier] = "missing"
            elif uses_dev_telnyx_key(s):
                found[carrier] = "development key"
            else:
                found[carrier] = "configured"
    return found


def _allowlists(s: Settings) -> dict[str, str]:
    found: dict[str, str] = {}
    for carrier in s.carriers:
        allowlist = s.allowlist(carrier)
        found[carrier] = "any" if allowlist.any else f"{len(allowlist.networks)} networks"
    return found


async def gather_facts(settings: Settings, store: Store, *, now: float | None = None) -> Facts:
    """The facts of ``settings`` and the accounts in ``store`` (counted by role)."""
    s = settings
    now = time.time() if now is None else now
    users = dict.fromkeys((r.value for r in Role), 0)
    for user in await store.list_users():
        if not user.disabled:
            users[user.role.value] += 1
    policy = KeyPolicy(s.api_key_max_age_days * 86400.0, s.api_key_grace_days * 86400.0)
    keys = dict.fromkeys((r.value for r in Role), 0)
    for key in await store.list_api_keys():
        state = policy.state(
            created_at=key.created_at, expires_at=key.expires_at, revoked_at=key.revoked_at, now=now
        )
        if state.accepted:
            keys[key.role.value] += 1
    return Facts(
        production=s.production,
        https=urlsplit(s.public_url).scheme == "https",
        data_keys_configured=s.encryption_keys is not None and s.blind_index_key is not None,
        carriers=s.carriers,
        carrier_secrets=_carrier_secrets(s),
        allowlists=_allowlists(s),
        trusted_proxy_wildcard=any(n.prefixlen == 0 for n in s.trusted_proxies),
        links=_links(s),
        metrics_token=s.metrics_token is not None,
        recording=s.recording,
        recording_consent=s.recording_consent,
        retention_calls_days=s.retention_calls_days,
        retention_audit_days=s.retention_audit_days,
        providers=s.providers,
        session_ttl_s=s.session_ttl_s,
        lockout=f"{s.login_lockout_failures} failures / {s.login_lockout_window_s} s",
        api_key_max_age_days=s.api_key_max_age_days,
        store="postgres" if s.database_url is not None else "sqlite",
        shared_state="redis" if s.redis_url is not None else "in-process",
        users=users,
        api_keys=keys,
    )
