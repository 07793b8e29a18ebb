from __future__ import annotations

import asyncio
import hashlib

import pytest
import redis.asyncio as aioredis

from security import streamtokens
from security.exceptions import StateUnavailable
from security.streamtokens import InProcessStreamTokens, RedisStreamTokens
from tests.conftest import UNIT
from tests.security.conftest import FakeClock


async def test_token_is_single_use(make_tokens):
    tokens = make_tokens()
    token = await tokens.mint("CA123")
    assert len(token) == 43
    assert await tokens.consume(token, "CA123")
    assert not await tokens.consume(token, "CA123")


async def test_tokens_are_unique(make_tokens):
    tokens = make_tokens()
    minted = {await tokens.mint("CA123") for _ in range(50)}
    assert len(minted) == 50


async def test_token_is_bound_to_its_call(make_tokens):
    tokens = make_tokens()
    token = await tokens.mint("CA123")
    assert not await tokens.consume(token, "CA999")
    # Presenting it for the wrong call spent it.
    assert not await tokens.consume(token, "CA123")


async def test_concurrent_consumers_one_winner(make_tokens):
    tokens = make_tokens()
    token = await tokens.mint("CA123")
    results = await asyncio.gather(*(tokens.consume(token, "CA123") for _ in range(10)))
    assert results.count(True) == 1


@pytest.mark.parametrize(
    "token",
    ["", "short", "x" * 42, "x" * 44, "a" * 42 + "=", "a" * 42 + "\u00e9", "a" * 42 + " "],
)
async def test_malformed_tokens_are_refused(make_tokens, token):
    tokens = make_tokens()
    assert not await tokens.consume(token, "CA123")


async def test_unknown_token_is_refused(make_tokens):
    tokens = make_tokens()
    await tokens.mint("CA123")
    assert not await tokens.consume("A" * 43, "CA123")


async def test_redis_token_expires(redis_client, redis_prefix):
    tokens = RedisStreamTokens(redis_client, redis_prefix)
    token = await tokens.mint("CA123", ttl_s=1)
    await asyncio.sleep(1 + 0.5 * UNIT)
    assert not await tokens.consume(token, "CA123")


async def test_in_process_token_expires():
    clock = FakeClock()
    tokens = InProcessStreamTokens(clock=clock)
    token = await tokens.mint("CA123", ttl_s=120)
    clock.advance(120)
    assert not await tokens.consume(token, "CA123")


async def test_in_process_is_bounded():
    tokens = InProcessStreamTokens(max_tokens=2)
    first = await tokens.mint("a")
    second = await tokens.mint("b")
    third = await tokens.mint("c")
    assert not await tokens.consume(first, "a")
    assert await tokens.consume(second, "b")
    assert await tokens.consume(third, "c")


async def test_redis_stores_hashes_only(redis_client, redis_prefix):
    tokens = RedisStreamTokens(redis_client, redis_prefix)
    token = await tokens.mint("CA123", ttl_s=60)
    keys = [key async for key in redis_client.scan_iter(match=f"{redis_prefix}*")]
    assert keys == [
        f"{redis_prefix}streamtoken:{hashlib.sha256(token.encode()).hexdigest()}".encode()
    ]
    value = await redis_client.get(keys[0])
    assert token.encode() not in keys[0] + value
    assert b"CA123" not in value
    assert 0 < await redis_client.ttl(keys[0]) <= 60
    await redis_client.delete(*keys)


async def test_redis_down_fails_closed(dead_redis, redis_prefix):
    tokens = RedisStreamTokens(dead_redis, redis_prefix, timeout_s=2 * UNIT)
    with pytest.raises(StateUnavailable):
        await tokens.mint("CA123")
    with pytest.raises(StateUnavailable):
        await tokens.consume("A" * 43, "CA123")


async def test_redis_client_decoding_responses_still_works(redis_url, redis_prefix):
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        tokens = RedisStreamTokens(client, redis_prefix)
        token = await tokens.mint("CA123")
        assert await tokens.consume(token, "CA123")
    finally:
        await client.aclose()


async def test_redis_refuses_a_colliding_token(redis_client, redis_prefix, monkeypatch):
    monkeypatch.setattr(streamtokens.secrets, "token_urlsafe", lambda size: "B" * 43)
    tokens = RedisStreamTokens(redis_client, redis_prefix)
    await tokens.mint("CA123")
    with pytest.raises(StateUnavailable):
        await tokens.mint("CA999")
    assert await tokens.consume("B" * 43, "CA123")
