"""Account lockout after repeated failed logins.

``LoginGuard`` counts failures per user name in a rolling window (5 in 15 minutes by default)
in a ``FailureLog`` (the durable store), and says when an account is locked. It treats every
name alike, whether or not such a user exists, so its answers reveal nothing about which
accounts exist; the login route answers a locked account exactly as a wrong password.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final, Protocol

from security.replay import Clock

DEFAULT_FAILURES: Final = 5
DEFAULT_WINDOW_S: Final = 15 * 60
MAX_NAME_LEN: Final = 64


class FailureLog(Protocol):
    async def add_login_failure(self, username: str, at: float) -> None: ...
    async def count_login_failures(self, username: str, since: float) -> int: ...
    async def clear_login_failures(self, username: str) -> None: ...


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    failures: int = DEFAULT_FAILURES
    window_s: float = DEFAULT_WINDOW_S


class LoginGuard:
    """Locks a name after ``policy.failures`` failures within ``policy.window_s``."""

    __slots__ = ("_clock", "_log", "policy")

    def __init__(
        self, log: FailureLog, policy: LockoutPolicy | None = None, *, clock: Clock = time.time
    ) -> None:
        self._log = log
        self.policy = policy or LockoutPolicy()
        self._clock = clock

    async def locked(self, username: str) -> bool:
        since = self._clock() - self.policy.window_s
        count = await self._log.count_login_failures(_norm(username), since)
        return count >= self.policy.failures

    async def failed(self, username: str) -> None:
        await self._log.add_login_failure(_norm(username), self._clock())

    async def succeeded(self, username: str) -> None:
        await self._log.clear_login_failures(_norm(username))


def _norm(username: str) -> str:
    return username[:MAX_NAME_LEN]
