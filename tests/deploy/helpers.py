"""Shared by the deployment tests: paths, YAML loading, promtool, and the metric names and
labels that ``metrics.registry`` defines (for checking PromQL in rules and the dashboard)."""

from __future__ import annotations

import re
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram, Info

from metrics import registry

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"

# Labels Prometheus attaches at scrape time (and that the k8s scrape config relabels in).
TARGET_LABELS = frozenset({"job", "instance", "pod", "namespace"})


def load_yaml(path: Path) -> Any:
    with path.open() as f:
        return yaml.safe_load(f)


def load_all_yaml(path: Path) -> list[Any]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on PATH: install Debian's `prometheus` package "
            "(apt-get install prometheus); ./scripts/test does this"
        )
    return path


@cache
def metric_labels() -> dict[str, frozenset[str]]:
    """Every series name ``metrics.registry`` can expose, with its label names."""
    names: dict[str, frozenset[str]] = {}
    for value in vars(registry).values():
        if not isinstance(value, Counter | Gauge | Histogram | Info):
            continue
        base = value._name
        labels = frozenset(value._labelnames)
        match value:
            case Counter():
                names[f"{base}_total"] = labels
            case Gauge():
                names[base] = labels
            case Histogram():
                names[f"{base}_bucket"] = labels | {"le"}
                names[f"{base}_sum"] = labels
                names[f"{base}_count"] = labels
            case Info():
                names[f"{base}_info"] = labels | {"version"}
    return names


def recorded_rules() -> dict[str, str]:
    """Recording rule name -> expression, from deploy/prometheus/recording.yml."""
    rules = load_yaml(PROMETHEUS / "recording.yml")
    return {r["record"]: r["expr"] for g in rules["groups"] for r in g["rules"] if "record" in r}


_NAME = re.compile(r"(?<![\w:\"'.])(voicegw[a-zA-Z0-9_:]*)")
_BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_STRING = re.compile(r'"[^"]*"')


def problems_in(expr: str) -> list[str]:
    """Names in ``expr`` that no metric or recording rule defines, and ``by (...)`` labels that
    none of the metrics it reads carries."""
    known = metric_labels()
    recorded = recorded_rules()
    text = _STRING.sub('""', expr)
    problems: list[str] = []
    labels: set[str] = set(TARGET_LABELS)
    for name in _NAME.findall(text):
        if name in known:
            labels |= known[name]
        elif name in recorded:
            for inner in _NAME.findall(_STRING.sub('""', recorded[name])):
                labels |= known.get(inner, frozenset())
        else:
            problems.append(f"unknown metric {name}")
    for group in _BY.findall(text):
        for label in (x.strip() for x in group.split(",")):
            if label and label not in labels:
                problems.append(f"label {label} is not on the metrics of {expr!r}")
    return problems
