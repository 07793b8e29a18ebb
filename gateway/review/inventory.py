"""The key inventory of a running gateway (``security.keyinventory`` over the runtime's keys).

``runtime_key_inventory(runtime)`` is the one call for evidence ("encryption key ages") and
for the key-age metrics; ``key_inventory(...)`` takes the parts one by one, for the command
line, which has no running ``Runtime``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from gateway.records.base import ApiKeyRecord, Store, StoreError
from gateway.settings import Settings
from metrics.registry import KEY_AGE, KEY_ROTATION_DUE, MULTIPROCESS
from security import crypto
from security.apikeys import KeyPolicy
from security.keyinventory import (
    FIRST_SEEN_FILE,
    FileFirstSeen,
    FirstSeen,
    KeyInventory,
    KeyKind,
    RedisFirstSeen,
    build_inventory,
    signing_keys_of,
)
from security.rediskeys import RedisClient
from security.signing_keys import KeyRing
from security.standard_webhooks import secret_bytes

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = logging.getLogger("voicegw.keys")

FIRST_SEEN_REDIS_KEY = "keys:first-seen"


def api_key_policy(settings: Settings) -> KeyPolicy:
    """The API-key rotation policy, as the session code applies it."""
    from gateway.services import auth_config

    return auth_config(settings).api_keys


def webhook_secrets(settings: Settings) -> dict[KeyKind, list[bytes]]:
    """The key bytes of the tool and event signing secrets, newest first, by kind."""
    return {
        kind: secret_bytes(value.get())
        for kind, value in (
            (KeyKind.TOOLS, settings.tools_secrets),
            (KeyKind.EVENTS, settings.events_secrets),
        )
        if value is not None
    }


async def key_inventory(
    settings: Settings,
    *,
    signing: KeyRing,
    data_keys: crypto.KeyRing,
    store: Store | None,
    redis: RedisClient | None,
    now: float | None = None,
) -> KeyInventory:
    """The inventory of these keys at ``now`` (default: the current time). First-seen times go
    to Redis when it is configured (shared by replicas; pods come and go), otherwise, or while
    Redis fails, to ``VOICEGW_DATA_DIR``. API keys come from ``store``; when it fails they
    are left out and the kind is listed in ``unavailable``."""
    at = time.time() if now is None else now
    api_keys: list[ApiKeyRecord] = []
    unavailable: tuple[KeyKind, ...] = ()
    if store is not None:
        try:
            api_keys = await store.list_api_keys()
        except StoreError:
            unavailable = (KeyKind.API,)

    async def build(first_seen: FirstSeen) -> KeyInventory:
        return await build_inventory(
            now=at,
            first_seen=first_seen,
            signing_keys=signing_keys_of(signing),
            token_ttl_s=float(settings.session_ttl_s),
            data_keys=data_keys,
            api_keys=api_keys,
            api_policy=api_key_policy(settings),
            twilio_secondary=settings.twilio_auth_token_secondary,
            webhook_secrets=webhook_secrets(settings),
            unavailable=unavailable,
        )

    if redis is not None:
        try:
            return await build(
                RedisFirstSeen(redis, settings.redis_key_prefix + FIRST_SEEN_REDIS_KEY)
            )
        except (RedisError, OSError, TimeoutError):
            pass
    return await build(FileFirstSeen(settings.data_dir / FIRST_SEEN_FILE))


async def runtime_key_inventory(runtime: Runtime, *, now: float | None = None) -> KeyInventory:
    """The inventory of the keys ``runtime`` uses."""
    return await key_inventory(
        runtime.settings,
        signing=runtime.auth.tokens.ring,
        data_keys=runtime.data_keys,
        store=runtime.store,
        redis=runtime.redis,
        now=now,
    )


KEY_METRICS_INTERVAL_S = 300.0
"""Key ages change by the day: a look every five minutes is plenty, and never on a request."""


def export_key_metrics(inventory: KeyInventory) -> None:
    """Set ``voicegw_key_age_seconds`` and ``voicegw_key_rotation_due_seconds`` per kind from
    ``inventory``; kinds without an active key disappear (under ``--workers`` they keep
    their last value: a worker's metric files cannot forget a series)."""
    if not MULTIPROCESS:
        KEY_AGE.clear()
        KEY_ROTATION_DUE.clear()
    for row in inventory.summary():
        KEY_AGE.labels(row["kind"]).set(row["age_s"])
        if row["rotation_due_in_s"] is not None:
            KEY_ROTATION_DUE.labels(row["kind"]).set(row["rotation_due_in_s"])


async def watch_keys(runtime: Runtime, interval_s: float = KEY_METRICS_INTERVAL_S) -> None:
    """Export the key metrics now and every ``interval_s`` until cancelled; never raises."""
    while True:
        try:
            export_key_metrics(await runtime_key_inventory(runtime))
        except Exception as exc:  # the next round tries again; the gauges keep their values
            log.warning("key inventory failed", extra={"error": type(exc).__name__})
        await asyncio.sleep(interval_s)
