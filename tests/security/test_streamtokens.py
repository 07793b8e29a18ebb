from __future__ import annotations

import asyncio
import base64
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


async def test_rebind_moves_an_unspent_token_to_another_call(make_tokens):
    tokens = make_tokens()
    token = await tokens.mint("outbound:call_1")
    # Only from the key it is bound to.
    assert not await tokens.rebind(token, "outbound:call_2", "twilio:CA1")
    assert await tokens.rebind(token, "outbound:call_1", "twilio:CA1")
    assert not await tokens.rebind(token, "outbound:call_1", "twilio:CA2")
    assert await tokens.consume(token, "twilio:CA1")
    # Spent: nothing left to move.
    assert not await tokens.rebind(token, "twilio:CA1", "twilio:CA2")
    assert not await tokens.consume(token, "twilio:CA1")


async def test_a_token_presented_before_its_rebind_is_spent(make_tokens):
    tokens = make_tokens()
    token = await tokens.mint("outbound:call_1")
    assert not await tokens.consume(token, "twilio:CA1")
    assert not await tokens.rebind(token, "outbound:call_1", "twilio:CA1")
    assert not await tokens.rebind("x" * 43, "outbound:call_1", "twilio:CA1")
    assert not await tokens.rebind("short", "outbound:call_1", "twilio:CA1")


async def test_rebind_keeps_the_expiry():
    clock = FakeClock()
    tokens = InProcessStreamTokens(clock=clock)
    token = await tokens.mint("outbound:call_1", ttl_s=10)
    clock.advance(9)
    assert await tokens.rebind(token, "outbound:call_1", "twilio:CA1")
    clock.advance(2)
    assert not await tokens.rebind(token, "twilio:CA1", "twilio:CA2")
    assert not await tokens.consume(token, "twilio:CA1")


@pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)
async def test_redis_rebind_keeps_the_ttl(shared_redis, redis_prefix):
    tokens = RedisStreamTokens(shared_redis, redis_prefix, timeout_s=2 * UNIT)
    token = await tokens.mint("outbound:call_1", ttl_s=100)
    assert await tokens.rebind(token, "outbound:call_1", "twilio:CA1")
    key = f"{redis_prefix}streamtoken:{hashlib.sha256(token.encode()).hexdigest()}"
    assert 90 < await shared_redis.ttl(key) <= 100


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
    with pytest.raises(StateUnavailable):
        await tokens.mint("CA999", delivery="d")
    assert await tokens.minted_for("d") is None  # never answers with another call's token
    assert await tokens.consume("B" * 43, "CA123")


# -- the token kept for the delivery that asked for it ----------------------------------------


async def test_a_delivery_gets_its_token_again_until_it_expires(make_tokens):
    tokens = make_tokens()
    token = await tokens.mint("twilio:CA1", 60, delivery="delivery-1")
    assert await tokens.minted_for("delivery-1") == token
    assert await tokens.minted_for("delivery-1") == token  # reading changes nothing
    assert await tokens.minted_for("delivery-2") is None
    assert await tokens.mint("twilio:CA2", 60) != token
    # Spent or not, it is the same answer: the token itself opens a stream only once.
    assert await tokens.consume(token, "twilio:CA1")
    assert await tokens.minted_for("delivery-1") == token
    assert not await tokens.consume(token, "twilio:CA1")


async def test_in_process_delivery_token_expires_with_the_token():
    clock = FakeClock()
    tokens = InProcessStreamTokens(clock=clock)
    token = await tokens.mint("twilio:CA1", 120, delivery="d")
    clock.advance(119)
    assert await tokens.minted_for("d") == token
    clock.advance(1)
    assert await tokens.minted_for("d") is None


async def test_redis_delivery_token_expires_with_the_token(redis_client, redis_prefix):
    tokens = RedisStreamTokens(redis_client, redis_prefix)
    await tokens.mint("twilio:CA1", 60, delivery="d")
    keys = [key async for key in redis_client.scan_iter(match=f"{redis_prefix}*")]
    assert len(keys) == 2
    ttls = [await redis_client.ttl(key) for key in keys]
    assert all(0 < ttl <= 60 for ttl in ttls)
    await redis_client.delete(*keys)


async def test_redis_keeps_a_deliverys_token_sealed(redis_client, redis_prefix):
    """Reading Redis yields neither the token nor the delivery key (which holds the carrier's
    signature); only presenting the delivery again does."""
    delivery = "twilio\x00https://gw.example.com/webhooks/twilio/voice\x00c2lnbmF0dXJl"
    tokens = RedisStreamTokens(redis_client, redis_prefix)
    token = await tokens.mint("twilio:CA1", 60, delivery=delivery)
    keys = [key async for key in redis_client.scan_iter(match=f"{redis_prefix}*")]
    stored = b"".join(keys) + b"".join([await redis_client.get(key) for key in keys])
    raw = base64.urlsafe_b64decode(token + "=")
    for secret in (token.encode(), raw, raw.hex().encode(), b"c2lnbmF0dXJl", b"CA1"):
        assert secret not in stored
    assert await tokens.minted_for(delivery) == token
    await redis_client.delete(*keys)


async def test_in_process_delivery_tokens_are_bounded():
    tokens = InProcessStreamTokens(max_tokens=2)
    await tokens.mint("a", delivery="da")
    second = await tokens.mint("b", delivery="db")
    third = await tokens.mint("c", delivery="dc")
    assert await tokens.minted_for("da") is None
    assert await tokens.minted_for("db") == second
    assert await tokens.minted_for("dc") == third
    assert len(tokens) == 2
