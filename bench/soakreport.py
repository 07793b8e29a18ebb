"""The verdicts, table and plot of ``bench/soak.py``, computed from its JSON document alone
(so a stored ``bench/last-run/soak.json`` can be re-rendered or re-plotted)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Final

RSS_GROWTH_PCT: Final = 5.0
FD_TOLERANCE: Final = 2
TASK_TOLERANCE: Final = 2
DELIVERED_PCT: Final = 99.5
TABLE_ROWS: Final = 14
"""At most this many load samples in the printed table (the JSON has every one)."""


def _verdict(ok: bool, measured: Any, target: str, text: str) -> dict[str, Any]:
    return {"pass": ok, "measured": measured, "target": target, "text": text}


def _slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(t_s, value)`` points, per minute."""
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return 60 * cov / var if var else 0.0


def _rss(series: list[dict[str, Any]], warmup_s: float) -> dict[str, Any]:
    after = [r for r in series if r["phase"] == "load" and r["t_s"] >= warmup_s]
    target = f"< {RSS_GROWTH_PCT:g} %"
    if len(after) < 2:
        return _verdict(False, None, target, "run too short: fewer than 2 samples after warm-up")
    first, last = after[0]["rss_mib"], after[-1]["rss_mib"]
    growth = 100 * (last - first) / first
    peak = 100 * (max(r["rss_mib"] for r in after) - first) / first
    slope = _slope_per_min([(r["t_s"], r["rss_mib"]) for r in after])
    text = (
        f"{growth:+.2f} % ({first:.1f} -> {last:.1f} MiB from {after[0]['t_s']:.0f} s to "
        f"{after[-1]['t_s']:.0f} s; peak {peak:+.2f} %, trend {slope:+.3f} MiB/min)"
    )
    measured = {
        "growth_pct": round(growth, 2),
        "peak_growth_pct": round(peak, 2),
        "rss_after_warmup_mib": first,
        "rss_end_of_load_mib": last,
        "trend_mib_per_min": round(slope, 4),
    }
    return _verdict(growth < RSS_GROWTH_PCT, measured, target, text)


def _fds(base: dict[str, Any], end: dict[str, Any], peak_redis: int) -> dict[str, Any]:
    before, after = base["fds"] - base["fds_redis"], end["fds"] - end["fds_redis"]
    text = (
        f"{after} (baseline {before}); Redis pool apart: {base['fds_redis']} idle, "
        f"{peak_redis} at peak, {end['fds_redis']} at the end"
    )
    measured = {
        "baseline": before,
        "end": after,
        "redis_baseline": base["fds_redis"],
        "redis_peak": peak_redis,
        "redis_end": end["fds_redis"],
        "by_kind_baseline": base["fds_by_kind"],
        "by_kind_end": end["fds_by_kind"],
    }
    return _verdict(
        abs(after - before) <= FD_TOLERANCE, measured, f"baseline +- {FD_TOLERANCE}", text
    )


def _tasks(base: dict[str, Any], end: dict[str, Any], peak: int) -> dict[str, Any]:
    before, after = base["tasks"], end["tasks"]
    ok = before is not None and after is not None and abs(after - before) <= TASK_TOLERANCE
    text = f"{after} (baseline {before}, peak {peak} under load)"
    measured = {"baseline": before, "end": after, "peak": peak}
    return _verdict(ok, measured, f"baseline +- {TASK_TOLERANCE}", text)


def _log(log: dict[str, Any]) -> dict[str, Any]:
    levels = log["levels"]
    errors = levels.get("error", 0) + levels.get("critical", 0)
    stderr = log["stderr_lines"]
    counts = ", ".join(f"{k} {v}" for k, v in sorted(levels.items()))
    text = f"{errors} of {sum(levels.values())} ({counts}); {stderr} lines on stderr"
    return _verdict(errors == 0 and stderr == 0, errors, "0, stderr empty", text)


def _delivery(load: dict[str, Any]) -> dict[str, Any]:
    sent, back = load["frames_sent"], load["frames_back"]
    pct = 100 * back / sent if sent else 0.0
    text = f"{pct:.3f} % ({back} of {sent} frames back at the caller)"
    return _verdict(pct >= DELIVERED_PCT, round(pct, 3), f">= {DELIVERED_PCT:g} %", text)


