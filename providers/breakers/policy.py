"""The breaker policy and the state machine it drives; pure bookkeeping, no clock and no I/O.

Policy (``BreakerPolicy``, DESIGN.md principle 5): open after 5 consecutive failures; stay open
60 s; then half-open admits at most 3 concurrent trial calls; 2 consecutive successes close it;
a failure while half-open opens it for another 60 s. A success while closed resets the count.

``BreakerMachine`` holds one breaker's state and takes ``now`` (Unix seconds) in every method.
A half-open trial slot is reclaimed after ``policy.trial_ttl_s`` (30 s) even if its holder
never ends it, so a crashed caller cannot wedge a breaker half-open. An outcome is counted only
while the breaker is in the same open-epoch it was in when the trial was admitted: a call
admitted before the breaker opened cannot close or reopen it later. Outcomes outside any trial
(``epoch=None``) count against the current state.

``InProcessBreaker`` drives a ``BreakerMachine``; the Redis script in
``providers.breakers.state`` mirrors it on the Redis server. Change them together.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass
from typing import Final, Literal

Outcome = Literal["success", "failure", "release"]


class BreakerState(enum.IntEnum):
    """Breaker states; the values are those of the ``voicegw_breaker_state`` gauge."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a breaker opens, how long it stays open and how it closes again.

    ``trial_ttl_s`` bounds how long a half-open trial slot is held by a caller that never
    reports an outcome; after it the slot is free for another trial.
    """

    failure_threshold: int = 5
    open_s: float = 60.0
    half_open_max_trials: int = 3
    success_threshold: int = 2
    trial_ttl_s: float = 30.0

    def __post_init__(self) -> None:
        for field in ("failure_threshold", "half_open_max_trials", "success_threshold"):
            if getattr(self, field) < 1:
                raise ValueError(f"breaker policy: {field} must be at least 1")
        for field in ("open_s", "trial_ttl_s"):
            if not getattr(self, field) > 0:
                raise ValueError(f"breaker policy: {field} must be positive")


DEFAULT_POLICY: Final = BreakerPolicy()

NO_SLOT: Final = -1
"""The slot of a trial admitted while closed: it holds none."""


@dataclass(frozen=True, slots=True)
class Admission:
    """What ``BreakerMachine.admit`` decided: admitted with a trial ``slot`` (``NO_SLOT`` while
    closed) in open-epoch ``epoch``, or refused for ``retry_after_s`` at the least."""

    admitted: bool
    slot: int = NO_SLOT
    epoch: int = 0
    retry_after_s: float = 0.0


class BreakerMachine:
    """One breaker's state and its transitions under ``policy``."""

    __slots__ = (
        "_ids",
        "epoch",
        "failures",
        "last_failure",
        "last_success_at",
        "opened_at",
        "policy",
        "slots",
        "state",
        "successes",
    )

    def __init__(self, policy: BreakerPolicy = DEFAULT_POLICY) -> None:
        self.policy = policy
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.successes = 0
        self.opened_at = 0.0
        self.epoch = 0
        self.last_failure: str | None = None
        self.last_success_at: float | None = None
        self.slots: dict[int, float] = {}  # trial slot -> expiry
        self._ids = itertools.count()

    def advance(self, now: float) -> None:
        """Move OPEN to HALF_OPEN when the open period is over; drop expired slots."""
        if self.state is BreakerState.OPEN and now >= self.opened_at + self.policy.open_s:
            self.state = BreakerState.HALF_OPEN
            self.successes = 0
            self.slots.clear()
        if self.state is BreakerState.HALF_OPEN:
            for slot in [i for i, expiry in self.slots.items() if expiry <= now]:
                del self.slots[slot]

    def admit(self, now: float) -> Admission:
        """Admit one call (taking a trial slot while half-open) or refuse it."""
        self.advance(now)
        match self.state:
            case BreakerState.CLOSED:
                slot = NO_SLOT
            case BreakerState.OPEN:
                return Admission(False, retry_after_s=self.opened_at + self.policy.open_s - now)
            case BreakerState.HALF_OPEN:
                if len(self.slots) >= self.policy.half_open_max_trials:
                    return Admission(False, retry_after_s=min(self.slots.values()) - now)
                slot = next(self._ids)
                self.slots[slot] = now + self.policy.trial_ttl_s
        return Admission(True, slot=slot, epoch=self.epoch)

    def allows(self, now: float) -> bool:
        """Whether ``admit`` would admit a call at ``now``, without taking a slot."""
        self.advance(now)
        match self.state:
            case BreakerState.CLOSED:
                return True
            case BreakerState.OPEN:
                return False
            case BreakerState.HALF_OPEN:
                return len(self.slots) < self.policy.half_open_max_trials

    def apply(
        self,
        outcome: Outcome,
        error: str,
        now: float,
        *,
        epoch: int | None = None,
        slot: int = NO_SLOT,
    ) -> None:
        """Count ``outcome`` (``error``: a safe class name) of the trial holding ``slot``,
        admitted in ``epoch``; ``epoch=None`` is an outcome outside any trial."""
        self.slots.pop(slot, None)
        self.advance(now)
        counts = epoch is None or epoch == self.epoch
        if outcome == "success":
            self.last_success_at = now
            if counts and self.state is not BreakerState.OPEN:
                self.failures = 0
                if self.state is BreakerState.HALF_OPEN:
                    self.successes += 1
                    if self.successes >= self.policy.success_threshold:
                        self.state = BreakerState.CLOSED
                        self.successes = 0
                        self.slots.clear()
        elif outcome == "failure":
            self.last_failure = error
            if counts and self.state is not BreakerState.OPEN:
                self.failures += 1
                if (
                    self.state is BreakerState.HALF_OPEN
                    or self.failures >= self.policy.failure_threshold
                ):
                    self.state = BreakerState.OPEN
                    self.opened_at = now
                    self.successes = 0
                    self.epoch += 1
                    self.slots.clear()
