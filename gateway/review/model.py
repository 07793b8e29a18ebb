"""What a security review produces: findings, and a report that renders them.

A ``Finding`` is one check's verdict: its stable dotted ``id``, the ``severity`` of the risk
it looks for, a ``status`` (pass, warn, fail), a one-line ``finding`` and the ``fix`` (the
setting or command). Findings never carry a secret or personal data: checks describe keys by
their public ids and settings by their names.

``Report.exit_code`` is what ``voicegw security review`` exits with: 0 when everything
passes, 1 when something warns, 2 when something fails. At start-up in production a failure
of a critical check stops the gateway (``Report.blocking``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Severity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Status(enum.StrEnum):
    PASS = "pass"  # noqa: S105 (a verdict, not a password)
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Finding:
    id: str
    severity: Severity
    status: Status
    finding: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        return {
            "id": self.id,
            "severity": self.severity.value,
            "status": self.status.value,
            "finding": self.finding,
            "fix": self.fix,
        }


@dataclass(frozen=True, slots=True)
class Report:
    env: str
    at: float
    findings: tuple[Finding, ...]

    @property
    def exit_code(self) -> int:
        statuses = {f.status for f in self.findings}
        return 2 if Status.FAIL in statuses else 1 if Status.WARN in statuses else 0

    @property
    def blocking(self) -> list[Finding]:
        """Failures of critical checks: what stops a production start."""
        return [
            f for f in self.findings if f.status is Status.FAIL and f.severity is Severity.CRITICAL
        ]

    @property
    def not_passing(self) -> list[Finding]:
        return [f for f in self.findings if f.status is not Status.PASS]

    def get(self, check_id: str) -> Finding:
        for finding in self.findings:
            if finding.id == check_id:
                return finding
        raise KeyError(check_id)

    def counts(self) -> dict[str, int]:
        return {s.value: sum(f.status is s for f in self.findings) for s in Status}

    def as_dict(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "at": self.at,
            "exit_code": self.exit_code,
            "counts": self.counts(),
            "findings": [f.as_dict() for f in self.findings],
        }

    def render(self) -> str:
        """An aligned table: status, severity, id, finding; the fix under each non-pass."""
        id_width = max((len(f.id) for f in self.findings), default=2)
        lines = [f"{'STATUS':<6}  {'SEVERITY':<8}  {'CHECK':<{id_width}}  FINDING"]
        for f in self.findings:
            lines.append(
                f"{f.status.value.upper():<6}  {f.severity.value:<8}  {f.id:<{id_width}}  "
                f"{f.finding}"
            )
            if f.status is not Status.PASS:
                lines.append(f"{'':<6}  {'':<8}  {'':<{id_width}}  fix: {f.fix}")
        counts = self.counts()
        lines.append("")
        lines.append(
            f"{len(self.findings)} checks ({self.env}): {counts['pass']} pass, "
            f"{counts['warn']} warn, {counts['fail']} fail"
        )
        return "\n".join(lines)
