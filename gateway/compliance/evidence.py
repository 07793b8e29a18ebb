"""Live evidence for the compliance report, read from what the gateway keeps durably.

* data-subject requests served and how long each took: the ``dsr.export`` / ``dsr.erase``
  events of the audit trail (``detail.duration_ms``);
* the audit chain's last verification: the ``audit.verify`` last run, recorded by whatever
  verifies (``voicegw audit verify`` calls ``record_audit_verification``);
* the retention sweeper's last pass (``retention.sweep`` last run) and what it deleted over the
  window (the ``retention.sweep`` audit events);
* webhook rejections by layer over the last 24 h (``gateway.compliance.rejections``).

Everything here is a count, a time or a duration: no number, name, subject or address.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Final

from nacl.signing import VerifyKey

from gateway.records.base import MAX_PAGE, AuditEvent, AuditQuery, LastRun, Store
from security.audit import VerifyResult, verify

log = logging.getLogger(__name__)

__all__ = [
    "AUDIT_VERIFY_RUN",
    "DSR_KINDS",
    "RETENTION_ACTION",
    "RequestStats",
    "audit_events",
    "record_audit_verification",
    "retention_deleted",
    "subject_request_stats",
    "verify_and_record",
    "verify_periodically",
]

AUDIT_VERIFY_RUN: Final = "audit.verify"
"""The ``LastRun`` operation name of an audit-chain verification."""
DSR_KINDS: Final = ("export", "erase")
AUDIT_VERIFY_INTERVAL_S: Final = 86400.0
"""A running gateway verifies the audit chain this often (and once shortly after start)."""
AUDIT_VERIFY_FIRST_S: Final = 300.0
RETENTION_ACTION: Final = "retention.sweep"
"""The audit action ``RetentionSweeper`` records for a pass that deleted something."""


async def record_audit_verification(
    store: Store, result: VerifyResult, *, at: float | None = None
) -> LastRun:
    """Keep ``result`` as the chain's last verification (compliance evidence) and return it."""
    run = LastRun(
        operation=AUDIT_VERIFY_RUN,
        at=time.time() if at is None else at,
        outcome="success" if result.ok else "failure",
        detail={
            "events": result.events,
            "checkpoints": result.checkpoints,
            "signatures_verified": result.signatures_verified,
            "last_seq": result.last_seq,
            "first_bad_seq": result.first_bad_seq,
            "reason": result.reason,
        },
    )
    await store.put_last_run(run)
    return run


async def verify_and_record(store: Store, keys: Iterable[VerifyKey]) -> VerifyResult:
    """Verify the whole audit chain (checkpoint signatures with ``keys``) and record the
    result as the chain's last verification."""
    result = await verify(store, list(keys))
    await record_audit_verification(store, result)
    return result


async def verify_periodically(
    store: Store,
    keys: Callable[[], Iterable[VerifyKey]],
    *,
    first_s: float = AUDIT_VERIFY_FIRST_S,
    interval_s: float = AUDIT_VERIFY_INTERVAL_S,
) -> None:
    """Verify the audit chain ``first_s`` after start and then every ``interval_s`` until
    cancelled, so the integrity evidence never depends on someone running the command. A
    broken chain is logged at error level (sequence number and reason only); a verification
    that cannot run (store down) is logged and retried at the next interval."""
    await asyncio.sleep(first_s)
    while True:
        try:
            result = await verify_and_record(store, keys())
        except Exception as exc:
            log.warning(
                "audit chain verification failed to run", extra={"error": type(exc).__name__}
            )
        else:
            if not result.ok:
                log.error(
                    "audit chain broken",
                    extra={"first_bad_seq": result.first_bad_seq, "reason": result.reason},
                )
        await asyncio.sleep(interval_s)


async def audit_events(
    store: Store, action: str, *, since: float, until: float | None = None
) -> AsyncIterator[AuditEvent]:
    """Every event of ``action`` (exact, or a prefix ending in ".") in ``[since, until)``,
    oldest first, a page at a time."""
    after = 0
    while True:
        page = await store.query_audit(
            AuditQuery(action=action, since=since, until=until, after_seq=after, limit=MAX_PAGE)
        )
        for event in page:
            yield event
        if len(page) < MAX_PAGE:
            return
        after = page[-1].seq


@dataclass(frozen=True, slots=True)
class RequestStats:
    """Data-subject requests of one kind: how many were served or failed, and the median and
    longest time a served one took (over the ``timed`` ones that recorded it)."""

    served: int = 0
    failed: int = 0
    timed: int = 0
    p50_ms: float | None = None
    max_ms: float | None = None


async def subject_request_stats(
    store: Store, *, since: float, until: float | None = None
) -> dict[str, RequestStats]:
    """Per kind (``export``, ``erase``), from the audit trail's ``dsr.*`` events."""
    served = dict.fromkeys(DSR_KINDS, 0)
    failed = dict.fromkeys(DSR_KINDS, 0)
    durations: dict[str, list[float]] = {kind: [] for kind in DSR_KINDS}
    async for event in audit_events(store, "dsr.", since=since, until=until):
        kind = event.action.removeprefix("dsr.")
        if kind not in served:
            continue
        if event.outcome != "success":
            failed[kind] += 1
            continue
        served[kind] += 1
        duration = event.detail.get("duration_ms")
        if isinstance(duration, int | float) and not isinstance(duration, bool):
            durations[kind].append(float(duration))
    stats: dict[str, RequestStats] = {}
    for kind in DSR_KINDS:
        times = durations[kind]
        stats[kind] = RequestStats(
            served=served[kind],
            failed=failed[kind],
            timed=len(times),
            p50_ms=round(statistics.median(times), 1) if times else None,
            max_ms=round(max(times), 1) if times else None,
        )
    return stats


async def retention_deleted(
    store: Store, *, since: float, until: float | None = None
) -> dict[str, int]:
    """What retention deleted in ``[since, until)``, from its ``retention.sweep`` events."""
    totals = {"calls": 0, "recordings": 0, "audit_events": 0}
    async for event in audit_events(store, RETENTION_ACTION, since=since, until=until):
        for name in totals:
            value = event.detail.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                totals[name] += value
    return totals
