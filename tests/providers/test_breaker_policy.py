"""The breaker state machine on its own: no clock, no backend, ``now`` passed in."""

from __future__ import annotations

from providers.breakers.policy import BreakerMachine, BreakerPolicy, BreakerState

POLICY = BreakerPolicy(
    failure_threshold=2, open_s=10.0, half_open_max_trials=1, success_threshold=1, trial_ttl_s=5.0
)


def test_opens_half_opens_and_closes_at_the_times_the_policy_gives() -> None:
    machine = BreakerMachine(POLICY)
    machine.apply("failure", "ConnectError", 0.0)
    assert machine.state is BreakerState.CLOSED
    machine.apply("failure", "ConnectError", 1.0)
    assert machine.state is BreakerState.OPEN
    refused = machine.admit(5.0)
    assert not refused.admitted
    assert refused.retry_after_s == 6.0
    trial = machine.admit(11.0)
    assert trial.admitted
    assert machine.state is BreakerState.HALF_OPEN
    assert not machine.allows(11.0)  # the one trial slot is taken
    machine.apply("success", "", 12.0, epoch=trial.epoch, slot=trial.slot)
    assert machine.state is BreakerState.CLOSED
    assert machine.failures == 0


def test_an_abandoned_slot_frees_itself_and_a_stale_outcome_does_not_count() -> None:
    machine = BreakerMachine(POLICY)
    before = machine.admit(0.0)  # admitted while closed, in epoch 0
    machine.apply("failure", "E", 1.0)
    machine.apply("failure", "E", 2.0)
    assert machine.state is BreakerState.OPEN
    held = machine.admit(12.0)
    assert held.admitted
    assert not machine.admit(13.0).admitted
    assert machine.admit(17.0).admitted  # the first slot outlived trial_ttl_s
    machine.apply("success", "", 18.0, epoch=before.epoch, slot=before.slot)
    assert machine.state is BreakerState.HALF_OPEN  # admitted before it opened: not counted
