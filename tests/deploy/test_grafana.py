"""The Grafana dashboard loads the gateway's metric names and has the panels operators need."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.deploy.helpers import DEPLOY, GRAFANA, load_yaml, problems_in


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GRAFANA / "voicegw.json").read_text())
    return data


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def queries() -> list[str]:
    return [t["expr"] for p in panels() for t in p["targets"]]


def test_panels_cover_calls_latency_breakers_rejections_and_rate_limiting():
    text = " ".join(queries())
    for metric in [
        "voicegw_active_calls",
        "voicegw_calls_total",
        "voicegw_media_relay_seconds_bucket",
        "voicegw_http_request_duration_seconds_bucket",
        "voicegw_provider_connect_seconds_bucket",
        "voicegw_breaker_state",
        "voicegw_webhook_rejections_total",
        "voicegw_rate_limited_total",
    ]:
        assert metric in text, metric
    assert "sum by (layer) (rate(voicegw_webhook_rejections_total" in text
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le, direction)" in text


@pytest.mark.parametrize("expr", queries())
def test_queries_read_only_metrics_the_gateway_exports(expr):
    assert problems_in(expr) == []


def test_every_panel_uses_the_datasource_variable():
    (variable,) = dashboard()["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]


def test_panels_do_not_overlap():
    cells: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, panel["title"]
        cells |= mine
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def test_provisioning_points_at_the_mounted_dashboard():
    provider = load_yaml(GRAFANA / "provisioning" / "dashboards" / "voicegw.yml")["providers"][0]
    compose = load_yaml(DEPLOY / "compose.yaml")
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/voicegw.json:{provider['options']['path']}/voicegw.json:ro" in mounts
    (source,) = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")[
        "datasources"
    ]
    assert source["url"] == "http://prometheus:9090"
