"""Long-run fuzzing: the hostile-input suite (``tests/fuzz``) with many examples per target.

Usage: python bench/fuzz.py [--examples 10000] [--json bench/last-run/fuzz.json] [-k EXPR]

Runs ``pytest tests/fuzz`` with ``VOICEGW_FUZZ_EXAMPLES`` set (every property-based target
runs that many examples, fresh random inputs, failures kept in ``.hypothesis/`` and replayed
first next time), Hypothesis's statistics on and no per-test timeout. Then prints, per target:
examples run, how many the system under test rejected (its documented error, or a 4xx) and
accepted, Hypothesis's passing / failing / invalid counts, and the outcome; and writes it all
as JSON. The targets that are not property-based (the every-field enumerations, the memory
bounds, the real-server limits) run once and are listed too. The full pytest output goes to
``bench/results/fuzz.log``. Exits 1 if any target failed. Needs the test Redis
(``VOICEGW_TEST_REDIS_URL``, as ``scripts/test``).

At 10,000 examples the suite takes about an hour on a 2-core machine; ``-k`` narrows it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
STATS: Final = re.compile(r"(\d+) passing, (\d+) failing, and (\d+) invalid")


def hypothesis_statistics(output: str) -> dict[str, dict[str, int]]:
    """Per test node id, the passing / failing / invalid test cases of all its phases (reuse
    of the example database, generate, shrink)."""
    found: dict[str, dict[str, int]] = {}
    nodeid = None
    for line in output.splitlines():
        if line.startswith("tests/") and line.rstrip().endswith(":"):
            nodeid = line.rstrip()[:-1]
        elif nodeid and (m := STATS.search(line)):
            counts = found.setdefault(nodeid, {"passing": 0, "failing": 0, "invalid": 0})
            for key, value in zip(("passing", "failing", "invalid"), m.groups(), strict=True):
                counts[key] += int(value)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "last-run" / "fuzz.json")
    parser.add_argument("-k", dest="select", default=None, help="pytest -k expression")
    args = parser.parse_args()

    args.json.parent.mkdir(parents=True, exist_ok=True)
    log = ROOT / "bench" / "results" / "fuzz.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "tally.json"
        env = {
            **os.environ,
            "VOICEGW_FUZZ_EXAMPLES": str(args.examples),
            "VOICEGW_FUZZ_REPORT": str(report),
        }
        command = [
            sys.executable, "-m", "pytest", "tests/fuzz", "-q",
            "--hypothesis-show-statistics", "--timeout=0", "-o", "console_output_style=classic",
        ]  # fmt: skip
        if args.select:
            command += ["-k", args.select]
        print(f"running {' '.join(command[2:])} with {args.examples} examples per target")
        started = time.monotonic()
        run = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )
        took = time.monotonic() - started
        output = run.stdout + run.stderr
        log.write_text(output)
        tally: dict[str, Any] = json.loads(report.read_text()) if report.exists() else {}

    stats = hypothesis_statistics(output)
    targets = tally.get("targets", {})
    rows = []
    for nodeid in sorted(set(targets) | set(stats)):
        counts = targets.get(nodeid, {})
        rows.append({"target": nodeid, **counts, "hypothesis": stats.get(nodeid)})

    name_width = max((len(r["target"]) for r in rows), default=10) - len("tests/fuzz/")
    print(f"\n{'target':<{name_width}}  {'examples':>8} {'rejected':>8} {'accepted':>8}  "
          f"{'pass/fail/invalid':>17}  outcome")  # fmt: skip
    print("-" * (name_width + 58))
    failures = 0
    for row in rows:
        h = row["hypothesis"]
        hyp = f"{h['passing']}/{h['failing']}/{h['invalid']}" if h else "-"
        outcome = row.get("outcome", "unknown")
        failures += outcome == "failed" or bool(h and h["failing"])
        print(
            f"{row['target'].removeprefix('tests/fuzz/'):<{name_width}}  "
            f"{row.get('examples', 0):>8} {row.get('rejected', 0):>8} "
            f"{row.get('accepted', 0):>8}  {hyp:>17}  {outcome}"
        )
    total = sum(r.get("examples", 0) for r in rows)
    print(f"\n{total} examples in {took:.0f} s; {failures} failing target(s); "
          f"pytest exit status {run.returncode}; output in {log}")  # fmt: skip

    args.json.write_text(
        json.dumps(
            {
                "examples_per_target": args.examples,
                "seconds": round(took, 1),
                "pytest_exit_status": run.returncode,
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                "date": time.strftime("%Y-%m-%d"),
                "targets": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.json}")
    return 1 if run.returncode or failures else 0


if __name__ == "__main__":
    sys.exit(main())
