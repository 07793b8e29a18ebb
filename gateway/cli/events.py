"""``voicegw events list`` and ``voicegw events retry``: the call events outbox from the
command line.

``list`` prints one line per event (newest first): id, state, type, call id, attempts, when it
was created, its last error; never its body. ``retry`` puts dead events back to pending with a
fresh 24 h of retries; a running gateway's dispatcher sends them within its poll interval. A
retry is recorded in the audit trail.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from gateway.cli.base import CommandError, load_settings
from gateway.events.outbox import retry_dead, retry_event
from gateway.records.base import EventState, OutboxEvent, Store

if TYPE_CHECKING:
    from gateway.settings import Settings

StoreFactory = Callable[["Settings"], Store]


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    store_factory: StoreFactory | None = None,
) -> None:
    """Add ``events list`` and ``events retry`` to the ``voicegw`` parser. ``store_factory``
    builds the store from the settings (default: the configured store)."""
    factory = store_factory or _configured_store
    events = subparsers.add_parser("events", help="the call events outbox (VOICEGW_EVENTS_URL)")
    esub = events.add_subparsers(dest="what", required=True, help="what to do")
    p = esub.add_parser("list", help="list call events, newest first (never their bodies)")
    p.add_argument(
        "--state", choices=[s.value for s in EventState], default=None, help="only this state"
    )
    p.add_argument("--limit", type=_limit, default=50, help="at most this many (%(default)s)")
    p.set_defaults(func=lambda args: _run(args, factory, _list))
    p = esub.add_parser("retry", help="send dead events again (a fresh 24 h of retries)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("event_id", nargs="?", help="the event's id (evt_..., from events list)")
    which.add_argument("--all-dead", action="store_true", help="every dead event")
    p.set_defaults(func=lambda args: _run(args, factory, _retry))


def _limit(value: str) -> int:
    try:
        limit = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("a whole number from 1 to 1000") from None
    if not 1 <= limit <= 1000:
        raise argparse.ArgumentTypeError("a whole number from 1 to 1000")
    return limit


def _configured_store(settings: Settings) -> Store:
    from gateway.services import open_store

    return open_store(settings)


def _run(
    args: argparse.Namespace,
    factory: StoreFactory,
    command: Callable[[argparse.Namespace, Store], Awaitable[int]],
) -> int:
    settings = load_settings()
    args.settings = settings

    async def main() -> int:
        store = factory(settings)
        await store.open()
        try:
            return await command(args, store)
        finally:
            await store.close()

    return asyncio.run(main())


def line(event: OutboxEvent) -> str:
    """One event as a line of ``events list``."""
    created = datetime.fromtimestamp(event.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return (
        f"{event.event_id}  {event.state.value:<9}  {event.type:<16}  {event.call_id}  "
        f"seq={event.seq}  attempts={event.attempts}  created={created}Z"
        + (f"  last_error={event.last_error}" if event.last_error else "")
    )


async def _list(args: argparse.Namespace, store: Store) -> int:
    state = None if args.state is None else EventState(args.state)
    for event in await store.list_events(state=state, limit=args.limit):
        print(line(event))
    return 0


async def _retry(args: argparse.Namespace, store: Store) -> int:
    now = time.time()
    if args.all_dead:
        count = await retry_dead(store, now)
        await _audit(args, store, None, count)
        print(f"{count} dead event(s) put back to pending")
        return 0
    if not await retry_event(store, args.event_id, now):
        event = await store.get_event(args.event_id)
        if event is None:
            raise CommandError(f"no event {args.event_id!r}")
        raise CommandError(f"event {args.event_id} is {event.state.value}, not dead")
    await _audit(args, store, args.event_id, 1)
    print(f"event {args.event_id} put back to pending")
    return 0


async def _audit(args: argparse.Namespace, store: Store, event_id: str | None, count: int) -> None:
    from gateway.cli.admin import _actor
    from gateway.services import open_auditor

    await open_auditor(args.settings, store).record(
        "event.retry",
        "success",
        actor=_actor(),
        entity_type="call_event",
        entity_id=event_id,
        detail={"events": count},
    )
