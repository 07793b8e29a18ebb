"""Redis commands per webhook, per call and per second of media, counted on a private Redis.

Usage: python bench/redis_ops.py [--short-s 2] [--long-s 6] [--idle-s 30] [--json out.json]

Starts a ``redis-server`` of its own (a free loopback port, a temporary directory, no
persistence), then one real ``voicegw serve`` with ``VOICEGW_REDIS_URL`` pointing at it
(``VOICEGW_PROVIDERS=echo``, development keys, the carriers' REST APIs played by ``voicegw
simulate``), and reads the server's ``MONITOR`` stream: every command any client sends, with
its time and whether a Lua script ran it. Each phase runs alone, then waits ``--settle-s`` for
work the gateway finishes after answering; its commands are those timed inside that window:

* ``idle``: nothing for ``--idle-s`` (the background loops: replica heartbeat and session
  gauge every 15 s, pool health checks), reported per second; a command with the name and
  first key of one it saw is left out of the other phases' ``net`` counts, wherever it fell;
* ``twilio_voice``: one signed Twilio voice webhook (a new call: TwiML with a stream token);
* ``twilio_status``: one signed status callback (``completed``) for that call;
* ``telnyx_event``: one signed Telnyx ``call.bridged`` (every webhook layer, no REST call);
* ``api_key_request``: ``GET /api/v1/calls`` with a service API key;
* ``console_login`` and ``console_request``: ``POST /auth/login``, then ``GET /api/v1/calls``
  with the session cookie (what the console does per page);
* ``twilio_call_short`` / ``twilio_call_long``: a whole Twilio call by ``voicegw simulate
  call`` (voice webhook, media stream, ``--short-s`` / ``--long-s`` of caller audio at
  real-time pace echoed back, ``stop``, the ``completed`` status callback); their difference
  over the extra seconds is the cost of one second of media;
* ``telnyx_call``: a whole Telnyx call by ``voicegw simulate call --carrier telnyx``
  (``call.initiated``, the gateway's answer and ``streaming_start`` on the simulated Call
  Control API, ``call.answered``, the stream, ``call.hangup``) with ``--short-s`` of audio.

A command counts once per client round trip (``ops``); the commands a Lua script runs inside
are counted apart (``in_scripts``): Redis executes them within the script's one round trip.
``EVALSHA`` is named by its script (``module.NAME`` of the Lua source in the gateway's
packages). ``redis cpu us`` is the time Redis spent executing the phase's commands (``INFO
commandstats`` deltas, background included; ``MONITOR``'s own cost is not in it). Prints a
table (per command and phase) and writes JSON (default ``bench/last-run/redis_ops.json``). The
counts do not depend on the machine's speed, only on what the gateway does; nothing is
asserted.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import email.utils
import hashlib
import importlib
import json
import os
import pkgutil
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
from twilio.request_validator import RequestValidator

BENCH: Final = Path(__file__).resolve().parent
ROOT: Final = BENCH.parent
sys.path.insert(0, str(ROOT))
if "--source" in sys.argv[:-1]:  # name the scripts of the tree that runs
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--source") + 1]).resolve()))

from processes import free_port, voicegw_argv, wait_http  # noqa: E402
from webhooks import telnyx_body  # noqa: E402

from gateway import devkeys  # noqa: E402
from gateway.media.audio import write_wav  # noqa: E402
from providers.events import PCMU_8K  # noqa: E402

LAST_RUN: Final = BENCH / "last-run" / "redis_ops.json"
CALLER: Final = "+15550100001"  # fictional (555-01xx) numbers
CALLEE: Final = "+15550100002"
START_TIMEOUT_S: Final = 30.0
OPERATOR: Final = "bench.operator"
SUBCOMMANDS: Final = frozenset(
    {"client", "config", "script", "function", "cluster", "command", "pubsub", "object", "xinfo"}
)
"""Commands counted with their subcommand (``client|setname``)."""
_MONITOR_LINE: Final = re.compile(r"^\+(\d+\.\d+) \[\d+ ([^\]]*)\] (.*)$")
"""``+<time> [<db> <client>] "<command>" "<argument>" ...`` (``lua`` as the client of a
command a script ran)."""
_ARGUMENT: Final = re.compile(r'"((?:[^"\\]|\\.)*)"')


# -- the private Redis and what it saw ----------------------------------------------------


class RedisServer:
    """A ``redis-server`` on a free loopback port, data in a temporary directory."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (Debian: apt-get install redis)")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="redis-ops-"))
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise SystemExit("redis-server did not start")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class Seen:
    """One command as ``MONITOR`` reported it: Redis' clock, name (``EVALSHA`` with its
    script's), run by a script or not, first key."""

    at: float
    name: str
    in_script: bool
    key: str  # its first key ("" for none): tells the background's commands from a request's
    script: str = ""  # run inside a script: the script's name (``key`` is then the script's)


