"""``POST /auth/login`` is limited per client address, before any password is checked.

The per-name lockout stops guessing one account's password; it does not see a password spray
(a few guesses at each of many names) and every attempt costs a scrypt. A per-address limit,
shared by the replicas through Redis, caps both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.store.base import Role
from tests.sessions.harness import Gw, running

LIMIT = 3


@pytest.fixture
async def gw(
    tmp_path: Path, state_redis: aioredis.Redis | None, redis_prefix: str
) -> AsyncIterator[Gw]:
    async with running(
        tmp_path, redis=state_redis, redis_prefix=redis_prefix, login_rate_per_minute=LIMIT
    ) as gw:
        await gw.user("ada", Role.ADMIN)
        yield gw


async def test_a_spray_from_one_address_is_cut_off(gw: Gw) -> None:
    async with gw.client("203.0.113.5") as spray:
        replies = [await gw.login(spray, f"name{i}", "guess number one") for i in range(LIMIT)]
        assert [r.status_code for r in replies] == [401] * LIMIT
        refused = await gw.login(spray, "ada")  # even the right password: the budget is spent
        assert refused.status_code == 429
        assert refused.json() == {"error": "too many login attempts"}
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["ratelimit-remaining"] == "0"
        assert "set-cookie" not in refused.headers
    # Another address has its own budget, and the account was never locked by the spray.
    async with gw.client("198.51.100.7") as operator:
        assert (await gw.login(operator, "ada")).status_code == 200


async def test_refused_attempts_touch_no_lockout_and_write_no_audit_event(gw: Gw) -> None:
    async with gw.client("203.0.113.6") as spray:
        for _ in range(LIMIT):
            await gw.login(spray, "ada", "wrong password!")
        events_before = await gw.store.iter_audit(0, 1000)
        failures_before = await gw.store.count_login_failures("ada", 0)
        for _ in range(20):
            assert (await gw.login(spray, "ada", "wrong password!")).status_code == 429
    assert await gw.store.count_login_failures("ada", 0) == failures_before
    assert len(await gw.store.iter_audit(0, 1000)) == len(events_before)


async def test_the_budget_is_shared_by_replicas(
    tmp_path: Path, redis_clean: aioredis.Redis, redis_prefix: str
) -> None:
    async with (
        running(
            tmp_path / "a", redis=redis_clean, redis_prefix=redis_prefix, login_rate_per_minute=2
        ) as a,
        running(
            tmp_path / "b", redis=redis_clean, redis_prefix=redis_prefix, login_rate_per_minute=2
        ) as b,
    ):
        async with a.client("203.0.113.8") as via_a, b.client("203.0.113.8") as via_b:
            assert (await a.login(via_a, "nobody", "guess number one")).status_code == 401
            assert (await b.login(via_b, "nobody", "guess number two")).status_code == 401
            assert (await a.login(via_a, "nobody", "guess number three")).status_code == 429
            assert (await b.login(via_b, "nobody", "guess number four")).status_code == 429
