"""The checks of the security review, in the order they are reported, and ``review``.

Each area module (``transport``, ``keys``, ``state``, ``data``, ``agents``, ``egress``)
registers its checks with a stable dotted id, the severity of the risk it looks for, and the
setting or command that fixes it. Findings name settings and public key ids only: never a
secret, never personal data.
"""

from __future__ import annotations

from typing import Final

from gateway.review.checks import agents, data, egress, keys, state, transport
from gateway.review.checks.base import Check, Outcome, run
from gateway.review.facts import Facts
from gateway.review.model import Report
from gateway.settings import Settings

__all__ = ["CHECKS", "Check", "Outcome", "review"]

CHECKS: Final[tuple[Check, ...]] = (
    *transport.CHECKS,
    *keys.CHECKS,
    *state.CHECKS,
    *data.CHECKS,
    *agents.CHECKS,
    *egress.CHECKS,
)


def review(settings: Settings, facts: Facts) -> Report:
    """Every check over ``settings`` and ``facts``, in report order."""
    return run(CHECKS, settings, facts)
