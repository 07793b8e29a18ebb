"""Operators and services: sessions and API keys, permissions, the ``/auth`` and ``/api/v1``
routes, and the console. May import ``gateway.records``, ``gateway.compliance``, the call and
media services it reports on, ``security`` and ``metrics``; the app mounts its routes."""
