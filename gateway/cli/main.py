"""The ``voicegw`` command: serve, demo, simulate, and the operator commands registered by
``gateway.cli.admin``, ``gateway.compliance.cli`` and ``gateway.review.cli``.

An error the operator can act on (a ``CommandError``, a store that does not answer) is printed
by ``main`` as one line on stderr, exit status 1. Any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.metadata
import ipaddress
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from gateway.cli.base import CommandError, load_settings
from gateway.records.base import StoreError, StoreUnavailable
from metrics.logging import LineFormatter

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from gateway.cli.simulate import Press
    from gateway.cli.simulate_outbound import Dial
    from gateway.http.workers import WorkerInfo

# What ``voicegw demo`` takes from the environment: which agent providers, and how to reach
# them. Everything else (data directory, Redis, database, keys, carriers) is the embedded
# default, so a demo leaves the operator's state untouched.
DEMO_ENV: Final = re.compile(
    r"VOICEGW_PROVIDERS|VOICEGW_PROVIDER_CONNECT_TIMEOUT_S|VOICEGW_PROVIDER_WS_CLIENT"
    r"|VOICEGW_(OPENAI|DEEPGRAM|GEMINI|AGENT)_\w+|(OPENAI|DEEPGRAM|GEMINI)_API_KEY"
)

# Where ``voicegw simulate call --carrier telnyx`` serves its Call Control API by default; the
# README's serve command sets VOICEGW_TELNYX_API_URL to it.
TELNYX_API_PORT: Final = 8089


def serve(args: argparse.Namespace) -> int:
    """``voicegw serve``: one process, or ``--workers N`` on one socket
    (``gateway.http.workers``)."""
    if args.workers == 1:
        return serve_worker(args.host, args.port)
    from gateway.http.workers import Supervisor, bind_socket
    from gateway.lifecycle import DRAIN_GRACE_S
    from metrics import logging as jsonlog

    settings = load_settings()
    if settings.redis_url is None:
        print(
            f"voicegw: --workers {args.workers} needs VOICEGW_REDIS_URL: the workers share rate "
            "limits, replay windows, sessions and live calls through Redis",
            file=sys.stderr,
        )
        return 2
    jsonlog.configure(settings.log_level, ip_hash_key=jsonlog.load_ip_hash_key(settings.data_dir))
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        raise CommandError(f"cannot listen on {args.host}:{args.port} ({exc.strerror})") from None
    # A worker drains for up to VOICEGW_DRAIN_SECONDS, answers the carriers' last webhooks,
    # then gives its connections uvicorn's graceful shutdown; past all that it is killed.
    stop_timeout_s = settings.drain_s + DRAIN_GRACE_S + GRACEFUL_SHUTDOWN_S + 20
    target = functools.partial(serve_worker, args.host, args.port)
    return Supervisor(target, sock, args.workers, stop_timeout_s=stop_timeout_s).run()


GRACEFUL_SHUTDOWN_S: Final = 10
"""After the drain, how long uvicorn lets connections close."""


def serve_worker(
    host: str,
    port: int,
    worker: WorkerInfo | None = None,
    sock: socket.socket | None = None,
    started: Callable[[], None] | None = None,
) -> int:
    """Serve the gateway in this process: alone (binding ``host:port``), or as ``worker`` of
    ``--workers N`` on the parent's ``sock``, calling ``started`` once it serves."""
    import uvicorn

    from gateway.app import build_app
    from gateway.http.request_limits import REQUEST_GRACE_S, guarded_http_protocol
    from gateway.http.server import DrainingServer
    from gateway.http.wsprotocol import MediaWebSocketProtocol
    from metrics import logging as jsonlog
    from metrics import sentry

    settings = load_settings()
    ip_hash_key = jsonlog.load_ip_hash_key(settings.data_dir)
    jsonlog.configure(settings.log_level, ip_hash_key=ip_hash_key)
    sentry.init(os.environ.get("SENTRY_DSN"), environment=settings.env, ip_hash_key=ip_hash_key)
    app = build_app(settings)

    class Server(DrainingServer):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if not self.started:
                return
            if started is not None:
                started()
            if not settings.production and (worker is None or worker.index == 0):
                print(await console_hint(app, host, port), file=sys.stderr)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop" if _has_uvloop() else "asyncio",
        # httptools with a deadline per request and a cap on request heads (slow loris).
        http=guarded_http_protocol(request_timeout_s=settings.body_timeout_s + REQUEST_GRACE_S),
        ws=MediaWebSocketProtocol,
        ws_max_size=64 * 1024,
        ws_ping_interval=20.0,
        ws_ping_timeout=40.0,
        proxy_headers=False,  # client addresses come from our own trusted-proxy walk
        server_header=False,
        date_header=False,
        log_config=None,
        access_log=False,
        # Live calls drain first (DrainingServer); then connections get this long to close.
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    try:
        Server(config, app, worker=worker).run(sockets=None if sock is None else [sock])
    except KeyboardInterrupt:
        # Ctrl-C: uvicorn has shut down gracefully, then re-raised the signal it captured.
        return 0
    except SystemExit:  # uvicorn's exit when the application did not start
        refused = getattr(app.state, "start_refused", None)
        if refused is None:
            raise
        # The security review's critical findings, reported like a settings refusal.
        print(f"voicegw: {refused}", file=sys.stderr)
        return 2
    return 0


