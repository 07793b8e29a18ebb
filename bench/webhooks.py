"""Throughput and latency of signed carrier webhooks through every security layer, next to
``GET /healthz`` on the same server, with a load generator that is not the bottleneck.

Usage: python bench/webhooks.py [--seconds 4] [--workers 1] [--py-spy DIR] [--gc-stats]

One real ``voicegw serve`` process (uvloop, httptools, JSON logs at WARNING) backed by the
local Redis (``redis://127.0.0.1:6379/13``, a key prefix unique to the run, removed at the
end), ``VOICEGW_PROVIDERS=echo``, a rate limit too high to trip, and carrier REST URLs that
point at a closed loopback port (no event used here makes a REST call). The load generator is
``bench/httpload.py``: ``--workers`` processes, each with its own uvloop and raw HTTP/1.1
keep-alive connections opened before the phase; every request is built, signed and
serialized before its phase starts.

Phases, in order, in the same run on the same server:

1. ``max``: after a warm-up, closed loop at ``--concurrency`` for ``--seconds``, per route:
   ``healthz`` (the baseline), ``telnyx`` (signed ``call.bridged`` events, unique ``data.id``,
   Ed25519 over ``timestamp|body``: every layer runs, no REST call) and ``twilio`` (signed
   status callbacks, form-encoded, ``X-Twilio-Signature``, a ``ts`` query parameter and a
   ``Timestamp`` field for freshness, ``CallStatus=in-progress``, unique ``CallSid``): each
   route's maximum throughput;
2. ``half``: open loop, each route at half its own maximum for ``--open-seconds``; latency
   counted from each request's scheduled send time (waiting for a free connection included);
3. ``flood``: open loop, valid Telnyx webhooks at ``--flood-valid-share`` of the Telnyx
   maximum, interleaved with ten times as many whose signature has one byte flipped: the valid
   ones' latency, and every bad one's status (all should be 403).

Each row also gives the server's CPU per answer, the generator's CPU and everything else the
machine ran meanwhile (``other%``: Redis, the kernel and any other process; read latency only
from runs where it is low). Prints a table with the ratios and the targets of issue 8, writes
JSON (default ``bench/last-run/webhooks.json``). No figure is asserted.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import email.utils
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import numpy as np
import orjson
from twilio.request_validator import RequestValidator

BENCH: Final = Path(__file__).resolve().parent
ROOT: Final = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from httpload import (  # noqa: E402
    LoadGenerator,
    Result,
    Sample,
    http_request,
    split_closed,
    split_open,
)
from processes import Child, free_port, voicegw_argv, wait_http  # noqa: E402

from gateway import devkeys  # noqa: E402

RESULTS: Final = BENCH / "results"
LAST_RUN: Final = BENCH / "last-run" / "webhooks.json"
REDIS_URL: Final = "redis://127.0.0.1:6379/13"
START_TIMEOUT_S: Final = 30.0
CALLER: Final = "+15550100001"  # fictional (555-01xx) numbers
CALLEE: Final = "+15550100002"
ROUTES: Final = ("healthz", "telnyx", "twilio")

# The targets of issue 8, checked under the table.
TARGET_RATIO: Final = 0.5
TARGET_HALF_P99_MS: Final = 10.0
TARGET_FLOOD_P99_MS: Final = 25.0


# -- requests ------------------------------------------------------------------------------


def telnyx_body() -> bytes:
    """A ``call.bridged`` event: a call event the gateway acknowledges without a REST call."""
    return orjson.dumps(
        {
            "data": {
                "event_type": "call.bridged",
                "id": str(uuid.uuid4()),
                "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
                "payload": {
                    "call_control_id": "v3:" + secrets.token_urlsafe(24),
                    "call_leg_id": str(uuid.uuid4()),
                    "call_session_id": str(uuid.uuid4()),
                    "connection_id": "1684641123236054244",
                    "from": CALLER,
                    "to": CALLEE,
                },
                "record_type": "event",
            },
            "meta": {"attempt": 1, "delivered_to": "voicegw"},
        }
    )


class Builder:
    """Builds serialized, signed requests for one server."""

    def __init__(self, host: str, keys: devkeys.DevKeys, twilio_token: str) -> None:
        self.host = host
        self.public_url = f"http://{host}"
        self.signing = keys.telnyx_signing_key()
        self.validator = RequestValidator(twilio_token)

    def healthz(self) -> bytes:
        return http_request("GET", "/healthz", self.host, {})

    def telnyx(self, *, bad: bool = False) -> bytes:
        body = telnyx_body()
        ts = str(int(time.time()))
        signature = bytearray(self.signing.sign(ts.encode() + b"|" + body).signature)
        if bad:
            signature[secrets.randbelow(len(signature))] ^= 0x01
        headers = {
            "content-type": "application/json",
            "telnyx-signature-ed25519": base64.b64encode(bytes(signature)).decode(),
            "telnyx-timestamp": ts,
        }
        return http_request("POST", "/webhooks/telnyx", self.host, headers, body)

    def twilio(self) -> bytes:
        path = f"/webhooks/twilio/status?ts={int(time.time())}"
        params = {
            "AccountSid": "AC" + secrets.token_hex(16),
            "CallSid": "CA" + secrets.token_hex(16),
            "CallStatus": "in-progress",
            "Direction": "inbound",
            "From": CALLER,
            "To": CALLEE,
            "ApiVersion": "2010-04-01",
            "Timestamp": email.utils.formatdate(usegmt=True),
            "SequenceNumber": "1",
        }
        headers = {
            "content-type": "application/x-www-form-urlencoded",
            "x-twilio-signature": self.validator.compute_signature(self.public_url + path, params),
        }
        return http_request("POST", path, self.host, headers, urlencode(params).encode())

    def route(self, name: str) -> Callable[[], bytes]:
        return {"healthz": self.healthz, "telnyx": self.telnyx, "twilio": self.twilio}[name]


# -- figures -------------------------------------------------------------------------------


def _pct(values: np.ndarray[Any, Any], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values.size else None


def summarize(
    phase: str,
    route: str,
    results: list[Result],
    sample: Sample,
    *,
    target_rps: float | None = None,
    tag: int = 0,
) -> dict[str, Any]:
    """One row: answers per second over the phase, latency of ``tag`` requests, CPU."""
    started = min(r.started for r in results)
    ended = max(r.last_answer for r in results)
    elapsed = max(ended - started, 1e-9)
    answered = sum(r.answered for r in results)
    from_send = np.concatenate([np.asarray(r.from_send_ms.get(tag, ())) for r in results])
    from_due = np.concatenate([np.asarray(r.from_due_ms.get(tag, ())) for r in results])
    statuses: collections.Counter[int] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    for r in results:
        statuses.update(r.statuses.get(tag, {}))
        errors.update(r.errors)
    gen_cpu_s = sum(r.cpu_s for r in results)
    server_cpu_s = sample.server_cpu_s
    other_cpu_s = max(0.0, sample.busy_s - server_cpu_s - gen_cpu_s)
    return {
        "phase": phase,
        "route": route,
        "requests": answered + sum(errors.values()),
        "target_rps": round(target_rps, 1) if target_rps is not None else None,
        "rps": round(answered / elapsed, 1),
        "elapsed_s": round(elapsed, 3),
        "p50_ms": _pct(from_due, 50),
        "p99_ms": _pct(from_due, 99),
        "max_ms": round(float(from_due.max()), 3) if from_due.size else None,
        "send_p50_ms": _pct(from_send, 50),
        "send_p99_ms": _pct(from_send, 99),
        "waited_for_connection": sum(r.waited for r in results),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": dict(errors),
        "server_cpu_pct": round(100 * server_cpu_s / elapsed, 1),
        "server_cpu_us_per_req": round(1e6 * server_cpu_s / answered, 1) if answered else None,
        "gen_cpu_pct": round(100 * gen_cpu_s / elapsed, 1),
        "gen_cpu_us_per_req": round(1e6 * gen_cpu_s / answered, 1) if answered else None,
        # Everything else the machine ran meanwhile (other processes, Redis, the kernel).
        "other_cpu_pct": round(100 * other_cpu_s / elapsed, 1),
    }


# -- the server ----------------------------------------------------------------------------


def clear_prefix(prefix: str) -> int:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
        return len(keys)
    finally:
        client.close()


def server_env(
    work: Path, port: int, keys: devkeys.DevKeys, token: str, prefix: str
) -> dict[str, str]:
    closed = free_port()  # nothing listens here: a stray REST call fails at once, locally
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", str(work)),
        "VOICEGW_ENV": "development",
        "VOICEGW_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "VOICEGW_DATA_DIR": str(work / "data"),
        "VOICEGW_REDIS_URL": REDIS_URL,
        "VOICEGW_REDIS_KEY_PREFIX": prefix,
        "VOICEGW_RATE_LIMIT_PER_MINUTE": "1000000",
        "VOICEGW_TWILIO_AUTH_TOKEN": token,
        "VOICEGW_TELNYX_PUBLIC_KEY": keys.telnyx_public_key,
        "VOICEGW_TELNYX_API_KEY": "bench-unused",
        "VOICEGW_TELNYX_API_URL": f"http://127.0.0.1:{closed}",
        "VOICEGW_TWILIO_API_URL": f"http://127.0.0.1:{closed}",
        "VOICEGW_PROVIDERS": "echo",
        "VOICEGW_LOG_LEVEL": "WARNING",
        "VOICEGW_DRAIN_SECONDS": "1",
    }


# -- the run -------------------------------------------------------------------------------


def run(options: argparse.Namespace, work: Path) -> dict[str, Any]:
    port = free_port()
    host = f"127.0.0.1:{port}"
    keys = devkeys.load_or_create(work / "data")
    token = secrets.token_hex(16)
    prefix = f"bench-wh-{secrets.token_hex(6)}:"
    build = Builder(host, keys, token)
    env = server_env(work, port, keys, token, prefix)
    gc_log = work / "gc.json"
    if options.gc_stats:
        # bench/hooks/sitecustomize.py times every collector pass in the server.
        env["PYTHONPATH"] = str(BENCH / "hooks")
        env["BENCH_GC_LOG"] = str(gc_log)
    server = Child("voicegw", voicegw_argv(port), work, capture=False, env=env)
    generator = LoadGenerator(options.workers)
    workers, conc = options.workers, options.concurrency
    rows: list[dict[str, Any]] = []

    def report(row: dict[str, Any]) -> dict[str, Any]:
        print(_progress(row), flush=True)
        rows.append(row)
        return row

    def closed(route: str, n: int, seconds: float | None = None) -> tuple[list[Result], Sample]:
        # /healthz requests are all alike: one serialized request, sent n times.
        one = build.healthz() if route == "healthz" else None
        requests = [one or build.route(route)() for _ in range(n)]
        jobs = split_closed("127.0.0.1", port, requests, conc, workers, seconds)
        return generator.run(jobs, server.pid)

    def open_loop(
        requests: list[bytes], rate: float, tags: bytes | None = None
    ) -> tuple[list[Result], Sample]:
        offsets = [i / rate for i in range(len(requests))]
        connections = max(2, options.connections // workers)
        jobs = split_open("127.0.0.1", port, requests, offsets, connections, workers, tags)
        return generator.run(jobs, server.pid)

    try:
        wait_http(f"http://{host}/readyz", START_TIMEOUT_S, server)
        maximum: dict[str, float] = {}
        for route in ROUTES:
            warm = summarize("warm-up", route, *closed(route, options.warmup))
            # Enough requests for --seconds at 1.5 times the warm-up's rate; the phase stops
            # sending at --seconds (or earlier, when they run out).
            n = max(options.warmup, round(1.5 * warm["rps"] * options.seconds))
            with profiled(options.py_spy, route, server.pid):
                row = report(summarize("max", route, *closed(route, n, options.seconds)))
            maximum[route] = row["rps"]
        for route in ROUTES:
            rate = max(1.0, maximum[route] / 2)
            n = max(10, round(rate * options.open_seconds))
            requests = [build.route(route)() for _ in range(n)]
            report(summarize("half", route, *open_loop(requests, rate), target_rps=rate))

        valid_rate = max(1.0, maximum["telnyx"] * options.flood_valid_share)
        valid = max(10, round(valid_rate * options.flood_seconds))
        rate = valid_rate * 11
        requests, tags = [], bytearray()
        for i in range(valid * 11):  # every 11th request is valid: even interleaving
            good = i % 11 == 0
            requests.append(build.telnyx(bad=not good))
            tags.append(0 if good else 1)
        results, sample = open_loop(requests, rate, bytes(tags))
        row = summarize("flood", "telnyx", results, sample, target_rps=valid_rate)
        bad = summarize("flood", "telnyx", results, sample, tag=1)
        row["valid_rps"] = round(sum(row["statuses"].values()) / row["elapsed_s"], 1)
        row["bad"] = sum(bad["statuses"].values())
        row["bad_statuses"] = bad["statuses"]
        row["bad_all_403"] = bad["statuses"] == {"403": valid * 10}
        row["bad_p99_ms"] = bad["p99_ms"]
        report(row)

        base = maximum["healthz"]
        for row in rows:
            if row["phase"] == "max":
                row["rps_vs_healthz"] = round(row["rps"] / base, 3) if base else None
    finally:
        generator.close()
        server.stop(sig=signal.SIGTERM)  # as an orchestrator stops it
        removed = clear_prefix(prefix)
    document: dict[str, Any] = {"results": rows, "redis_keys_removed": removed}
    document["server_log_tail"] = server.tail()[-1000:]
    if gc_log.exists():
        document["server_gc"] = json.loads(gc_log.read_text())
    return document


@contextlib.contextmanager
def profiled(directory: str | None, route: str, pid: int) -> Iterator[None]:
    """With ``directory``, sample the server with py-spy (``--nonblocking``, 250 Hz, idle
    frames left out) and write its collapsed stacks to ``<directory>/<route>.txt``."""
    if directory is None:
        yield
        return
    binary = Path(sys.executable).with_name("py-spy")
    if not binary.exists():
        raise SystemExit("--py-spy needs py-spy next to this Python: pip install py-spy")
    out = Path(directory) / f"{route}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen(
        [str(binary), "record", "--pid", str(pid), "--format",
         "raw", "--rate", "250", "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)  # attached before the phase starts
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
        print(f"  py-spy: {out} ({_top_frames(out)})", flush=True)


def _top_frames(path: Path, limit: int = 5) -> str:
    """The functions with the most samples at the top of the stack."""
    own: collections.Counter[str] = collections.Counter()
    total = 0
    if not path.exists():
        return "no samples"
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        leaf = stack.rsplit(";", 1)[-1]
        own[leaf.split(" (")[0]] += int(count)
        total += int(count)
    return ", ".join(f"{name} {100 * n / total:.0f} %" for name, n in own.most_common(limit))


def _progress(row: dict[str, Any]) -> str:
    text = (
        f"  {row['phase']:<5} {row['route']:<7} {row['requests']:>6} req: "
        f"{row['rps']:>8.1f} req/s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
        f"server {row['server_cpu_us_per_req']} µs/req, generator {row['gen_cpu_pct']} % cpu, "
        f"statuses {row['statuses']}"
    )
    if row["errors"]:
        text += f", errors {row['errors']}"
    if row["phase"] == "flood":
        text += f", bad {row['bad_statuses']}"
    return text


COLUMNS: Final = [
    ("phase", "phase", "{:<5}"),
    ("route", "route", "{:<7}"),
    ("requests", "requests", "{:>8}"),
    ("target_rps", "offered/s", "{:>9.1f}"),
    ("rps", "req/s", "{:>8.1f}"),
    ("rps_vs_healthz", "vs healthz", "{:>10.3f}"),
    ("p50_ms", "p50 ms", "{:>7.2f}"),
    ("p99_ms", "p99 ms", "{:>7.2f}"),
    ("max_ms", "max ms", "{:>7.1f}"),
    ("server_cpu_pct", "srv cpu%", "{:>8.1f}"),
    ("server_cpu_us_per_req", "srv µs/req", "{:>10.1f}"),
    ("gen_cpu_pct", "gen cpu%", "{:>8.1f}"),
    ("other_cpu_pct", "other%", "{:>6.1f}"),
]


def render(rows: list[dict[str, Any]], options: argparse.Namespace) -> str:
    header = "  ".join(
        f"{t:<{_width(f)}}" if "<" in f else f"{t:>{_width(f)}}" for _, t, f in COLUMNS
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            "  ".join(
                f.format(row[k]) if row.get(k) is not None else f"{'-':>{_width(f)}}"
                for k, _, f in COLUMNS
            )
        )
    lines += [
        "",
        f"max: closed loop, {options.concurrency} connections over {options.workers} generator "
        "process(es); half: open loop at half that route's max, latency from each request's "
        "scheduled time; flood: offered/s and latency are the valid requests', req/s counts "
        "valid and bad.",
        "srv µs/req = server CPU per answer; gen cpu% = all generator processes; other% = "
        "everything else the machine ran (Redis, kernel, other processes); % of one core.",
        "",
        *verdicts(rows),
    ]
    return "\n".join(lines)


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """The targets of issue 8, met or not, from this run's rows."""
    by = {(r["phase"], r["route"]): r for r in rows}
    lines = []
    for route in ("telnyx", "twilio"):
        ratio = by[("max", route)].get("rps_vs_healthz")
        if ratio is not None:
            lines.append(_verdict(f"{route} max throughput vs healthz", ratio, TARGET_RATIO, "≥"))
    for route in ("telnyx", "twilio"):
        p99 = by[("half", route)]["p99_ms"]
        if p99 is not None:
            lines.append(_verdict(f"{route} p99 at half max (ms)", p99, TARGET_HALF_P99_MS, "≤"))
    flood = by.get(("flood", "telnyx"))
    if flood is not None and flood["p99_ms"] is not None:
        lines.append(_verdict("flood: valid p99 (ms)", flood["p99_ms"], TARGET_FLOOD_P99_MS, "≤"))
        refused = "all 403" if flood["bad_all_403"] else "NOT all 403"
        lines.append(
            f"flood: {sum(flood['statuses'].values())} valid answered {flood['statuses']}; "
            f"{flood['bad']} badly signed answered {flood['bad_statuses']} ({refused})"
        )
    return lines