class Monitor:
    """Reads the ``MONITOR`` stream in a thread and keeps every command's name and time (the
    arguments, keys and values included, are dropped as they are read)."""

    def __init__(self, port: int, scripts: dict[str, str]) -> None:
        self.seen: list[Seen] = []
        self.scripts = scripts  # SHA1 -> the script's name (``script_names``)
        self._lock = threading.Lock()
        self._sock = socket.create_connection(("127.0.0.1", port))
        self._sock.sendall(b"MONITOR\r\n")
        self._file = self._sock.makefile("rb")
        if self._file.readline().strip() != b"+OK":
            raise SystemExit("MONITOR refused")
        self._thread = threading.Thread(target=self._read, name="redis-monitor", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        parent = Seen(0.0, "", False, "")
        with contextlib.suppress(OSError, ValueError):
            for raw in self._file:
                match = _MONITOR_LINE.match(raw.decode("utf-8", "replace"))
                if match is None:
                    continue
                at, client, rest = match.groups()
                args = _ARGUMENT.findall(rest, 0, 4096)[:4]
                if not args:
                    continue
                name, key = args[0].lower(), args[1] if len(args) > 1 else ""
                if name in SUBCOMMANDS and len(args) > 1:
                    name, key = f"{name}|{args[1].lower()}", ""
                elif name in ("evalsha", "eval") and len(args) > 1:
                    script = args[1]
                    name = f"{name} {self.scripts.get(script, script[:8])}"
                    key = args[3] if len(args) > 3 and args[2] != "0" else ""
                if client == "lua":  # run by the script whose EVALSHA came just before
                    seen = Seen(float(at), name, True, parent.key, parent.name)
                else:
                    seen = parent = Seen(float(at), name, False, key)
                with self._lock:
                    self.seen.append(seen)

    def between(self, began: float, ended: float) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if began <= s.at < ended]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(5)


def script_names() -> dict[str, str]:
    """SHA1 of every Lua script the gateway's packages hold as a module-level string ->
    ``module.NAME`` (what ``EVALSHA`` names it by)."""
    names: dict[str, str] = {}
    for package in ("gateway", "security", "providers", "metrics"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, package + "."):
            if info.name.endswith("__main__"):
                continue
            try:
                module = importlib.import_module(info.name)
            except Exception:  # noqa: S112 - an optional extra missing: its scripts unnamed
                continue
            for attr, value in vars(module).items():
                if isinstance(value, str) and "redis.call" in value:
                    sha = hashlib.sha1(value.encode(), usedforsecurity=False).hexdigest()
                    names[sha] = f"{info.name.rsplit('.', 1)[1]}.{attr.lstrip('_')}"
    return names


