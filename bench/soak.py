"""Soak: one ``voicegw serve`` carrying concurrent simulated calls with churn for minutes;
memory, file descriptors and tasks must stay flat, and nothing may log an error.

Usage: python bench/soak.py [--minutes 10] [--calls 100] [--json bench/last-run/soak.json]
       python bench/soak.py --minutes 3 --check     (exit status 1 when a criterion fails)

One real gateway process (uvloop, httptools, JSON logs at INFO on stdout) with every layer on:
Redis for rate limits, replay, stream tokens, breakers and the call registry (``--redis-url``,
a key prefix unique to the run, its keys deleted at the end), the Twilio signature check with
an explicit auth token, SQLite in a temporary data directory, ``/metrics`` behind a bearer
token, and ``VOICEGW_PROVIDERS=openai`` pointed at ``bench/echo_agent.py``. The load generator
(``bench/soakgen.py``, its own process) keeps ``--calls`` Twilio calls up at all times: each
lasts a random 20-90 s and the next starts when it ends (webhook, signed media stream, audio at
real-time pace, stop, status callback).

Every ``--interval-s`` (10 s) the gateway is sampled: RSS and open file descriptors by kind from
``/proc``, asyncio tasks and active calls and frames relayed from ``/metrics``, CPU. Before the
load an idle sample is the baseline; after the last call ends the gateway is polled until it is
back to it (at most ``--settle-s``). Criteria, each printed PASS or FAIL:

* RSS growth under load after the warm-up (the first 2 minutes, or 20 % of a shorter run) < 5 %;
* open file descriptors back to the baseline +- 2 once the calls ended (Redis pool connections,
  kept open for reuse and bounded by peak concurrency, are counted apart and reported);
* asyncio tasks back to the baseline +- 2;
* no ``error`` or ``critical`` line in the gateway's log, shutdown included, and nothing
  written to its stderr (a traceback would land there);
* audio delivered (echoes back at the caller over frames sent) >= 99.5 %, and no call failed.

Prints progress as it goes, then a table; writes JSON with the full sample series, and a PNG
plot next to it when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from processes import (
    BENCH,
    Child,
    cpu_seconds,
    free_port,
    machine_busy_seconds,
    memory_kib,
    open_fds,
    scrape,
    total,
    voicegw_argv,
    wait_http,
)
from soakreport import context, criteria, plot, render

RESULTS: Final = BENCH / "results"
DEFAULT_JSON: Final = BENCH / "last-run" / "soak.json"
START_TIMEOUT_S: Final = 30.0
ANSWER_TIMEOUT_S: Final = 30.0
SAMPLED: Final = {  # sample field -> the metric summed into it
    "tasks": "voicegw_asyncio_tasks",
    "calls_active": "voicegw_active_calls",
    "frames_relayed": "voicegw_media_frames_total",
    "frames_dropped": "voicegw_media_frames_dropped_total",
}
RELAY: Final = "voicegw_media_relay_seconds"
"""The gateway's own relay time per frame (its mean per sample is kept in the JSON). Outbound,
it ends when a frame is sent or queued for pacing: time spent queued is not in it."""
WANTED: Final = (*SAMPLED.values(), RELAY)


class Gateway:
    """The processes of one soak: echo server, gateway, and (later) the load generator."""

    def __init__(self, options: argparse.Namespace, log_dir: Path) -> None:
        self.options = options
        self.log_dir = log_dir
        self.children: list[Child] = []
        self.token = secrets.token_hex(16)
        self.metrics_token = secrets.token_hex(16)
        self.prefix = f"bench-soak-{secrets.token_hex(6)}:"
        self.redis_port = urlsplit(options.redis_url).port or 6379
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.gateway: Child | None = None
        self.gen: Child | None = None
        self.echo_port = 0
        self._last: dict[str, float] = {}

    def start(self) -> Child:
        """Start the echo server and the gateway; returns the gateway once it is ready."""
        api_key = "sk-bench-" + secrets.token_hex(8)
        argv = [sys.executable, str(BENCH / "echo_agent.py"), "--api-key", api_key]
        self.echo = self._spawn("echo", argv)
        self.echo_port = int(self.echo.readline(START_TIMEOUT_S).split()[1])
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEGW_")}
        self.gateway = self._spawn(
            "voicegw", voicegw_argv(self.port), capture=False, env={**env, **self._env(api_key)}
        )
        wait_http(f"{self.url}/readyz", START_TIMEOUT_S, self.gateway)
        return self.gateway

    def _spawn(self, name: str, argv: list[str], **kwargs: Any) -> Child:
        child = Child(name, argv, self.log_dir, **kwargs)
        self.children.append(child)
        return child

    def _env(self, api_key: str) -> dict[str, str]:
        o = self.options
        closed = free_port()  # carrier REST calls, should any be made, fail at once, locally
        # High enough never to refuse a webhook of this load, so the limiter runs but is silent.
        per_minute = max(1000, int(4 * o.calls * 60 / max(o.min_call_s, 1)))
        return {
            "VOICEGW_ENV": "development",
            "VOICEGW_PUBLIC_URL": self.url,
            "VOICEGW_DATA_DIR": str(self.log_dir / "data"),
            "VOICEGW_PROVIDERS": "openai",
            "OPENAI_API_KEY": api_key,
            "VOICEGW_OPENAI_REALTIME_URL": f"ws://127.0.0.1:{self.echo_port}/v1/realtime",
            "VOICEGW_TWILIO_AUTH_TOKEN": self.token,
            "VOICEGW_TWILIO_API_URL": f"http://127.0.0.1:{closed}",
            "VOICEGW_TELNYX_API_URL": f"http://127.0.0.1:{closed}",
            "VOICEGW_REDIS_URL": o.redis_url,
            "VOICEGW_REDIS_KEY_PREFIX": self.prefix,
            "VOICEGW_METRICS_TOKEN": self.metrics_token,
            "VOICEGW_RATE_LIMIT_PER_MINUTE": str(per_minute),
            "VOICEGW_LOG_LEVEL": "INFO",
            "VOICEGW_DRAIN_SECONDS": "5",
        }

    def start_load(self, seconds: float) -> None:
        o = self.options
        argv = [sys.executable, str(BENCH / "soakgen.py"), "--url", self.url,
                "--token", self.token, "--calls", str(o.calls), "--seconds", str(seconds),
                "--min-call-s", str(o.min_call_s), "--max-call-s", str(o.max_call_s),
                "--seed", str(o.seed)]  # fmt: skip
        self.gen = self._spawn("soakgen", argv)
        self.gen.json(START_TIMEOUT_S)  # ready
        self.gen.tell("go")

    def sample(self, t_s: float, phase: str) -> dict[str, Any]:
        """One sample of the gateway; rates are over the time since the previous one. The
        figures read from ``/metrics`` are None when it did not answer within 5 s."""
        assert self.gateway is not None
        pid = self.gateway.pid
        # File descriptors first: the scrape below opens a connection of its own.
        fds = open_fds(
            pid, server_port=self.port, peers={self.redis_port: "redis", self.echo_port: "agent"}
        )
        rss_kib = memory_kib(pid, "VmRSS")
        asked = time.monotonic()
        metrics = scrape(f"{self.url}/metrics", WANTED, self.metrics_token)
        now = time.monotonic()
        cpu = {"gw": cpu_seconds(pid), "echo": cpu_seconds(self.echo.pid)}
        if self.gen is not None and self.gen.proc.poll() is None:
            cpu["gen"] = cpu_seconds(self.gen.pid)
        row: dict[str, Any] = {
            "t_s": round(t_s, 1),
            "phase": phase,
            "rss_mib": round(rss_kib / 1024, 2),
            "fds": fds["total"],
            "fds_redis": fds.get("redis", 0),
            "fds_by_kind": fds,
            # How long /metrics took to answer: a stalled event loop shows here first.
            "scrape_ms": round(1000 * (now - asked), 1) if metrics else None,
        }
        for key, name in SAMPLED.items():
            row[key] = int(total(metrics, name)) if metrics else None
        counters = {"t": now, "busy": machine_busy_seconds(), **cpu}
        if metrics:
            counters["relayed"] = row["frames_relayed"]
            for way in ("from_carrier", "to_carrier"):
                label = f'direction="{way}"'
                counters[f"{way}_s"] = total(metrics, RELAY + "_sum", label)
                counters[f"{way}_n"] = total(metrics, RELAY + "_count", label)
        last, self._last = self._last, {**self._last, **counters}
        if last:
            dt = now - last["t"]
            cores = os.cpu_count() or 1
            for name in cpu:
                if name in last:
                    row[f"{name}_cpu_pct"] = round(100 * (cpu[name] - last[name]) / dt, 1)
            spent = sum(cpu[k] - last.get(k, cpu[k]) for k in cpu)
            other = min(max(0.0, counters["busy"] - last["busy"] - spent), dt * cores)
            row["other_cpu_pct"] = round(100 * other / dt / cores, 1)
            if metrics and "relayed" in last:
                row["relayed_per_s"] = round((counters["relayed"] - last["relayed"]) / dt, 1)
                for way in ("from_carrier", "to_carrier"):
                    n = counters[f"{way}_n"] - last[f"{way}_n"]
                    spent_s = counters[f"{way}_s"] - last[f"{way}_s"]
                    row[f"relay_ms_{way}"] = round(1000 * spent_s / n, 3) if n else None
        if self.gen is not None and phase in ("load", "tail"):
            row["gen"] = self.gen.ask("sample", ANSWER_TIMEOUT_S)
        return row

    def outcomes(self) -> dict[str, int]:
        """Calls ended, by outcome, from ``voicegw_calls_total``."""
        metrics = scrape(f"{self.url}/metrics", ["voicegw_calls_total"], self.metrics_token)
        out: collections.Counter[str] = collections.Counter()
        for name, value in metrics.items():
            outcome = name.split('outcome="', 1)[1].split('"', 1)[0] if "outcome=" in name else ""
            out[outcome] += int(value)
        return dict(out)

    def stop(self) -> int:
        """Stop every process, the gateway last but one (its shutdown is logged too); returns
        the gateway's exit status."""
        status = 0
        for child in reversed(self.children):
            if child is self.gateway:
                # SIGTERM, as an orchestrator stops it: drain, then exit (uvicorn then
                # re-raises the signal, so the status is -15).
                status = child.stop(sig=signal.SIGTERM)
            else:
                child.stop()
        return status

    def clear_redis(self) -> int:
        """Delete the run's keys; returns how many there were."""
        import redis

        client = redis.Redis.from_url(self.options.redis_url)
        try:
            keys = list(client.scan_iter(match=self.prefix + "*", count=1000))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i : i + 1000])
            return len(keys)
        except redis.RedisError as exc:
            print(f"could not delete the run's Redis keys ({self.prefix}*): {exc}", flush=True)
            return -1
        finally:
            client.close()


