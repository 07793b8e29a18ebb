"""Hooks of the hostile-input suite: each target's outcome, and the report ``bench/fuzz.py``
reads. When ``VOICEGW_FUZZ_REPORT`` names a file, the tally of ``tests.fuzz.profile`` and each
target's pass/fail outcome are written there as JSON at the end of the session."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz import profile


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Hostile examples are big on purpose (70 kB strings, 5000-digit numbers): Hypothesis may
    # print them when it reports a failure, and must not turn that into an error of its own.
    here = Path(__file__).parent
    quiet = pytest.mark.filterwarnings(
        "ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning"
    )
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(quiet)


@pytest.fixture(autouse=True)
def _quiet_test_client() -> Iterator[None]:
    """httpx logs every request the tests send at INFO: thousands of hostile URLs per target,
    which say nothing about the gateway (its own log lines are still all scanned)."""
    logger = logging.getLogger("httpx")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or report.outcome != "passed":
        if profile.OUTCOMES.get(report.nodeid) != "failed":
            profile.OUTCOMES[report.nodeid] = report.outcome


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("VOICEGW_FUZZ_REPORT")
    if not path:
        return
    targets = {}
    for nodeid in sorted(set(profile.COUNTS) | set(profile.OUTCOMES)):
        counts = profile.COUNTS[nodeid]
        targets[nodeid] = {
            "examples": sum(counts.values()),
            "rejected": counts["rejected"],
            "accepted": counts["accepted"],
            "outcome": profile.OUTCOMES.get(nodeid, "unknown"),
        }
    report = {
        "examples_setting": profile.EXAMPLES,
        "long_run": profile.LONG_RUN,
        "targets": targets,
    }
    Path(path).write_text(json.dumps(report, indent=2) + "\n")
