"""Circuit breakers for every outside dependency, with state shared by replicas: the policy
state machine, its in-process and Redis backends, the registry. Imports ``providers.exceptions``,
``security`` and ``metrics`` only."""

from providers.breakers.base import (
    BreakerOpen,
    BreakerSnapshot,
    CircuitBreaker,
    Trial,
    safe_error_name,
)
from providers.breakers.policy import DEFAULT_POLICY, BreakerPolicy, BreakerState
from providers.breakers.registry import BreakerRegistry
from providers.breakers.state import InProcessBreaker, RedisBreaker

__all__ = [
    "DEFAULT_POLICY",
    "BreakerOpen",
    "BreakerPolicy",
    "BreakerRegistry",
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "InProcessBreaker",
    "RedisBreaker",
    "Trial",
    "safe_error_name",
]
