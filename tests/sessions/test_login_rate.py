"""``POST /auth/login`` is limited per client network (an IPv4 address, an IPv6 /64 by
default), before any password is checked.

The per-name lockout stops guessing one account's password; it does not see a password spray
(a few guesses at each of many names) and every attempt costs a scrypt. A per-address limit,
shared by the replicas through Redis, caps both.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.operators.sessions import AuthConfig
from gateway.records.base import Role
from gateway.services import auth_config
from gateway.settings import Settings, SettingsError
from security.allowlist import client_network, parse_address
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


# -- the client network ----------------------------------------------------------------------


async def test_ipv6_clients_share_one_budget_per_64(gw: Gw) -> None:
    """Rotating through addresses of one /64 does not buy more attempts."""
    for i in range(LIMIT):
        async with gw.client(f"2001:db8:1:2::{i + 1:x}") as rotating:
            assert (await gw.login(rotating, f"name{i}", "guess number one")).status_code == 401
    async with gw.client("2001:db8:1:2:ffff:ffff:ffff:ffff") as same_64:
        assert (await gw.login(same_64, "ada")).status_code == 429
    async with gw.client("2001:db8:1:3::1") as next_64:
        assert (await gw.login(next_64, "ada")).status_code == 200


async def test_ipv4_clients_are_keyed_by_the_full_address(gw: Gw) -> None:
    async with gw.client("203.0.113.20") as first:
        for i in range(LIMIT):
            await gw.login(first, f"name{i}", "guess number one")
        assert (await gw.login(first, "ada")).status_code == 429
    async with gw.client("203.0.113.21") as neighbour:
        assert (await gw.login(neighbour, "ada")).status_code == 200


async def test_the_ipv6_prefix_is_configurable(
    tmp_path: Path, state_redis: aioredis.Redis | None, redis_prefix: str
) -> None:
    async with running(
        tmp_path, redis=state_redis, redis_prefix=redis_prefix, login_rate_per_minute=1,
        login_ipv6_prefix=128,
    ) as gw:  # fmt: skip
        await gw.user("ada", Role.ADMIN)
        async with gw.client("2001:db8::1") as one:
            assert (await gw.login(one, "nobody", "guess number one")).status_code == 401
            assert (await gw.login(one, "ada")).status_code == 429
        async with gw.client("2001:db8::2") as two:
            assert (await gw.login(two, "ada")).status_code == 200


@pytest.mark.parametrize("value", ["31", "129", "-1", "x"])
def test_the_ipv6_prefix_setting_is_validated(value: str, tmp_path: Path) -> None:
    env = {"VOICEGW_DATA_DIR": str(tmp_path), "VOICEGW_LOGIN_IPV6_PREFIX": value}
    with pytest.raises(SettingsError, match="VOICEGW_LOGIN_IPV6_PREFIX must be"):
        Settings.from_env(env)


def test_the_ipv6_prefix_setting_reaches_the_sessions(tmp_path: Path) -> None:
    env = {"VOICEGW_DATA_DIR": str(tmp_path)}
    assert auth_config(Settings.from_env(env)).login_ipv6_prefix == 64
    settings = Settings.from_env({**env, "VOICEGW_LOGIN_IPV6_PREFIX": "48"})
    assert auth_config(settings).login_ipv6_prefix == 48
    with pytest.raises(ValueError):
        AuthConfig(public_url="https://gw.test", login_ipv6_prefix=16)


def test_client_network() -> None:
    v4, v6 = ipaddress.ip_address("203.0.113.9"), ipaddress.ip_address("2001:db8:1:2:3:4:5:6")
    assert str(client_network(v4)) == "203.0.113.9/32"
    assert str(client_network(v6)) == "2001:db8:1:2::/64"
    assert str(client_network(v6, 48)) == "2001:db8:1::/48"
    assert str(client_network(v6, 128)) == "2001:db8:1:2:3:4:5:6/128"
    assert str(client_network(v4, 128)) == "203.0.113.9/32"  # IPv4 is never widened
    assert str(client_network(parse_address("::ffff:203.0.113.9"))) == "203.0.113.9/32"
    for bad in (31, 129):
        with pytest.raises(ValueError):
            client_network(v6, bad)
