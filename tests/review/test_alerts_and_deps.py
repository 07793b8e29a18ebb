"""The key-rotation alerts fire 14 days before a rotation is due (promtool runs their unit
tests from ``deploy/prometheus/tests/alerts_test.yml`` on their own), and the known-bad
dependency table recognises the releases it documents."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from gateway.review.deps import KNOWN_BAD, affected, installed_versions, parse
from tests.conftest import UNIT
from tests.deploy.helpers import PROMETHEUS, load_yaml, promtool

KEY_ALERTS = {"VoicegwKeyRotationDue", "VoicegwKeyRotationOverdue"}


def test_key_alerts_read_the_rotation_gauge_with_a_14_day_notice() -> None:
    rules = {
        r["alert"]: r
        for g in load_yaml(PROMETHEUS / "alerts.yml")["groups"]
        for r in g["rules"]
        if r.get("alert") in KEY_ALERTS
    }
    assert set(rules) == KEY_ALERTS
    assert "voicegw_key_rotation_due_seconds" in rules["VoicegwKeyRotationDue"]["expr"]
    assert "< 14 * 86400" in rules["VoicegwKeyRotationDue"]["expr"]


def test_promtool_runs_the_key_alert_cases(tmp_path: Path) -> None:
    source = load_yaml(PROMETHEUS / "tests" / "alerts_test.yml")
    cases = [
        t
        for t in source["tests"]
        if any(c["alertname"] in KEY_ALERTS for c in t.get("alert_rule_test", []))
    ]
    fired = {c["alertname"] for t in cases for c in t["alert_rule_test"] if c["exp_alerts"]}
    assert fired == KEY_ALERTS
    only = {
        "rule_files": [str(PROMETHEUS / "recording.yml"), str(PROMETHEUS / "alerts.yml")],
        "evaluation_interval": source["evaluation_interval"],
        "tests": cases,
    }
    path = tmp_path / "keys_test.yml"
    path.write_text(yaml.safe_dump(only))
    result = subprocess.run(
        [promtool(), "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("package", "version", "bad"),
    [
        ("telnyx", "3.7.0", False),
        ("telnyx", "3.8.0", True),
        ("telnyx", "3.9.0", False),
        ("telnyx", "4.88.0", False),
        ("telnyx", "4.88.1", True),
        ("telnyx", "4.177.0", True),
        ("telnyx", "4.178.0", False),
        ("pyjwt", "2.3.0", True),
        ("pyjwt", "2.4", False),
        ("pyjwt", "2.10.0", True),
        ("pyjwt", "2.10.1", False),
        ("redis", "4.5.3", True),
        ("redis", "5.0.0", False),
        ("starlette", "1.2.1", True),
        ("starlette", "1.3.1", False),
    ],
)
def test_known_bad_ranges(package: str, version: str, bad: bool) -> None:
    assert bool(affected({package: version})) is bad


def test_versions_compare_as_release_numbers() -> None:
    assert parse("4.88.1rc1") == (4, 88, 1)
    assert parse("2.4.0") == parse("2.4") == (2, 4)
    assert parse("v1.0") == (1,)
    assert parse("unknown") is None
    assert affected({"pyjwt": "unknown"}) == []


def test_every_entry_cites_its_source_and_the_installed_set_is_clean() -> None:
    for entry in KNOWN_BAD:
        assert entry.advisory and entry.why and parse(entry.fixed) is not None
    versions = installed_versions()
    assert {"pyjwt", "cryptography", "starlette", "redis"} <= set(versions)
    assert affected(versions) == []
