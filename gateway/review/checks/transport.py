"""Environment, transport and carrier secrets: production mode, providers, https, clear-text
outbound URLs, trusted proxies, webhook allowlists, signature secrets.

The verdicts on settings that production refuses (too wide networks, clear-text URLs, secrets
of the wrong shape, echo as a provider) come from the helpers ``Settings.from_env`` uses, so
the review and the start-up refusal never disagree."""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.review.checks.base import Outcome, Registry, failed, passed, warned
from gateway.review.facts import Facts
from gateway.review.model import Severity
from gateway.settings import (
    ECHO_WHY,
    Settings,
    cleartext_urls,
    is_dev_secret,
    secret_problem,
    uses_dev_telnyx_key,
)
from security.allowlist import too_wide

REGISTRY = Registry()
check = REGISTRY.check
CHECKS = REGISTRY.checks


@check("env.production", Severity.CRITICAL, "VOICEGW_ENV=production")
def _env(s: Settings, f: Facts) -> Outcome:
    if s.production:
        return passed("production mode: unsafe settings are refused at start-up")
    return failed("development mode: development keys and defaults are accepted")


@check("providers.no_echo", Severity.CRITICAL, "VOICEGW_PROVIDERS=<real providers only>")
def _no_echo(s: Settings, f: Facts) -> Outcome:
    if "echo" in s.providers:
        return failed(f"echo is listed: {ECHO_WHY}")
    return passed(f"providers: {', '.join(s.providers)} (no echo)")


@check("url.https", Severity.CRITICAL, "VOICEGW_PUBLIC_URL=https://...")
def _https(s: Settings, f: Facts) -> Outcome:
    if urlsplit(s.public_url).scheme == "https":
        return passed("public URL is https (webhooks, media over wss, Secure cookies)")
    return failed("public URL is plain http: carrier traffic and cookies travel in clear")


@check(
    "url.cleartext",
    Severity.CRITICAL,
    "https:// and wss:// for VOICEGW_*_API_URL and the provider URLs (plain only to loopback)",
)
def _cleartext(s: Settings, f: Facts) -> Outcome:
    found = cleartext_urls(s)
    if found:
        return failed("; ".join(found))
    return passed("carrier REST and provider URLs use TLS (or stay on this host)")


@check("proxies.specific", Severity.CRITICAL, "VOICEGW_TRUSTED_PROXIES=<proxy CIDRs>")
def _proxies(s: Settings, f: Facts) -> Outcome:
    if wide := too_wide(s.trusted_proxies):
        return failed(f"trusted proxies {wide}: anyone there can forge X-Forwarded-For")
    if not s.trusted_proxies:
        return passed("no proxy trusted: X-Forwarded-For is ignored")
    return passed(f"{len(s.trusted_proxies)} specific proxy network(s) trusted")


@check(
    "proxies.forwarded",
    Severity.CRITICAL,
    "VOICEGW_TRUSTED_PROXIES=127.0.0.1/32 (the reverse proxy on this host)",
)
def _forwarded(s: Settings, f: Facts) -> Outcome:
    if f.untrusted_forwarded:
        return failed(
            "requests from loopback carry X-Forwarded-For but loopback is not a trusted proxy: "
            "every client of the proxy on this host looks like 127.0.0.1 (one login-limit "
            "bucket, local to loopback-only endpoints)"
        )
    return passed("no forwarded request from an undeclared proxy on this host")


def _allowlist(s: Settings, carrier: str) -> Outcome:
    if carrier not in s.carriers:
        return passed(f"{carrier} not enabled")
    allow = s.allowlist(carrier)
    name = f"VOICEGW_{carrier.upper()}_ALLOWLIST"
    if allow.empty:
        return failed(f"{carrier} allowlist is empty: every webhook is refused")
    if allow.any:
        if carrier == "twilio":
            return warned(
                "twilio allowlist is 'any': Twilio publishes no stable source ranges, so the "
                "signature alone keeps forged webhooks out",
                f"{name}=<your proxy or egress CIDRs> when you have them",
            )
        return warned(
            "telnyx allowlist is 'any' although Telnyx publishes its webhook ranges",
            f"unset {name} in production (Telnyx's published ranges apply)",
        )
    if wide := too_wide(allow.networks):
        return failed(f"{carrier} allowlist {wide}: as open as 'any', without saying so")
    if allow.source.startswith("development default"):
        return warned(f"{carrier} allowlist is the development default (loopback only)")
    return passed(f"{carrier} allowlist: {len(allow.networks)} network(s) ({allow.source})")


@check(
    "allowlist.twilio",
    Severity.CRITICAL,
    "VOICEGW_TWILIO_ALLOWLIST=<CIDRs> (or 'any' explicitly)",
)
def _allow_twilio(s: Settings, f: Facts) -> Outcome:
    return _allowlist(s, "twilio")


@check(
    "allowlist.telnyx",
    Severity.CRITICAL,
    "VOICEGW_TELNYX_ALLOWLIST=<CIDRs>, or unset in production for Telnyx's published ranges",
)
def _allow_telnyx(s: Settings, f: Facts) -> Outcome:
    return _allowlist(s, "telnyx")


@check("secrets.twilio", Severity.CRITICAL, "VOICEGW_TWILIO_AUTH_TOKEN=<account auth token>")
def _secrets_twilio(s: Settings, f: Facts) -> Outcome:
    if "twilio" not in s.carriers:
        return passed("twilio not enabled")
    token = s.twilio_auth_token
    if token is None:
        return failed("no Twilio auth token: Twilio webhooks cannot be verified")
    if is_dev_secret(token.get()):
        return failed("the Twilio auth token is a generated development key")
    secondary = s.twilio_auth_token_secondary
    weak = [
        problem
        for name, value in (
            ("VOICEGW_TWILIO_AUTH_TOKEN", token),
            ("VOICEGW_TWILIO_AUTH_TOKEN_SECONDARY", secondary),
        )
        if value is not None and (problem := secret_problem(name, value.get()))
    ]
    if weak:
        return failed("; ".join(weak))
    return passed("Twilio auth token set")


@check(
    "secrets.telnyx",
    Severity.CRITICAL,
    "VOICEGW_TELNYX_PUBLIC_KEY=<account public key>, VOICEGW_TELNYX_API_KEY=<API key>",
)
def _secrets_telnyx(s: Settings, f: Facts) -> Outcome:
    if "telnyx" not in s.carriers:
        return passed("telnyx not enabled")
    if not s.telnyx_public_keys:
        return failed("no Telnyx public key: Telnyx webhooks cannot be verified")
    if uses_dev_telnyx_key(s):
        return failed("the Telnyx public key is the generated development key")
    api_key = s.telnyx_api_key
    if api_key is not None and is_dev_secret(api_key.get()):
        return failed("the Telnyx API key is a development key")
    if api_key is not None and (weak := secret_problem("VOICEGW_TELNYX_API_KEY", api_key.get())):
        return failed(weak)
    if api_key is None:
        return warned(
            "Telnyx public key set, but no API key: Telnyx calls cannot be answered",
            "VOICEGW_TELNYX_API_KEY=<API key>",
        )
    return passed(f"Telnyx public key(s) ({len(s.telnyx_public_keys)}) and API key set")