async def console_hint(app: Starlette, host: str, port: int) -> str:
    """The human line a development ``serve`` prints once listening: where the console is, and
    how to make the first user while there is none."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # a host name
        shown = host
    else:
        # Listening on every address: the console is reachable on loopback.
        loopback = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
        shown = str(loopback if address.is_unspecified else address)
        shown = f"[{shown}]" if address.version == 6 else shown
    line = f"voicegw: console at http://{shown}:{port}/console/"
    runtime = getattr(app.state, "runtime", None)
    try:
        first_user = runtime is not None and not await runtime.store.list_users()
    except StoreError:  # a hint is not worth failing the start for
        first_user = False
    if first_user:
        line += "; no users yet: create one with `voicegw users add NAME --role admin`"
    return line


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def call_options(args: argparse.Namespace) -> tuple[str | None, tuple[Press, ...] | None]:
    """``--to`` and ``--dtmf`` checked; raises ``UsageError`` naming the bad one."""
    from gateway.cli.simulate import parse_number, parse_presses

    try:
        to = None if args.to is None else parse_number(args.to)
    except ValueError as exc:
        raise UsageError(f"--to: {exc}") from None
    try:
        presses = None if args.dtmf is None else parse_presses(args.dtmf)
    except ValueError as exc:
        raise UsageError(f"--dtmf: {exc}") from None
    return to, presses


class UsageError(CommandError):
    """A command-line value that cannot be used: one line, exit status 2."""


def demo(args: argparse.Namespace) -> int:
    """The embedded defaults in a temporary data directory (removed afterwards unless
    ``--keep``): the demo's forged webhooks and its call never reach the operator's records.
    With ``--agents FILE`` the call plays the agents' tools (``gateway.cli.demo_agents``); with
    ``--outbound`` the gateway places it and sends its events (``gateway.cli.demo_outbound``)."""
    from gateway.cli.demo import run_demo
    from gateway.cli.demo_agents import run_agents_demo
    from metrics import logging as jsonlog

    to, presses = call_options(args)
    if args.outbound and (args.agents is not None or to or presses):
        raise UsageError("--outbound runs its own agent: leave out --agents, --to and --dtmf")
    if args.agents is None and (to or presses):
        raise UsageError("--to and --dtmf need --agents FILE")
    data_dir = Path(tempfile.mkdtemp(prefix="voicegw-demo-"))
    try:
        settings = load_settings(demo_environ(os.environ, data_dir))
        jsonlog.configure("WARNING", ip_hash_key=jsonlog.load_ip_hash_key(settings.data_dir))
        if args.outbound:
            from gateway.cli.demo_outbound import run_outbound_demo

            return asyncio.run(run_outbound_demo(settings, carrier=args.carrier, wav=args.wav))
        if args.agents is not None:
            return asyncio.run(
                run_agents_demo(
                    settings,
                    agents_file=Path(args.agents).resolve(),
                    carrier=args.carrier,
                    wav=args.wav,
                    to=to,
                    presses=presses,
                )
            )
        return asyncio.run(run_demo(settings, wav=args.wav, carrier=args.carrier))
    finally:
        if args.keep:
            print(f"voicegw: the demo's data is in {data_dir}", file=sys.stderr)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


def demo_environ(environ: Mapping[str, str], data_dir: Path) -> dict[str, str]:
    """The demo's environment: the provider settings of ``environ`` (``DEMO_ENV``) and
    ``data_dir``."""
    kept = {name: value for name, value in environ.items() if DEMO_ENV.fullmatch(name)}
    return {**kept, "VOICEGW_DATA_DIR": str(data_dir)}


def outbound_dial(args: argparse.Namespace) -> Dial | None:
    """``--outbound`` with ``--from``, ``--agent`` and ``--api-key-file`` checked (None without
    ``--outbound``); raises ``UsageError`` naming the missing or bad one."""
    from gateway.cli.simulate import parse_number
    from gateway.cli.simulate_outbound import Dial
    from security.secret import Secret

    values = {"--from": args.from_, "--agent": args.agent, "--api-key-file": args.api_key_file}
    given = [name for name, value in values.items() if value is not None]
    if not args.outbound:
        if given or args.machine_detection:
            raise UsageError(f"{(given or ['--machine-detection'])[0]} needs --outbound")
        return None
    if len(given) < 3:
        raise UsageError("--outbound needs --from NUMBER, --agent NAME and --api-key-file FILE")
    try:
        from_ = parse_number(args.from_)
    except ValueError as exc:
        raise UsageError(f"--from: {exc}") from None
    try:
        if args.api_key_file == "-":
            key = sys.stdin.readline().strip()
        else:
            key = Path(args.api_key_file).read_text().strip()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise UsageError(f"--api-key-file: cannot read {args.api_key_file} ({why})") from None
    if not key:
        raise UsageError("--api-key-file: no key in it (`voicegw apikeys create ... > FILE`)")
    return Dial(Secret(key), from_, args.agent, machine_detection=args.machine_detection)


def simulate(args: argparse.Namespace) -> int:
    from gateway.cli.simulate import CALLEE, SimulateOptions, simulate_call
    from gateway.cli.simulate_outbound import simulate_outbound_call

    to, presses = call_options(args)
    dial = outbound_dial(args)
    options = SimulateOptions(
        carrier=args.carrier,
        wav=args.wav,
        gateway_url=args.url,
        out=args.out,
        realtime=not args.fast,
        api_port=args.api_port,
        to=to or CALLEE,
        dtmf=presses or (),
    )
    if dial is None:
        report = asyncio.run(simulate_call(load_settings(), options))
    else:
        report = asyncio.run(simulate_outbound_call(load_settings(), options, dial))
    print(report.render())
    return 0 if report.ok else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voicegw", description="Real-time voice telephony gateway")
    p.add_argument(
        "--version", action="version", version=f"%(prog)s {_version()}", help="show the version"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to run")

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    s.add_argument("--port", type=int, default=8000, help="port to listen on (%(default)s)")
    s.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="worker processes on the one socket (%(default)s; `auto`: one per CPU); more than "
        "one needs VOICEGW_REDIS_URL",
    )
    s.set_defaults(func=serve)

    d = sub.add_parser(
        "demo", help="serve the embedded defaults in a temporary directory, run one call"
    )
    carriers = ["twilio", "telnyx"]
    d.add_argument("--carrier", choices=carriers, default="twilio", help="%(default)s or telnyx")
    d.add_argument("--wav", default=None, help="caller audio (8 kHz mu-law WAV; default silence)")
    d.add_argument(
        "--keep", action="store_true", help="keep the temporary data directory and say where"
    )
    d.add_argument(
        "--agents",
        default=None,
        metavar="FILE",
        help="agent profiles (TOML): the call's agent uses its tools (echo: key n calls tool n)",
    )
    d.add_argument(
        "--outbound",
        action="store_true",
        help="the gateway places the call (POST /api/v1/calls) and its signed call events "
        "arrive at a local receiver that verifies them",
    )
    d.add_argument("--to", default=None, help="the dialed number (default: the default agent's)")
    d.add_argument(
        "--dtmf",
        default=None,
        metavar="KEYS",
        help="keys to press, DIGIT@SECONDS,... (default: each of the agent's tools in turn)",
    )
    d.set_defaults(func=demo)

    sim = sub.add_parser("simulate", help="act as a carrier against a running gateway")
    simsub = sim.add_subparsers(dest="what", required=True, help="what to simulate")
    call = simsub.add_parser("call", help="one signed call with a media stream from a WAV")
    call.add_argument("--carrier", choices=carriers, default="twilio", help="%(default)s or telnyx")
    call.add_argument("--wav", required=True, help="caller audio (8 kHz mono mu-law WAV)")
    call.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway (%(default)s)")
    call.add_argument("--out", default=None, help="write the audio that came back to this WAV")
    call.add_argument("--fast", action="store_true", help="send audio as fast as possible")
    call.add_argument(
        "--to", default=None, help="the dialed number, E.164 (selects the agent; the callee)"
    )
    call.add_argument(
        "--dtmf",
        default=None,
        metavar="KEYS",
        help="keys to press, DIGIT@SECONDS,... in time order (e.g. 1@1.5,3@4)",
    )
    call.add_argument(
        "--outbound",
        action="store_true",
        help="the gateway places the call (POST /api/v1/calls); the simulator answers it as the "
        "carrier: its REST API, the callee's webhooks, the media stream",
    )
    call.add_argument(
        "--from",
        dest="from_",
        default=None,
        metavar="NUMBER",
        help="with --outbound: the caller id, E.164 (one of the agent's caller_ids)",
    )
    call.add_argument("--agent", default=None, help="with --outbound: the agent that calls")
    call.add_argument(
        "--api-key-file",
        default=None,
        metavar="FILE",
        help="with --outbound: a file holding an API key of the dialer role (- for stdin)",
    )
    call.add_argument(
        "--machine-detection",
        action="store_true",
        help="with --outbound: ask the carrier for answering-machine detection",
    )
    call.add_argument(
        "--api-port",
        "--telnyx-api-port",
        dest="api_port",
        type=int,
        default=TELNYX_API_PORT,
        help="port of the simulated carrier REST API (%(default)s): Telnyx Call Control, and "
        "Twilio's with --dtmf or --outbound; start the gateway with VOICEGW_TELNYX_API_URL / "
        "VOICEGW_TWILIO_API_URL=http://127.0.0.1:PORT",
    )
    call.set_defaults(func=simulate)

    from gateway.cli import admin
    from gateway.cli import agents as agents_cli
    from gateway.cli import events as events_cli
    from gateway.compliance import cli as compliance_cli
    from gateway.review import cli as review_cli

    admin.register(sub)
    agents_cli.register(sub)
    events_cli.register(sub)
    compliance_cli.register(sub)
    review_cli.register(sub)
    return p


def _workers(value: str) -> int:
    from gateway.http.workers import worker_count

    try:
        return worker_count(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a number of workers (1 to 512) or auto"
        ) from None


def _version() -> str:
    try:
        return importlib.metadata.version("voicegw")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    root = logging.getLogger()
    if not root.handlers:  # not `serve`/`demo` (JSON lines) nor a test's capture
        # Errors in one line; library warnings (a database pool retrying) stay quiet.
        handler = logging.StreamHandler()
        handler.setFormatter(LineFormatter())
        handler.setLevel(logging.ERROR)
        root.addHandler(handler)
    try:
        result: int = args.func(args)
    except UsageError as exc:
        print(f"voicegw: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"voicegw: {exc}", file=sys.stderr)
        return 1
    except StoreUnavailable as exc:
        print(f"voicegw: the store is unavailable ({exc})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result
