"""Data protection, observability and dependencies: encryption keys, retention, recording
consent, file modes; metrics, Sentry and log redaction; known-bad package releases."""

from __future__ import annotations

from typing import Final

from gateway.review.checks.base import Outcome, Registry, failed, passed, warned
from gateway.review.deps import affected
from gateway.review.facts import Facts
from gateway.review.model import Severity
from gateway.settings import MIN_METRICS_TOKEN_CHARS, Settings, is_dev_secret, secret_problem

MAX_CALL_RETENTION_DAYS: Final = 365.0
MIN_AUDIT_RETENTION_DAYS: Final = 365.0

REGISTRY = Registry()
check = REGISTRY.check
CHECKS = REGISTRY.checks


@check(
    "data.encryption_keys",
    Severity.CRITICAL,
    "VOICEGW_ENCRYPTION_KEYS=kid:base64key and VOICEGW_BLIND_INDEX_KEY=base64key",
)
def _encryption(s: Settings, f: Facts) -> Outcome:
    missing = [
        name
        for name, value in (
            ("VOICEGW_ENCRYPTION_KEYS", s.encryption_keys),
            ("VOICEGW_BLIND_INDEX_KEY", s.blind_index_key),
        )
        if value is None
    ]
    if missing:
        return failed(f"generated development data keys in use ({', '.join(missing)} unset)")
    return passed("field encryption and blind-index keys configured")


@check(
    "data.retention",
    Severity.WARNING,
    "VOICEGW_RETENTION_CALLS_DAYS<=365, VOICEGW_RETENTION_AUDIT_DAYS>=365",
)
def _retention(s: Settings, f: Facts) -> Outcome:
    problems = []
    if s.retention_calls_days > MAX_CALL_RETENTION_DAYS:
        problems.append(f"call records kept {s.retention_calls_days:g} days")
    if s.retention_audit_days < MIN_AUDIT_RETENTION_DAYS:
        problems.append(f"audit trail kept only {s.retention_audit_days:g} days")
    if problems:
        return warned("; ".join(problems))
    return passed(
        f"calls and recordings {s.retention_calls_days:g} d, audit {s.retention_audit_days:g} d"
    )


@check(
    "data.recording_consent",
    Severity.WARNING,
    "VOICEGW_RECORDING_CONSENT=parameter (or VOICEGW_RECORDING=off)",
)
def _recording(s: Settings, f: Facts) -> Outcome:
    if not s.recording:
        return passed("recording off")
    if s.recording_consent == "all":
        return warned("every call is recorded without per-call consent")
    return passed("recording only calls whose webhook carries consent")


@check(
    "data.permissions",
    Severity.CRITICAL,
    "chmod 700 VOICEGW_DATA_DIR and chmod 600 the files in it",
)
def _permissions(s: Settings, f: Facts) -> Outcome:
    if f.loose_paths:
        shown = ", ".join(f.loose_paths[:3]) + (" ..." if len(f.loose_paths) > 3 else "")
        return failed(f"{len(f.loose_paths)} data-directory entries open to others: {shown}")
    return passed("data directory and files owner-only")


# -- observability ------------------------------------------------------------------------------
@check(
    "obs.metrics_protected",
    Severity.WARNING,
    f"VOICEGW_METRICS_TOKEN=<random, {MIN_METRICS_TOKEN_CHARS}+ characters>",
)
def _metrics(s: Settings, f: Facts) -> Outcome:
    token = s.metrics_token
    if token is None:
        return passed("/metrics answers loopback only")
    if is_dev_secret(token.get()):
        return failed("the metrics token is a development key")
    if weak := secret_problem("VOICEGW_METRICS_TOKEN", token.get()):
        return failed(weak)
    return passed("/metrics needs a bearer token")


@check(
    "obs.sentry_pii",
    Severity.CRITICAL,
    "start Sentry only through metrics.sentry.init (send_default_pii off, no request bodies)",
)
def _sentry(s: Settings, f: Facts) -> Outcome:
    sentry = f.sentry
    if not sentry.active and not sentry.configured:
        return passed("Sentry off (SENTRY_DSN unset)")
    problems = []
    if sentry.send_default_pii:
        problems.append("send_default_pii on")
    if sentry.request_bodies != "never":
        problems.append(f"request bodies attached ({sentry.request_bodies})")
    if not sentry.scrubbing:
        problems.append("no scrubbing hooks")
    if problems:
        return failed("Sentry would receive personal data: " + ", ".join(problems))
    return passed("Sentry: no default PII, no request bodies, events scrubbed")


@check(
    "obs.log_redaction",
    Severity.CRITICAL,
    "log only through metrics.logging.configure (redacting JSON lines)",
)
def _logs(s: Settings, f: Facts) -> Outcome:
    if not f.redaction_works:
        return failed("the log formatter let a phone number, email, secret or address through")
    if f.plain_log_handlers:
        return failed(f"log handlers without redaction: {', '.join(f.plain_log_handlers)}")
    return passed("log lines are redacted JSON (numbers, emails, secrets, addresses)")


# -- dependencies -------------------------------------------------------------------------------
@check("deps.known_bad", Severity.WARNING, "upgrade the package named (pip install -U ...)")
def _deps(s: Settings, f: Facts) -> Outcome:
    hits = affected(f.versions)
    if hits:
        text = "; ".join(f"{e.package} {v}: {e.advisory}, {e.why}" for e, v in hits)
        fix = "upgrade: " + ", ".join(f"{e.package}>={e.fixed}" for e, _ in hits)
        return failed(text, fix)
    return passed(f"{len(f.versions)} security-relevant packages outside known-bad ranges")
