"""Calls: the state machine and live-call registry, the carriers' webhooks, carrier control
(answer, stream, hang up), placing outbound calls, call records, and the sweeps of orphaned
and never-streamed calls.
The services import ``gateway.http``, ``gateway.lifecycle``, the store and the lower packages,
never ``gateway.media``; the webhook handlers read ``gateway.runtime``."""