SERVE_BANNER = "voicegw: console at "
"""The start of the line ``voicegw serve`` prints on stderr in development."""


def count_log_levels(path: Path, stderr: Path) -> dict[str, Any]:
    """Lines of the gateway's JSON log (``path``) by level, with the first error-level events,
    and the lines it wrote to ``stderr`` (none expected but the one human line ``voicegw
    serve`` prints in development: everything else goes through the log)."""
    levels: collections.Counter[str] = collections.Counter()
    warnings: collections.Counter[str] = collections.Counter()
    errors: list[dict[str, Any]] = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
            level = str(record["level"])
        except (ValueError, KeyError, TypeError):
            levels["unparsed"] += 1
            continue
        levels[level] += 1
        if level == "warning":
            warnings[str(record.get("event"))] += 1
        if level in ("error", "critical") and len(errors) < 10:
            errors.append({k: record.get(k) for k in ("ts", "level", "logger", "event", "exc")})
    other = [
        line
        for line in stderr.read_text(errors="replace").splitlines()
        if not line.startswith(SERVE_BANNER)
    ]
    return {
        "levels": dict(levels),
        "warnings": dict(warnings.most_common(10)),
        "errors": errors,
        "stderr_lines": len(other),
        "stderr_head": other[:20],
    }


def _progress(row: dict[str, Any]) -> None:
    def num(key: str, fmt: str, source: dict[str, Any] = row) -> str:
        value = source.get(key)
        return "-" if value is None else format(value, fmt)

    gen = row.get("gen", {})
    line = (
        f"  {row['phase']:<6}{row['t_s']:>5.0f} s: calls {num('calls_active', '>3')}, "
        f"rss {row['rss_mib']:.1f} MiB, fds {row['fds']} (redis {row['fds_redis']}), "
        f"tasks {num('tasks', 'd')} | relayed {num('relayed_per_s', '.0f')}/s, cpu % gw "
        f"{num('gw_cpu_pct', '.0f')} gen {num('gen_cpu_pct', '.0f')} echo "
        f"{num('echo_cpu_pct', '.0f')} other {num('other_cpu_pct', '.0f')}, /metrics "
        f"{num('scrape_ms', '.0f')} ms"
    )
    if gen:
        line += (
            f" | started {gen['started']}, failed {gen['failed']}, rtt p99 "
            f"{num('p99', '.1f', gen['rtt_ms'])} ms, send lag p99 "
            f"{num('p99', '.1f', gen['send_lag_ms'])} ms"
        )
    print(line, flush=True)


