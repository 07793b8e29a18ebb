"""Key ages against the rotation policy (90 days, flagged 14 days before; the tool and event
signing secrets too), the secondary Twilio token's promotion window, and retired keys kept
past need (``security.keyinventory``)."""

from __future__ import annotations

from gateway.review.checks.base import Outcome, Registry, days, failed, passed, warned
from gateway.review.facts import Facts
from gateway.review.model import Severity
from gateway.settings import Settings
from security.keyinventory import ROTATION_NOTICE_S, KeyKind, KeyStatus

REGISTRY = Registry()
check = REGISTRY.check
CHECKS = REGISTRY.checks


@check(
    "secrets.twilio_secondary_age",
    Severity.WARNING,
    "promote the new token in Twilio, move it to VOICEGW_TWILIO_AUTH_TOKEN and unset "
    "VOICEGW_TWILIO_AUTH_TOKEN_SECONDARY",
)
def _secondary(s: Settings, f: Facts) -> Outcome:
    entry = f.keys.oldest_active(KeyKind.TWILIO_SECONDARY)
    if entry is None:
        return passed("no secondary Twilio token configured")
    due_in = entry.due_in_s(f.now) or 0.0
    age = days(entry.age_s(f.now))
    if due_in < 0:
        return warned(
            f"secondary Twilio token {entry.key_id} configured for {age} days (first seen), "
            "longer than the 7-day promotion window"
        )
    return passed(f"secondary Twilio token {entry.key_id} first seen {age} days ago (promotion)")


def _key_age(f: Facts, kind: KeyKind, label: str) -> Outcome:
    if kind in f.keys.unavailable:
        return warned(f"{label}s could not be listed (store unavailable)", "check the store")
    oldest, first_due = f.keys.oldest_active(kind), f.keys.next_due(kind)
    if oldest is None or first_due is None:
        return passed(f"no active {label}")
    due_in = first_due.due_in_s(f.now) or 0.0
    basis = "" if oldest.created_known else " (since first seen)"
    text = f"{label} {oldest.key_id[:12]} is {days(oldest.age_s(f.now))} days old{basis}"
    if due_in < 0:
        return failed(f"{text}; rotation was due {days(-due_in)} days ago")
    if due_in <= ROTATION_NOTICE_S:
        return warned(f"{text}; rotation due in {days(due_in)} days")
    return passed(f"{text}; rotation due in {days(due_in)} days")


@check(
    "keys.signing.age",
    Severity.WARNING,
    "voicegw keys rotate (or put a new seed first in VOICEGW_SIGNING_KEY)",
)
def _signing_age(s: Settings, f: Facts) -> Outcome:
    return _key_age(f, KeyKind.SIGNING, "signing key")


@check(
    "keys.data.age",
    Severity.WARNING,
    "put a new key first in VOICEGW_ENCRYPTION_KEYS, then voicegw keys rotate-data",
)
def _data_age(s: Settings, f: Facts) -> Outcome:
    return _key_age(f, KeyKind.DATA, "data key")


@check("keys.api.age", Severity.WARNING, "voicegw apikeys rotate <key id>")
def _api_age(s: Settings, f: Facts) -> Outcome:
    return _key_age(f, KeyKind.API, "API key")


@check(
    "keys.tools.age",
    Severity.WARNING,
    "put a new secret (voicegw tools secret, or whsec_ + openssl rand -base64 32) first in "
    "VOICEGW_TOOLS_SECRET; drop the old one once every tool endpoint accepts the new one",
)
def _tools_age(s: Settings, f: Facts) -> Outcome:
    return _key_age(f, KeyKind.TOOLS, "tool signing secret")


@check(
    "keys.events.age",
    Severity.WARNING,
    "put a new secret first in VOICEGW_EVENTS_SECRET; drop the old one once the events "
    "receiver accepts the new one",
)
def _events_age(s: Settings, f: Facts) -> Outcome:
    return _key_age(f, KeyKind.EVENTS, "event signing secret")


@check(
    "keys.retired",
    Severity.WARNING,
    "voicegw keys rotate drops expired keys from the key file; remove retired seeds from "
    "VOICEGW_SIGNING_KEY and older secrets from VOICEGW_TOOLS_SECRET / VOICEGW_EVENTS_SECRET",
)
def _retired(s: Settings, f: Facts) -> Outcome:
    stale = [
        e
        for kind in (KeyKind.SIGNING, KeyKind.TOOLS, KeyKind.EVENTS)
        for e in f.keys.of(kind)
        if e.status is KeyStatus.RETIRED and e.drop_after is not None and e.drop_after <= f.now
    ]
    if stale:
        ids = ", ".join(f"{e.kind.value} {e.key_id[:12]}" for e in stale)
        return warned(f"{len(stale)} retired key(s) kept past need: {ids}")
    retired = [e for e in f.keys.entries if e.status is KeyStatus.RETIRED]
    return passed(f"{len(retired)} retired key(s), none kept past need")
