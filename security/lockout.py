"""Account lockout after repeated failed logins, made hard to turn against the account.

The compliance documents require an account to lock after ``failures`` failed logins within
``window_s`` (5 in 15 minutes by default). Counted per account alone, that lets anyone lock
anyone out: five wrong passwords, and the right one is refused. ``LoginGuard`` therefore counts
failures per account *and client network* (``security.allowlist.client_network``: the IPv4
address, or the IPv6 /64 by default), and answers two questions before a password is checked:

1. **Locked for this network.** ``failures`` failures for this account from this network within
   the window lock the account *for this network only*: the right password from there is
   refused, answered exactly as a wrong one, until the oldest of those failures leaves the
   window. Attempts refused this way are not counted again, so a network cannot keep itself
   locked, nor push the account-wide count, by hammering.
2. **Throttled everywhere.** Across networks, each counting at most ``failures`` failures, an
   account with more than ``failures`` failures in the window (guesses from more than one
   network) is slowed down: after the ``failures + k``-th failure every network waits
   ``throttle_base_s * 2 ** (k - 1)`` seconds (at most ``throttle_max_s``) from the latest
   failure before its next attempt is heard. The login route answers earlier attempts 429 with
   ``Retry-After``, before any password work; they are not counted either.

So an attacker on one network locks the account only for that network, and one who rotates
networks buys one guess per growing delay, not a lock: the owner, from their own network,
waits at most ``throttle_max_s``. A success clears the failures of the network it came from;
``unlock`` (``voicegw users unlock``) clears every failure of an account.

Every name is treated alike, whether or not such a user exists, so the answers reveal nothing
about which accounts exist. Networks are stored as a hash salted with the account name, never
as an address, and only for the window (the retention sweep removes older rows).
"""

from __future__ import annotations

import enum
import hashlib
import time
from dataclasses import dataclass
from typing import Final, Protocol

from security.replay import Clock

DEFAULT_FAILURES: Final = 5
DEFAULT_WINDOW_S: Final = 15 * 60
DEFAULT_THROTTLE_BASE_S: Final = 1.0
DEFAULT_THROTTLE_MAX_S: Final = 5 * 60.0
MAX_NAME_LEN: Final = 64


@dataclass(frozen=True, slots=True)
class FailureCounts:
    """An account's failures since some time: from one network, across all networks (each
    network counting at most the cap asked for), and the time of the latest (0 if none)."""

    network: int
    account: int
    latest_at: float


class FailureLog(Protocol):
    """Where failures are kept (the durable store, shared by replicas)."""

    async def add_login_failure(self, username: str, at: float, network: str = "") -> None: ...
    async def login_failure_counts(
        self, username: str, network: str, since: float, cap: int
    ) -> FailureCounts: ...
    async def clear_login_failures(self, username: str, network: str | None = None) -> int:
        """Remove the failures of ``username`` from ``network`` (None: from every network);
        return how many were removed."""
        ...


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    failures: int = DEFAULT_FAILURES
    window_s: float = DEFAULT_WINDOW_S
    throttle_base_s: float = DEFAULT_THROTTLE_BASE_S
    throttle_max_s: float = DEFAULT_THROTTLE_MAX_S

    def delay_s(self, account_failures: int) -> float:
        """How long after the latest failure an account with ``account_failures`` (capped
        per network) failures in the window waits before its next attempt."""
        over = account_failures - self.failures
        if over <= 0:
            return 0.0
        return min(self.throttle_max_s, self.throttle_base_s * 2.0 ** min(over - 1, 62))


@dataclass(frozen=True, slots=True)
class Verdict:
    """The guard's answer before a password is checked."""

    locked: bool  # the account is locked for this client network
    retry_after_s: float  # > 0: the account is throttled; refuse the attempt unheard


class Lockout(enum.StrEnum):
    """A threshold one failure crossed (the metric label and the audit row's scope)."""

    NETWORK = "network"  # the account is now locked for the failing client network
    ACCOUNT = "account"  # the account is now throttled for every network


class LoginGuard:
    """Per-account, per-network lockout and per-account progressive throttle (see module)."""

    __slots__ = ("_clock", "_log", "policy")

    def __init__(
        self, log: FailureLog, policy: LockoutPolicy | None = None, *, clock: Clock = time.time
    ) -> None:
        self._log = log
        self.policy = policy or LockoutPolicy()
        self._clock = clock

    async def check(self, username: str, network: str) -> Verdict:
        """Whether ``username`` is locked for ``network`` and how long it must wait."""
        counts = await self._counts(username, network)
        wait = counts.latest_at + self.policy.delay_s(counts.account) - self._clock()
        return Verdict(locked=counts.network >= self.policy.failures, retry_after_s=max(0.0, wait))

    async def failed(self, username: str, network: str) -> list[Lockout]:
        """Count a failure of ``username`` from ``network`` (an attempt the guard did not
        refuse); return the thresholds it crossed."""
        name = _norm(username)
        await self._log.add_login_failure(name, self._clock(), _network_tag(name, network))
        counts = await self._counts(username, network)
        crossed = []
        # Only attempts the lock did not refuse get here, so every one that leaves the network
        # at or past the threshold locked it: failures landing together (several replicas, one
        # burst) all report it rather than none seeing exactly the threshold.
        if counts.network >= self.policy.failures:
            crossed.append(Lockout.NETWORK)
        if counts.account == self.policy.failures + 1:
            crossed.append(Lockout.ACCOUNT)
        return crossed

    async def succeeded(self, username: str, network: str) -> None:
        """Forget the failures of ``username`` from ``network``; other networks' stay."""
        name = _norm(username)
        await self._log.clear_login_failures(name, _network_tag(name, network))

    async def unlock(self, username: str) -> int:
        """Forget every failure of ``username``; return how many there were."""
        return await self._log.clear_login_failures(_norm(username))

    async def _counts(self, username: str, network: str) -> FailureCounts:
        name = _norm(username)
        return await self._log.login_failure_counts(
            name,
            _network_tag(name, network),
            self._clock() - self.policy.window_s,
            self.policy.failures,
        )


def _norm(username: str) -> str:
    return username[:MAX_NAME_LEN]


def _network_tag(username: str, network: str) -> str:
    """What the log keeps of a client network: a hash salted with the account name."""
    digest = hashlib.sha256(f"voicegw-login-network\n{username}\n{network}".encode())
    return digest.hexdigest()[:32]
