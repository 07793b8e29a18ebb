"""Every check of the security review against a production-like deployment: the baseline
passes every check, and changing exactly one setting (or one observed fact: a file mode, a log
handler, a key's age) makes exactly that check warn or fail and leaves every other passing.

Facts are collected for real each time (store, key rings, Redis, session code), from the
settings as changed; only the facts that no setting controls (a CSRF defect, a Sentry client
with PII on, an old package) are changed on the collected record itself.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import sentry_sdk
from sentry_sdk.scrubber import EventScrubber

from gateway.records.base import ApiKeyRecord, Role
from gateway.records.sqlite import SqliteStore
from gateway.review.checks import CHECKS, review
from gateway.review.cli import settings_facts
from gateway.review.facts import CookieFacts, Facts, SentryFacts, sentry_facts
from gateway.review.inventory import FIRST_SEEN_REDIS_KEY
from gateway.review.model import Severity, Status
from gateway.services import load_data_keys
from gateway.settings import AllowlistSetting, Env, Settings
from metrics.sentry import PRIVACY_OPTIONS
from security.keyinventory import RedisFirstSeen, fingerprint
from security.secret import Secret
from security.signing_keys import default_path, rotate
from security.standard_webhooks import new_secret, secret_bytes
from tests.review.conftest import ReviewRedis, not_passing, review_of

DAY = 86400.0
WARN, FAIL = Status.WARN, Status.FAIL


async def test_the_production_like_baseline_passes_every_check(baseline: Settings) -> None:
    report = await review_of(baseline)
    assert not_passing(report) == {}, report.render()
    assert report.exit_code == 0
    assert [f.id for f in report.findings] == [c.id for c in CHECKS]


def test_check_ids_are_stable_and_unique() -> None:
    ids = [c.id for c in CHECKS]
    assert len(ids) == len(set(ids))
    assert set(ids) == {
        "env.production", "providers.no_echo", "url.https", "url.cleartext",
        "proxies.specific", "proxies.forwarded", "allowlist.twilio",
        "allowlist.telnyx", "secrets.twilio", "secrets.telnyx", "secrets.twilio_secondary_age",
        "keys.signing.age", "keys.data.age", "keys.api.age", "keys.tools.age",
        "keys.events.age", "keys.retired", "redis.configured", "store.shared",
        "redis.reachable", "redis.auth", "redis.tls",
        "sessions.cookies", "sessions.lifetimes", "sessions.csrf", "cors.explicit",
        "data.encryption_keys", "data.retention", "data.recording_consent", "data.permissions",
        "obs.metrics_protected", "obs.sentry_pii", "obs.log_redaction", "deps.known_bad",
        "agents.file", "agents.tools_signed", "agents.tools_https", "agents.file_permissions",
        "agents.handlers", "agents.destinations",
        "egress.https", "egress.private", "egress.allowed_private",
    }  # fmt: skip


def _allow(s: Settings, carrier: str, setting: AllowlistSetting) -> dict[str, Any]:
    return {"allowlists": {**s.allowlists, carrier: setting}}


# (check that must change, its status, the one setting changed)
SETTING_FLIPS: list[tuple[str, Status, Callable[[Settings], dict[str, Any]]]] = [
    ("env.production", FAIL, lambda s: {"env": Env.DEVELOPMENT}),
    ("url.https", FAIL, lambda s: {"public_url": "http://gw.example.com"}),
    ("proxies.specific", FAIL, lambda s: {
        "trusted_proxies": (ipaddress.ip_network("0.0.0.0/0"),)}),
    # Two halves of the Internet are the wildcard spelt twice; so is the IPv4-mapped block.
    ("proxies.specific", FAIL, lambda s: {"trusted_proxies": (
        ipaddress.ip_network("0.0.0.0/1"), ipaddress.ip_network("128.0.0.0/1"))}),
    ("proxies.specific", FAIL, lambda s: {
        "trusted_proxies": (ipaddress.ip_network("::ffff:0:0/96"),)}),
    ("proxies.specific", FAIL, lambda s: {
        "trusted_proxies": (ipaddress.ip_network("2000::/3"),)}),
    ("providers.no_echo", FAIL, lambda s: {"providers": ("openai", "echo")}),
    ("url.cleartext", FAIL, lambda s: {"twilio_api_url": "http://api.twilio.com"}),
    ("url.cleartext", FAIL, lambda s: {"telnyx_api_url": "http://api.telnyx.com"}),
    ("url.cleartext", FAIL, lambda s: {"openai_realtime_url": "ws://fake.example.com/v1"}),
    ("url.cleartext", FAIL, lambda s: {"deepgram_agent_url": "ws://10.0.0.5/agent"}),
    ("url.cleartext", FAIL, lambda s: {"gemini_live_url": "ws://gemini.example.com/live"}),
    ("allowlist.twilio", FAIL, lambda s: _allow(s, "twilio", AllowlistSetting(
        networks=(ipaddress.ip_network("0.0.0.0/0"),), source="VOICEGW_TWILIO_ALLOWLIST"))),
    ("allowlist.telnyx", FAIL, lambda s: _allow(s, "telnyx", AllowlistSetting(
        networks=(ipaddress.ip_network("0.0.0.0/1"), ipaddress.ip_network("128.0.0.0/1")),
        source="VOICEGW_TELNYX_ALLOWLIST"))),
    ("allowlist.twilio", WARN, lambda s: _allow(s, "twilio", AllowlistSetting(any=True))),
    ("allowlist.telnyx", FAIL, lambda s: _allow(s, "telnyx", AllowlistSetting())),
    ("allowlist.telnyx", WARN, lambda s: _allow(s, "telnyx", AllowlistSetting(any=True))),
    ("secrets.twilio", FAIL, lambda s: {"twilio_auth_token": Secret("dev-0123456789abcdef")}),
    ("secrets.twilio", FAIL, lambda s: {"twilio_auth_token": None}),
    ("secrets.twilio", FAIL, lambda s: {"twilio_auth_token": Secret("x")}),
    ("secrets.twilio", FAIL, lambda s: {"twilio_auth_token_secondary": Secret("not-hex-" * 4)}),
    ("secrets.telnyx", FAIL, lambda s: {"telnyx_api_key": Secret("KEY0123")}),
    ("secrets.telnyx", FAIL, lambda s: {"telnyx_public_keys": ()}),
    ("secrets.telnyx", WARN, lambda s: {"telnyx_api_key": None}),
    ("store.shared", FAIL, lambda s: {"replicas": 2}),
    ("sessions.lifetimes", WARN, lambda s: {"refresh_ttl_s": 60 * 86400}),
    ("sessions.lifetimes", WARN, lambda s: {"stream_token_ttl_s": 900}),
    ("cors.explicit", WARN, lambda s: {"cors_origins": ("http://ops.example.com",)}),
    ("data.encryption_keys", FAIL, lambda s: {"encryption_keys": None}),
    ("data.encryption_keys", FAIL, lambda s: {"blind_index_key": None}),
    ("data.retention", WARN, lambda s: {"retention_calls_days": 3650.0}),
    ("data.retention", WARN, lambda s: {"retention_audit_days": 90.0}),
    ("data.recording_consent", WARN, lambda s: {"recording_consent": "all"}),
    ("obs.metrics_protected", FAIL, lambda s: {"metrics_token": Secret("x")}),
    ("obs.metrics_protected", FAIL, lambda s: {"metrics_token": Secret("short-token")}),
    ("obs.metrics_protected", FAIL, lambda s: {"metrics_token": Secret("ab" * 32)}),
    ("obs.metrics_protected", FAIL, lambda s: {"metrics_token": Secret("dev-" + "x" * 40)}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("check_id", "status", "change"),
    SETTING_FLIPS,
    ids=[f"{c}-{s.value}-{i}" for i, (c, s, _) in enumerate(SETTING_FLIPS)],
)
async def test_one_setting_flips_exactly_its_check(
    baseline: Settings, check_id: str, status: Status, change: Callable[[Settings], Any]
) -> None:
    report = await review_of(dataclasses.replace(baseline, **change(baseline)))
    assert not_passing(report) == {check_id: status}, report.render()


async def test_several_replicas_without_redis_fail_the_redis_and_store_checks(
    baseline: Settings,
) -> None:
    report = await review_of(dataclasses.replace(baseline, redis_url=None, replicas=2))
    assert not_passing(report) == {"redis.configured": FAIL, "store.shared": FAIL}
    assert "2 replicas (VOICEGW_REPLICAS) but no Redis" in report.get("redis.configured").finding


# -- Redis: the real server answers (or refuses) --------------------------------------------


@pytest.mark.parametrize(
    ("check_id", "status", "severity", "url"),
    [
        ("redis.reachable", WARN, Severity.WARNING, lambda r: r.url().replace(
            f":{r.server.port}/", ":1/")),
        ("redis.auth", FAIL, Severity.WARNING, lambda r: r.url(password=None)),
        ("redis.tls", FAIL, Severity.CRITICAL, lambda r: r.url(host=r.external_ip)),
    ],
    ids=["unreachable", "no-password", "plain-redis-to-another-host"],
)  # fmt: skip
async def test_redis_url_flips_exactly_its_check(
    baseline: Settings,
    review_redis: ReviewRedis,
    check_id: str,
    status: Status,
    severity: Severity,
    url: Callable[[ReviewRedis], str],
) -> None:
    if check_id == "redis.tls":
        assert review_redis.external_ip, "this machine has no non-loopback IPv4 address"
    report = await review_of(dataclasses.replace(baseline, redis_url=Secret(url(review_redis))))
    assert not_passing(report) == {check_id: status}, report.render()
    assert report.get(check_id).severity is severity


async def test_redis_without_password_to_another_host_is_critical(
    baseline: Settings, review_redis: ReviewRedis
) -> None:
    assert review_redis.external_ip
    url = review_redis.url(host=review_redis.external_ip, password=None)
    report = await review_of(dataclasses.replace(baseline, redis_url=Secret(url)))
    assert not_passing(report) == {"redis.auth": FAIL, "redis.tls": FAIL}
    assert report.get("redis.auth").severity is Severity.CRITICAL


# -- keys: ages from the key file, the store and the first-seen record -------------------------


async def _mark_first_seen(settings: Settings, name: str, at: float) -> None:
    import redis.asyncio as aioredis

    assert settings.redis_url is not None
    client = aioredis.Redis.from_url(settings.redis_url.get())
    try:
        await RedisFirstSeen(client, settings.redis_key_prefix + FIRST_SEEN_REDIS_KEY).mark(
            [name], at
        )
    finally:
        await client.aclose()


async def test_signing_key_within_14_days_of_rotation_warns(baseline: Settings) -> None:
    rotate(default_path(baseline.data_dir), 86400, clock=lambda: time.time() - 80 * DAY)
    report = await review_of(baseline)
    assert not_passing(report) == {"keys.signing.age": WARN}, report.render()
    assert "rotation due in 10 days" in report.get("keys.signing.age").finding


async def test_signing_key_past_rotation_fails(baseline: Settings) -> None:
    rotate(default_path(baseline.data_dir), 86400, clock=lambda: time.time() - 95 * DAY)
    report = await review_of(baseline)
    assert not_passing(report) == {"keys.signing.age": FAIL}, report.render()
    assert report.get("keys.signing.age").severity is Severity.WARNING  # never blocks a start


async def test_retired_signing_key_kept_past_token_lifetime_warns(baseline: Settings) -> None:
    path = default_path(baseline.data_dir)
    rotate(path, 86400, clock=lambda: time.time() - 3 * DAY)
    rotate(path, 86400, clock=lambda: time.time() - 2 * DAY)  # retires the first one
    report = await review_of(baseline)
    assert not_passing(report) == {"keys.retired": WARN}, report.render()


async def test_tool_and_event_secrets_age_and_their_overlap(baseline: Settings) -> None:
    """The first secret of VOICEGW_TOOLS_SECRET / VOICEGW_EVENTS_SECRET ages like any key
    (90 days from first seen); an older one listed after it is retired, needed 7 days."""

    def with_secrets(tools: str, events: str) -> Settings:
        return dataclasses.replace(
            baseline,
            tools_secrets=Secret(tools),
            events_url="https://hooks.example.com/voicegw",
            events_secrets=Secret(events),
        )

    report = await review_of(with_secrets(f"{new_secret()} {new_secret()}", new_secret()))
    assert not_passing(report) == {}, report.render()
    assert "tool signing secret" in report.get("keys.tools.age").finding

    def fp(kind: str, secret: str) -> str:
        return fingerprint(kind, secret_bytes(secret)[0])

    new, old, event = (new_secret() for _ in range(3))
    settings = with_secrets(f"{new} {old}", event)
    await _mark_first_seen(settings, f"tools:{fp('tools', new)}", time.time() - 95 * DAY)
    await _mark_first_seen(settings, f"events:{fp('events', event)}", time.time() - 80 * DAY)
    await _mark_first_seen(settings, f"tools-retired:{fp('tools', old)}", time.time() - 8 * DAY)
    report = await review_of(settings)
    assert not_passing(report) == {
        "keys.tools.age": FAIL,
        "keys.events.age": WARN,
        "keys.retired": WARN,
    }, report.render()
    assert "rotation was due 5 days ago" in report.get("keys.tools.age").finding
    assert f"tools {fp('tools', old)[:12]}" in report.get("keys.retired").finding
    inventory = (await settings_facts(settings)).keys
    kinds = {row["kind"]: row for row in inventory.summary()}
    assert kinds["tools"]["active"] == 1 and kinds["tools"]["retired"] == 1
    assert kinds["events"]["active"] == 1 and kinds["events"]["rotation_due_in_s"] > 0
    for secret in (new, old, event):
        assert secret.removeprefix("whsec_") not in str(inventory.as_dict())


async def test_data_key_first_seen_85_days_ago_warns(baseline: Settings) -> None:
    keyring, _ = load_data_keys(baseline)
    fp = keyring.fingerprint(keyring.active_key_id)
    await _mark_first_seen(baseline, f"data:{fp}", time.time() - 85 * DAY)
    report = await review_of(baseline)
    assert not_passing(report) == {"keys.data.age": WARN}, report.render()
    assert "(since first seen)" in report.get("keys.data.age").finding


async def test_api_key_past_its_max_age_fails(baseline: Settings) -> None:
    store = SqliteStore(baseline.data_dir / "voicegw.sqlite3")
    baseline.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    await store.open()
    try:
        await store.add_api_key(
            ApiKeyRecord("abcdefghijkl", "billing", Role.OPERATOR, "0" * 64,
                         created_at=time.time() - 92 * DAY)
        )  # fmt: skip
    finally:
        await store.close()
    report = await review_of(baseline)
    assert not_passing(report) == {"keys.api.age": FAIL}, report.render()
    assert "abcdefghijkl" in report.get("keys.api.age").finding


async def test_secondary_twilio_token_past_promotion_window_warns(baseline: Settings) -> None:
    new_token = "e" * 32
    fresh = await review_of(
        dataclasses.replace(baseline, twilio_auth_token_secondary=Secret(new_token))
    )
    assert not_passing(fresh) == {}, fresh.render()  # just configured: promotion under way
    token = "f" * 32
    name = f"twilio_secondary:{fingerprint('twilio', token.encode())}"
    await _mark_first_seen(baseline, name, time.time() - 8 * DAY)
    report = await review_of(
        dataclasses.replace(baseline, twilio_auth_token_secondary=Secret(token))
    )
    assert not_passing(report) == {"secrets.twilio_secondary_age": WARN}, report.render()
    assert token not in report.render()


# -- files and logging in this process -----------------------------------------------------------


async def test_a_file_others_can_read_fails_permissions(baseline: Settings) -> None:
    await review_of(baseline)  # creates the store, key files, first-seen record
    (baseline.data_dir / "voicegw.sqlite3").chmod(0o644)
    report = await review_of(baseline)
    assert not_passing(report) == {"data.permissions": FAIL}, report.render()
    assert "voicegw.sqlite3" in report.get("data.permissions").finding


async def test_a_data_directory_others_can_enter_fails_permissions(baseline: Settings) -> None:
    await review_of(baseline)
    baseline.data_dir.chmod(0o755)
    report = await review_of(baseline)
    assert not_passing(report) == {"data.permissions": FAIL}, report.render()


async def test_a_log_handler_without_redaction_fails(baseline: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(handler)
    try:
        report = await review_of(baseline)
    finally:
        logging.getLogger().removeHandler(handler)
    assert not_passing(report) == {"obs.log_redaction": FAIL}, report.render()


# -- facts no setting controls --------------------------------------------------------------------


def _sentry_facts(**options: Any) -> SentryFacts:
    """The facts of a real (never sending) Sentry client with ``options``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The send_default_pii option", DeprecationWarning)
        client = sentry_sdk.Client(**options)  # no DSN: nothing can be sent
    try:
        return sentry_facts(client)
    finally:
        client.close()


