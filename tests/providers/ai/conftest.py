from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.providers.ai import clients


@pytest.fixture(params=clients.CLIENTS)
def ws_client(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each WebSocket client in turn (``providers.ai.transport.Client``)."""
    clients.current = request.param
    yield request.param
    clients.current = "websockets"
