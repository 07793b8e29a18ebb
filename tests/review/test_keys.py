"""The key inventory and the key-expiry signals: ages and rotation dates from a fixed clock,
first-seen times that survive restarts (file) and are shared by replicas (real Redis), the
``voicegw_key_*`` gauges, and the running gateway exporting them without any request."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from gateway.records.base import ApiKeyRecord, Role
from gateway.review.inventory import export_key_metrics
from metrics.registry import KEY_AGE, KEY_ROTATION_DUE, REGISTRY
from security.apikeys import KeyPolicy
from security.crypto import KeyRing as DataKeyRing
from security.keyinventory import (
    FileFirstSeen,
    KeyKind,
    KeyStatus,
    RedisFirstSeen,
    build_inventory,
    fingerprint,
    signing_keys_of,
)
from security.secret import Secret
from security.signing_keys import FileKeyRing, SigningKey, rotate
from tests.conftest import UNIT
from tests.e2e.carrier import eventually
from tests.sessions.harness import running

DAY = 86400.0
NOW = 1_800_000_000.0


def gauge(name: str, kind: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"kind": kind})


def api_key(key_id: str, created_days_ago: float, **kw: float) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id, "svc", Role.OPERATOR, "0" * 64, created_at=NOW - created_days_ago * DAY, **kw
    )


async def test_inventory_and_gauges_from_a_fixed_clock(tmp_path: Path) -> None:
    data_key = secrets.token_bytes(32)
    data_keys = DataKeyRing([("k2", data_key), ("k1", secrets.token_bytes(32))])
    first_seen = FileFirstSeen(tmp_path / "first-seen.json")
    await first_seen.mark([f"data:{data_keys.fingerprint('k2')}"], NOW - 30 * DAY)
    signing = SigningKey.generate(NOW - 10 * DAY)
    inventory = await build_inventory(
        now=NOW,
        first_seen=first_seen,
        signing_keys=[signing],
        data_keys=data_keys,
        api_keys=[
            api_key("aaaaaaaaaaaa", 85),  # due in 5 days
            api_key("bbbbbbbbbbbb", 20),
            api_key("cccccccccccc", 50, revoked_at=NOW - DAY),  # refused: not listed
            api_key("dddddddddddd", 60, expires_at=NOW + 3 * DAY),  # rotated: in grace
        ],
        api_policy=KeyPolicy(),
    )
    export_key_metrics(inventory)
    assert gauge("voicegw_key_age_seconds", "signing") == 10 * DAY
    assert gauge("voicegw_key_rotation_due_seconds", "signing") == 80 * DAY
    assert gauge("voicegw_key_age_seconds", "data") == 30 * DAY
    assert gauge("voicegw_key_rotation_due_seconds", "data") == 60 * DAY
    assert gauge("voicegw_key_age_seconds", "api") == 85 * DAY  # the oldest active key
    assert gauge("voicegw_key_rotation_due_seconds", "api") == 5 * DAY
    assert gauge("voicegw_key_age_seconds", "twilio_secondary") is None

    statuses = {(e.kind, e.key_id): e.status for e in inventory.entries}
    assert statuses[KeyKind.DATA, "k1"] is KeyStatus.RETIRED  # decrypts only
    assert statuses[KeyKind.API, "dddddddddddd"] is KeyStatus.RETIRED
    assert (KeyKind.API, "cccccccccccc") not in statuses
    # The JSON form names keys by public ids only.
    text = orjson.dumps(inventory.as_dict()).decode()
    assert base64.b64encode(data_key).decode() not in text and data_key.hex() not in text


async def test_overdue_keys_and_a_secondary_token_move_the_gauges(tmp_path: Path) -> None:
    first_seen = FileFirstSeen(tmp_path / "first-seen.json")
    token = secrets.token_hex(16)
    await first_seen.mark(
        [f"twilio_secondary:{fingerprint('twilio', token.encode())}"], NOW - 9 * DAY
    )
    inventory = await build_inventory(
        now=NOW,
        first_seen=first_seen,
        signing_keys=[SigningKey.generate(NOW - 100 * DAY)],
        twilio_secondary=Secret(token),
    )
    export_key_metrics(inventory)
    assert gauge("voicegw_key_rotation_due_seconds", "signing") == -10 * DAY
    assert gauge("voicegw_key_rotation_due_seconds", "twilio_secondary") == -2 * DAY
    assert gauge("voicegw_key_age_seconds", "data") is None  # gone: no data keys this time
    assert token not in orjson.dumps(inventory.as_dict()).decode()


async def test_keys_given_as_seeds_age_from_first_seen(tmp_path: Path) -> None:
    from security.signing_keys import KeyRing, b64url

    seeds = [b64url(secrets.token_bytes(32)) for _ in range(2)]
    ring = KeyRing.from_seeds(seeds)
    first_seen = FileFirstSeen(tmp_path / "first-seen.json")
    earlier = await build_inventory(
        now=NOW, first_seen=first_seen, signing_keys=signing_keys_of(ring), token_ttl_s=DAY
    )
    later = await build_inventory(
        now=NOW + 3 * DAY,
        first_seen=first_seen,
        signing_keys=signing_keys_of(ring),
        token_ttl_s=DAY,
    )
    active = later.oldest_active(KeyKind.SIGNING)
    assert active is not None and not active.created_known
    assert active.age_s(later.now) == 3 * DAY  # counted from the first look, not restarted
    (retired,) = [e for e in later.of(KeyKind.SIGNING) if e.status is KeyStatus.RETIRED]
    assert retired.retired_at == NOW and retired.drop_after == NOW + DAY + 300
    assert earlier.entries[0].created_at == later.entries[0].created_at


async def test_a_key_file_s_retired_keys_are_listed_until_dropped(tmp_path: Path) -> None:
    path = tmp_path / "signing-keys.json"
    rotate(path, DAY, clock=lambda: NOW - 5 * DAY)
    rotate(path, DAY, clock=lambda: NOW - 4 * DAY)
    ring = FileKeyRing(path, create=False, clock=lambda: NOW)
    assert len(ring.keys()) == 1  # the ring no longer shows the expired one ...
    keys = signing_keys_of(ring)
    assert len(keys) == 2  # ... but the file still carries it, and the review says so
    inventory = await build_inventory(
        now=NOW, first_seen=FileFirstSeen(tmp_path / "fs.json"), signing_keys=keys
    )
    (retired,) = [e for e in inventory.entries if e.status is KeyStatus.RETIRED]
    assert retired.drop_after is not None and retired.drop_after < NOW


async def test_file_first_seen_keeps_the_first_time(tmp_path: Path) -> None:
    path = tmp_path / "data" / "key-first-seen.json"
    store = FileFirstSeen(path)
    assert await store.mark(["a", "b"], 100.0) == {"a": 100.0, "b": 100.0}
    assert await FileFirstSeen(path).mark(["a", "c"], 200.0) == {"a": 100.0, "c": 200.0}
    assert path.stat().st_mode & 0o777 == 0o600
    assert set(json.loads(path.read_text())) == {"a", "b", "c"}


async def test_redis_first_seen_is_shared_and_first_writer_wins(
    redis_url: str, redis_prefix: str
) -> None:
    one = aioredis.Redis.from_url(redis_url)
    two = aioredis.Redis.from_url(redis_url)
    key = redis_prefix + "keys:first-seen"
    try:
        first, second = await asyncio.gather(
            RedisFirstSeen(one, key).mark(["signing:x"], 100.0),
            RedisFirstSeen(two, key).mark(["signing:x"], 200.0),
        )
        assert first == second and first["signing:x"] in (100.0, 200.0)
        assert (await RedisFirstSeen(two, key).mark(["signing:x", "data:y"], 300.0)) == {
            "signing:x": first["signing:x"],
            "data:y": 300.0,
        }
    finally:
        await one.delete(key)
        await one.aclose()
        await two.aclose()


def test_data_key_fingerprints_follow_the_material_not_the_id() -> None:
    key = secrets.token_bytes(32)
    assert DataKeyRing([("k1", key)]).fingerprint("k1") == DataKeyRing([("zz", key)]).fingerprint(
        "zz"
    )
    assert DataKeyRing([("k1", key)]).fingerprint("k1") != DataKeyRing(
        [("k1", secrets.token_bytes(32))]
    ).fingerprint("k1")


async def test_the_running_gateway_exports_key_ages_without_a_request(tmp_path: Path) -> None:
    KEY_AGE.clear()
    KEY_ROTATION_DUE.clear()
    async with running(tmp_path):
        await eventually(
            lambda: (
                gauge("voicegw_key_rotation_due_seconds", "signing") is not None
                and gauge("voicegw_key_age_seconds", "data") is not None
            ),
            5 * UNIT,
            "key gauges exported",
        )
        due = gauge("voicegw_key_rotation_due_seconds", "signing")
        assert due is not None and 89 * DAY < due <= 90 * DAY
