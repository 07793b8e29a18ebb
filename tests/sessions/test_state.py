"""Refresh-token families and the revocation list, on both backends (Redis is the real server)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from security.exceptions import StateUnavailable
from security.refresh import (
    InProcessRefreshFamilies,
    Outcome,
    RedisRefreshFamilies,
    RefreshFamilies,
)
from security.revocation import (
    InProcessRevocationList,
    RedisRevocationList,
    RevocationList,
    jti_key,
    sid_key,
)
from tests.conftest import FakeClock

DAY = 86400


@pytest.fixture
def clock() -> FakeClock:
    import time

    return FakeClock(time.time())


@pytest.fixture
def families(
    state_redis: aioredis.Redis | None, redis_prefix: str, clock: FakeClock
) -> RefreshFamilies:
    if state_redis is None:
        return InProcessRefreshFamilies(clock=clock)
    return RedisRefreshFamilies(state_redis, redis_prefix, clock=clock)


@pytest.fixture
def revocations(state_redis: aioredis.Redis | None, redis_prefix: str) -> RevocationList:
    if state_redis is None:
        return InProcessRevocationList()
    return RedisRevocationList(state_redis, redis_prefix + "revoked:")


# -- refresh families --------------------------------------------------------------------------


async def test_rotation_replaces_the_token(families: RefreshFamilies) -> None:
    token, family = await families.create("ada", 30 * DAY)
    assert token.startswith(family.family_id + ".")
    first = await families.rotate(token)
    assert first.outcome is Outcome.ROTATED and first.token and first.token != token
    assert first.family == family
    second = await families.rotate(first.token)
    assert second.outcome is Outcome.ROTATED and second.family == family
    assert await families.get(family.family_id) == family


async def test_reuse_revokes_the_whole_family(families: RefreshFamilies) -> None:
    token, family = await families.create("ada", 30 * DAY)
    rotated = await families.rotate(token)
    assert rotated.token is not None
    # The old token comes back (stolen copy, or the legitimate client after a thief used it).
    reuse = await families.rotate(token)
    assert reuse.outcome is Outcome.REUSED and reuse.family == family
    assert await families.get(family.family_id) is None
    # Every token of the family is dead now, the newest included.
    assert (await families.rotate(rotated.token)).outcome is Outcome.INVALID
    assert (await families.rotate(token)).outcome is Outcome.INVALID


async def test_concurrent_rotations_of_one_token_are_atomic(families: RefreshFamilies) -> None:
    token, family = await families.create("ada", 30 * DAY)
    results = await asyncio.gather(*(families.rotate(token) for _ in range(25)))
    outcomes = [r.outcome for r in results]
    assert outcomes.count(Outcome.ROTATED) == 1
    assert Outcome.REUSED in outcomes
    winner = next(r for r in results if r.outcome is Outcome.ROTATED)
    assert winner.token is not None
    assert await families.get(family.family_id) is None
    assert (await families.rotate(winner.token)).outcome is Outcome.INVALID


async def test_concurrent_rotations_across_clients(
    redis_url: str, redis_prefix: str, clock: FakeClock, redis_clean: aioredis.Redis
) -> None:
    """Replicas (separate connections to the real Redis; they share state only there) racing
    the same token: one wins, reuse is caught."""
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(4)]
    try:
        replicas = [RedisRefreshFamilies(c, redis_prefix, clock=clock) for c in clients]
        token, family = await replicas[0].create("ada", 30 * DAY)
        results = await asyncio.gather(*(r.rotate(token) for r in replicas for _ in range(5)))
        assert [r.outcome for r in results].count(Outcome.ROTATED) == 1
        assert await replicas[3].get(family.family_id) is None
    finally:
        for c in clients:
            await c.aclose()


async def test_absolute_lifetime_is_never_extended(
    families: RefreshFamilies, clock: FakeClock
) -> None:
    token, family = await families.create("ada", 30 * DAY)
    for _ in range(3):
        clock.now += 10 * DAY - 1
        result = await families.rotate(token)
        assert result.outcome is Outcome.ROTATED and result.token is not None
        assert result.family is not None and result.family.expires_at == family.expires_at
        token = result.token
    clock.now = family.expires_at + 1
    assert (await families.rotate(token)).outcome is Outcome.INVALID
    assert await families.get(family.family_id) is None


@pytest.mark.parametrize(
    "token", ["", "x", "a.b.c", "no-dot", ".", "fam.", ".secret", "a" * 300, "fa m.sec", "é.x"]
)
async def test_malformed_tokens_are_invalid(families: RefreshFamilies, token: str) -> None:
    assert (await families.rotate(token)).outcome is Outcome.INVALID


async def test_guessed_secret_does_not_revoke_the_family(families: RefreshFamilies) -> None:
    _, family = await families.create("ada", 30 * DAY)
    result = await families.rotate(f"{family.family_id}.{'A' * 43}")
    assert result.outcome is Outcome.INVALID
    assert await families.get(family.family_id) == family


async def test_revoke_and_revoke_user(families: RefreshFamilies) -> None:
    a1, fa1 = await families.create("ada", DAY)
    a2, fa2 = await families.create("ada", DAY)
    b1, _ = await families.create("bob", DAY)
    assert await families.revoke(fa1.family_id) == fa1
    assert await families.revoke(fa1.family_id) is None  # already revoked
    assert (await families.rotate(a1)).outcome is Outcome.INVALID
    revoked = await families.revoke_user("ada")
    assert [f.family_id for f in revoked] == [fa2.family_id]
    assert (await families.rotate(a2)).outcome is Outcome.INVALID
    assert (await families.rotate(b1)).outcome is Outcome.ROTATED


async def test_live_sessions_are_counted(
    families: RefreshFamilies,
    clock: FakeClock,
    state_redis: aioredis.Redis | None,
    redis_prefix: str,
) -> None:
    assert await families.count_live() == 0
    _, fa1 = await families.create("ada", DAY)
    await families.create("ada", 2 * DAY)  # expires after two days
    b1, _ = await families.create("bob", 3 * DAY)
    assert await families.count_live() == 3
    rotated = await families.rotate(b1)  # a rotation is the same session
    assert rotated.token is not None and await families.count_live() == 3
    assert (await families.rotate(b1)).outcome is Outcome.REUSED  # the family is revoked
    assert await families.count_live() == 2
    await families.revoke(fa1.family_id)
    assert await families.count_live() == 1
    clock.now += 2 * DAY + 1  # fa2 has expired
    assert await families.count_live() == 0
    if state_redis is not None:  # another replica (another client) counts the same
        other = RedisRefreshFamilies(state_redis, redis_prefix, clock=clock)
        await families.create("cy", DAY)
        assert await other.count_live() == 1


async def test_the_gauge_follows_the_count(families: RefreshFamilies) -> None:
    from metrics.registry import REGISTRY
    from security.refresh import gauge_live_sessions

    def gauge() -> float | None:
        return REGISTRY.get_sample_value("voicegw_sessions_active")

    await families.create("ada", DAY)
    await families.create("bob", DAY)
    task = asyncio.create_task(gauge_live_sessions(families, every_s=0.01))
    try:
        for _ in range(200):
            if gauge() == 2:
                break
            await asyncio.sleep(0.01)
        assert gauge() == 2
        await families.revoke_user("ada")
        for _ in range(200):
            if gauge() == 1:
                break
            await asyncio.sleep(0.01)
        assert gauge() == 1
    finally:
        task.cancel()


async def test_redis_stores_only_hashes_with_ttl(
    redis_clean: aioredis.Redis, redis_prefix: str, clock: FakeClock
) -> None:
    families = RedisRefreshFamilies(redis_clean, redis_prefix, clock=clock)
    token, family = await families.create("ada", 3600)
    secret = token.split(".")[1]
    keys = [k async for k in redis_clean.scan_iter(match=redis_prefix + "*")]
    for key in keys:
        ttl = await redis_clean.ttl(key)
        assert 3500 < ttl <= 3601, key
        dump = await redis_clean.dump(key)
        assert dump is not None and secret.encode() not in dump
    await families.rotate(token)
    used = f"{redis_prefix}rt:{{{family.family_id}}}:used".encode()
    assert 3500 < await redis_clean.ttl(used) <= 3601


async def test_redis_failure_is_reported(redis_prefix: str) -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    try:
        families = RedisRefreshFamilies(dead, redis_prefix)
        with pytest.raises(StateUnavailable):
            await families.create("ada", DAY)
        with pytest.raises(StateUnavailable):
            await families.rotate("fam.secret")
    finally:
        await dead.aclose()


# -- revocation list ------------------------------------------------------------------------------


async def test_revocation(revocations: RevocationList) -> None:
    assert not await revocations.is_revoked([jti_key("a"), sid_key("s")])
    await revocations.revoke(jti_key("a"), 60)
    assert await revocations.is_revoked([jti_key("a")])
    assert await revocations.is_revoked([jti_key("zz"), jti_key("a")])
    assert not await revocations.is_revoked([jti_key("b"), sid_key("a")])
    await revocations.revoke(sid_key("s"), 0)  # nothing left to refuse: no entry
    assert not await revocations.is_revoked([sid_key("s")])
    assert not await revocations.is_revoked([])


async def test_revocation_in_redis_lives_as_long_as_the_token(
    redis_clean: aioredis.Redis, redis_prefix: str, redis_url: str
) -> None:
    revocations = RedisRevocationList(redis_clean, redis_prefix)
    await revocations.revoke(jti_key("a"), 120.2)
    assert 120 <= await redis_clean.ttl(redis_prefix + "jti:a") <= 121
    await revocations.revoke(jti_key("a"), 10)  # a shorter TTL never shortens an entry
    assert await redis_clean.ttl(redis_prefix + "jti:a") >= 120
    other = aioredis.Redis.from_url(redis_url)  # another replica sees it
    try:
        # Connected first: the check's 0.25 s bound is for a round trip, not for opening a
        # connection on a busy machine.
        await other.ping()
        assert await RedisRevocationList(other, redis_prefix).is_revoked([jti_key("a")])
    finally:
        await other.aclose()


async def test_revocation_expires(revocations: RevocationList, backend: str) -> None:
    await revocations.revoke(jti_key("short"), 1)
    assert await revocations.is_revoked([jti_key("short")])
    await asyncio.sleep(2.1)
    assert not await revocations.is_revoked([jti_key("short")])


async def test_redis_down_fails_closed(redis_prefix: str) -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    try:
        revocations = RedisRevocationList(dead, redis_prefix)
        with pytest.raises(StateUnavailable):
            await revocations.is_revoked([jti_key("a")])
        with pytest.raises(StateUnavailable):
            await revocations.revoke(jti_key("a"), 60)
    finally:
        await dead.aclose()


async def test_in_process_list_never_drops_a_live_entry() -> None:
    revocations = InProcessRevocationList(max_entries=2)
    await revocations.revoke("a", 60)
    await revocations.revoke("b", 60)
    with pytest.raises(StateUnavailable):
        await revocations.revoke("c", 60)
    assert await revocations.is_revoked(["a"]) and await revocations.is_revoked(["b"])
