"""The security review at start-up, in production: critical failures refuse the start, the
rest is logged once.

``check_start(runtime)`` runs the same checks as ``voicegw security review`` over the runtime
that is starting. A failure of a critical check raises ``StartRefused`` (a ``SettingsError``),
whose message names each check, what it found and the setting or command that fixes it, like
the settings' own refusals. Log lines carry check ids, settings names and public key ids only.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gateway.review.checks import review
from gateway.review.facts import runtime_facts
from gateway.review.model import Finding, Report
from gateway.settings import SettingsError

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = logging.getLogger("voicegw.review")


class StartRefused(SettingsError):
    """The security review found a critical failure; the message says which and how to fix."""


def refusal(blocking: list[Finding]) -> str:
    lines = [f"{f.id}: {f.finding}; fix: {f.fix}" for f in blocking]
    return "security review refused the start:\n  - " + "\n  - ".join(lines)


async def check_start(runtime: Runtime) -> Report:
    """Review ``runtime``; log every warning and failure once; raise ``StartRefused`` when a
    critical check fails."""
    report = review(runtime.settings, await runtime_facts(runtime))
    for f in report.not_passing:
        log.log(
            logging.ERROR if f in report.blocking else logging.WARNING,
            "security review finding",
            extra={
                "check": f.id,
                "status": f.status.value,
                "severity": f.severity.value,
                "finding": f.finding,
                "fix": f.fix,
            },
        )
    if report.blocking:
        raise StartRefused(refusal(report.blocking))
    return report
