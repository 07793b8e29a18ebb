"""Where a report's inputs come from: a running gateway (the API) or only its configuration
and store (the command line, which may run while the server does not).

A running gateway adds what only it knows: rejections counted but not yet written, and its
audit writes that failed. Both read the key inventory through ``gateway.review.inventory``;
a report is still made when the inventory cannot be read (it says so).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gateway.compliance.report import DEFAULT_WINDOW_DAYS, Report, build_report
from gateway.settings import Settings
from security.keyinventory import KeyInventory

if TYPE_CHECKING:
    from gateway.runtime import Runtime

__all__ = ["report_of_runtime", "report_of_settings"]

log = logging.getLogger("voicegw.compliance")


async def report_of_runtime(runtime: Runtime, *, window_days: int = DEFAULT_WINDOW_DAYS) -> Report:
    """The report of the gateway ``runtime`` runs."""
    from gateway.review.inventory import runtime_key_inventory

    await runtime.rejections.flush()  # counts not yet written belong in the report
    inventory: KeyInventory | None
    try:
        inventory = await runtime_key_inventory(runtime)
    except Exception as exc:
        log.warning("key inventory unavailable", extra={"error": type(exc).__name__})
        inventory = None
    return await build_report(
        runtime.settings,
        runtime.store,
        window_days=window_days,
        audit_write_failures=runtime.auditor.failures,
        inventory=inventory,
    )


async def report_of_settings(
    settings: Settings, *, window_days: int = DEFAULT_WINDOW_DAYS
) -> Report:
    """The report of the deployment ``settings`` configure, from its store (opened and closed
    here) and, when configured, its Redis (for the keys' first-seen times)."""
    from gateway.review.inventory import key_inventory
    from gateway.services import load_data_keys, open_store, redis_client, settings_signing_ring

    store = open_store(settings)
    await store.open()
    redis = (
        None
        if settings.redis_url is None
        else redis_client(
            settings.redis_url.get(),
            settings.redis_max_connections,
            "compliance-report",
            mode=settings.redis_mode,
        )
    )
    try:
        inventory: KeyInventory | None
        try:
            ring = settings_signing_ring(settings)
            inventory = await key_inventory(
                settings,
                signing=ring,
                data_keys=load_data_keys(settings)[0],
                store=store,
                redis=redis,
            )
        except Exception as exc:
            log.warning("key inventory unavailable", extra={"error": type(exc).__name__})
            inventory = None
        return await build_report(settings, store, window_days=window_days, inventory=inventory)
    finally:
        await store.close()
        if redis is not None:
            await redis.aclose()