def _calls(load: dict[str, Any], outcomes: dict[str, int]) -> dict[str, Any]:
    started, ended, failed = load["calls_started"], load["calls_ended"], load["calls_failed"]
    ok = failed == 0 and ended == started
    ends = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
    text = f"{failed} failed of {started} started, {ended} ended (gateway: {ends})"
    return _verdict(ok, {"started": started, "ended": ended, "failed": failed}, "0 failed", text)


def criteria(result: dict[str, Any], warmup_s: float) -> dict[str, dict[str, Any]]:
    """Each criterion: ``pass``, ``measured``, ``target`` and a line of ``text``."""
    series = result["series"]
    base, end = result["baseline"], series[-1]
    loaded = [r for r in series if r["phase"] in ("load", "tail")]
    peak_redis = max((r["fds_redis"] for r in loaded), default=0)
    peak_tasks = max((r["tasks"] or 0 for r in loaded), default=0)
    return {
        "rss_growth": _rss(series, warmup_s),
        "fds_back": _fds(base, end, peak_redis),
        "tasks_back": _tasks(base, end, peak_tasks),
        "no_error_logs": _log(result["log"]),
        "audio_delivered": _delivery(result["load"]),
        "calls_set_up": _calls(result["load"], result["call_outcomes"]),
    }


def context(result: dict[str, Any], warmup_s: float) -> dict[str, Any]:
    """What the machine let the run do, after the warm-up: whether the gateway relayed frames
    as fast as the callers sent them (``relay_pace_pct``: frames relayed in both directions
    over twice the frames sent), how busy the rest of the machine was, and how long
    ``/metrics`` took to answer (a stalled event loop answers late). A gateway that falls
    behind queues audio, so its memory then grows for a reason other than a leak."""
    load = [r for r in result["series"] if r["phase"] == "load" and r["t_s"] >= warmup_s]
    load = [r for r in load if r["frames_relayed"] is not None]
    out: dict[str, Any] = {"relay_pace_pct": None, "other_cpu_pct_mean": None}
    if len(load) >= 2:
        sent = load[-1]["gen"]["frames_sent"] - load[0]["gen"]["frames_sent"]
        relayed = load[-1]["frames_relayed"] - load[0]["frames_relayed"]
        out["relay_pace_pct"] = round(100 * relayed / (2 * sent), 1) if sent else None
        other = [r["other_cpu_pct"] for r in load if "other_cpu_pct" in r]
        out["other_cpu_pct_mean"] = round(sum(other) / len(other), 1) if other else None
    scrapes = sorted(r["scrape_ms"] for r in result["series"] if r.get("scrape_ms") is not None)
    out["metrics_answer_ms_max"] = scrapes[-1] if scrapes else None
    out["metrics_unanswered"] = sum(1 for r in result["series"] if r.get("scrape_ms") is None)
    rtts = [r["gen"]["rtt_ms"]["p99"] for r in load if r["gen"]["rtt_ms"]["p99"] is not None]
    out["rtt_p99_ms_first_last"] = [rtts[0], rtts[-1]] if rtts else None
    pace = out["relay_pace_pct"]
    out["fell_behind"] = pace is not None and pace < 98.0
    return out


TITLES: Final = {
    "rss_growth": "RSS growth under load after warm-up",
    "fds_back": "open fds after the last call",
    "tasks_back": "asyncio tasks after the last call",
    "no_error_logs": "error-level log lines",
    "audio_delivered": "audio delivered",
    "calls_set_up": "calls set up and ended",
}
COLUMNS: Final = [  # key, title, width, format
    ("t_s", "t s", 6, ".0f"),
    ("phase", "phase", 6, ""),
    ("calls_active", "calls", 5, "d"),
    ("rss_mib", "rss MiB", 7, ".1f"),
    ("fds", "fds", 5, "d"),
    ("fds_redis", "redis", 5, "d"),
    ("tasks", "tasks", 5, "d"),
    ("relayed_per_s", "relayed/s", 9, ".0f"),
    ("gw_cpu_pct", "gw cpu%", 7, ".0f"),
    ("other_cpu_pct", "other%", 6, ".0f"),
    ("rtt_p99", "rtt p99 ms", 10, ".1f"),
]