def command_stats(port: int) -> dict[str, int]:
    """Microseconds Redis spent executing each command so far (``INFO commandstats``), without
    the ``INFO`` this asks with."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"INFO commandstats\r\n")
        reply = b""
        header = b""
        while b"\r\n" not in header:
            header += sock.recv(1)
        size = int(header[1:-2])
        while len(reply) < size + 2:
            reply += sock.recv(65536)
    usec: dict[str, int] = {}
    for line in reply.decode().splitlines():
        if line.startswith("cmdstat_") and not line.startswith("cmdstat_info:"):
            name, fields = line[8:].split(":", 1)
            usec[name] = int(dict(f.split("=") for f in fields.split(","))["usec"])
    return usec


# -- one phase -----------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    what: str
    window_s: float = 0.0
    ops: collections.Counter[str] = field(default_factory=collections.Counter)
    in_scripts: collections.Counter[str] = field(default_factory=collections.Counter)
    net: dict[str, float] = field(default_factory=dict)
    net_total: float = 0.0
    net_in_scripts: int = 0
    redis_usec: int = 0  # Redis' time executing commands (INFO commandstats), background too

    seen: list[Seen] = field(default_factory=list)

    def count(self, seen: list[Seen]) -> None:
        self.seen = seen
        for s in seen:
            (self.in_scripts if s.in_script else self.ops)[s.name] += 1

    def subtract(self, idle: Phase) -> None:
        """Net of the background: a command with the name and first key of one the ``idle``
        phase saw (the gateway's periodic work: replica heartbeat, session gauge, pool health
        checks) is left out, wherever it fell; none of them serves a request."""
        background = {(s.name, s.key) for s in idle.seen if not s.in_script}
        mine = [
            s for s in self.seen if self is idle or ((s.script or s.name), s.key) not in background
        ]
        net = collections.Counter(s.name for s in mine if not s.in_script)
        self.net = {n: float(c) for n, c in sorted(net.items())}
        self.net_total = float(sum(net.values()))
        self.net_in_scripts = sum(1 for s in mine if s.in_script)

    def row(self) -> dict[str, Any]:
        return {
            "phase": self.name,
            "what": self.what,
            "window_s": round(self.window_s, 3),
            "ops": dict(sorted(self.ops.items())),
            "ops_total": sum(self.ops.values()),
            "in_scripts": dict(sorted(self.in_scripts.items())),
            "in_scripts_total": sum(self.in_scripts.values()),
            "net": self.net,
            "net_total": self.net_total,
            "net_in_scripts": self.net_in_scripts,
            "redis_usec": self.redis_usec,
            # Per script, background included: how often it ran and the commands it ran inside.
            "scripts": {
                name: {
                    "runs": sum(1 for s in self.seen if s.name == name),
                    "inside": sum(1 for s in self.seen if s.script == name),
                }
                for name in sorted({s.name for s in self.seen if s.name.startswith("eval")})
            },
        }


class Bench:
    """The gateway under test, its keys and the phases counted so far."""

    def __init__(self, options: argparse.Namespace, redis: RedisServer, work: Path) -> None:
        self.options = options
        self.redis = redis
        self.work = work
        self.port = free_port()
        self.api_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.twilio_token = secrets.token_hex(16)
        self.env = {
            **os.environ,
            "VOICEGW_ENV": "development",
            "VOICEGW_PUBLIC_URL": self.url,
            "VOICEGW_DATA_DIR": str(work / "data"),
            "VOICEGW_PROVIDERS": "echo",
            "VOICEGW_TWILIO_AUTH_TOKEN": self.twilio_token,
            "VOICEGW_TWILIO_API_URL": f"http://127.0.0.1:{self.api_port}",
            "VOICEGW_TELNYX_API_URL": f"http://127.0.0.1:{self.api_port}",
            "VOICEGW_TELNYX_API_KEY": "dev-local",
            "VOICEGW_LOG_LEVEL": "WARNING",
            "VOICEGW_DRAIN_SECONDS": "1",
        }
        if options.source:
            self.env["PYTHONPATH"] = str(Path(options.source).resolve())
        self.phases: list[Phase] = []
        self.monitor: Monitor | None = None

    def cli(self, *args: str, stdin: str = "", redis: bool = True) -> str:
        """``voicegw ARGS`` with the gateway's environment; its stdout."""
        env = dict(self.env)
        if redis:
            env["VOICEGW_REDIS_URL"] = self.redis.url
        argv = voicegw_argv(0)[:-3]  # ``voicegw`` (script or ``python -m gateway.cli``)
        run = subprocess.run(
            [*argv, *args], input=stdin, env=env, capture_output=True, text=True, timeout=120,
            check=False, cwd=self.options.source or ROOT,
        )  # fmt: skip
        if run.returncode != 0:
            raise SystemExit(f"voicegw {' '.join(args)}: {run.returncode}\n{run.stderr[-2000:]}")
        return run.stdout

    def phase(self, name: str, what: str) -> _PhaseWindow:
        return _PhaseWindow(self, name, what)


