"""The capacity curve of a ``bench/relay.py`` run: which levels hold, the highest that does, and
how cost grows with the number of calls.

Reads the rows ``relay.py`` produces (one per system and level). A level *holds* when no call
failed to set up, at least ``HOLD_DELIVERED_PCT`` of the audio came back and the round-trip
p99 stayed under ``HOLD_P99_MS``. Per system:

* ``capacity``: the highest level that holds (``None`` if none did), and the lowest level above
  it that did not (``None`` if every higher level held: capacity is at least the top level);
* ``cpu``: a least-squares line through the relay's CPU (seconds per second, i.e. cores) against
  the number of calls, over the levels that hold: ``ms_per_call_s`` is the marginal cost of one
  more call, ``fixed_ms_per_s`` the cost of none, ``r2`` how straight the line is (cost linear
  in N when close to 1);
* ``rss``: the same for the relay's peak resident memory above its idle size:
  ``kib_per_call`` is the memory of one more call.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

HOLD_DELIVERED_PCT: Final = 99.5
HOLD_P99_MS: Final = 40.0


def holds(row: dict[str, Any]) -> bool:
    """Whether one system at one level held: every call set up, audio back, p99 in bound."""
    p99 = row["rtt_ms_p99"]
    return (
        row["failed_setup"] == 0
        and row["delivered_pct"] >= HOLD_DELIVERED_PCT
        and p99 == p99  # not NaN: some audio came back
        and p99 < HOLD_P99_MS
    )


def fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float] | None:
    """Least-squares line ``y = intercept + slope * x`` and its R², or None with fewer than
    two distinct x."""
    n = len(xs)
    if n < 2 or len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    r2 = 1.0 - ss_res / ss_tot if ss_tot else 1.0
    return {"slope": slope, "intercept": intercept, "r2": r2}


def summarize(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Capacity, CPU line and memory line per system (see the module docstring)."""
    by_system: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_system.setdefault(row["system"], []).append(row)
    out: dict[str, dict[str, Any]] = {}
    for system, runs in by_system.items():
        runs = sorted(runs, key=lambda r: r["calls"])
        held = [r for r in runs if holds(r)]
        capacity = max((r["calls"] for r in held), default=None)
        above = [r["calls"] for r in runs if not holds(r) and (capacity or 0) < r["calls"]]
        cpu = fit(
            [r["calls"] for r in held],
            [r["relay_cpu_s"] / r["window_s"] for r in held if r["window_s"]],
        )
        rss = fit(
            [r["calls"] for r in runs],
            [r["relay_peak_rss_kib"] - r["relay_idle_rss_kib"] for r in runs],
        )
        out[system] = {
            "levels": [r["calls"] for r in runs],
            "held": [r["calls"] for r in held],
            "capacity": capacity,
            "first_failing": min(above, default=None),
            "cpu": None
            if cpu is None
            else {
                "ms_per_call_s": round(1000 * cpu["slope"], 3),
                "fixed_ms_per_s": round(1000 * cpu["intercept"], 1),
                "r2": round(cpu["r2"], 4),
            },
            "rss": None
            if rss is None
            else {
                "kib_per_call": round(rss["slope"], 1),
                "fixed_kib": round(rss["intercept"], 0),
                "r2": round(rss["r2"], 4),
            },
        }
    return out


def render(summary: dict[str, dict[str, Any]]) -> str:
    """Lines for the end of the relay report."""
    lines = [
        f"capacity: the highest level with every call set up, >= {HOLD_DELIVERED_PCT} % of the "
        f"audio back and round-trip p99 < {HOLD_P99_MS:g} ms"
    ]
    for system, s in summary.items():
        if s["capacity"] is None:
            cap = "no level held"
        elif s["first_failing"] is None:
            cap = f">= {s['capacity']} (every level held)"
        else:
            cap = f"{s['capacity']} ({s['first_failing']} did not hold)"
        cpu, rss = s["cpu"], s["rss"]
        cpu_text = (
            f"cpu {cpu['ms_per_call_s']:.2f} ms per call-second + {cpu['fixed_ms_per_s']:.1f} "
            f"ms/s fixed (R² {cpu['r2']:.3f})"
            if cpu
            else "cpu: too few levels held for a line"
        )
        rss_text = (
            f"rss {rss['kib_per_call']:.0f} KiB per additional call (R² {rss['r2']:.3f})"
            if rss
            else "rss: too few levels for a line"
        )
        lines.append(f"  {system:<9} capacity {cap}; {cpu_text}; {rss_text}")
    return "\n".join(lines)
