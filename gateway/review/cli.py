"""``voicegw security review [--json]``: the security self-review from the command line.

Reads the same settings as ``voicegw serve`` (development keys included, as serve would use
them), opens the store, the key rings and Redis the way the gateway does, and reviews them
without starting anything else (no retention sweep, no listeners). Exit status: 0 when every
check passes, 1 when one warns, 2 when one fails (also 2 for unusable settings).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys

import orjson

from gateway.calls.redis_registry import RedisCallRegistry
from gateway.operators.sessions import AuthRuntime
from gateway.review.checks import review
from gateway.review.facts import REDIS_PROBE_S, Facts, collect_facts, loose_paths
from gateway.review.model import Report
from gateway.settings import Settings


async def review_settings(settings: Settings) -> Report:
    """The review of a gateway with ``settings``, built from its parts (not started)."""
    return review(settings, await settings_facts(settings))


async def settings_facts(settings: Settings) -> Facts:
    """The facts of a gateway with ``settings``: its store, key rings, Redis and session
    code opened the way ``gateway.app.start_runtime`` opens them, then closed again."""
    from gateway.services import (
        auth_config,
        load_data_keys,
        open_store,
        redis_client,
        settings_signing_ring,
    )

    # Opening the store tightens the modes of the directory and database file: look first.
    before = await asyncio.to_thread(loose_paths, settings.data_dir)
    store = open_store(settings)
    await store.open()
    client = (
        redis_client(
            settings.redis_url.get(),
            4,
            "security-review",
            mode=settings.redis_mode,
            timeout_s=REDIS_PROBE_S,
        )
        if settings.redis_url is not None
        else None
    )
    try:
        data_keys, _ = load_data_keys(settings)
        ring = settings_signing_ring(settings)
        auth = AuthRuntime.build(
            auth_config(settings),
            ring=ring,
            store=store,
            redis=client,
            redis_prefix=settings.redis_key_prefix,
        )
        # Read-only: counts the running replicas' heartbeats, never beats itself.
        registry = (
            RedisCallRegistry(client, settings.redis_key_prefix + "calls:")
            if client is not None
            else None
        )
        facts = await collect_facts(
            settings,
            signing=ring,
            data_keys=data_keys,
            store=store,
            redis=client,
            auth=auth,
            registry=registry,
        )
        return dataclasses.replace(
            facts, loose_paths=tuple(dict.fromkeys((*before, *facts.loose_paths)))
        )
    finally:
        if client is not None:
            await client.aclose()
        await store.close()


def security_review(args: argparse.Namespace) -> int:
    from gateway.cli.base import load_settings

    report = asyncio.run(review_settings(load_settings()))
    if args.json:
        sys.stdout.write(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        print(report.render())
    return report.exit_code


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``security review`` to the ``voicegw`` parser."""
    security = subparsers.add_parser("security", help="security self-review")
    ssub = security.add_subparsers(dest="what", required=True, help="what to do")
    p = ssub.add_parser(
        "review", help="check this deployment's settings, keys and state (exit 0/1/2)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=security_review)