def _sentry_with_pii() -> SentryFacts:
    return _sentry_facts(send_default_pii=True)


FACT_FLIPS: list[tuple[str, Callable[[Facts], Facts]]] = [
    ("sessions.csrf", lambda f: dataclasses.replace(f, csrf_enforced=False)),
    ("sessions.cookies", lambda f: dataclasses.replace(f, cookies=tuple(
        dataclasses.replace(c, http_only=False) if c.name.endswith("_access") else c
        for c in f.cookies))),
    ("sessions.cookies", lambda f: dataclasses.replace(f, cookies=(
        CookieFacts("__Host-voicegw_access", True, True, "lax"),))),
    ("obs.sentry_pii", lambda f: dataclasses.replace(f, sentry=_sentry_with_pii())),
    ("obs.sentry_pii", lambda f: dataclasses.replace(f, sentry=_sentry_facts(
        data_collection={"user_info": False}))),
    ("obs.log_redaction", lambda f: dataclasses.replace(f, redaction_works=False)),
    ("deps.known_bad", lambda f: dataclasses.replace(f, versions={**f.versions,
                                                                  "pyjwt": "2.3.0"})),
    ("deps.known_bad", lambda f: dataclasses.replace(f, versions={**f.versions,
                                                                  "telnyx": "4.100.0"})),
]  # fmt: skip


