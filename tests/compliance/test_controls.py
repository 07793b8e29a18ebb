"""Which controls are enabled follows the deployment: on a production-like configuration every
control is enabled, and flipping one setting (or one running signal) disables exactly the
controls that depend on it."""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from gateway import devkeys
from gateway.compliance.controls import Framework, Signals, controls
from gateway.compliance.deployment import Facts, gather_facts, link_of
from gateway.records.base import Role, UserRecord
from gateway.records.sqlite import SqliteStore
from gateway.settings import Settings
from security.secret import Secret

GOOD = Signals(
    retention_age_s=600,
    retention_ok=True,
    audit_verified_age_s=3600,
    audit_verified_ok=True,
    audit_write_failures=0,
)
TRANSMISSION = {"hipaa-164-312-e", "soc2-cc6-7"}
CARRIER_AUTH = {"gdpr-32", "hipaa-164-312-d", "soc2-cc6-6"}


def production_env(tmp_path: Path) -> dict[str, str]:
    def b64(n: int) -> str:
        return base64.b64encode(bytes([n]) * 32).decode()

    return {
        "VOICEGW_ENV": "production",
        "VOICEGW_PUBLIC_URL": "https://gw.example.com",
        "VOICEGW_DATA_DIR": str(tmp_path / "data"),
        "VOICEGW_TWILIO_AUTH_TOKEN": "a" * 32,
        "VOICEGW_TWILIO_ALLOWLIST": "any",
        "VOICEGW_TELNYX_PUBLIC_KEY": base64.b64encode(
            bytes(SigningKey(b"t" * 32).verify_key)
        ).decode(),
        "VOICEGW_TELNYX_API_KEY": "KEY0123456789ABCDEF0123456789ABCDEF_abcdefghijklmnopqrstuv",
        "VOICEGW_PROVIDERS": "openai",
        "OPENAI_API_KEY": "sk-test",
        "VOICEGW_ENCRYPTION_KEYS": f"k1:{b64(1)}",
        "VOICEGW_BLIND_INDEX_KEY": b64(2),
        "VOICEGW_METRICS_TOKEN": "0123456789abcdef" * 2,
        "VOICEGW_REDIS_URL": "rediss://redis.internal:6380/0",
        "VOICEGW_DATABASE_URL": "postgresql://gw@db.internal/voicegw?sslmode=verify-full",
        "VOICEGW_TRUSTED_PROXIES": "10.0.0.0/8",
    }


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "store" / "voicegw.sqlite3")
    await store.open()
    await store.add_user(UserRecord("u1", "ada", Role.AUDITOR, "x"))
    yield store
    await store.close()


@pytest.fixture
def production(tmp_path: Path) -> Settings:
    return Settings.from_env(production_env(tmp_path))


def disabled(facts: Facts, signals: Signals = GOOD) -> set[str]:
    return {c.id for c in controls(facts, signals) if not c.enabled}


async def test_production_like_configuration_enables_every_control(
    production: Settings, store: SqliteStore
) -> None:
    facts = await gather_facts(production, store)
    items = controls(facts, GOOD)
    assert disabled(facts) == set()
    assert len({c.id for c in items}) == len(items) == 21
    assert {fw: sum(c.framework is fw for c in items) for fw in Framework} == {
        Framework.GDPR: 7,
        Framework.HIPAA: 6,
        Framework.SOC2: 8,
    }
    # Every control names where it is implemented and why it is (or is not) enabled.
    assert all(c.features and c.conditions for c in items)


FLIPS: list[tuple[str, dict[str, Any], set[str]]] = [
    (
        "record every call",
        {"recording": True, "recording_consent": "all"},
        {"gdpr-5-1-c"},
    ),
    ("record with consent", {"recording": True, "recording_consent": "parameter"}, set()),
    ("no metrics token", {"metrics_token": None}, {"soc2-cc7-2"}),
    (
        "http public URL",
        {"public_url": "http://gw.example.com"},
        {"gdpr-32", "hipaa-164-312-a", *TRANSMISSION},
    ),
    (
        "development data keys",
        {"encryption_keys": None},
        {"gdpr-32", "hipaa-164-312-a-2-iv", "soc2-cc6-1"},
    ),
    ("development mode", {"env": Settings().env}, {"gdpr-32", "soc2-cc7-1"}),
    ("Redis without TLS", {"redis_url": Secret("redis://10.1.2.3:6379/0")}, TRANSMISSION),
    ("Redis on loopback", {"redis_url": Secret("redis://127.0.0.1:6379/0")}, set()),
    ("no Redis", {"redis_url": None}, set()),
    ("database without TLS", {"database_url": Secret("postgresql://db.internal/v")}, TRANSMISSION),
    (
        "database on a Unix socket",
        {"database_url": Secret("postgresql://gw@/v?host=/run/postgresql")},
        set(),
    ),
    ("API keys for a year", {"api_key_max_age_days": 365}, {"soc2-cc6-1"}),
    ("Twilio development token", {"twilio_auth_token": Secret("dev-0123")}, CARRIER_AUTH),
    ("no Telnyx key", {"telnyx_public_keys": ()}, CARRIER_AUTH),
    (
        "wildcard proxies",
        {"trusted_proxies": (ipaddress.ip_network("0.0.0.0/0"),)},
        {"soc2-cc6-6"},
    ),
    (
        "provider over plain ws",
        {"providers": ("openai",), "openai_realtime_url": "ws://10.1.2.3:9000/v1/realtime"},
        TRANSMISSION,
    ),
    ("carrier API over http", {"twilio_api_url": "http://api.twilio.test"}, TRANSMISSION),
]


