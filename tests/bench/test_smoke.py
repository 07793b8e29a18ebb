"""The benchmarks run once in a tiny configuration so they keep working. No timing asserts:
figures come from ``bench/`` runs, not from tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import UNIT

BENCH = Path(__file__).resolve().parents[2] / "bench"

pytestmark = pytest.mark.e2e


def test_relay_benchmark_runs_both_systems_and_writes_json(tmp_path):
    out = tmp_path / "relay.json"
    run = subprocess.run(
        [
            sys.executable,
            str(BENCH / "relay.py"),
            "--calls",
            "2",
            "--seconds",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120 * UNIT,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    assert {r["system"] for r in results} == {"voicegw", "baseline"}
    for result in results:
        assert result["failed_setup"] == 0
        assert result["frames_sent"] > 0
        assert result["delivered_pct"] == 100.0
    assert "voicegw / baseline" in run.stdout


def test_audio_benchmark_runs(tmp_path):
    run = subprocess.run(
        [sys.executable, str(BENCH / "bench_audio.py")],
        capture_output=True,
        text=True,
        timeout=120 * UNIT,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "μ-law" in run.stdout or "ulaw" in run.stdout.lower()


def test_failover_benchmark_runs(tmp_path):
    out = tmp_path / "failover.json"
    run = subprocess.run(
        [sys.executable, str(BENCH / "failover.py"), "--runs", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120 * UNIT,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["runs"] == 1
    assert result["to_next_ms"]["p50"] > 0


@pytest.mark.redis
def test_webhooks_benchmark_runs_every_phase_and_writes_json(tmp_path):
    out = tmp_path / "webhooks.json"
    run = subprocess.run(
        [sys.executable, str(BENCH / "webhooks.py"), "--requests", "40", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120 * UNIT,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    document = json.loads(out.read_text())
    rows = {r["phase"]: r for r in document["results"]}
    assert set(rows) == {"healthz", "telnyx", "twilio", "flood"}
    for row in rows.values():
        assert {"rps", "p50_ms", "p99_ms", "rps_vs_healthz", "statuses"} <= set(row)
    assert rows["telnyx"]["statuses"] == {"200": 40}
    assert rows["twilio"]["statuses"] == {"200": 40}
    assert rows["flood"]["bad_all_403"] is True
