"""The parts every check module uses: a check's ``Outcome``, the ``Check`` record, a
``Registry`` that collects an area's checks in order, and ``run`` over a list of them.

A check is a pure function of the ``Settings`` and the observed ``Facts``. Severity is the
risk, status the verdict: a key past its rotation date fails with severity ``warning`` (the
review exits 2, a production start goes on and logs it), while a plain ``redis://`` to another
host fails with severity ``critical`` and stops a production start. A warning is reported with
at most ``warning`` severity unless its check says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from gateway.review.facts import Facts
from gateway.review.model import Finding, Report, Severity, Status
from gateway.settings import Settings

DAY_S: Final = 86400.0
_RANK: Final = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    finding: str
    fix: str | None = None  # replaces the check's usual fix
    severity: Severity | None = None  # replaces the check's usual severity


def passed(finding: str) -> Outcome:
    return Outcome(Status.PASS, finding)


def warned(finding: str, fix: str | None = None) -> Outcome:
    return Outcome(Status.WARN, finding, fix)


def failed(finding: str, fix: str | None = None, severity: Severity | None = None) -> Outcome:
    return Outcome(Status.FAIL, finding, fix, severity)


CheckFn = Callable[[Settings, Facts], Outcome]


@dataclass(frozen=True, slots=True)
class Check:
    id: str
    severity: Severity
    fix: str
    run: CheckFn


class Registry:
    """An area's checks, in the order they are defined (the order they are reported in)."""

    def __init__(self) -> None:
        self.checks: list[Check] = []

    def check(self, check_id: str, severity: Severity, fix: str) -> Callable[[CheckFn], CheckFn]:
        def register(fn: CheckFn) -> CheckFn:
            self.checks.append(Check(check_id, severity, fix, fn))
            return fn

        return register


def run(checks: Sequence[Check], settings: Settings, facts: Facts) -> Report:
    """Run ``checks``. A check that raises is reported as failed, never skipped."""
    findings: list[Finding] = []
    for c in checks:
        try:
            outcome = c.run(settings, facts)
        except Exception as exc:
            outcome = failed(f"check could not run ({type(exc).__name__})")
        severity = outcome.severity or c.severity
        if outcome.status is Status.WARN and outcome.severity is None:
            severity = min(severity, Severity.WARNING, key=_RANK.__getitem__)
        findings.append(
            Finding(c.id, severity, outcome.status, outcome.finding, outcome.fix or c.fix)
        )
    return Report(settings.env.value, facts.now, tuple(findings))


def days(seconds: float) -> str:
    return f"{seconds / DAY_S:.0f}"