def _verdict(name: str, value: float, target: float, sense: str) -> str:
    met = value >= target if sense == "≥" else value <= target
    return f"{name:<38} {value:>8.3f}  target {sense} {target:g}: {'met' if met else 'MISSED'}"


def _width(fmt: str) -> int:
    spec = fmt[fmt.index(":") + 1 : -1].lstrip("<>")
    return int(spec.split(".")[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="length of max phases")
    parser.add_argument("--warmup", type=int, default=1000, help="warm-up requests per route")
    parser.add_argument("--concurrency", type=int, default=16, help="connections, max phases")
    parser.add_argument("--workers", type=int, default=1, help="load generator processes")
    parser.add_argument(
        "--connections", type=int, default=64, help="connections, open-loop phases (all workers)"
    )
    parser.add_argument("--open-seconds", type=float, default=4.0, help="length of half phases")
    parser.add_argument("--flood-seconds", type=float, default=4.0, help="length of the flood")
    parser.add_argument(
        "--flood-valid-share",
        type=float,
        default=0.05,
        help="valid flood requests per second, as a share of the Telnyx maximum",
    )
    parser.add_argument(
        "--gc-stats", action="store_true", help="time the server's garbage-collector passes"
    )
    parser.add_argument(
        "--py-spy", default=None, metavar="DIR", help="profile the server in each max phase"
    )
    parser.add_argument("--json", default=str(LAST_RUN), help="where to write the JSON results")
    options = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = Path(tempfile.mkdtemp(prefix=f"webhooks-{stamp}-", dir=RESULTS))
    print(
        f"voicegw webhook bench: max phases {options.seconds:g} s, concurrency "
        f"{options.concurrency}, {options.workers} generator process(es), {os.cpu_count()} "
        f"cores, Python {platform.python_version()}; logs in {work}",
        flush=True,
    )
    result = run(options, work)
    print()
    print(render(result["results"], options))
    if "server_gc" in result:
        print(f"server gc: {json.dumps(result['server_gc']['generations'])}")
    document = {
        "bench": "webhooks",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "options": vars(options),
        **result,
    }
    out = Path(options.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
