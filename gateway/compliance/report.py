"""The compliance evidence report: controls, whether each is enabled here, and live evidence.

``build_report`` returns the report as JSON-ready data (``REPORT_FORMAT``); ``render_markdown``
turns that data, and only that data, into readable tables per framework, so the two formats
never disagree. The report holds counts, times, durations, setting names and module paths:
never a phone number, a person's name, a subject, an address or a secret.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from gateway.compliance.controls import Control, Framework, Signals, controls
from gateway.compliance.deployment import Facts, gather_facts
from gateway.compliance.evidence import (
    AUDIT_VERIFY_RUN,
    RequestStats,
    retention_deleted,
    subject_request_stats,
)
from gateway.compliance.rejections import RejectionWindow, rejection_window
from gateway.records.base import LastRun, Store
from gateway.records.privacy import RETENTION_RUN
from gateway.settings import Settings
from security.keyinventory import ROTATION_NOTICE_S, KeyInventory

__all__ = ["REPORT_FORMAT", "build_report"]

REPORT_FORMAT: Final = "voicegw.compliance-report.v1"
DAY_S: Final = 86400.0
DEFAULT_WINDOW_DAYS: Final = 30
"""Data-subject requests and retention deletions are reported over this many days (GDPR
gives a month to answer a request)."""
REJECTION_WINDOW_HOURS: Final = 24

Report = dict[str, Any]


def iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


def _run(run: LastRun | None, now: float) -> dict[str, Any] | None:
    if run is None:
        return None
    return {"at": iso(run.at), "age_s": round(now - run.at), "outcome": run.outcome, **run.detail}


def _requests(stats: RequestStats) -> dict[str, Any]:
    return {
        "served": stats.served,
        "failed": stats.failed,
        "timed": stats.timed,
        "latency_p50_ms": stats.p50_ms,
        "latency_max_ms": stats.max_ms,
    }


def _rejections(window: RejectionWindow) -> dict[str, Any]:
    return {
        "window_hours": window.hours,
        "since": iso(window.since),
        "total": window.total,
        "by_layer": window.by_layer,
        "by_carrier": window.by_carrier,
    }


def _control(control: Control) -> dict[str, Any]:
    return {
        "id": control.id,
        "framework": control.framework.value,
        "reference": control.reference,
        "title": control.title,
        "enabled": control.enabled,
        "features": [{"kind": f.kind, "ref": f.ref} for f in control.features],
        "conditions": [{"ok": c.ok, "text": c.text} for c in control.conditions],
        "evidence": list(control.evidence),
    }


def _processing(f: Facts) -> dict[str, Any]:
    """The deployment's record of processing (GDPR Art. 30), from its configuration."""
    data = [
        "phone numbers of callers and called parties (encrypted at rest, blind-indexed)",
        "call metadata: times, outcome, carrier, AI providers used",
        "call audio, streamed to the AI provider while the call lasts and not kept",
    ]
    if f.recording:
        consent = "with consent" if f.recording_consent == "parameter" else "every call"
        data.append(f"call recordings, both directions, encrypted ({consent})")
    data.append("operator accounts: user name, role, password hash; audit trail of their actions")
    recipients = [f"telephony carrier: {c}" for c in f.carriers]
    recipients += [
        "AI provider: echo (inside the gateway; no data leaves)"
        if p == "echo"
        else f"AI provider (processor, receives call audio): {p}"
        for p in f.providers
    ]
    return {
        "purpose": "answering telephone calls with an AI voice agent",
        "data_subjects": ["callers", "called parties", "operators"],
        "personal_data": data,
        "recipients": recipients,
        "retention": {
            "call_records_days": f.retention_calls_days,
            "recordings_days": f.retention_calls_days,
            "audit_events_days": f.retention_audit_days,
        },
        "storage": {"store": f.store, "shared_state": f.shared_state},
    }


def _keys(inventory: KeyInventory | None) -> dict[str, Any]:
    """Every key's age and when its rotation is due (ids and times only, never material)."""
    if inventory is None:
        return {"available": False, "keys": [], "unavailable": []}
    now = inventory.now
    return {
        "available": True,
        "keys": [
            {
                "kind": e.kind.value,
                "key_id": e.key_id,
                "status": e.status.value,
                "age_days": round(e.age_s(now) / DAY_S, 1),
                "age_from": "created" if e.created_known else "first seen",
                "rotation_due_in_days": None
                if e.due_at is None
                else round((e.due_at - now) / DAY_S, 1),
            }
            for e in inventory.entries
        ],
        "unavailable": [k.value for k in inventory.unavailable],
    }


