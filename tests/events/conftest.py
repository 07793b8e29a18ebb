"""Outbox tests run on both backends (tests.records.backends: SQLite in a temporary directory,
PostgreSQL in a schema of its own); the receiver is a real server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.records.sql import SqlStore
from security.standard_webhooks import new_secret
from tests.events.receiver import Receiver
from tests.records.backends import BACKENDS, Backend, open_backend


@pytest.fixture(params=BACKENDS)
async def backend_and_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Backend, SqlStore]]:
    async with open_backend(str(request.param), tmp_path) as pair:
        yield pair


@pytest.fixture
def backend(backend_and_store: tuple[Backend, SqlStore]) -> Backend:
    return backend_and_store[0]


@pytest.fixture
def store(backend_and_store: tuple[Backend, SqlStore]) -> SqlStore:
    return backend_and_store[1]


@pytest.fixture
def secret() -> str:
    return new_secret()


@pytest.fixture
async def receiver(secret: str) -> AsyncIterator[Receiver]:
    r = Receiver(secret)
    await r.start()
    yield r
    await r.stop()