class _PhaseWindow:
    """``with bench.phase(name, what):`` counts the commands of what runs inside, plus
    ``--settle-s`` after."""

    def __init__(self, bench: Bench, name: str, what: str) -> None:
        self.bench = bench
        self.phase = Phase(name, what)

    def __enter__(self) -> Phase:
        time.sleep(0.05)  # what came before has reached the monitor
        self.stats = command_stats(self.bench.redis.port)
        self.began = time.time()
        return self.phase

    def __exit__(self, *exc: object) -> None:
        time.sleep(self.bench.options.settle_s)
        if self.bench.monitor is None:  # the warm-up pass: not counted
            return
        ended = time.time()
        after = command_stats(self.bench.redis.port)
        self.phase.redis_usec = sum(after[n] - self.stats.get(n, 0) for n in after)
        self.phase.window_s = ended - self.began
        self.phase.count(self.bench.monitor.between(self.began, ended))
        self.bench.phases.append(self.phase)
        print(
            f"  {self.phase.name:<18} {sum(self.phase.ops.values()):>5} ops "
            f"({sum(self.phase.in_scripts.values())} in scripts) in {self.phase.window_s:.1f} s",
            flush=True,
        )


# -- the requests --------------------------------------------------------------------------


def twilio_params(call_sid: str, account_sid: str, status: str) -> dict[str, str]:
    return {
        "AccountSid": account_sid,
        "CallSid": call_sid,
        "CallStatus": status,
        "Direction": "inbound",
        "From": CALLER,
        "To": CALLEE,
        "ApiVersion": "2010-04-01",
    }


def post_twilio(bench: Bench, http: httpx.Client, path: str, params: dict[str, str]) -> int:
    validator = RequestValidator(bench.twilio_token)
    signature = validator.compute_signature(bench.url + path, params)
    reply = http.post(path, data=params, headers={"X-Twilio-Signature": signature})
    return reply.status_code


def telnyx_bridged(keys: devkeys.DevKeys) -> tuple[bytes, dict[str, str]]:
    body = telnyx_body()  # the webhook benchmark's call.bridged event
    ts = str(int(time.time()))
    signature = keys.telnyx_signing_key().sign(ts.encode() + b"|" + body).signature
    headers = {
        "content-type": "application/json",
        "telnyx-signature-ed25519": base64.b64encode(bytes(signature)).decode(),
        "telnyx-timestamp": ts,
    }
    return body, headers


def expect(status: int, what: str, wanted: int = 200) -> None:
    if status != wanted:
        raise SystemExit(f"{what}: HTTP {status}, expected {wanted}")


def simulate(bench: Bench, carrier: str, seconds: float) -> None:
    """A whole call by ``voicegw simulate call`` with ``seconds`` of caller audio."""
    wav = bench.work / f"caller-{seconds:g}s.wav"
    if not wav.exists():
        # A 400 Hz tone, loud enough to count as speech, in mu-law.
        import numpy as np

        from gateway.media.audio import ulaw_encode

        t = np.arange(int(8000 * seconds)) / 8000
        pcm = (8000 * np.sin(2 * np.pi * 400 * t)).astype("<i2").tobytes()
        write_wav(wav, PCMU_8K, ulaw_encode(pcm))
    out = bench.cli(
        "simulate", "call", "--carrier", carrier, "--wav", str(wav), "--url", bench.url,
        "--api-port", str(bench.api_port), redis=False,
    )  # fmt: skip
    if "refused" in out or "never came" in out:
        raise SystemExit(f"simulated {carrier} call failed:\n{out}")