def settle(gw: Gateway, base: dict[str, Any], began: float, series: list[dict[str, Any]]) -> float:
    """Poll every second until fds (Redis pool apart) and tasks are back at the baseline and no
    call is active, or ``--settle-s`` passed; returns the seconds it took."""
    start = time.monotonic()
    while True:
        row = gw.sample(time.monotonic() - began, "settle")
        series.append(row)
        back = (
            row["fds"] - row["fds_redis"] <= base["fds"] - base["fds_redis"]
            and row["tasks"] is not None
            and row["tasks"] <= base["tasks"]
            and row["calls_active"] == 0
        )
        waited = time.monotonic() - start
        if back or waited >= gw.options.settle_s:
            row["phase"] = "end"
            _progress(row)
            return waited
        time.sleep(1.0)


def soak(options: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    run_s = options.minutes * 60
    gw = Gateway(options, log_dir)
    series: list[dict[str, Any]] = []
    try:
        gateway = gw.start()
        time.sleep(1.0)
        gw.sample(-1.0, "idle")  # the first scrape builds what every later one reuses
        time.sleep(1.0)
        base = gw.sample(0.0, "idle")
        series.append(base)
        _progress(base)
        gw.start_load(run_s)
        began = time.monotonic()
        tick = began
        while True:
            tick += options.interval_s
            time.sleep(max(0.0, tick - time.monotonic()))
            t_s = time.monotonic() - began
            row = gw.sample(t_s, "load" if t_s <= run_s + 1 else "tail")
            series.append(row)
            _progress(row)
            if row["gen"]["finished"]:
                break
        assert gw.gen is not None
        load = gw.gen.ask("result", ANSWER_TIMEOUT_S)
        gw.gen.stop()
        settle_s = settle(gw, base, began, series)
        outcomes = gw.outcomes()
        peak_rss_mib = round(memory_kib(gateway.pid, "VmHWM") / 1024, 2)
    finally:
        exit_status = gw.stop()
        keys = gw.clear_redis()
    assert gateway.out_path is not None
    return {
        "baseline": base,
        "series": series,
        "load": load,
        "settle_s": round(settle_s, 1),
        "call_outcomes": outcomes,
        "peak_rss_mib": peak_rss_mib,
        "log": count_log_levels(gateway.out_path, gateway.log_path),
        "gateway_exit_status": exit_status,
        "redis_prefix": gw.prefix,
        "redis_keys_at_end": keys,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the load")
    parser.add_argument("--calls", type=int, default=100, help="concurrent calls")
    parser.add_argument("--min-call-s", type=float, default=20.0, help="shortest call")
    parser.add_argument("--max-call-s", type=float, default=90.0, help="longest call")
    parser.add_argument("--interval-s", type=float, default=10.0, help="sampling period")
    parser.add_argument(
        "--warmup-s", type=float, default=None, help="default: 2 minutes or 20 %% of the run"
    )
    parser.add_argument("--settle-s", type=float, default=30.0, help="wait for the baseline")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="where to write the JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 when a criterion fails")
    options = parser.parse_args()
    run_s = options.minutes * 60
    warmup_s = options.warmup_s if options.warmup_s is not None else min(120.0, 0.2 * run_s)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = Path(tempfile.mkdtemp(prefix=f"soak-{stamp}-", dir=RESULTS))
    print(
        f"voicegw soak: {options.calls} calls of {options.min_call_s:g}-{options.max_call_s:g} s "
        f"with churn for {options.minutes:g} min, sampled every {options.interval_s:g} s, "
        f"warm-up {warmup_s:g} s; {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"logs in {log_dir}",
        flush=True,
    )
    result = soak(options, log_dir)
    shutil.rmtree(log_dir / "data", ignore_errors=True)  # development keys: not worth keeping
    verdicts = criteria(result, warmup_s)
    document = {
        "bench": "soak",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "calls": options.calls,
        "minutes": options.minutes,
        "call_s": [options.min_call_s, options.max_call_s],
        "interval_s": options.interval_s,
        "warmup_s": warmup_s,
        "criteria": verdicts,
        "passed": all(v["pass"] for v in verdicts.values()),
        "context": context(result, warmup_s),
        "logs": str(log_dir),
        **result,
    }
    print()
    print(render(document))
    out = Path(options.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"\nJSON: {out}")
    picture = plot(document, out.with_suffix(".png"))
    if picture is not None:
        print(f"plot: {picture}")
    if options.check and not document["passed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
