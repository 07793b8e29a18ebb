"""The histogram readers ``bench/relay.py`` uses on a scraped ``/metrics``: quantiles
interpolated inside buckets as Prometheus' ``histogram_quantile`` does, and the bucket holding
the largest observation. Pure functions, known answers."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
_spec = importlib.util.spec_from_file_location("bench_processes", BENCH / "processes.py")
assert _spec is not None and _spec.loader is not None
processes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(processes)

SAMPLES = {
    'h_bucket{le="0.01",stage="a"}': 2.0,
    'h_bucket{le="0.1",stage="a"}': 6.0,
    'h_bucket{le="1.0",stage="a"}': 10.0,
    'h_bucket{le="+Inf",stage="a"}': 10.0,
    'h_bucket{stage="b",le="0.01"}': 0.0,
    'h_bucket{stage="b",le="0.1"}': 0.0,
    'h_bucket{stage="b",le="1.0"}': 3.0,
    'h_bucket{stage="b",le="+Inf"}': 4.0,
    'h_sum{stage="a"}': 2.5,
    'other_bucket{le="0.01"}': 99.0,
}


def test_buckets_pick_the_labels_asked_for_and_sum_the_rest():
    assert processes.buckets(SAMPLES, "h", stage="a") == [
        (0.01, 2.0),
        (0.1, 6.0),
        (1.0, 10.0),
        (math.inf, 10.0),
    ]
    assert processes.buckets(SAMPLES, "h") == [
        (0.01, 2.0),
        (0.1, 6.0),
        (1.0, 13.0),
        (math.inf, 14.0),
    ]
    assert processes.buckets(SAMPLES, "h", stage="c") == []


def test_quantiles_interpolate_inside_the_bucket():
    a = processes.buckets(SAMPLES, "h", stage="a")
    assert processes.bucket_quantile(a, 0.1) == 0.005  # 1 of 2 in [0, 0.01]
    assert math.isclose(processes.bucket_quantile(a, 0.5), 0.0775)  # 3rd of 4 in (0.01, 0.1]
    assert math.isclose(processes.bucket_quantile(a, 0.99), 0.9775)
    assert processes.top_bucket(a) == 1.0


def test_beyond_the_last_bucket_is_its_bound_for_a_quantile_and_inf_for_the_top():
    b = processes.buckets(SAMPLES, "h", stage="b")
    assert processes.bucket_quantile(b, 0.99) == 1.0
    assert processes.top_bucket(b) == math.inf


def test_no_observation_has_no_quantile():
    empty = [(0.01, 0.0), (math.inf, 0.0)]
    assert processes.bucket_quantile(empty, 0.5) is None
    assert processes.top_bucket(empty) is None
    assert processes.bucket_quantile([], 0.5) is None
