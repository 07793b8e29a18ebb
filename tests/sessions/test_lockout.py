"""The lockout through ``POST /auth/login`` on both stores: failures from one network lock the
account for that network only; failures from several networks throttle every network with a
growing ``Retry-After``; lockouts are metered and audited (account name, hashed address)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.operators import routes as auth_routes
from gateway.records.base import Role
from gateway.services import open_auditor
from metrics.registry import REGISTRY
from tests.records.backends import BACKENDS
from tests.sessions.harness import PASSWORD, Gw, running

ATTACKER, OWNER = "198.51.100.7", "2001:db8:1:2::10"


@pytest.fixture(params=BACKENDS)
async def gw(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Gw]:
    monkeypatch.setattr(auth_routes, "FAILED_LOGIN_FLOOR_S", 0.0)
    async with running(tmp_path, store_kind=str(request.param)) as gw:
        await gw.user("ada", Role.ADMIN)
        gw.auth.auditor = open_auditor(gw.settings, gw.store)
        yield gw


def lockouts(scope: str) -> float:
    return REGISTRY.get_sample_value("voicegw_login_lockouts_total", {"scope": scope}) or 0.0


async def fail(gw: Gw, address: str, times: int, name: str = "ada") -> None:
    async with gw.client(address) as client:
        for _ in range(times):
            assert (await gw.login(client, name, "wrong password!")).status_code == 401


async def login(gw: Gw, address: str) -> int:
    async with gw.client(address) as client:
        return (await gw.login(client, "ada")).status_code


async def test_an_attacker_locks_the_account_only_for_their_network(gw: Gw) -> None:
    before = lockouts("network")
    await fail(gw, ATTACKER, 5)
    assert await login(gw, ATTACKER) == 401  # the right password, refused from there
    assert lockouts("network") == before + 1
    assert await login(gw, OWNER) == 200  # the owner, elsewhere, is not locked out
    # Hammering the lock counts nothing more: the owner is still not slowed down.
    await fail(gw, ATTACKER, 10)
    assert await gw.store.count_login_failures("ada", 0) == 5
    assert lockouts("network") == before + 1
    assert await login(gw, OWNER) == 200


async def test_failures_from_several_networks_throttle_every_network(gw: Gw) -> None:
    # The guard's clock stands still: the throttle (1 s after the latest failure) must not run
    # out while a busy machine gets to the next request.
    now = time.time()
    gw.auth.guard._clock = lambda: now
    before = lockouts("account")
    await fail(gw, ATTACKER, 5)
    await fail(gw, "203.0.113.9", 1)
    assert lockouts("account") == before + 1
    async with gw.client(OWNER) as owner:
        throttled = await gw.login(owner, "ada")
        assert throttled.status_code == 429
        assert throttled.json() == {"error": "too many failed logins"}
        assert int(throttled.headers["retry-after"]) >= 1
        assert "set-cookie" not in throttled.headers
    # Unknown names are throttled alike: the answer says nothing about who exists.
    await fail(gw, ATTACKER, 5, name="ghost")
    await fail(gw, "203.0.113.9", 1, name="ghost")
    async with gw.client(OWNER) as owner:
        assert (await gw.login(owner, "ghost", "x")).status_code == 429
    # Refused attempts are not counted; once the delay has passed the owner gets in.
    assert await gw.store.count_login_failures("ada", 0) == 6
    gw.auth.guard._clock = lambda: now + gw.auth.config.lockout.throttle_base_s
    assert await login(gw, OWNER) == 200


async def test_lockouts_are_audited_with_the_account_and_a_hashed_address(gw: Gw) -> None:
    await fail(gw, ATTACKER, 5)
    await fail(gw, "203.0.113.9", 1)
    events = [e for e in await gw.store.iter_audit(0, 1000) if e.action == "auth.lockout"]
    assert [(e.outcome, e.actor, e.entity_type, e.entity_id) for e in events] == [
        ("denied", "ada", "user", "ada"),
        ("denied", "ada", "user", "ada"),
    ]
    assert [e.detail["scope"] for e in events] == ["network", "account"]
    assert events[0].ip_hash and events[0].ip_hash != events[1].ip_hash
    trail = repr(await gw.store.iter_audit(0, 1000))
    for secret in (ATTACKER, "203.0.113.9", "wrong password!", PASSWORD):
        assert secret not in trail


async def test_the_owner_unlocks_by_logging_in_from_their_network_or_an_admin_unlocks(
    gw: Gw,
) -> None:
    from gateway.cli.admin import unlock_user

    await fail(gw, OWNER, 5)
    assert await login(gw, OWNER) == 401
    user, cleared = await unlock_user(gw.store, "ada")
    assert (user.username, cleared) == ("ada", 5)
    assert await login(gw, OWNER) == 200
