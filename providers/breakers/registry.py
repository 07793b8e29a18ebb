"""``BreakerRegistry``: one breaker per outside dependency, all on one backend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from providers.breakers.base import BreakerSnapshot, CircuitBreaker
from providers.breakers.policy import DEFAULT_POLICY, BreakerPolicy
from providers.breakers.state import InProcessBreaker, RedisBreaker
from security.rediskeys import RedisClient
from security.replay import REDIS_TIMEOUT_S, Clock, Degradation


class BreakerRegistry:
    """One breaker per outside dependency, created on first ``get``. ``degradation`` is
    shared by its Redis breakers (``degraded`` while they run on their in-process fallback;
    never for in-process breakers)."""

    __slots__ = ("_breakers", "_factory", "degradation")

    def __init__(
        self,
        factory: Callable[[str], CircuitBreaker],
        degradation: Degradation | None = None,
    ) -> None:
        self._factory = factory
        self._breakers: dict[str, CircuitBreaker] = {}
        self.degradation = Degradation("breaker") if degradation is None else degradation

    @property
    def degraded(self) -> bool:
        return self.degradation.degraded

    @classmethod
    def in_process(
        cls, policy: BreakerPolicy = DEFAULT_POLICY, clock: Clock = time.time
    ) -> BreakerRegistry:
        return cls(lambda name: InProcessBreaker(name, policy, clock=clock))

    @classmethod
    def redis(
        cls,
        client: RedisClient,
        prefix: str,
        policy: BreakerPolicy = DEFAULT_POLICY,
        *,
        timeout_s: float = REDIS_TIMEOUT_S,
    ) -> BreakerRegistry:
        """Breakers in Redis; they share one ``Degradation``, so an outage logs once."""
        degradation = Degradation("breaker")
        return cls(
            lambda name: RedisBreaker(
                client, prefix, name, policy, timeout_s=timeout_s, degradation=degradation
            ),
            degradation,
        )

    def get(self, name: str) -> CircuitBreaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = self._breakers[name] = self._factory(name)
        return breaker

    def names(self) -> list[str]:
        return sorted(self._breakers)

    async def snapshots(self) -> list[BreakerSnapshot]:
        """Every breaker's snapshot, ordered by name."""
        breakers = [self._breakers[name] for name in self.names()]
        return list(await asyncio.gather(*(b.snapshot() for b in breakers)))
