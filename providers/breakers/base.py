"""What callers of a breaker see, whichever backend keeps its state: the ``CircuitBreaker``
interface, the ``Trial`` an admitted call ends, ``BreakerOpen`` and ``BreakerSnapshot``.

Call order: ``acquire()`` (raises ``BreakerOpen`` when refused) returns a ``Trial``; end it with
exactly one of ``succeed()``, ``fail(error)`` or ``release()`` (later calls are no-ops), or use
``async with breaker.trial() as t:``. ``record_failure`` / ``record_success`` report outcomes
outside any trial (a live session dying mid-call) and count against the current state.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Final, Protocol

from providers.breakers.policy import BreakerState, Outcome
from providers.exceptions import ProviderError

_ERROR_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,63}")


class BreakerOpen(ProviderError):
    """The breaker refused a call: it is open, or half-open with every trial slot taken.

    ``retry_after_s`` is how long until the breaker can admit a call at the earliest (the end
    of the open period, or the expiry of the oldest trial slot).
    """

    def __init__(self, name: str, retry_after_s: float) -> None:
        super().__init__(f"circuit breaker {name!r} is open")
        self.name = name
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """One breaker's state as last seen. Times are Unix seconds; ``opened_at`` is None while
    closed; ``last_failure`` is an error class name."""

    name: str
    state: BreakerState
    consecutive_failures: int
    opened_at: float | None
    last_failure: str | None
    last_success_at: float | None


class Trial:
    """One admitted call. End it with exactly one of ``succeed``, ``fail`` or ``release``;
    the first ends it and later calls are no-ops."""

    __slots__ = ("_done", "_finish")

    def __init__(self, finish: Callable[[Outcome, str], Awaitable[None]]) -> None:
        self._finish = finish
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    async def succeed(self) -> None:
        """The call worked."""
        await self._end("success", "")

    async def fail(self, error: str) -> None:
        """The call failed; ``error`` is a short class name (anything else is stored as
        ``"error"``, so a message cannot carry secrets into logs or Redis)."""
        await self._end("failure", safe_error_name(error))

    async def release(self) -> None:
        """Neither: the call was abandoned on our side (cancelled, caller hung up)."""
        await self._end("release", "")

    async def _end(self, outcome: Outcome, error: str) -> None:
        if self._done:
            return
        self._done = True
        await self._finish(outcome, error)


class CircuitBreaker(Protocol):
    """A breaker in front of one outside dependency."""

    name: str

    async def acquire(self) -> Trial:
        """Admit one call or raise ``BreakerOpen``."""
        ...

    def trial(self) -> AbstractAsyncContextManager[Trial]:
        """``acquire()`` as a context: an exception fails the trial with its class name,
        cancellation releases it, a normal exit without an explicit outcome succeeds it.

        Put the call's timeout inside the block (``async with breaker.trial():`` then
        ``async with asyncio.timeout(...)``): an ``asyncio.timeout`` around the block cancels
        it, which releases the trial instead of failing it.
        """
        ...

    async def record_failure(self, error: str) -> None:
        """Count a failure that happened outside a trial."""
        ...

    async def record_success(self) -> None:
        """Count a success that happened outside a trial."""
        ...

    async def snapshot(self) -> BreakerSnapshot: ...

    async def allows(self) -> bool:
        """Whether ``acquire()`` would admit a call now, without taking a trial slot."""
        ...


def safe_error_name(error: str) -> str:
    """``error`` if it looks like an exception class name, else ``"error"``."""
    return error if _ERROR_NAME.fullmatch(error) else "error"


@contextlib.asynccontextmanager
async def trial_scope(breaker: CircuitBreaker) -> AsyncIterator[Trial]:
    """``breaker.acquire()`` as a context; see ``CircuitBreaker.trial``."""
    trial = await breaker.acquire()
    try:
        yield trial
    except Exception as exc:
        await trial.fail(type(exc).__name__)
        raise
    except BaseException:
        # Our own cancellation (or shutdown) says nothing about the dependency.
        await trial.release()
        raise
    await trial.succeed()
