"""The benchmarks run once in a tiny configuration so they keep working. No timing asserts:
figures come from ``bench/`` runs, not from tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.conftest import REDIS_URL, UNIT

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
    document = json.loads(out.read_text())
    results = document["results"]
    assert {r["system"] for r in results} == {"voicegw", "baseline"}
    for result in results:
        assert result["failed_setup"] == 0
        assert result["frames_sent"] > 0
        assert result["delivered_pct"] == 100.0
        assert result["holds"] is (result["rtt_ms_p99"] < 40.0)
        # The echo server read each frame's send time: a one-way figure below the round trip.
        assert 0 < result["one_way_ms_p50"] <= result["rtt_ms_max"]
        # Jitter is the change in round trip between consecutive echoes: never above the
        # largest round trip.
        assert 0 <= result["jitter_ms_p99"] <= result["rtt_ms_max"]
        assert result["relay_peak_rss_kib"] >= result["relay_idle_rss_kib"] > 0
    assert "voicegw / baseline" in run.stdout
    for system in ("voicegw", "baseline"):
        capacity = document["capacity"][system]
        assert capacity["levels"] == [2]
        assert capacity["capacity"] in (2, None)
    assert "capacity" in run.stdout
    assert "targets up to the floor's capacity" in run.stdout
    # The plot beside the JSON (matplotlib is in the dev extra: never skipped).
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")


def test_transcode_benchmark_times_the_gemini_path_and_writes_json(tmp_path):
    out = tmp_path / "transcode.json"
    run = subprocess.run(
        [sys.executable, str(BENCH / "transcode.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120 * UNIT,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    document = json.loads(out.read_text())
    directions = [g["direction"] for g in document["gemini"]]
    assert [d.split(":")[0] for d in directions] == ["in", "out"]
    for g in document["gemini"]:
        assert g["us_per_frame"] > 0 and g["passthrough_us_per_frame"] > 0
    assert any(r["case"].startswith("ulaw decode") for r in document["results"])


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
        [
            sys.executable,
            str(BENCH / "webhooks.py"),
            *("--seconds", "0.3", "--warmup", "20", "--workers", "2"),
            *("--open-seconds", "0.3", "--flood-seconds", "0.5", "--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=120 * UNIT,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    document = json.loads(out.read_text())
    rows = {(r["phase"], r["route"]): r for r in document["results"]}
    routes = ("healthz", "telnyx", "twilio")
    expected = {(p, r) for p in ("max", "half") for r in routes} | {("flood", "telnyx")}
    assert set(rows) == expected
    for row in rows.values():
        assert {"rps", "p50_ms", "p99_ms", "statuses", "server_cpu_us_per_req"} <= set(row)
        assert row["errors"] == {}
        assert set(row["statuses"]) == {"200"} and row["requests"] > 0
    for route in routes:
        assert rows[("max", route)]["rps_vs_healthz"] is not None
    assert rows[("flood", "telnyx")]["bad_all_403"] is True
    assert document["redis_keys_removed"] > 0
    assert "target" in run.stdout


@pytest.mark.redis
def test_soak_benchmark_churns_calls_samples_the_gateway_and_judges_it(tmp_path):
    out = tmp_path / "soak.json"
    run = subprocess.run(
        [
            sys.executable,
            str(BENCH / "soak.py"),
            *("--calls", "4", "--minutes", "0.34", "--min-call-s", "3", "--max-call-s", "6"),
            *("--interval-s", "2", "--settle-s", str(20 * UNIT), "--redis-url", REDIS_URL),
            *("--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=180 * UNIT,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    document = json.loads(out.read_text())
    series = document["series"]
    phases = [s["phase"] for s in series]
    assert phases[0] == "idle" and phases[-1] == "end" and phases.count("load") >= 3
    for sample in series:
        assert {"t_s", "rss_mib", "fds", "fds_by_kind", "tasks", "calls_active"} <= set(sample)
        assert sample["rss_mib"] > 0 and sample["fds"] > 0 and sample["tasks"] > 0
    assert max(s["calls_active"] for s in series) >= 1
    assert series[-1]["calls_active"] == 0
    assert series[-1]["frames_relayed"] > 0

    criteria = document["criteria"]
    assert set(criteria) == {
        "rss_growth",
        "fds_back",
        "tasks_back",
        "no_error_logs",
        "audio_delivered",
        "calls_set_up",
    }
    for verdict in criteria.values():
        assert {"pass", "measured", "target", "text"} <= set(verdict)
    assert ("PASS" if document["passed"] else "FAIL") in run.stdout
    # Churn: more calls than slots, every one set up and ended; nothing leaked or logged an
    # error (behaviour, not timing: the run waits up to --settle-s for the baseline).
    assert document["load"]["calls_started"] > 4
    assert criteria["calls_set_up"]["pass"], criteria["calls_set_up"]["text"]
    assert criteria["no_error_logs"]["pass"], document["log"]
    assert criteria["tasks_back"]["pass"], criteria["tasks_back"]["text"]
    assert criteria["fds_back"]["pass"], criteria["fds_back"]["text"]
    # The run's Redis keys are gone.
    client = redis.Redis.from_url(REDIS_URL)
    try:
        assert not list(client.scan_iter(match=document["redis_prefix"] + "*"))
    finally:
        client.close()


def test_relay_benchmark_reports_each_calls_standing_offset_with_calls_arriving(tmp_path):
    out = tmp_path / "relay.json"
    run = subprocess.run(
        [
            sys.executable,
            str(BENCH / "relay.py"),
            *("--calls", "3", "--seconds", "1", "--arrival-s", "0.5", "--repeat", "2"),
            *("--no-plot", "--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=180 * UNIT,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    document = json.loads(out.read_text())
    assert document["arrival_s"] == 0.5 and document["repeat"] == 2
    rows = {r["system"]: r for r in document["results"]}
    assert set(rows) == {"voicegw", "baseline"}
    for row in rows.values():
        assert row["failed_setup"] == 0 and row["delivered_pct"] == 100.0
        # Arrival mode: the calls were set up after "go", each timed webhook -> first echo.
        assert len(row["per_call"]) == 3 == row["offset_calls"]
        assert [c["call"] for c in row["per_call"]] == [0, 1, 2]
        for call in row["per_call"]:
            assert call["setup_ms"] > 0 and call["received"] == 50
            assert 0 < call["min_ms"] <= call["p50_ms"] <= call["max_ms"]
            # Heard at real-time playout: never before it arrived.
            assert call["heard_min_ms"] >= call["min_ms"]
            assert call["tail_min_ms"] >= call["min_ms"]
        assert row["offset_ms_max"] == max(c["min_ms"] for c in row["per_call"])
        assert row["offset_over_150"] == sum(c["min_ms"] > 150 for c in row["per_call"])
        assert row["tail_offset_ms_max"] == max(c["tail_min_ms"] for c in row["per_call"])
        assert len(row["repeats"]) == 2 and row["offset_repeat"] in (0, 1)
        worst = max(
            row["repeats"],
            key=lambda r: (
                max(r["offset_over_150"], r["tail_offset_over_150"]),
                max(r["offset_ms_max"], r["tail_offset_ms_max"]),
            ),
        )
        assert row["offset_ms_max"] == worst["offset_ms_max"]
    # voicegw's own histograms: every set-up stage observed, the loop lag sampled.
    stages = rows["voicegw"]["setup_stages_ms"]
    assert set(stages) == {
        "webhook",
        "start",
        "claim",
        "provider",
        "answer",
        "first_frame",
        "total",
    }
    assert all(q["p50"] is not None and q["p50"] <= q["p99"] for q in stages.values())
    assert rows["voicegw"]["loop_lag_ms_p99"] is not None
    assert rows["baseline"]["setup_stages_ms"] == {}
    assert "standing offset" in run.stdout and "worst of 2 repeats" in run.stdout


def test_redis_ops_counts_commands_per_webhook_and_call(tmp_path):
    out = tmp_path / "redis_ops.json"
    run = subprocess.run(
        [
            sys.executable,
            str(BENCH / "redis_ops.py"),
            *("--short-s", "1", "--long-s", "2", "--idle-s", "1", "--settle-s", "0.3"),
            *("--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=180 * UNIT,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    document = json.loads(out.read_text())
    phases = {p["phase"]: p for p in document["phases"]}
    assert list(phases) == [
        "idle",
        "twilio_voice",
        "twilio_status",
        "telnyx_event",
        "api_key_request",
        "console_login",
        "console_request",
        "twilio_call_short",
        "twilio_call_long",
        "telnyx_call",
    ]
    for phase in phases.values():
        assert phase["ops_total"] == sum(phase["ops"].values()) >= 0
    # Every webhook passes the shared admission (one Lua script at least); a new call is
    # registered; a whole call costs more than its voice webhook alone.
    for name in ("twilio_voice", "twilio_status", "telnyx_event"):
        assert phases[name]["net"]["evalsha admission.ADMIT"] == 1, phases[name]
        assert phases[name]["net_in_scripts"] > 0
    # A new call is registered (the registry's script, named by its Lua source).
    assert phases["twilio_voice"]["net"]["evalsha redis_registry.CREATE"] == 1
    assert phases["twilio_call_short"]["net_total"] > phases["twilio_voice"]["net_total"] > 0
    assert phases["telnyx_call"]["net_total"] > phases["telnyx_event"]["net_total"]
    assert phases["console_login"]["net_total"] > 0
    assert isinstance(document["media_ops_per_call_s"], float)
    assert "round trips" in run.stdout and "evalsha admission.ADMIT" in run.stdout


def test_wsclient_benchmark_measures_both_clients_and_writes_json(tmp_path):
    out = tmp_path / "wsclient.json"
    run = subprocess.run(
        [
            sys.executable,
            str(BENCH / "wsclient.py"),
            "--connections",
            "2",
            "--frames",
            "20",
            "--repeat",
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
    document = json.loads(out.read_text())
    for level in ("transport", "session"):
        for client in ("websockets", "picows"):
            (figure,) = document["us_per_round_trip"][level][client]
            assert figure > 0
    assert len(document["load_1min"]) == 1
    assert "| session | picows |" in run.stdout
