"""When an event is tried again, and what an answer means. Pure: takes ``now``, no I/O.

Answers (redirects are never followed):

``2xx``            delivered
``410 Gone``       the receiver refuses this event for good: dead at once (``voicegw events
                   retry`` sends it again once the receiver wants it)
anything else      tried again with back-off: 3xx, other 4xx (a receiver misconfigured or
                   mid-rotation is fixed by its operator), 5xx, timeouts, transport errors

Back-off doubles from ``first_delay_s`` up to ``max_delay_s`` until ``give_up_after_s`` after
the event was created (or revived), when a last attempt is made; after it the event is dead.
The endpoint's breaker counts 5xx, timeouts and transport errors as failures; any other answer
is the endpoint answering.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_RETRY", "RetryPolicy", "Verdict", "endpoint_failed", "verdict"]


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    GIVE_UP = "give_up"


def verdict(status: int) -> Verdict:
    """What the HTTP ``status`` of an attempt means for the event."""
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if status == 410:
        return Verdict.GIVE_UP
    return Verdict.RETRY


def endpoint_failed(status: int) -> bool:
    """Whether ``status`` counts against the endpoint's breaker (it says the endpoint is down)."""
    return status >= 500


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential back-off: ``first_delay_s`` after the first failed attempt, doubling, at
    most ``max_delay_s``; given up ``give_up_after_s`` after creation."""

    first_delay_s: float = 1.0
    max_delay_s: float = 3600.0
    give_up_after_s: float = 24 * 3600.0

    def __post_init__(self) -> None:
        if not 0 < self.first_delay_s <= self.max_delay_s:
            raise ValueError("retry policy: 0 < first_delay_s <= max_delay_s")
        if not self.give_up_after_s > 0:
            raise ValueError("retry policy: give_up_after_s must be positive")

    def delay(self, attempts: int) -> float:
        """The wait after ``attempts`` failed attempts (1: the first)."""
        exponent = min(max(attempts - 1, 0), 64)
        return min(self.max_delay_s, self.first_delay_s * 2.0**exponent)

    def next_attempt(self, attempts: int, now: float, give_up_at: float) -> float | None:
        """When to try again after ``attempts`` failed attempts, or None: give up (the
        deadline has passed). The last attempt is made at the deadline itself."""
        if now >= give_up_at:
            return None
        return min(now + self.delay(attempts), give_up_at)

    def give_up_at(self, start: float) -> float:
        """The deadline of an event created (or revived) at ``start``."""
        return start + self.give_up_after_s


DEFAULT_RETRY: Final = RetryPolicy()
"""1 s, 2 s, 4 s ... at most 1 h apart, for 24 h."""
