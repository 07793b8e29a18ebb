"""Compliance evidence tests run on both store backends (SQLite in a temporary directory,
PostgreSQL in a schema of its own) with the store suite's own fixtures."""

from tests.records.conftest import backend_and_store, store

__all__ = ["backend_and_store", "store"]
