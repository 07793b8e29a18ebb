"""Throughput and latency of signed carrier webhooks through every security layer, next to
``GET /healthz`` on the same server.

Usage: python bench/webhooks.py [--requests 3000] [--concurrency 16] [--json out.json]

One real ``voicegw serve`` process (uvloop, httptools, JSON logs at WARNING) backed by the
local Redis (``redis://127.0.0.1:6379/13``, a key prefix unique to the run, removed at the
end), ``VOICEGW_PROVIDERS=echo``, a rate limit too high to trip, and carrier REST URLs that
point at a closed loopback port (no event used here makes a REST call). The load generator is
this process: one ``httpx.AsyncClient`` on uvloop, every request built and signed before its
phase starts, so signing costs the generator nothing while it is timed.

Phases, in order, in the same run on the same server:

1. ``healthz``: ``GET /healthz``, closed loop at ``--concurrency``: the baseline;
2. ``telnyx``: signed Telnyx ``call.bridged`` events (unique ``data.id``, Ed25519 over
   ``timestamp|body``), same concurrency: request sanity, allowlist, freshness, signature,
   replay and rate limit all run, no REST call is made;
3. ``twilio``: signed Twilio status callbacks (form-encoded, ``X-Twilio-Signature`` from
   ``RequestValidator`` with an explicit ``VOICEGW_TWILIO_AUTH_TOKEN``, a ``ts`` query
   parameter and a ``Timestamp`` field for freshness, ``CallStatus=in-progress``, unique
   ``CallSid``), same concurrency;
4. ``flood``: open loop. Valid Telnyx webhooks at half the ``telnyx`` throughput, with ten
   times as many carrying a signature with one byte flipped, interleaved evenly; at most
   ``--flood-concurrency`` requests in flight. Valid latency is send to answer; the JSON also
   has it counted from each request's scheduled time (waiting for a free slot included), which
   grows without bound when the generator cannot issue the schedule. Every bad one should get
   403.

Prints a table, then writes JSON (default bench/results/webhooks-<time>.json). No figure is
asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import email.utils
import json
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import httpx
import numpy as np
import orjson
from twilio.request_validator import RequestValidator

BENCH: Final = Path(__file__).resolve().parent
ROOT: Final = BENCH.parent
sys.path.insert(0, str(ROOT))

from gateway import devkeys  # noqa: E402

RESULTS: Final = BENCH / "results"
REDIS_URL: Final = "redis://127.0.0.1:6379/13"
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_S: Final = 30.0
WARMUP: Final = 200
CALLER: Final = "+15550100001"  # fictional (555-01xx) numbers
CALLEE: Final = "+15550100002"

Request = tuple[str, str, bytes, dict[str, str]]  # method, path, body, headers


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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


def telnyx_request(keys: devkeys.DevKeys, *, bad: bool = False) -> Request:
    body = telnyx_body()
    ts = str(int(time.time()))
    signature = bytearray(keys.telnyx_signing_key().sign(ts.encode() + b"|" + body).signature)
    if bad:
        signature[secrets.randbelow(len(signature))] ^= 0x01
    headers = {
        "content-type": "application/json",
        "telnyx-signature-ed25519": base64.b64encode(bytes(signature)).decode(),
        "telnyx-timestamp": ts,
    }
    return ("POST", "/webhooks/telnyx", body, headers)


def twilio_request(validator: RequestValidator, public_url: str) -> Request:
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
        "x-twilio-signature": validator.compute_signature(public_url + path, params),
    }
    return ("POST", path, urlencode(params).encode(), headers)


def healthz_request() -> Request:
    return ("GET", "/healthz", b"", {})


# -- measurement ---------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    requests: int = 0
    elapsed_s: float = 0.0
    latency_ms: list[float] = field(default_factory=list)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    uncounted: int = 0  # answers outside ``statuses`` (the flood's bad requests)

    def summary(self) -> dict[str, Any]:
        lat = np.array(self.latency_ms) if self.latency_ms else np.array([np.nan])
        done = sum(self.statuses.values()) + self.uncounted
        return {
            "phase": self.name,
            "requests": self.requests,
            "elapsed_s": round(self.elapsed_s, 3),
            "rps": round(done / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "p50_ms": round(float(np.percentile(lat, 50)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3),
            "max_ms": round(float(np.max(lat)), 3),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": dict(self.errors),
            "server_cpu_pct": round(100 * self.server_cpu_s / self.elapsed_s, 1)
            if self.elapsed_s
            else 0.0,
            "server_cpu_us_per_req": round(1e6 * self.server_cpu_s / done, 1) if done else None,
            "client_cpu_pct": round(100 * self.client_cpu_s / self.elapsed_s, 1)
            if self.elapsed_s
            else 0.0,
            **self.extra,
        }


async def send(http: httpx.AsyncClient, request: Request) -> int:
    method, path, body, headers = request
    reply = await http.request(method, path, content=body or None, headers=headers)
    return reply.status_code


async def closed_loop(
    name: str, http: httpx.AsyncClient, requests: list[Request], concurrency: int, pid: int
) -> Phase:
    """``concurrency`` workers, each sending its next request as soon as the last answered."""
    phase = Phase(name, len(requests))
    pending = iter(requests)

    async def worker() -> None:
        for request in pending:
            start = time.perf_counter()
            try:
                status = await send(http, request)
            except httpx.HTTPError as exc:
                phase.errors[type(exc).__name__] += 1
                continue
            phase.latency_ms.append((time.perf_counter() - start) * 1000)
            phase.statuses[status] += 1

    cpu0, own0, began = cpu_seconds(pid), time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.elapsed_s = time.perf_counter() - began
    phase.server_cpu_s = cpu_seconds(pid) - cpu0
    phase.client_cpu_s = time.process_time() - own0
    return phase


async def flood(
    http: httpx.AsyncClient,
    good: list[Request],
    bad: list[Request],
    rate: float,
    concurrency: int,
    pid: int,
) -> Phase:
    """Open loop: ``good`` at ``rate``/s, ``bad`` interleaved evenly over the same span."""
    phase = Phase("flood", len(good) + len(bad))
    span = len(good) / rate
    schedule = sorted(
        [(i / rate, True, r) for i, r in enumerate(good)]
        + [(j * span / len(bad), False, r) for j, r in enumerate(bad)],
        key=lambda item: item[0],
    )
    slots = asyncio.Semaphore(concurrency)
    bad_statuses: collections.Counter[int] = collections.Counter()
    service_ms: list[float] = []
    late_ms: list[float] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one(due: float, valid: bool, request: Request) -> None:
        try:
            start = time.perf_counter()
            try:
                status = await send(http, request)
            except httpx.HTTPError as exc:
                phase.errors[("valid " if valid else "bad ") + type(exc).__name__] += 1
                return
            end = time.perf_counter()
            if valid:
                phase.statuses[status] += 1
                phase.latency_ms.append((end - start) * 1000)  # send -> answer
                service_ms.append((end - due) * 1000)  # from its scheduled time
                late_ms.append((start - due) * 1000)
            else:
                bad_statuses[status] += 1
        finally:
            slots.release()

    cpu0, own0 = cpu_seconds(pid), time.process_time()
    began = time.perf_counter()
    for offset, valid, request in schedule:
        due = began + offset
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        task = asyncio.create_task(one(due, valid, request))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*list(tasks))
    phase.elapsed_s = time.perf_counter() - began
    phase.server_cpu_s = cpu_seconds(pid) - cpu0
    phase.client_cpu_s = time.process_time() - own0
    phase.uncounted = sum(bad_statuses.values())
    svc = np.array(service_ms) if service_ms else np.array([np.nan])
    late = np.array(late_ms) if late_ms else np.array([np.nan])
    phase.extra = {
        "valid": len(good),
        "bad": len(bad),
        "valid_rate_target": round(rate, 1),
        "valid_rate_achieved": round(sum(phase.statuses.values()) / phase.elapsed_s, 1),
        "bad_rate_achieved": round(sum(bad_statuses.values()) / phase.elapsed_s, 1),
        "valid_from_schedule_p50_ms": round(float(np.percentile(svc, 50)), 3),
        "valid_from_schedule_p99_ms": round(float(np.percentile(svc, 99)), 3),
        "valid_late_p99_ms": round(float(np.percentile(late, 99)), 3),
        "bad_statuses": {str(k): v for k, v in sorted(bad_statuses.items())},
        "bad_all_403": bad_statuses == collections.Counter({403: len(bad)}),
    }
    return phase


# -- the server ----------------------------------------------------------------------------


async def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    async with httpx.AsyncClient(base_url=url, timeout=1.0) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"voicegw exited ({proc.returncode}):\n{_tail(log)}")
            try:
                if (await http.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"voicegw not ready within {START_TIMEOUT_S:g} s:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def clear_prefix(prefix: str) -> int:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
        for i in range(0, len(keys), 1000):
            await client.delete(*keys[i : i + 1000])
        return len(keys)
    finally:
        await client.aclose()


# -- the run -------------------------------------------------------------------------------


async def run(options: argparse.Namespace, work: Path) -> dict[str, Any]:
    port = free_port()
    public_url = f"http://127.0.0.1:{port}"
    data_dir = work / "data"
    keys = devkeys.load_or_create(data_dir)
    token = secrets.token_hex(16)
    prefix = f"bench-wh-{secrets.token_hex(6)}:"
    closed = free_port()  # nothing listens here: a stray REST call fails at once, locally
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", str(work)),
        "VOICEGW_ENV": "development",
        "VOICEGW_PUBLIC_URL": public_url,
        "VOICEGW_DATA_DIR": str(data_dir),
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
    log = work / "voicegw.log"
    n, conc = options.requests, options.concurrency
    validator = RequestValidator(token)
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: ASYNC220 (start-up, before any timing)
            [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    limits = httpx.Limits(
        max_connections=max(conc, options.flood_concurrency),
        max_keepalive_connections=max(conc, options.flood_concurrency),
    )
    phases: list[dict[str, Any]] = []
    try:
        await wait_ready(public_url, proc, log)
        async with httpx.AsyncClient(base_url=public_url, timeout=30.0, limits=limits) as http:

            async def measure(name: str, build: Any) -> dict[str, Any]:
                warm = [build() for _ in range(min(WARMUP, n))]
                await closed_loop(name, http, warm, conc, proc.pid)
                requests = [build() for _ in range(n)]
                row = (await closed_loop(name, http, requests, conc, proc.pid)).summary()
                print(_progress(row), flush=True)
                phases.append(row)
                return row

            base = await measure("healthz", healthz_request)
            tel = await measure("telnyx", lambda: telnyx_request(keys))
            await measure("twilio", lambda: twilio_request(validator, public_url))

            valid = max(10, n // 10)
            rate = max(1.0, tel["rps"] / 2)
            good = [telnyx_request(keys) for _ in range(valid)]
            bad = [telnyx_request(keys, bad=True) for _ in range(10 * valid)]
            row = (
                await flood(http, good, bad, rate, options.flood_concurrency, proc.pid)
            ).summary()
            print(_progress(row), flush=True)
            phases.append(row)
        for row in phases:
            row["rps_vs_healthz"] = round(row["rps"] / base["rps"], 3) if base["rps"] else None
        return {
            "redis_keys_removed": await clear_prefix(prefix),
            "results": phases,
            "server_log_tail": _tail(log)[-1000:],
        }
    finally:
        stop(proc)
        await clear_prefix(prefix)


def _progress(row: dict[str, Any]) -> str:
    text = (
        f"  {row['phase']:<8} {row['requests']:>6} req: {row['rps']:>8.1f} req/s, "
        f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, statuses {row['statuses']}"
    )
    if row["errors"]:
        text += f", errors {row['errors']}"
    if row["phase"] == "flood":
        text += f", bad {row['bad_statuses']}"
    return text


COLUMNS: Final = [
    ("phase", "phase", "{:<8}"),
    ("requests", "requests", "{:>8}"),
    ("rps", "req/s", "{:>8.1f}"),
    ("rps_vs_healthz", "vs healthz", "{:>10.3f}"),
    ("p50_ms", "p50 ms", "{:>7.2f}"),
    ("p99_ms", "p99 ms", "{:>7.2f}"),
    ("max_ms", "max ms", "{:>7.1f}"),
    ("server_cpu_pct", "srv cpu%", "{:>8.1f}"),
    ("server_cpu_us_per_req", "srv µs/req", "{:>10.1f}"),
    ("client_cpu_pct", "gen cpu%", "{:>8.1f}"),
]


def render(rows: list[dict[str, Any]], concurrency: int) -> str:
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
    flood_row = next((r for r in rows if r["phase"] == "flood"), None)
    lines.append("")
    lines.append(
        f"healthz, telnyx, twilio: closed loop, {concurrency} in flight; req/s counts answers "
        "(flood: valid and bad); srv µs/req = server CPU per answer."
    )
    lines.append(
        "gen cpu% near 100 means the load generator (this process) bounds req/s: compare "
        "srv µs/req, not req/s, then."
    )
    if flood_row:
        lines.append(
            f"flood: {flood_row['valid']} valid Telnyx webhooks at {flood_row['valid_rate_target']}"
            f"/s (achieved {flood_row['valid_rate_achieved']}/s) + {flood_row['bad']} with a "
            f"flipped signature byte (achieved {flood_row['bad_rate_achieved']}/s)"
        )
        lines.append(
            f"  valid: p50 {flood_row['p50_ms']:.2f} ms, p99 {flood_row['p99_ms']:.2f} ms send to "
            f"answer (from schedule: p50 {flood_row['valid_from_schedule_p50_ms']:.2f}, p99 "
            f"{flood_row['valid_from_schedule_p99_ms']:.2f} ms), statuses {flood_row['statuses']}"
        )
        verdict = "all 403" if flood_row["bad_all_403"] else "NOT all 403"
        lines.append(f"  bad: {flood_row['bad_statuses']} ({verdict})")
    return "\n".join(lines)


def _width(fmt: str) -> int:
    spec = fmt[fmt.index(":") + 1 : -1].lstrip("<>")
    return int(spec.split(".")[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per closed phase")
    parser.add_argument("--concurrency", type=int, default=16, help="in flight, closed phases")
    parser.add_argument(
        "--flood-concurrency", type=int, default=64, help="most in flight during the flood"
    )
    parser.add_argument("--json", default=None, help="where to write the JSON results")
    options = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = Path(tempfile.mkdtemp(prefix=f"webhooks-{stamp}-", dir=RESULTS))
    print(
        f"voicegw webhook bench: {options.requests} requests per phase, concurrency "
        f"{options.concurrency}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"logs in {work}",
        flush=True,
    )
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(options, work))
    else:
        result = uvloop.run(run(options, work))
    print()
    print(render(result["results"], options.concurrency))
    document = {
        "bench": "webhooks",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "requests": options.requests,
        "concurrency": options.concurrency,
        "flood_concurrency": options.flood_concurrency,
        **result,
    }
    out = Path(options.json) if options.json else RESULTS / f"webhooks-{stamp}.json"
    out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