def _rows(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    load = [r for r in series if r["phase"] == "load"]
    stride = max(1, -(-len(load) // TABLE_ROWS))
    keep = {id(r) for r in load[stride - 1 :: stride]} | ({id(load[-1])} if load else set())
    return [r for r in series if r["phase"] not in ("load", "settle") or id(r) in keep]


def _cell(value: Any, width: int, spec: str) -> str:
    if value is None:
        return f"{'-':>{width}}"
    if not spec:
        return f"{value:<{width}}"
    return f"{value:>{width}{spec}}"


def render(document: dict[str, Any]) -> str:
    header = "  ".join(
        f"{title:<{width}}" if not spec else f"{title:>{width}}"
        for _, title, width, spec in COLUMNS
    )
    lines = [header, "-" * len(header)]
    for row in _rows(document["series"]):
        cells = {**row, "rtt_p99": row.get("gen", {}).get("rtt_ms", {}).get("p99")}
        lines.append("  ".join(_cell(cells.get(key), w, spec) for key, _, w, spec in COLUMNS))
    load = document["load"]
    rtt = load["rtt_ms"]
    lines += [
        "",
        f"calls: {load['calls_started']} started, {load['calls_failed']} failed; call length "
        f"{load['call_s']['min']}-{load['call_s']['max']} s (median {load['call_s']['p50']}); "
        f"round trip p50 {rtt.get('p50')} ms, p99 {rtt.get('p99')} ms, p99.9 {rtt.get('p99.9')} ms",
        f"peak RSS {document['peak_rss_mib']} MiB; back to baseline {document['settle_s']} s "
        f"after the last call; warnings logged: {_top(document['log']['warnings'])}",
    ]
    ctx = document["context"]
    lines.append(
        f"after warm-up: relay pace {ctx['relay_pace_pct']} % of the callers' frames, rest of "
        f"the machine {ctx['other_cpu_pct_mean']} % busy, /metrics answered within "
        f"{ctx['metrics_answer_ms_max']} ms ({ctx['metrics_unanswered']} unanswered), round-trip "
        f"p99 {' -> '.join(f'{v:.1f}' for v in ctx['rtt_p99_ms_first_last'] or [])} ms"
    )
    if ctx["fell_behind"]:
        lines.append(
            "NOTE: the gateway fell behind the load: audio queued up, so latency and memory grew "
            "with the backlog, not only with leaks. Rerun on a quieter machine or with fewer "
            "--calls to judge memory."
        )
    lines += ["", f"{'criterion':<38}{'verdict':<9}measured (target)"]
    for name, verdict in document["criteria"].items():
        mark = "PASS" if verdict["pass"] else "FAIL"
        lines.append(f"{TITLES[name]:<38}{mark:<9}{verdict['text']} ({verdict['target']})")
    lines.append("soak: " + ("PASS" if document["passed"] else "FAIL"))
    return "\n".join(lines)


def _top(counts: dict[str, int], n: int = 3) -> str:
    if not counts:
        return "none"
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
    more = f" and {len(counts) - n} more kinds" if len(counts) > n else ""
    return ", ".join(f"{v}x {k!r}" for k, v in top) + more


def plot(document: dict[str, Any], path: Path) -> Path | None:
    """RSS, fds, tasks and active calls against time, as a PNG; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    series = [r for r in document["series"] if r["t_s"] >= 0]
    t = [r["t_s"] / 60 for r in series]
    base = document["baseline"]

    def column(key: str) -> list[float]:
        return [math.nan if r[key] is None else r[key] for r in series]  # no scrape: a gap

    rtt = [
        math.nan if (p99 := r.get("gen", {}).get("rtt_ms", {}).get("p99")) is None else p99
        for r in series
    ]
    panels = [
        ("RSS (MiB)", column("rss_mib"), base["rss_mib"]),
        ("open fds (Redis pool apart)", [r["fds"] - r["fds_redis"] for r in series],
         base["fds"] - base["fds_redis"]),
        ("asyncio tasks", column("tasks"), base["tasks"]),
        ("active calls", column("calls_active"), None),
        ("round-trip p99 (ms, log)", rtt, None),
    ]  # fmt: skip
    fig, axes = plt.subplots(len(panels), 1, sharex=True, figsize=(8, 11))
    for ax, (title, values, baseline) in zip(axes, panels, strict=True):
        ax.plot(t, values, marker=".", linewidth=1)
        if values is rtt:
            ax.set_yscale("log")
        if baseline is not None:
            ax.axhline(baseline, color="grey", linestyle=":", label="idle baseline")
            ax.legend(loc="lower right", fontsize="small")
        ax.axvspan(0, document["warmup_s"] / 60, color="0.9")
        ax.set_ylabel(title, fontsize="small")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("minutes (shaded: warm-up)")
    fig.suptitle(
        f"voicegw soak: {document['calls']} calls with churn, {document['minutes']:g} min, "
        f"{'PASS' if document['passed'] else 'FAIL'}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