@pytest.mark.parametrize(
    ("check_id", "change"), FACT_FLIPS, ids=[f"{c}-{i}" for i, (c, _) in enumerate(FACT_FLIPS)]
)
async def test_one_fact_flips_exactly_its_check(
    baseline: Settings, check_id: str, change: Callable[[Facts], Facts]
) -> None:
    facts = await settings_facts(baseline)
    report = review(baseline, change(facts))
    assert not_passing(report) == {check_id: FAIL}, report.render()


def test_a_real_sentry_client_is_read() -> None:
    facts = _sentry_with_pii()
    assert facts.active and facts.send_default_pii
    # The newer SDK option: explicit data collection with its defaults collects user info
    # and request bodies.
    collecting = _sentry_facts(data_collection={})
    assert collecting.send_default_pii and collecting.request_bodies != "never"
    # What metrics.sentry.init starts.
    safe = _sentry_facts(
        **PRIVACY_OPTIONS,
        before_send=lambda event, hint: event,
        event_scrubber=EventScrubber(recursive=True),
    )
    assert (safe.send_default_pii, safe.request_bodies, safe.scrubbing) == (False, "never", True)


async def test_the_cookie_and_csrf_probes_read_the_session_code(baseline: Settings) -> None:
    facts = await settings_facts(baseline)
    names = {c.name: c for c in facts.cookies}
    assert set(names) == {
        "__Host-voicegw_access",
        "__Host-voicegw_csrf",
        "__Secure-voicegw_refresh",
    }
    assert names["__Host-voicegw_access"].http_only and names["__Host-voicegw_access"].secure
    assert not names["__Host-voicegw_csrf"].http_only
    assert {c.same_site for c in facts.cookies} == {"strict"}
    assert facts.csrf_enforced
    assert facts.redis is not None and facts.redis.reachable


async def test_a_check_that_raises_is_reported_failed_not_skipped(baseline: Settings) -> None:
    facts = await settings_facts(baseline)
    report = review(baseline, dataclasses.replace(facts, keys=None))  # type: ignore[arg-type]
    broken = {f.id: f.finding for f in report.findings if f.status is FAIL}
    assert set(broken) == {
        "secrets.twilio_secondary_age", "keys.signing.age", "keys.data.age", "keys.api.age",
        "keys.tools.age", "keys.events.age", "keys.retired",
    }  # fmt: skip
    assert set(broken.values()) == {"check could not run (AttributeError)"}
    assert len(report.findings) == len(CHECKS)
