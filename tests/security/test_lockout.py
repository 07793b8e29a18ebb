"""``security.lockout.LoginGuard`` on the real store of both backends: the account is locked per
client network, throttled progressively across networks, and never by a network hammering
its own lock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.records.sql import SqlStore
from security.lockout import Lockout, LockoutPolicy, LoginGuard
from tests.records.backends import BACKENDS, Backend, open_backend

NOW = 1_700_000_000.0
ATTACKER, OWNER = "198.51.100.7/32", "2001:db8:1:2::/64"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=BACKENDS)
async def pair(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Backend, SqlStore]]:
    async with open_backend(str(request.param), tmp_path) as pair:
        yield pair


@pytest.fixture
def store(pair: tuple[Backend, SqlStore]) -> SqlStore:
    return pair[1]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def guard(store: SqlStore, clock: Clock) -> LoginGuard:
    policy = LockoutPolicy(5, 900, throttle_base_s=2, throttle_max_s=60)
    return LoginGuard(store, policy, clock=clock)


async def fail(guard: LoginGuard, clock: Clock, network: str, times: int) -> list[Lockout]:
    crossed: list[Lockout] = []
    for _ in range(times):
        clock.now += 1
        crossed += await guard.failed("ada", network)
    return crossed


async def test_five_failures_lock_the_account_for_that_network_only(
    guard: LoginGuard, clock: Clock
) -> None:
    assert await fail(guard, clock, ATTACKER, 4) == []
    assert not (await guard.check("ada", ATTACKER)).locked
    assert await fail(guard, clock, ATTACKER, 1) == [Lockout.NETWORK]
    assert (await guard.check("ada", ATTACKER)).locked
    owner = await guard.check("ada", OWNER)
    assert not owner.locked and owner.retry_after_s == 0  # one network never throttles
    assert not (await guard.check("bob", ATTACKER)).locked
    clock.now += 900  # the window rolls past the oldest failures
    assert not (await guard.check("ada", ATTACKER)).locked


async def test_failures_from_several_networks_throttle_progressively(
    guard: LoginGuard, clock: Clock
) -> None:
    await fail(guard, clock, ATTACKER, 5)
    assert await fail(guard, clock, "203.0.113.1/32", 1) == [Lockout.ACCOUNT]
    verdict = await guard.check("ada", OWNER)
    assert not verdict.locked and verdict.retry_after_s == 2  # base, from the latest failure
    clock.now += 2
    assert (await guard.check("ada", OWNER)).retry_after_s == 0
    delays = []
    for i in range(2, 9):
        await fail(guard, clock, f"203.0.113.{i}/32", 1)
        delays.append((await guard.check("ada", OWNER)).retry_after_s)
    assert delays == [4, 8, 16, 32, 60, 60, 60]  # doubling, capped


async def test_a_network_counts_at_most_the_threshold_toward_the_account(
    guard: LoginGuard, clock: Clock, store: SqlStore
) -> None:
    # Rows beyond five from one network (concurrent attempts racing the check) do not add up
    # to an account-wide throttle.
    for _ in range(12):
        clock.now += 1
        await store.add_login_failure("ada", clock.now, "same-tag")
    counts = await store.login_failure_counts("ada", "same-tag", NOW, 5)
    assert (counts.network, counts.account, counts.latest_at) == (12, 5, clock.now)
    assert (await guard.check("ada", OWNER)).retry_after_s == 0


async def test_success_clears_its_own_network_and_unlock_clears_all(
    guard: LoginGuard, clock: Clock, store: SqlStore
) -> None:
    await fail(guard, clock, ATTACKER, 5)
    await fail(guard, clock, OWNER, 3)
    await guard.succeeded("ada", OWNER)
    assert await store.count_login_failures("ada", 0) == 5
    assert (await guard.check("ada", ATTACKER)).locked
    assert await guard.unlock("ada") == 5
    assert not (await guard.check("ada", ATTACKER)).locked
    assert await store.count_login_failures("ada", 0) == 0


async def test_networks_are_not_stored_in_clear(
    guard: LoginGuard, clock: Clock, pair: tuple[Backend, SqlStore]
) -> None:
    await fail(guard, clock, ATTACKER, 1)
    await guard.failed("bob", ATTACKER)
    rows = await pair[0].raw("SELECT username, network FROM login_failures ORDER BY username")
    (ada, bob) = [str(network) for _, network in rows]
    assert ATTACKER.split("/")[0] not in ada + bob
    assert len(ada) == 32 and ada != bob  # a hash salted with the account name


class Together:
    """The store, with each failure's write held until ``n`` writes are in: the failures land
    together and every guard counts after all of them (as on several replicas at once)."""

    def __init__(self, store: SqlStore, n: int) -> None:
        self.store = store
        self.n = n
        self.written = 0
        self.all_in = asyncio.Event()

    async def add_login_failure(self, username: str, at: float, network: str = "") -> None:
        await self.store.add_login_failure(username, at, network)
        self.written += 1
        if self.written == self.n:
            self.all_in.set()
        await self.all_in.wait()

    async def login_failure_counts(self, username: str, network: str, since: float, cap: int):
        return await self.store.login_failure_counts(username, network, since, cap)

    async def clear_login_failures(self, username: str, network: str | None = None) -> int:
        return await self.store.clear_login_failures(username, network)


async def test_failures_landing_together_still_report_the_lock(store: SqlStore, clock: Clock):
    policy = LockoutPolicy(5, 900, throttle_base_s=2, throttle_max_s=60)
    guard = LoginGuard(store, policy, clock=clock)
    assert await fail(guard, clock, ATTACKER, 4) == []
    together = LoginGuard(Together(store, 2), policy, clock=clock)
    # The 5th and 6th failures land at once: each guard counts 6, neither sees exactly 5.
    crossed = await asyncio.gather(
        together.failed("ada", ATTACKER), together.failed("ada", ATTACKER)
    )
    assert Lockout.NETWORK in crossed[0] + crossed[1]
    assert (await guard.check("ada", ATTACKER)).locked
