"""Prometheus files: promtool accepts the configs and rules, every alert has a unit test that
makes it fire, and every metric the rules read is one the gateway exports."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import UNIT
from tests.deploy.helpers import (
    DEPLOY,
    PROMETHEUS,
    load_yaml,
    metric_labels,
    problems_in,
    promtool,
    recorded_rules,
)

RULE_FILES = [PROMETHEUS / "recording.yml", PROMETHEUS / "alerts.yml"]
UNIT_TESTS = PROMETHEUS / "tests" / "alerts_test.yml"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
        check=False,
    )


def alerts() -> list[dict[str, Any]]:
    return [r for g in load_yaml(PROMETHEUS / "alerts.yml")["groups"] for r in g["rules"]]


def test_promtool_check_rules():
    result = run("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules():
    result = run("test", "rules", UNIT_TESTS.name, cwd=UNIT_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_test_that_makes_it_fire():
    tests = load_yaml(UNIT_TESTS)["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    names = {a["alert"] for a in alerts()}
    assert names - fired == set(), "alerts without a firing test"
    assert names - quiet == set(), "alerts without a test that they stay quiet"
    assert names >= {
        "VoicegwProviderDown",
        "VoicegwBreakerOpen",
        "VoicegwWebhookRejectionSpike",
        "VoicegwRateLimiting",
        "VoicegwRelayLatencyHigh",
        "VoicegwCallErrorBudgetBurnFast",
        "VoicegwCallErrorBudgetBurnSlow",
        "VoicegwNoTraffic",
    }


def test_every_alert_has_a_severity_and_a_description():
    for alert in alerts():
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}, alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]


@pytest.mark.parametrize(
    "expr",
    [r["expr"] for r in alerts()] + list(recorded_rules().values()),
    ids=[r["alert"] for r in alerts()] + list(recorded_rules()),
)
def test_rules_read_only_metrics_the_gateway_exports(expr):
    assert problems_in(expr) == []


def test_the_name_check_catches_typos():
    assert metric_labels()["voicegw_calls_total"] == {"carrier", "provider", "outcome", "agent"}
    assert problems_in("sum(rate(voicegw_call_total[5m]))") == ["unknown metric voicegw_call_total"]
    assert problems_in("sum by (layer) (voicegw_calls_total)")
    assert (
        problems_in('sum by (le) (rate(voicegw_media_relay_seconds_bucket{x="voicegw_no"}[1m]))')
        == []
    )


def _check_config(config: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """promtool check config on ``config`` with its files (token, rules) placed in tmp_path."""
    token = tmp_path / "metrics-token"
    token.write_text("token\n")
    for job in config["scrape_configs"]:
        job["authorization"]["credentials_file"] = str(token)
    rules = []
    for rule_file in config.get("rule_files", []):
        source = PROMETHEUS / Path(rule_file).name
        shutil.copy(source, tmp_path / source.name)
        rules.append(source.name)
    config["rule_files"] = rules
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return run("check", "config", str(path))


def test_promtool_check_config_kubernetes(tmp_path):
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["authorization"]["credentials_file"].startswith("/etc/prometheus/secrets/")
    assert job["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": ["voicegw"]}}]
    result = _check_config(config, tmp_path)
    if "field kubernetes_sd_configs not found" in result.stdout + result.stderr:
        # Debian's promtool is built without Kubernetes discovery: check the rest of the file
        # with the targets given statically instead.
        config = load_yaml(PROMETHEUS / "prometheus.yml")
        del config["scrape_configs"][0]["kubernetes_sd_configs"]
        config["scrape_configs"][0]["static_configs"] = [{"targets": ["voicegw:8000"]}]
        result = _check_config(config, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config_compose(tmp_path):
    config = load_yaml(DEPLOY / "compose" / "prometheus.yml")
    result = _check_config(config, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_adapter_rule_serves_the_hpa_metric():
    (rule,) = load_yaml(PROMETHEUS / "adapter-rules.yaml")["rules"]["custom"]
    assert rule["name"]["as"] == "voicegw_active_calls"
    assert "voicegw_active_calls" in rule["seriesQuery"]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    assert "voicegw_active_calls" in metric_labels()
