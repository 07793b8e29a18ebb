"""Plot a ``bench/relay.py`` run: round-trip p99 and CPU per call against the number of calls,
for voicegw and the floor (the bare relay), from the run's JSON.

Usage: python bench/plot_relay.py [bench/last-run/relay.json] [--out bench/last-run/relay.png]

Needs matplotlib (the ``bench`` extra: ``pip install -e .[bench]``); ``relay.py`` calls
``plot`` itself after a run when matplotlib is there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Final

from curve import HOLD_P99_MS

LABELS: Final = {"voicegw": "voicegw", "baseline": "floor (bare websockets relay)"}
COLOURS: Final = {"voicegw": "tab:blue", "baseline": "tab:gray"}


def plot(document: dict[str, Any], out: Path) -> Path:
    """Write the two-panel PNG for ``document`` (relay.py's JSON) to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = document["results"]
    # A capacity line only where a higher level failed: otherwise it is a lower bound.
    capacity = {
        s: c["capacity"]
        for s, c in document.get("capacity", {}).items()
        if c["first_failing"] is not None
    }
    fig, (rtt, cpu) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for system in ("voicegw", "baseline"):
        runs = sorted((r for r in rows if r["system"] == system), key=lambda r: r["calls"])
        if not runs:
            continue
        n = [r["calls"] for r in runs]
        style = {"color": COLOURS[system], "marker": "o", "label": LABELS[system]}
        rtt.plot(n, [r["rtt_ms_p99"] for r in runs], **style)
        rtt.plot(n, [r["rtt_ms_p50"] for r in runs], color=COLOURS[system], ls=":", marker=".")
        cpu.plot(n, [r["relay_cpu_ms_per_call_s"] for r in runs], **style)
        if capacity.get(system):
            for ax in (rtt, cpu):
                ax.axvline(capacity[system], color=COLOURS[system], ls="--", lw=0.8)
    rtt.axhline(HOLD_P99_MS, color="tab:red", lw=0.8)
    rtt.annotate(
        f"{HOLD_P99_MS:g} ms", (0.01, HOLD_P99_MS), xycoords=("axes fraction", "data"), va="bottom"
    )
    rtt.set_yscale("log")
    rtt.set_xlabel("concurrent calls")
    rtt.set_ylabel("round trip, ms (p99 solid, p50 dotted)")
    rtt.set_title("caller frame → relay → provider → relay → caller")
    cpu.set_xlabel("concurrent calls")
    cpu.set_ylabel("relay CPU, ms per call-second")
    cpu.set_ylim(bottom=0)
    cpu.set_title("CPU per call-second (dashed: capacity)")
    levels = sorted({r["calls"] for r in rows})
    for ax in (rtt, cpu):
        ax.set_xticks(levels)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(
        f"bench/relay.py: {document.get('cores')} cores, Python {document.get('python')}, "
        f"{document.get('seconds'):g} s of audio per call, load generator on the same machine",
        fontsize="medium",
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parent
    parser.add_argument("json", nargs="?", default=str(here / "last-run" / "relay.json"))
    parser.add_argument("--out", default=None, help="PNG path (default: the JSON's, .png)")
    options = parser.parse_args()
    source = Path(options.json)
    out = Path(options.out) if options.out else source.with_suffix(".png")
    print(plot(json.loads(source.read_text()), out))


if __name__ == "__main__":
    main()
