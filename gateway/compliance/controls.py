"""The controls of GDPR, HIPAA (45 CFR 164.312) and SOC 2 (CC6, CC7) that voicegw implements,
each mapped to the code, endpoints, commands and settings that implement it.

A control is enabled in a deployment when every one of its conditions holds; each condition
is derived from the deployment's facts (``gateway.compliance.deployment``) or from what is
running (the retention sweeper's last pass, audit writes that failed in this process, the last
verification of the audit chain), and says in one line why it holds or not, naming the setting
or command that changes it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from gateway.compliance.deployment import Facts, Link

__all__ = ["Condition", "Control", "Feature", "Framework", "Signals", "controls"]

API_KEY_POLICY_DAYS: Final = 90
RETENTION_STALE_S: Final = 2 * 3600.0
"""The sweeper runs hourly; no successful pass for two hours means it is not running."""
VERIFY_STALE_S: Final = 7 * 86400.0
"""The audit chain should be verified at least weekly."""


class Framework(enum.StrEnum):
    GDPR = "GDPR"
    HIPAA = "HIPAA"
    SOC2 = "SOC 2"


@dataclass(frozen=True, slots=True)
class Feature:
    """Where a control is implemented: a ``module``, ``endpoint``, ``command``, ``setting``,
    ``metric`` or ``file`` of voicegw."""

    kind: str
    ref: str


@dataclass(frozen=True, slots=True)
class Condition:
    ok: bool
    text: str


@dataclass(frozen=True, slots=True)
class Control:
    id: str
    framework: Framework
    reference: str
    title: str
    features: tuple[Feature, ...]
    conditions: tuple[Condition, ...]
    evidence: tuple[str, ...] = ()  # names of the report's evidence sections

    @property
    def enabled(self) -> bool:
        return all(c.ok for c in self.conditions)


@dataclass(frozen=True, slots=True)
class Signals:
    """What is running, as opposed to configured. ``None``: not known here (the command line
    has no process to ask about its audit writes)."""

    retention_age_s: float | None = None  # since the sweeper's last pass; None: never
    retention_ok: bool = False  # that pass completed
    audit_verified_age_s: float | None = None  # since the last verification; None: never
    audit_verified_ok: bool = False  # it found the chain intact
    audit_write_failures: int | None = None


def _m(ref: str) -> Feature:
    return Feature("module", ref)


def _e(ref: str) -> Feature:
    return Feature("endpoint", ref)


def _c(ref: str) -> Feature:
    return Feature("command", ref)


def _s(ref: str) -> Feature:
    return Feature("setting", ref)


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


# -- conditions shared by several controls ---------------------------------------------------


def _data_keys(f: Facts) -> Condition:
    if f.data_keys_configured:
        return Condition(True, "field encryption keys configured (VOICEGW_ENCRYPTION_KEYS)")
    return Condition(
        False,
        "field encryption uses development keys generated into the data directory; "
        "set VOICEGW_ENCRYPTION_KEYS and VOICEGW_BLIND_INDEX_KEY",
    )


def _https(f: Facts) -> Condition:
    if f.https:
        return Condition(True, "public URL is https (VOICEGW_PUBLIC_URL)")
    return Condition(False, "public URL is not https (VOICEGW_PUBLIC_URL)")


def _carriers(f: Facts) -> Condition:
    states = ", ".join(f"{c}: {f.carrier_secrets.get(c, 'missing')}" for c in f.carriers)
    if f.carriers_authenticated:
        return Condition(True, f"carrier webhooks verified with configured secrets ({states})")
    return Condition(
        False,
        f"carrier webhook secrets not all configured ({states}); set VOICEGW_TWILIO_AUTH_TOKEN "
        "and VOICEGW_TELNYX_PUBLIC_KEY",
    )


def _production(f: Facts) -> Condition:
    if f.production:
        return Condition(True, "production mode refuses unsafe settings at start-up")
    return Condition(
        False, "development mode: unsafe settings are not refused (VOICEGW_ENV=production)"
    )


def _handlers(f: Facts) -> Condition:
    n = f.subject_request_handlers
    if n:
        return Condition(True, f"{n} active admin or auditor accounts and keys can serve requests")
    return Condition(
        False,
        "no active admin or auditor account or API key can serve requests (voicegw users add)",
    )


_HOW: Final = {
    "tls": "encrypted (TLS)",
    "local": "stays on this machine",
    "plaintext": "unencrypted over the network",
    "not used": "not used",
}


def _link(link: Link) -> Condition:
    return Condition(link.protected, f"{link.name}: {_HOW[link.how]}")


def _audit_writes(s: Signals) -> tuple[Condition, ...]:
    if s.audit_write_failures is None:
        return ()
    if s.audit_write_failures == 0:
        return (Condition(True, "every audit event of this process was written"),)
    return (
        Condition(
            False,
            f"{s.audit_write_failures} audit events of this process could not be written "
            "(voicegw_audit_write_failures_total)",
        ),
    )


def _verified(s: Signals) -> Condition:
    age = s.audit_verified_age_s
    if age is None:
        return Condition(False, "audit chain never verified (voicegw audit verify)")
    if not s.audit_verified_ok:
        return Condition(False, f"last audit-chain verification ({_ago(age)}) found a broken link")
    if age > VERIFY_STALE_S:
        return Condition(False, f"audit chain last verified {_ago(age)} (voicegw audit verify)")
    return Condition(True, f"audit chain verified intact {_ago(age)}")


def _swept(s: Signals) -> Condition:
    age = s.retention_age_s
    if age is None:
        return Condition(False, "retention sweeper has never run (it runs in voicegw serve)")
    if not s.retention_ok:
        return Condition(False, f"retention sweeper's last pass ({_ago(age)}) failed")
    if age > RETENTION_STALE_S:
        return Condition(False, f"retention sweeper last completed a pass {_ago(age)}")
    return Condition(True, f"retention sweeper last completed a pass {_ago(age)}")


# -- the catalogue ---------------------------------------------------------------------------


def _gdpr(f: Facts, s: Signals) -> list[Control]:
    g = Framework.GDPR
    if not f.recording:
        recording = Condition(True, "recording off (VOICEGW_RECORDING)")
    elif f.recording_consent == "parameter":
        recording = Condition(True, "calls recorded only with the caller's consent")
    else:
        recording = Condition(
            False, "every call is recorded, consent or not (VOICEGW_RECORDING_CONSENT=all)"
        )
    dsr_module = _m("gateway/records/privacy.py")
    return [
        Control(
            "gdpr-5-1-c", g, "Art. 5(1)(c)", "Data minimisation",
            (
                _m("gateway/records/privacy.py (seal_numbers)"), _m("security/redaction.py"),
                _m("metrics/logging.py"), _s("VOICEGW_RECORDING"), _s("VOICEGW_RECORDING_CONSENT"),
            ),
            (
                Condition(True, "phone numbers kept only encrypted, with a blind index; other "
                          "caller ids are not stored"),
                Condition(True, "logs, metric labels and the live-call registry hold no phone "
                          "numbers; client addresses are hashed"),
                recording,
            ),
            ("processing",),
        ),
        Control(
            "gdpr-5-1-e", g, "Art. 5(1)(e)", "Storage limitation",
            (
                _m("gateway/records/privacy.py (RetentionSweeper)"),
                _s("VOICEGW_RETENTION_CALLS_DAYS"), _s("VOICEGW_RETENTION_AUDIT_DAYS"),
                Feature("metric", "voicegw_retention_deleted_total"),
            ),
            (
                Condition(True, f"call records and recordings deleted after "
                          f"{f.retention_calls_days:g} days"),
                Condition(True, f"audit events deleted after {f.retention_audit_days:g} days"),
                _swept(s),
            ),
            ("retention",),
        ),
        Control(
            "gdpr-15", g, "Art. 15", "Right of access by the data subject",
            (_e("GET /api/v1/users/{number}/data"), dsr_module),
            (Condition(True, "admin and auditor roles only; every request audited"), _handlers(f)),
            ("subject_requests",),
        ),
        Control(
            "gdpr-17", g, "Art. 17", "Right to erasure",
            (
                _e("POST /api/v1/users/{number}/delete"), dsr_module,
                _m("gateway/media/recording.py (secure deletion)"),
            ),
            (
                Condition(True, "numbers and blind index leave every call record; recordings are "
                          "overwritten and unlinked; earlier requests no longer point at the "
                          "person"),
                _handlers(f),
            ),
            ("subject_requests",),
        ),
        Control(
            "gdpr-20", g, "Art. 20", "Right to data portability",
            (_e("GET /api/v1/users/{number}/data"), _e("GET /api/v1/calls/{id}/recording")),
            (Condition(True, "JSON export (voicegw.subject-export.v1); recordings as WAV"),
             _handlers(f)),
            ("subject_requests",),
        ),
        Control(
            "gdpr-30", g, "Art. 30", "Records of processing activities",
            (_m("security/audit.py"), _e("GET /api/v1/audit"), _e("GET /api/v1/compliance/report")),
            (
                Condition(True, "categories, recipients and retention of the processing are listed "
                          "in this report, from the running configuration"),
                Condition(True, "calls, data-subject requests, retention and access are recorded "
                          "in the audit trail"),
                *_audit_writes(s),
            ),
            ("processing", "audit_trail"),
        ),
        Control(
            "gdpr-32", g, "Art. 32", "Security of processing",
            (
                _m("security/crypto.py"), _m("security/webhooks.py"), _m("security/sessions.py"),
                _s("VOICEGW_ENCRYPTION_KEYS"), _s("VOICEGW_ENV"),
            ),
            (_data_keys(f), _https(f), _carriers(f), _production(f)),
            ("key_ages", "audit_trail", "webhook_rejections"),
        ),
    ]  # fmt: skip


def _hipaa(f: Facts, s: Signals) -> list[Control]:
    h = Framework.HIPAA
    cookies = (
        Condition(True, "session cookies Secure with the __Host- prefix")
        if f.https
        else Condition(False, "session cookies sent without Secure (public URL is http)")
    )
    return [
        Control(
            "hipaa-164-312-a", h, "164.312(a)(1)", "Access control",
            (
                _m("gateway/operators/sessions.py"), _m("security/sessions.py"),
                _m("security/apikeys.py"), _c("voicegw users"), _c("voicegw apikeys"),
                _s("VOICEGW_SESSION_TTL_S"), _s("VOICEGW_LOGIN_LOCKOUT"),
            ),
            (
                Condition(True, "unique accounts and service keys; a role on every /api/v1 route"),
                Condition(True, f"automatic logoff after {f.session_ttl_s} s; lockout after "
                          f"{f.lockout} per client network, progressive throttle across networks"),
                cookies,
            ),
            ("access",),
        ),
        Control(
            "hipaa-164-312-a-2-iv", h, "164.312(a)(2)(iv)", "Encryption and decryption",
            (
                _m("security/crypto.py"), _m("gateway/media/recording.py"),
                _s("VOICEGW_ENCRYPTION_KEYS"), _c("voicegw keys rotate-data"),
            ),
            (
                Condition(True, "phone numbers and recordings encrypted with AES-256-GCM"),
                _data_keys(f),
            ),
            ("key_ages",),
        ),
        Control(
            "hipaa-164-312-b", h, "164.312(b)", "Audit controls",
            (_m("security/audit.py"), _e("GET /api/v1/audit"), _c("voicegw audit verify")),
            (
                Condition(True, "append-only hash-chained trail with Ed25519-signed checkpoints; "
                          "the database refuses updates"),
                *_audit_writes(s),
            ),
            ("audit_trail",),
        ),
        Control(
            "hipaa-164-312-c", h, "164.312(c)(1)", "Integrity",
            (
                _m("security/crypto.py"), _m("gateway/media/recording.py"), _m("security/audit.py"),
                _c("voicegw audit verify"),
            ),
            (
                Condition(True, "ciphertexts bound to their record and column; recording chunks "
                          "authenticated in order"),
                _verified(s),
            ),
            ("audit_trail",),
        ),
        Control(
            "hipaa-164-312-d", h, "164.312(d)", "Person or entity authentication",
            (
                _m("security/passwords.py"), _m("security/lockout.py"), _m("security/apikeys.py"),
                _m("security/signatures.py"),
            ),
            (
                Condition(True, "operators: scrypt passwords and lockout; services: hashed keys"),
                _carriers(f),
            ),
            ("access", "webhook_rejections"),
        ),
        Control(
            "hipaa-164-312-e", h, "164.312(e)(1)", "Transmission security",
            (_s("VOICEGW_PUBLIC_URL"), _s("VOICEGW_REDIS_URL"), _s("VOICEGW_DATABASE_URL")),
            (_https(f), *(_link(link) for link in f.links)),
        ),
    ]  # fmt: skip


def _soc2(f: Facts, s: Signals) -> list[Control]:
    c = Framework.SOC2
    if f.api_key_max_age_days <= API_KEY_POLICY_DAYS:
        rotation = Condition(True, f"API keys due for rotation after {f.api_key_max_age_days} days")
    else:
        rotation = Condition(
            False,
            f"API keys live {f.api_key_max_age_days} days, beyond the {API_KEY_POLICY_DAYS}-day "
            "policy (VOICEGW_API_KEY_MAX_AGE_DAYS)",
        )
    if f.trusted_proxy_wildcard:
        proxies = Condition(
            False, "VOICEGW_TRUSTED_PROXIES is a wildcard: any client can choose its address"
        )
    else:
        proxies = Condition(True, "X-Forwarded-For trusted only from listed proxies")
    allowlists = ", ".join(f"{k} {v}" for k, v in f.allowlists.items())
    if f.metrics_token:
        metrics = Condition(True, "metrics scraped with a bearer token (VOICEGW_METRICS_TOKEN)")
    else:
        metrics = Condition(
            False, "no VOICEGW_METRICS_TOKEN: only loopback can scrape, no remote monitoring"
        )
    return [
        Control(
            "soc2-cc6-1", c, "CC6.1", "Logical access security",
            (_m("gateway/operators/sessions.py"), _m("security/sessions.py"),
             _m("security/crypto.py"), _s("VOICEGW_API_KEY_MAX_AGE_DAYS")),
            (
                Condition(True, "EdDSA session tokens with revocation; a role on every route"),
                _data_keys(f), rotation,
            ),
            ("access", "key_ages"),
        ),
        Control(
            "soc2-cc6-2", c, "CC6.2", "Registration and removal of users",
            (_c("voicegw users add|disable|passwd"), _c("voicegw apikeys create|rotate|revoke")),
            (Condition(True, "accounts made on the command line; disabling a user, or changing "
                       "their role or password, ends their sessions at once"),),
            ("access",),
        ),
        Control(
            "soc2-cc6-3", c, "CC6.3", "Role-based access",
            (_m("gateway/operators/permissions.py (ROLE_PERMISSIONS)"),),
            (Condition(True, "admin, operator (calls, providers), auditor (audit trail, "
                       "data-subject requests)"),),
            ("access",),
        ),
        Control(
            "soc2-cc6-6", c, "CC6.6", "Protection against threats from outside the system",
            (
                _m("security/webhooks.py"), _s("VOICEGW_WEBHOOK_ALLOWLIST"),
                _s("VOICEGW_TRUSTED_PROXIES"), _s("VOICEGW_RATE_LIMIT_PER_MINUTE"),
            ),
            (
                _carriers(f), proxies,
                Condition(True, f"source allowlists: {allowlists}"),
            ),
            ("webhook_rejections",),
        ),
        Control(
            "soc2-cc6-7", c, "CC6.7", "Transmission of data",
            (_s("VOICEGW_PUBLIC_URL"), _s("VOICEGW_REDIS_URL"), _s("VOICEGW_DATABASE_URL")),
            (_https(f), *(_link(link) for link in f.links)),
        ),
        Control(
            "soc2-cc7-1", c, "CC7.1", "Detection of configuration weaknesses",
            (_s("VOICEGW_ENV"), _c("voicegw security review")),
            (_production(f),),
        ),
        Control(
            "soc2-cc7-2", c, "CC7.2", "Monitoring of system components",
            (
                _e("GET /metrics"), Feature("file", "deploy/prometheus/alerts.yml"),
                Feature("file", "deploy/grafana/voicegw.json"), _s("VOICEGW_METRICS_TOKEN"),
            ),
            (metrics, Condition(True, "alert rules for provider outages, rejection spikes, "
                                "latency and error-budget burn")),
            ("webhook_rejections",),
        ),
        Control(
            "soc2-cc7-3", c, "CC7.3", "Evaluation of security events",
            (
                _m("security/audit.py"), Feature("metric", "voicegw_webhook_rejections_total"),
                _e("GET /api/v1/compliance/report"),
            ),
            (
                Condition(True, "webhook rejections metered by layer and audited; denied access "
                          "and failed logins audited"),
                *_audit_writes(s),
            ),
            ("webhook_rejections", "audit_trail"),
        ),
    ]  # fmt: skip


def controls(facts: Facts, signals: Signals) -> list[Control]:
    """Every control, GDPR then HIPAA then SOC 2, for this deployment."""
    return [*_gdpr(facts, signals), *_hipaa(facts, signals), *_soc2(facts, signals)]
