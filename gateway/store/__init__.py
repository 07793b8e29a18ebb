"""Durable records behind one interface: SQLite (embedded default) and PostgreSQL."""
