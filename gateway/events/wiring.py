"""The call events service built from the settings: what the composition root calls."""

from __future__ import annotations

import httpx

from gateway.events.dispatcher import EventDispatcher
from gateway.events.outbox import OutboxStore
from gateway.events.producer import CallEvents
from gateway.settings import Settings
from providers.breakers import BreakerRegistry
from security.standard_webhooks import parse_secrets

__all__ = ["build_events"]


def build_events(
    settings: Settings,
    store: OutboxStore,
    breakers: BreakerRegistry,
    *,
    http: httpx.AsyncClient | None = None,
) -> tuple[CallEvents, EventDispatcher | None]:
    """The producer and, when ``VOICEGW_EVENTS_URL`` is set, the dispatcher (not started:
    call ``start()`` once the loop runs and ``await stop()`` at shutdown). Without the URL the
    producer writes nothing and there is no dispatcher."""
    if settings.events_url is None or settings.events_secrets is None:
        return CallEvents(None), None
    dispatcher = EventDispatcher(
        store,
        url=settings.events_url,
        secrets=parse_secrets(settings.events_secrets.get(), "events secret"),
        breakers=breakers,
        http=http,
        egress=settings.egress,
    )
    return CallEvents(store, notify=dispatcher.wake), dispatcher
