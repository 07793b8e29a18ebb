"""The call events room: signed call events for the customer's application, delivered at least
once from a durable outbox in the store.

It owns the event types and their payload (``payload``: never a phone number), the retry
policy (``policy``: pure back-off and the verdict on an answer), the producer the call
lifecycle calls (``producer.CallEvents.emit``: one outbox row, never the network), the sender
(``dispatcher.EventDispatcher``: leases due events, posts them signed per Standard Webhooks,
settles them), the operator's operations on the outbox (``outbox``: retry, retention) and the
wiring from the settings (``wiring.build_events``).

It may import ``providers``, ``security``, ``metrics``, ``gateway.settings`` and
``gateway.records`` only; the app (``gateway.app``, ``gateway.runtime``, ``gateway.calls``,
``gateway.media``, ``gateway.operators``) imports it, never the reverse.
"""

from gateway.events.dispatcher import EventDispatcher
from gateway.events.outbox import OutboxStore, delete_delivered_events, retry_dead, retry_event
from gateway.events.payload import DATA_FIELDS, EventType, event_body, new_event_id
from gateway.events.policy import RetryPolicy, Verdict, verdict
from gateway.events.producer import CallEvents
from gateway.events.wiring import build_events

__all__ = [
    "DATA_FIELDS",
    "CallEvents",
    "EventDispatcher",
    "EventType",
    "OutboxStore",
    "RetryPolicy",
    "Verdict",
    "build_events",
    "delete_delivered_events",
    "event_body",
    "new_event_id",
    "retry_dead",
    "retry_event",
    "verdict",
]
