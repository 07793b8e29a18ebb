"""The ``voicegw`` command: serve, demo, simulate."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from gateway import devkeys
from gateway.settings import Settings, SettingsError


def load_settings() -> Settings:
    """Settings from the environment, with development keys filled in; exits 2 when invalid."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"voicegw: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return devkeys.apply(settings)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import build_app
    from gateway.request_limits import REQUEST_GRACE_S, guarded_http_protocol
    from gateway.server import DrainingServer
    from gateway.wsprotocol import MediaWebSocketProtocol
    from metrics import logging as jsonlog
    from metrics import sentry

    settings = load_settings()
    ip_hash_key = jsonlog.load_ip_hash_key(settings.data_dir)
    jsonlog.configure(settings.log_level, ip_hash_key=ip_hash_key)
    sentry.init(os.environ.get("SENTRY_DSN"), environment=settings.env, ip_hash_key=ip_hash_key)
    app = build_app(settings)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
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
        timeout_graceful_shutdown=10,
    )
    try:
        DrainingServer(config, app).run()
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


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def demo(args: argparse.Namespace) -> int:
    from gateway.simulate import run_demo
    from metrics import logging as jsonlog
    from metrics import sentry

    settings = load_settings()
    ip_hash_key = jsonlog.load_ip_hash_key(settings.data_dir)
    jsonlog.configure("WARNING", ip_hash_key=ip_hash_key)
    sentry.init(os.environ.get("SENTRY_DSN"), environment=settings.env, ip_hash_key=ip_hash_key)
    return asyncio.run(run_demo(settings, wav=args.wav, carrier=args.carrier))


def simulate(args: argparse.Namespace) -> int:
    from gateway.simulate import SimulateOptions, simulate_call

    options = SimulateOptions(
        carrier=args.carrier,
        wav=args.wav,
        gateway_url=args.url,
        out=args.out,
        realtime=not args.fast,
    )
    report = asyncio.run(simulate_call(load_settings(), options))
    print(report.render())
    return 0 if report.ok else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voicegw", description="Real-time voice telephony gateway")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.set_defaults(func=serve)

    d = sub.add_parser("demo", help="serve with embedded defaults and run one simulated call")
    d.add_argument("--carrier", choices=["twilio", "telnyx"], default="twilio")
    d.add_argument("--wav", default=None, help="caller audio (8 kHz mu-law WAV)")
    d.set_defaults(func=demo)

    sim = sub.add_parser("simulate", help="act as a carrier against a running gateway")
    simsub = sim.add_subparsers(dest="what", required=True)
    call = simsub.add_parser("call", help="one signed call with a media stream from a WAV")
    call.add_argument("--carrier", choices=["twilio", "telnyx"], default="twilio")
    call.add_argument("--wav", required=True)
    call.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway's base URL")
    call.add_argument("--out", default=None, help="write the audio that came back to this WAV")
    call.add_argument("--fast", action="store_true", help="send audio as fast as possible")
    call.set_defaults(func=simulate)

    from gateway import admin_cli
    from gateway.compliance import cli as compliance_cli
    from gateway.review import cli as review_cli

    admin_cli.register(sub)
    compliance_cli.register(sub)
    review_cli.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