def _key_attention(inventory: KeyInventory | None) -> list[str]:
    if inventory is None:
        return ["key ages not in this report: the key inventory could not be read"]
    found = []
    for e in inventory.entries:
        due_in = e.due_in_s(inventory.now)
        if due_in is not None and due_in <= ROTATION_NOTICE_S:
            days = round(due_in / DAY_S)
            when = f"overdue by {-days} days" if days < 0 else f"due in {days} days"
            found.append(f"{e.kind.value} key {e.key_id}: rotation {when}")
    found += [f"{k.value} keys could not be read" for k in inventory.unavailable]
    return found


def _attention(items: Sequence[Control], extra: Sequence[str]) -> list[str]:
    seen: dict[str, None] = {}
    for control in items:
        for condition in control.conditions:
            if not condition.ok:
                seen.setdefault(condition.text, None)
    for text in extra:
        seen.setdefault(text, None)
    return list(seen)


async def build_report(
    settings: Settings,
    store: Store,
    *,
    now: float | None = None,
    window_days: int = DEFAULT_WINDOW_DAYS,
    audit_write_failures: int | None = None,
    inventory: KeyInventory | None = None,
) -> Report:
    """The report for ``settings`` from what ``store`` holds. ``audit_write_failures`` is this
    process's count (the API knows it; the command line does not); ``inventory`` gives the
    key ages (``gateway.review.inventory``)."""
    now = time.time() if now is None else now
    since = now - window_days * DAY_S
    facts = await gather_facts(settings, store, now=now)
    verification = await store.get_last_run(AUDIT_VERIFY_RUN)
    retention = await store.get_last_run(RETENTION_RUN)
    head = await store.audit_head()
    signals = Signals(
        retention_age_s=None if retention is None else now - retention.at,
        retention_ok=retention is not None and retention.outcome == "success",
        audit_verified_age_s=None if verification is None else now - verification.at,
        audit_verified_ok=verification is not None and verification.outcome == "success",
        audit_write_failures=audit_write_failures,
    )
    items = controls(facts, signals)
    requests = await subject_request_stats(store, since=since)
    rejections = await rejection_window(
        store, facts.carriers, now=now, hours=REJECTION_WINDOW_HOURS
    )
    verified = _run(verification, now)
    if verified is not None:
        last_seq = verified.get("last_seq")
        head_seq = 0 if head is None else head.seq
        verified["events_since"] = head_seq - (last_seq if isinstance(last_seq, int) else 0)
    extra = _key_attention(inventory)
    failed = sum(s.failed for s in requests.values())
    if failed:
        extra.append(f"{failed} data-subject requests failed in the last {window_days} days")
    summary = {
        fw.value: {
            "controls": sum(c.framework is fw for c in items),
            "enabled": sum(c.framework is fw and c.enabled for c in items),
        }
        for fw in Framework
    }
    return {
        "format": REPORT_FORMAT,
        "generated_at": iso(now),
        "deployment": {
            "env": "production" if facts.production else "development",
            "store": facts.store,
            "shared_state": facts.shared_state,
            "carriers": list(facts.carriers),
            "providers": list(facts.providers),
        },
        "summary": summary,
        "attention": _attention(items, extra),
        "controls": [_control(c) for c in items],
        "evidence": {
            "subject_requests": {
                "window_days": window_days,
                "since": iso(since),
                **{kind: _requests(stats) for kind, stats in requests.items()},
            },
            "audit_trail": {
                "events_appended": 0 if head is None else head.seq,
                "last_verification": verified,
                "write_failures_this_process": audit_write_failures,
            },
            "retention": {
                "call_records_days": facts.retention_calls_days,
                "audit_events_days": facts.retention_audit_days,
                "last_run": _run(retention, now),
                "window_days": window_days,
                "deleted_in_window": await retention_deleted(store, since=since),
            },
            "key_ages": _keys(inventory),
            "webhook_rejections": _rejections(rejections),
            "access": {"active_users": facts.users, "usable_api_keys": facts.api_keys},
        },
        "processing": _processing(facts),
    }