def run(options: argparse.Namespace) -> dict[str, Any]:
    from processes import Child

    redis = RedisServer()
    work = Path(tempfile.mkdtemp(prefix="redis-ops-work-"))
    gateway: Child | None = None
    bench = Bench(options, redis, work)
    try:
        password = secrets.token_urlsafe(18)
        bench.cli("users", "add", OPERATOR, "--role", "operator", "--password-stdin",
                  stdin=password + "\n")  # fmt: skip
        api_key = bench.cli("apikeys", "create", "--name", "bench", "--role", "operator")
        api_key = next(w for w in api_key.split() if w.startswith("vgk_"))
        keys = devkeys.load_or_create(work / "data")
        env = {**bench.env, "VOICEGW_REDIS_URL": redis.url}
        gateway = Child(
            "voicegw", voicegw_argv(bench.port), work, capture=False, env=env,
            cwd=options.source or ROOT,
        )  # fmt: skip
        wait_http(f"{bench.url}/healthz", START_TIMEOUT_S, gateway)
        time.sleep(options.warmup_s)  # start-up work (first heartbeats, sweeps) is over
        if options.warm:
            # Once through, uncounted: what a process does once (loading its Lua scripts,
            # opening its pool's connections) is not a cost per call.
            print("warm-up pass (not counted)", flush=True)
            traffic(bench, keys, api_key, password)
        bench.monitor = Monitor(redis.port, script_names())
        print(f"counting Redis commands of {bench.url} on 127.0.0.1:{redis.port}", flush=True)
        with bench.phase("idle", f"no traffic for {options.idle_s:g} s"):
            time.sleep(max(0.0, options.idle_s - options.settle_s))
        traffic(bench, keys, api_key, password)
    finally:
        if bench.monitor is not None:
            bench.monitor.close()
        if gateway is not None:
            gateway.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    return report(bench)


def traffic(bench: Bench, keys: devkeys.DevKeys, api_key: str, password: str) -> None:
    """Every phase after ``idle``, in order."""
    options = bench.options
    with httpx.Client(base_url=bench.url, timeout=10) as http:
        call_sid, account_sid = "CA" + secrets.token_hex(16), "AC" + secrets.token_hex(16)
        with bench.phase("twilio_voice", "one signed Twilio voice webhook (new call)"):
            params = twilio_params(call_sid, account_sid, "ringing")
            expect(post_twilio(bench, http, "/webhooks/twilio/voice", params), "voice")
        with bench.phase("twilio_status", "one signed Twilio status callback (completed)"):
            params = twilio_params(call_sid, account_sid, "completed")
            params["Timestamp"] = email.utils.formatdate(usegmt=True)
            path = f"/webhooks/twilio/status?ts={int(time.time())}"
            expect(post_twilio(bench, http, path, params), "status")
        with bench.phase("telnyx_event", "one signed Telnyx call.bridged webhook"):
            body, headers = telnyx_bridged(keys)
            expect(http.post("/webhooks/telnyx", content=body, headers=headers).status_code,
                   "telnyx")  # fmt: skip
        with bench.phase("api_key_request", "GET /api/v1/calls with an API key"):
            reply = http.get("/api/v1/calls", headers={"Authorization": f"Bearer {api_key}"})
            expect(reply.status_code, "api key request")
        with bench.phase("console_login", "POST /auth/login (operator)"):
            reply = http.post(
                "/auth/login",
                json={"username": OPERATOR, "password": password},
                headers={"Origin": bench.url},
            )
            expect(reply.status_code, "login")
        cookie = "; ".join(f"{k}={v}" for k, v in reply.cookies.items())
        with bench.phase("console_request", "GET /api/v1/calls with the session cookie"):
            reply = http.get("/api/v1/calls", headers={"Cookie": cookie})
            expect(reply.status_code, "console request")
    short, long = options.short_s, options.long_s
    with bench.phase("twilio_call_short", f"a whole Twilio call, {short:g} s of audio"):
        simulate(bench, "twilio", short)
    with bench.phase("twilio_call_long", f"a whole Twilio call, {long:g} s of audio"):
        simulate(bench, "twilio", long)
    with bench.phase("telnyx_call", f"a whole Telnyx call, {short:g} s of audio"):
        simulate(bench, "telnyx", short)


