"""Webhook rejections per hour, carrier and layer: counted in memory without I/O, written to
the store in batches (on both backends), kept across a failed write, read back as a 24-hour
window."""

from __future__ import annotations

from gateway.compliance.rejections import (
    HOUR_S,
    KEEP_HOURS,
    LAYERS,
    RejectionLedger,
    rejection_window,
)
from gateway.records.base import RejectionCount
from gateway.records.sql import SqlStore
from tests.conftest import FakeClock
from tests.gateway.test_calls import eventually

NOW = 1_750_000_000.0
HOUR = int(NOW // HOUR_S)


def as_dict(rows: list[RejectionCount]) -> dict[tuple[int, str, str], int]:
    return {(r.hour, r.carrier, r.layer): r.count for r in rows}


async def test_buckets_add_up_and_old_ones_go(store: SqlStore) -> None:
    await store.add_rejection_counts(
        [
            RejectionCount(HOUR, "twilio", "signature", 2),
            RejectionCount(HOUR - 5, "telnyx", "request", 1),
        ]
    )
    await store.add_rejection_counts([RejectionCount(HOUR, "twilio", "signature", 3)])
    assert as_dict(await store.rejection_counts(HOUR - 5)) == {
        (HOUR - 5, "telnyx", "request"): 1,
        (HOUR, "twilio", "signature"): 5,
    }
    assert as_dict(await store.rejection_counts(HOUR)) == {(HOUR, "twilio", "signature"): 5}
    assert await store.delete_rejection_counts_before(HOUR) == 1
    assert as_dict(await store.rejection_counts(0)) == {(HOUR, "twilio", "signature"): 5}


async def test_counting_does_no_io_until_the_flush(store: SqlStore) -> None:
    clock = FakeClock(NOW)
    ledger = RejectionLedger(store, flush_interval_s=3600, clock=clock)
    ledger.count("twilio", "signature")
    ledger.count("twilio", "signature")
    clock.advance(HOUR_S)  # the next hour: a bucket of its own
    ledger.count("telnyx", "freshness")
    assert ledger.pending == 3
    assert await store.rejection_counts(0) == []
    await ledger.flush()
    assert ledger.pending == 0
    assert as_dict(await store.rejection_counts(0)) == {
        (HOUR, "twilio", "signature"): 2,
        (HOUR + 1, "telnyx", "freshness"): 1,
    }
    await ledger.close()


async def test_the_background_flush_writes_without_being_asked(store: SqlStore) -> None:
    ledger = RejectionLedger(store, flush_interval_s=0.01)
    ledger.count("telnyx", "rate_limit")

    async def written() -> bool:
        return bool(await store.rejection_counts(0))

    await eventually(written, "the background flush")
    [row] = await store.rejection_counts(0)
    assert (row.carrier, row.layer, row.count) == ("telnyx", "rate_limit", 1)
    ledger.count("telnyx", "rate_limit")  # a second round starts after the first ended
    await ledger.close()
    [row] = await store.rejection_counts(0)
    assert row.count == 2


async def test_a_failed_write_keeps_the_counts_for_the_next(store: SqlStore) -> None:
    clock = FakeClock(NOW)
    ledger = RejectionLedger(store, flush_interval_s=3600, clock=clock)
    ledger.count("twilio", "allowlist")
    await store.close()  # the database is gone
    await ledger.flush()
    assert (ledger.failures, ledger.pending) == (1, 1)
    await store.open()  # and back
    ledger.count("twilio", "allowlist")
    await ledger.close()
    assert as_dict(await store.rejection_counts(0)) == {(HOUR, "twilio", "allowlist"): 2}


async def test_a_flush_drops_buckets_past_the_keeping_period(store: SqlStore) -> None:
    await store.add_rejection_counts(
        [
            RejectionCount(HOUR - KEEP_HOURS - 1, "twilio", "signature", 4),
            RejectionCount(HOUR - KEEP_HOURS, "twilio", "signature", 1),
        ]
    )
    ledger = RejectionLedger(store, clock=FakeClock(NOW))
    await ledger.flush()  # nothing counted: still prunes
    assert as_dict(await store.rejection_counts(0)) == {
        (HOUR - KEEP_HOURS, "twilio", "signature"): 1
    }
    await ledger.close()


async def test_the_window_is_the_last_24_hourly_buckets(store: SqlStore) -> None:
    await store.add_rejection_counts(
        [
            RejectionCount(HOUR - 24, "twilio", "signature", 100),  # 24-25 h ago: outside
            RejectionCount(HOUR - 23, "twilio", "signature", 2),
            RejectionCount(HOUR, "twilio", "replay", 1),
            RejectionCount(HOUR, "telnyx", "freshness", 3),
        ]
    )
    window = await rejection_window(store, ("twilio", "telnyx"), now=NOW)
    assert window.since == (HOUR - 23) * HOUR_S and window.hours == 24
    assert list(window.by_layer) == list(LAYERS)  # every layer, in pipeline order
    assert window.by_layer == {
        "request": 0,
        "allowlist": 0,
        "freshness": 3,
        "signature": 2,
        "replay": 1,
        "rate_limit": 0,
    }
    assert window.total == 6
    assert window.by_carrier["twilio"]["signature"] == 2
    assert window.by_carrier["telnyx"] == {**dict.fromkeys(LAYERS, 0), "freshness": 3}
    empty = await rejection_window(store, ("twilio",), now=NOW + 48 * HOUR_S)
    assert empty.total == 0 and empty.by_carrier == {"twilio": dict.fromkeys(LAYERS, 0)}
