"""Every deployment file parses."""

from __future__ import annotations

import json

import pytest

from tests.deploy.helpers import DEPLOY, load_all_yaml

YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def test_the_deploy_directory_has_what_the_readme_promises():
    for path in [
        "README.md",
        "compose.yaml",
        "k8s/kustomization.yaml",
        "prometheus/prometheus.yml",
        "prometheus/alerts.yml",
        "prometheus/recording.yml",
        "prometheus/tests/alerts_test.yml",
        "prometheus/adapter-rules.yaml",
        "grafana/voicegw.json",
    ]:
        assert (DEPLOY / path).is_file(), path


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path):
    assert load_all_yaml(path), f"{path} is empty"


def test_dashboard_json_parses():
    dashboard = json.loads((DEPLOY / "grafana" / "voicegw.json").read_text())
    assert dashboard["uid"] == "voicegw"