def report(bench: Bench) -> dict[str, Any]:
    """The phases net of the idle rate, and the cost of one second of media."""
    options = bench.options
    idle = bench.phases[0]
    for phase in bench.phases:
        phase.subtract(idle)
    by = {p.name: p for p in bench.phases}
    per_second = (by["twilio_call_long"].net_total - by["twilio_call_short"].net_total) / (
        options.long_s - options.short_s
    )
    return {
        "bench": "redis_ops",
        "short_s": options.short_s,
        "long_s": options.long_s,
        "settle_s": options.settle_s,
        "warm": options.warm,
        "idle_ops_per_s": round(sum(idle.ops.values()) / idle.window_s, 2),
        "media_ops_per_call_s": round(per_second, 2),
        "phases": [p.row() for p in bench.phases],
    }


# -- report --------------------------------------------------------------------------------

SHORT_NAMES: Final = {
    "idle": "idle",
    "twilio_voice": "tw voice",
    "twilio_status": "tw status",
    "telnyx_event": "tx event",
    "api_key_request": "api key",
    "console_login": "login",
    "console_request": "console",
    "twilio_call_short": "tw call S",
    "twilio_call_long": "tw call L",
    "telnyx_call": "tx call",
}


def render(document: dict[str, Any]) -> str:
    """Per command: its count in the idle window and, in every other phase, net of the
    background kinds; then round trips, commands run inside scripts, windows."""
    phases = document["phases"]
    names = sorted({n for p in phases for n in p["net"]})
    width = max(24, *(len(n) + 2 for n in names))
    head = f"{'command':<{width}}" + "".join(
        f"{SHORT_NAMES.get(p['phase'], p['phase'])[:10]:>11}" for p in phases
    )
    lines = [head, "-" * len(head)]
    for name in names:
        cells = "".join(f"{int(p['net'][name]) if name in p['net'] else '.':>11}" for p in phases)
        lines.append(f"{name:<{width}}{cells}")
    lines.append("-" * len(head))
    rows = (
        ("round trips", "net_total"),
        ("run inside scripts", "net_in_scripts"),
        ("counted with background", "ops_total"),
    )
    for title, key in rows:
        lines.append(f"{title:<{width}}" + "".join(f"{int(p[key]):>11}" for p in phases))
    lines.append(f"{'redis cpu us':<{width}}" + "".join(f"{p['redis_usec']:>11}" for p in phases))
    lines.append(f"{'window s':<{width}}" + "".join(f"{p['window_s']:>11.1f}" for p in phases))
    lines.append("")
    extra = document["long_s"] - document["short_s"]
    lines.append(
        f"background (idle): {document['idle_ops_per_s']:.2f} round trips per second per "
        f"gateway process, left out of the other phases; one second of media: "
        f"{document['media_ops_per_call_s']:.2f} round trips (twilio_call_long - "
        f"twilio_call_short over {extra:g} s)"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short-s", type=float, default=2.0, help="audio of the short calls")
    parser.add_argument("--long-s", type=float, default=6.0, help="audio of the long call")
    parser.add_argument("--idle-s", type=float, default=30.0, help="the idle phase")
    parser.add_argument("--settle-s", type=float, default=1.0, help="wait after each phase")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="wait after start-up")
    parser.add_argument(
        "--no-warm",
        dest="warm",
        action="store_false",
        help="count from the first request (with loading the Lua scripts)",
    )
    parser.add_argument("--source", default=None, help="run voicegw from this source tree")
    parser.add_argument("--json", default=None, help=f"JSON results (default {LAST_RUN})")
    options = parser.parse_args()
    if options.long_s <= options.short_s:
        parser.error("--long-s must be longer than --short-s")
    document = run(options)
    print()
    print(render(document))
    out = Path(options.json) if options.json else LAST_RUN
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