@pytest.mark.parametrize(("change", "expected"), [f[1:] for f in FLIPS], ids=[f[0] for f in FLIPS])
async def test_one_setting_flips_exactly_its_controls(
    production: Settings, store: SqliteStore, change: dict[str, Any], expected: set[str]
) -> None:
    facts = await gather_facts(dataclasses.replace(production, **change), store)
    assert disabled(facts) == expected


SIGNAL_FLIPS: list[tuple[str, dict[str, Any], set[str]]] = [
    ("sweeper never ran", {"retention_age_s": None}, {"gdpr-5-1-e"}),
    ("sweeper stalled", {"retention_age_s": 3 * 3600.0}, {"gdpr-5-1-e"}),
    ("sweeper failed", {"retention_ok": False}, {"gdpr-5-1-e"}),
    ("chain never verified", {"audit_verified_age_s": None}, {"hipaa-164-312-c"}),
    ("chain verified long ago", {"audit_verified_age_s": 8 * 86400.0}, {"hipaa-164-312-c"}),
    ("chain broken", {"audit_verified_ok": False}, {"hipaa-164-312-c"}),
    (
        "audit writes failed",
        {"audit_write_failures": 2},
        {"gdpr-30", "hipaa-164-312-b", "soc2-cc7-3"},
    ),
    ("audit writes unknown (command line)", {"audit_write_failures": None}, set()),
]


@pytest.mark.parametrize(
    ("change", "expected"), [f[1:] for f in SIGNAL_FLIPS], ids=[f[0] for f in SIGNAL_FLIPS]
)
async def test_one_running_signal_flips_exactly_its_controls(
    production: Settings, store: SqliteStore, change: dict[str, Any], expected: set[str]
) -> None:
    facts = await gather_facts(production, store)
    assert disabled(facts, dataclasses.replace(GOOD, **change)) == expected


async def test_nobody_to_serve_data_subject_requests(
    production: Settings, store: SqliteStore
) -> None:
    facts = await gather_facts(production, store)
    nobody = dataclasses.replace(facts, users=dict.fromkeys(facts.users, 0))
    assert disabled(nobody) == {"gdpr-15", "gdpr-17", "gdpr-20"}
    by_key = dataclasses.replace(nobody, api_keys={**facts.api_keys, "admin": 1})
    assert disabled(by_key) == set()


async def test_development_carrier_keys_are_recognised(tmp_path: Path, store: SqliteStore) -> None:
    settings = devkeys.apply(Settings(data_dir=tmp_path / "dev"))
    facts = await gather_facts(settings, store)
    assert facts.carrier_secrets == {"twilio": "development key", "telnyx": "development key"}
    assert facts.allowlists == {"twilio": "0 networks", "telnyx": "0 networks"}


@pytest.mark.parametrize(
    ("url", "how"),
    [
        ("rediss://r.example:6380/0", "tls"),
        ("redis://localhost:6379/0", "local"),
        ("redis://[::1]:6379/0", "local"),
        ("unix:///run/redis.sock", "local"),
        ("redis://r.example:6379/0", "plaintext"),
        ("postgresql://db.example/v?sslmode=require", "tls"),
        ("postgresql://db.example/v?sslmode=prefer", "plaintext"),
        ("postgresql://127.0.0.1/v", "local"),
        ("https://api.twilio.com", "tls"),
        ("wss://api.openai.com/v1/realtime", "tls"),
        ("ws://api.example/v1", "plaintext"),
        (None, "not used"),
    ],
)
def test_links(url: str | None, how: str) -> None:
    assert link_of("x", url).how == how
