"""FrameMeter against prometheus_client itself: the same frames and times, tallied in batches,
give exactly the exposition that one ``inc()`` and one ``observe()`` per frame give."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram

from metrics.framemeter import FLUSH_FRAMES, FrameMeter
from metrics.registry import MEDIA_RELAY

BUCKETS = MEDIA_RELAY._upper_bounds[:-1]  # the gateway's own buckets (+Inf is implied)


def families(name: str) -> tuple[CollectorRegistry, Counter, Histogram]:
    registry = CollectorRegistry()
    frames = Counter(f"{name}_frames_total", "frames", ["direction"], registry=registry)
    relay = Histogram(
        f"{name}_relay_seconds", "relay", ["direction"], buckets=BUCKETS, registry=registry
    )
    return registry, frames, relay


def samples(registry: CollectorRegistry, prefix: str) -> dict[tuple[str, str], float]:
    out = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            out[(s.name.removeprefix(prefix), s.labels.get("le", ""))] = s.value
    return out


def test_batched_tallies_equal_per_frame_updates_bucket_for_bucket():
    meter_registry, meter_frames, meter_relay = families("m")
    plain_registry, plain_frames, plain_relay = families("p")
    meter = FrameMeter(meter_frames.labels("in"), meter_relay.labels("in"))
    rng = random.Random(7)
    # Times on every bucket boundary (a bound belongs to its own bucket), between them,
    # below the first and above the last.
    times = [*BUCKETS, 0.0, 1e-7, 0.3, 7.5] + [rng.expovariate(1 / 0.002) for _ in range(500)]
    for t in times:
        meter.count()
        meter.time(t)
        plain_frames.labels("in").inc()
        plain_relay.labels("in").observe(t)
    meter.flush()
    got, want = samples(meter_registry, "m"), samples(plain_registry, "p")
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert abs(got[key] - value) < 1e-9, key
    assert got[("_frames_total", "")] == len(times)


def test_tallies_reach_the_families_every_flush_frames_and_at_flush():
    registry, frames, relay = families("b")
    meter = FrameMeter(frames.labels("out"), relay.labels("out"))

    def counted() -> tuple[float, float]:
        s = samples(registry, "b")
        return s[("_frames_total", "")], s[("_relay_seconds_count", "")]

    for _ in range(FLUSH_FRAMES - 1):
        meter.count()
    assert counted() == (0, 0)  # still local
    meter.count()
    assert counted() == (FLUSH_FRAMES, 0)
    for _ in range(FLUSH_FRAMES):
        meter.time(0.001)
    assert counted() == (FLUSH_FRAMES, FLUSH_FRAMES)
    meter.count()
    meter.time(0.002)
    assert counted() == (FLUSH_FRAMES, FLUSH_FRAMES)
    meter.flush()
    assert counted() == (FLUSH_FRAMES + 1, FLUSH_FRAMES + 1)
    meter.flush()  # nothing pending: nothing added
    assert counted() == (FLUSH_FRAMES + 1, FLUSH_FRAMES + 1)
