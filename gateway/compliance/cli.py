"""``voicegw compliance report [--format json|markdown]``: the compliance evidence report of
the deployment the environment configures, read from its store (the server need not run)."""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson

from gateway.compliance.markdown import render_markdown
from gateway.compliance.report import DEFAULT_WINDOW_DAYS
from gateway.compliance.sources import report_of_settings

__all__ = ["register"]

MAX_WINDOW_DAYS = 366


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``compliance report`` to the ``voicegw`` parser."""
    compliance = subparsers.add_parser("compliance", help="compliance evidence")
    sub = compliance.add_subparsers(dest="what", required=True, help="what to do")
    p = sub.add_parser(
        "report", help="GDPR, HIPAA and SOC 2 controls, whether enabled here, live evidence"
    )
    p.add_argument(
        "--format", choices=["json", "markdown"], default="markdown", help="%(default)s or json"
    )
    p.add_argument(
        "--window-days",
        type=int,
        default=DEFAULT_WINDOW_DAYS,
        help=f"days of data-subject requests and deletions to report (default "
        f"{DEFAULT_WINDOW_DAYS})",
    )
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from gateway.cli.base import load_settings

    if not 1 <= args.window_days <= MAX_WINDOW_DAYS:
        print(f"voicegw: --window-days must be 1 to {MAX_WINDOW_DAYS}", file=sys.stderr)
        return 2
    settings = load_settings()
    report = asyncio.run(report_of_settings(settings, window_days=args.window_days))
    if args.format == "json":
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render_markdown(report))
    return 0
