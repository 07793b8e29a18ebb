"""Every metric family, defined once. Labels are bounded: never a phone number, call id or IP.

One process exposes ``REGISTRY``. Under ``voicegw serve --workers N`` (``PROMETHEUS_MULTIPROC_DIR``
set before this module is imported) every worker writes its values to files there and
``exposition`` adds up the whole group: counters and histograms summed over every worker that
ran, each gauge by its ``multiprocess_mode`` (live workers' sum for what each holds, the most
recent value for shared state every worker reports alike). The process, platform and GC
collectors describe one process and are left out of the group's exposition.
"""

from __future__ import annotations

import asyncio
import math
import os
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROCESS: Final = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
"""Whether this process is one worker of several (its metrics live in shared files)."""

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

BUILD_INFO = Info("voicegw_build", "Build information", registry=REGISTRY)


def _asyncio_tasks() -> float:
    """Tasks not yet done on the event loop of the scraping thread: the leak check of a soak
    (``bench/soak.py``) reads it, as the process collector gives memory and file descriptors.
    Counted at scrape time only, so it costs nothing between scrapes. NaN when scraped from a
    thread without a running loop."""
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:
        return math.nan


ASYNCIO_TASKS = Gauge(
    "voicegw_asyncio_tasks",
    "Asyncio tasks not yet done on the server's event loop, counted at scrape time (workers: "
    "each counts its own every second, summed)",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
if not MULTIPROCESS:
    ASYNCIO_TASKS.set_function(_asyncio_tasks)


def sample_asyncio_tasks() -> None:
    """A worker's count of its tasks, for the group's exposition (called from its loop)."""
    ASYNCIO_TASKS.set(_asyncio_tasks())


class _Local(Collector):
    """The families a worker keeps in memory rather than in the shared files (build info)."""

    def collect(self):  # type: ignore[no-untyped-def]
        return BUILD_INFO.collect()


def exposition() -> tuple[bytes, str]:
    """The text exposition and its content type: this process's metrics, or the whole
    group's under ``--workers``."""
    if not MULTIPROCESS:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    group = CollectorRegistry()
    MultiProcessCollector(group)  # type: ignore[no-untyped-call]
    group.register(_Local())
    return generate_latest(group), CONTENT_TYPE_LATEST


# -- webhooks --------------------------------------------------------------------------------
WEBHOOK_REQUESTS = Counter(
    "voicegw_webhook_requests_total",
    "Webhook requests by carrier and outcome (accepted, rejected, duplicate)",
    ["carrier", "outcome"],
    registry=REGISTRY,
)
WEBHOOK_REJECTIONS = Counter(
    "voicegw_webhook_rejections_total",
    "Webhook requests rejected, by the security layer that rejected them",
    ["carrier", "layer"],
    registry=REGISTRY,
)
WEBHOOK_DUPLICATES = Counter(
    "voicegw_webhook_duplicates_total",
    "Verified webhook deliveries recognised as duplicates and not processed again",
    ["carrier"],
    registry=REGISTRY,
)
UNTRUSTED_FORWARDED = Counter(
    "voicegw_untrusted_forwarded_requests_total",
    "Requests from a loopback peer carrying X-Forwarded-For although no trusted proxy covers "
    "loopback: a reverse proxy on this host that VOICEGW_TRUSTED_PROXIES does not declare",
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "voicegw_rate_limited_total",
    "Requests refused by a rate limit",
    ["carrier", "scope"],
    registry=REGISTRY,
)
STATE_DEGRADED = Counter(
    "voicegw_state_fallback_total",
    "Operations that fell back to in-process state because Redis failed",
    ["component"],
    registry=REGISTRY,
)

# -- HTTP ------------------------------------------------------------------------------------
HTTP_DURATION = Histogram(
    "voicegw_http_request_duration_seconds",
    "HTTP request duration by route template",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)

# -- calls -----------------------------------------------------------------------------------
ACTIVE_CALLS = Gauge(
    "voicegw_active_calls",
    "Calls with an open media stream",
    ["carrier", "provider", "agent"],
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
CALLS = Counter(
    "voicegw_calls_total",
    "Calls ended, by outcome",
    ["carrier", "provider", "outcome", "agent"],
    registry=REGISTRY,
)
CALL_DURATION = Histogram(
    "voicegw_call_duration_seconds",
    "Duration of bridged media streams",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
    registry=REGISTRY,
)

# -- providers -------------------------------------------------------------------------------
PROVIDER_UP = Gauge(
    "voicegw_provider_up",
    "1 when the provider's breaker admits calls",
    ["provider"],
    registry=REGISTRY,
    multiprocess_mode="livemostrecent",
)
PROVIDER_ERRORS = Counter(
    "voicegw_provider_errors_total",
    "Provider session errors by kind",
    ["provider", "kind"],
    registry=REGISTRY,
)
CALL_SETUP = Histogram(
    "voicegw_call_setup_seconds",
    "Call set-up as the caller feels it, by stage, from the media stream's upgrade: start "
    "(the carrier's start frame), claim (stream token and registry), provider (agent session "
    "ready), answer (record written, bridge built), first_frame (first caller frame forwarded "
    "to the agent) and total",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
EVENT_LOOP_LAG = Histogram(
    "voicegw_event_loop_lag_seconds",
    "How late the event loop woke a timer (sampled every few milliseconds): the time any "
    "coroutine waited because something held the loop",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
PROVIDER_CONNECT = Histogram(
    "voicegw_provider_connect_seconds",
    "Time to open and set up a provider session",
    ["provider"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
BREAKER_STATE = Gauge(
    "voicegw_breaker_state",
    "Circuit breaker state: 0 closed, 1 open, 2 half-open",
    ["provider"],
    registry=REGISTRY,
    multiprocess_mode="livemostrecent",
)
FAILOVERS = Counter(
    "voicegw_failovers_total",
    "Calls moved from one provider to another",
    ["from_provider", "to_provider"],
    registry=REGISTRY,
)

CALL_COMMANDS = Counter(
    "voicegw_call_commands_total",
    "Commands on live calls from the API (hangup, transfer), by outcome (ok, not_live, "
    "unknown_destination, denied_destination, failed, busy, unreachable)",
    ["command", "outcome"],
    registry=REGISTRY,
)
DIALS_PLACED = Counter(
    "voicegw_dials_placed_total",
    "Outbound calls the carrier accepted to place, by carrier and agent",
    ["carrier", "agent"],
    registry=REGISTRY,
)
DIALS_BLOCKED = Counter(
    "voicegw_dials_blocked_total",
    "Calls and transfers the toll-fraud guard refused, by action (dial, transfer) and reason "
    "(denied_prefix, not_allowed, rate, concurrent, minutes)",
    ["action", "reason"],
    registry=REGISTRY,
)

# -- agents ----------------------------------------------------------------------------------
TOOL_CALLS = Counter(
    "voicegw_tool_calls_total",
    "Tool calls run for the model, by agent, tool and outcome (ok, timeout, http_error, "
    "too_large, bad_answer, breaker_open, bad_arguments, refused, error)",
    ["agent", "tool", "outcome"],
    registry=REGISTRY,
)
TOOL_CALL_SECONDS = Histogram(
    "voicegw_tool_call_seconds",
    "Time from a tool call to its output, by agent and tool",
    ["agent", "tool"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
TRANSFERS = Counter(
    "voicegw_transfers_total",
    "Calls the agent transferred, by agent and outcome",
    ["agent", "outcome"],
    registry=REGISTRY,
)
AGENT_ENDED_CALLS = Counter(
    "voicegw_agent_ended_calls_total",
    "Calls the agent hung up (the end_call tool), by agent",
    ["agent"],
    registry=REGISTRY,
)

# -- media -----------------------------------------------------------------------------------
MEDIA_FRAMES = Counter(
    "voicegw_media_frames_total",
    "Media frames relayed, by direction (from_carrier, to_carrier)",
    ["carrier", "direction"],
    registry=REGISTRY,
)
MEDIA_DROPPED = Counter(
    "voicegw_media_frames_dropped_total",
    "Media frames dropped, by reason (malformed, queue_full, barge_in, flood, ...)",
    ["carrier", "direction", "reason"],
    registry=REGISTRY,
)
MEDIA_RELAY = Histogram(
    "voicegw_media_relay_seconds",
    "Time a frame spends inside the gateway, from receipt to send",
    ["direction"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
    registry=REGISTRY,
)

# -- data protection -------------------------------------------------------------------------
AUDIT_WRITE_FAILURES = Counter(
    "voicegw_audit_write_failures_total",
    "Audit events that could not be written",
    registry=REGISTRY,
)
AUDIT_SUPPRESSED = Counter(
    "voicegw_audit_events_suppressed_total",
    "Audit events folded into a summary under a flood",
    ["action"],
    registry=REGISTRY,
)
ORPHANS_CLOSED = Counter(
    "voicegw_orphaned_calls_closed_total",
    "Call records closed after the process that held the call was lost (no end seen)",
    registry=REGISTRY,
)
RETENTION_DELETED = Counter(
    "voicegw_retention_deleted_total",
    "Records deleted by the retention sweeper",
    ["kind"],
    registry=REGISTRY,
)

# -- auth ------------------------------------------------------------------------------------
AUTH_FAILURES = Counter(
    "voicegw_auth_failures_total",
    "Authentication failures by reason",
    ["reason"],
    registry=REGISTRY,
)
LOGIN_LOCKOUTS = Counter(
    "voicegw_login_lockouts_total",
    "Accounts locked for one client network (scope=network) or throttled for every network "
    "(scope=account) by failed logins",
    ["scope"],
    registry=REGISTRY,
)
for _scope in ("network", "account"):  # both series exist from the start: alerts see 0, not none
    LOGIN_LOCKOUTS.labels(_scope)
SESSIONS_ACTIVE = Gauge(
    "voicegw_sessions_active",
    "Operator sessions active",
    registry=REGISTRY,
    multiprocess_mode="livemostrecent",
)

# -- keys ------------------------------------------------------------------------------------
KEY_AGE = Gauge(
    "voicegw_key_age_seconds",
    "Age of the oldest active key of each kind (signing, data, api, twilio_secondary, tools, "
    "events)",
    ["kind"],
    registry=REGISTRY,
    multiprocess_mode="livemostrecent",
)
KEY_ROTATION_DUE = Gauge(
    "voicegw_key_rotation_due_seconds",
    "Seconds until the next rotation of a key of each kind is due (negative: overdue)",
    ["kind"],
    registry=REGISTRY,
    multiprocess_mode="livemostrecent",
)

# -- call events -----------------------------------------------------------------------------
EVENTS_DELIVERED = Counter(
    "voicegw_events_delivered_total",
    "Call events the customer's endpoint accepted (2xx), by type",
    ["type"],
    registry=REGISTRY,
)
# Every type's series exists from the start: alerts see 0, not none.
for _type in ("call.started", "call.answered", "call.ended", "call.transferred", "call.failed"):
    EVENTS_DELIVERED.labels(_type)
EVENTS_RETRIED = Counter(
    "voicegw_events_retried_total",
    "Call event attempts that failed and were scheduled again",
    registry=REGISTRY,
)
EVENTS_DEAD = Counter(
    "voicegw_events_dead_total",
    "Call events given up (24 h of retries, or 410 Gone)",
    registry=REGISTRY,
)
EVENTS_PENDING = Gauge(
    "voicegw_events_pending",
    "Call events waiting in the outbox (as the dispatcher last counted them)",
    registry=REGISTRY,
    multiprocess_mode="livemostrecent",
)
EVENTS_WRITE_FAILURES = Counter(
    "voicegw_events_write_failures_total",
    "Call events that could not be written to the outbox (the call went on without them)",
    registry=REGISTRY,
)
EGRESS_REFUSED = Counter(
    "voicegw_egress_refused_total",
    "Requests to the customer's endpoints refused before sending, by target (tool, events) and "
    "reason (cleartext, unspecified, loopback, metadata, link_local, private, unique_local, "
    "multicast, reserved)",
    ["target", "reason"],
    registry=REGISTRY,
)
