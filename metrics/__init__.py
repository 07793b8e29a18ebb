"""Prometheus metrics, JSON logging and Sentry set-up. Imports nothing from ``gateway``."""
