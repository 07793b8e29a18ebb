"""Compliance evidence tests run on both store backends (SQLite in a temporary directory,
PostgreSQL in a schema of its own), like the store suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.store.sql import SqlStore
from tests.store.backends import BACKENDS, Backend, open_backend


@pytest.fixture(params=BACKENDS)
async def backend_and_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Backend, SqlStore]]:
    async with open_backend(str(request.param), tmp_path) as pair:
        yield pair


@pytest.fixture
def store(backend_and_store: tuple[Backend, SqlStore]) -> SqlStore:
    return backend_and_store[1]
