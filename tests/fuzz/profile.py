"""Example counts of the property-based (hostile input) suite, and its per-target tally.

Counts come from ``VOICEGW_FUZZ_EXAMPLES``:

* unset (CI mode): ``CI_EXAMPLES`` examples per target, derandomized (the same inputs on every
  run, so a CI failure reproduces), no example database written; targets that cost an HTTP
  request or a WebSocket stream per example (``COSTLY``) run a quarter of that;
* set (long-run mode, ``bench/fuzz.py``): that many examples for every target, fresh random
  inputs each run, and the example database under ``.hypothesis/``, so a failure found once
  is replayed first next time.

Each example reports what the system under test did with its input through ``tally``:
``rejected`` (refused with its documented error type or a 4xx) or ``accepted``.
``tests/fuzz/conftest.py`` writes the counts out for ``bench/fuzz.py``.
"""

from __future__ import annotations

import collections
import os
from typing import Final, Literal

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

CI_EXAMPLES: Final = 150
LONG_RUN: Final = "VOICEGW_FUZZ_EXAMPLES" in os.environ
EXAMPLES: Final = int(os.environ.get("VOICEGW_FUZZ_EXAMPLES", CI_EXAMPLES))

FUZZ: Final = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not LONG_RUN,
    database=DirectoryBasedExampleDatabase(".hypothesis/examples") if LONG_RUN else None,
    print_blob=True,
    # Gateways and clients are built once per test and shared by its examples on purpose:
    # every example asserts its invariants against the state it found.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
"""Settings of every target: ``@FUZZ`` above ``@given``."""

COSTLY: Final = settings(FUZZ, max_examples=EXAMPLES if LONG_RUN else max(10, EXAMPLES // 4))
"""Settings of a target that costs an HTTP request or a WebSocket stream per example."""

Outcome = Literal["rejected", "accepted"]

COUNTS: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
"""Examples per outcome, by test node id."""
OUTCOMES: dict[str, str] = {}
"""passed / failed / skipped, by test node id."""


def _current_test() -> str:
    # pytest keeps "tests/fuzz/test_x.py::test_y (call)" here while a test runs.
    return os.environ.get("PYTEST_CURRENT_TEST", "unknown").rsplit(" ", 1)[0]


def tally(outcome: Outcome) -> None:
    """Count one example of the running target."""
    COUNTS[_current_test()][outcome] += 1
