"""Fixtures for the in-process app tests: a built app with its runtime started, an httpx client
on ``httpx.ASGITransport`` (client address 127.0.0.1), and signing helpers for both carriers.

Redis-backed gateways get a key prefix unique to the test (``VOICEGW_REDIS_KEY_PREFIX``), so
the shared rate-limit key of one test never spends another test's budget; every key
under that prefix is removed afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from twilio.request_validator import RequestValidator

from gateway import devkeys
from gateway.lifecycle import BACKGROUND_LOOPS
from gateway.settings import Settings
from tests.conftest import UNIT, open_test_redis, redis_url_for, remove_keys

if TYPE_CHECKING:
    from gateway.runtime import Runtime

PUBLIC_URL = "http://gw.test:8000"
PUBLIC_WS_URL = "ws://gw.test:8000"

Headers = Sequence[tuple[str, str]]


def make_settings(tmp_path: Path, env: Mapping[str, str] | None = None) -> Settings:
    """Development settings from an explicit env (never ``os.environ``), dev keys applied."""
    base = {"VOICEGW_DATA_DIR": str(tmp_path / "data"), "VOICEGW_PUBLIC_URL": PUBLIC_URL}
    base.update(env or {})
    return devkeys.apply(Settings.from_env(base))


def call_sid() -> str:
    return "CA" + uuid.uuid4().hex


def call_control_id() -> str:
    return "v3:" + uuid.uuid4().hex


def telnyx_event(event_type: str, ccid: str, *, event_id: str | None = None, **extra: Any) -> bytes:
    """A Telnyx Call Control event body as Telnyx sends it."""
    payload = {
        "call_control_id": ccid,
        "call_leg_id": str(uuid.uuid4()),
        "call_session_id": str(uuid.uuid4()),
        "connection_id": "1684641123236054244",
        "from": "+15550100001",
        "to": "+15550100002",
        "direction": "incoming",
        **extra,
    }
    return orjson.dumps(
        {
            "data": {
                "event_type": event_type,
                "id": event_id or str(uuid.uuid4()),
                "occurred_at": "2026-01-01T00:00:00.000000Z",
                "payload": payload,
                "record_type": "event",
            },
            "meta": {"attempt": 1, "delivered_to": "voicegw"},
        }
    )


@dataclass
class Gateway:
    """One running gateway: app, runtime, settings, dev keys and an httpx client."""

    app: Starlette
    runtime: Runtime
    settings: Settings
    keys: devkeys.DevKeys
    http: httpx.AsyncClient

    # -- clients ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def client_from(self, host: str) -> AsyncIterator[httpx.AsyncClient]:
        """An httpx client whose socket peer address is ``host``."""
        transport = httpx.ASGITransport(app=self.app, client=(host, 41000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http

    # -- Twilio -------------------------------------------------------------------------------

    def twilio_signature(self, path: str, params: Mapping[str, str]) -> str:
        assert self.settings.twilio_auth_token is not None
        validator = RequestValidator(self.settings.twilio_auth_token.get())
        return str(validator.compute_signature(self.settings.public(path), dict(params)))

    async def twilio(
        self,
        path: str,
        params: Mapping[str, str],
        *,
        signature: str | None = None,
        headers: Headers = (),
        http: httpx.AsyncClient | None = None,
    ) -> httpx.Response:
        """POST a form to ``path`` signed as Twilio would (unless ``signature`` is given)."""
        sig = self.twilio_signature(path, params) if signature is None else signature
        all_headers = [("X-Twilio-Signature", sig), *headers] if sig else list(headers)
        return await (http or self.http).post(path, data=dict(params), headers=all_headers)

    # -- Telnyx -------------------------------------------------------------------------------

    def telnyx_signature(self, body: bytes, timestamp: str) -> str:
        signed = self.keys.telnyx_signing_key().sign(timestamp.encode() + b"|" + body)
        return base64.b64encode(signed.signature).decode()

    async def telnyx(
        self,
        body: bytes,
        *,
        timestamp: int | None = None,
        signature: str | None = None,
        headers: Headers | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> httpx.Response:
        """POST a Telnyx event signed with the development key (unless overridden)."""
        ts = str(int(time.time()) if timestamp is None else timestamp)
        if headers is None:
            headers = [
                ("content-type", "application/json"),
                (
                    "telnyx-signature-ed25519",
                    self.telnyx_signature(body, ts) if signature is None else signature,
                ),
                ("telnyx-timestamp", ts),
            ]
        return await (http or self.http).post("/webhooks/telnyx", content=body, headers=headers)

    async def redis_keys(self) -> list[bytes]:
        """Keys this gateway wrote to Redis (under its per-test prefix)."""
        assert self.runtime.redis is not None
        pattern = f"{self.settings.redis_key_prefix}*"
        return [key async for key in self.runtime.redis.scan_iter(match=pattern)]

    # -- background work ----------------------------------------------------------------------

    async def settle(self) -> None:
        """Wait for the REST commands the handlers started in the background."""
        pending = [
            t for t in self.runtime.lifecycle.tasks.running if t.get_name() not in BACKGROUND_LOOPS
        ]
        if pending:
            async with asyncio.timeout(5 * UNIT):
                await asyncio.gather(*pending, return_exceptions=True)


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture(params=["memory", "redis", "cluster"])
def backend(request: pytest.FixtureRequest) -> str:
    """State backend for the state-backed tests: in-process, or the real Redis (one server,
    or the local Redis Cluster)."""
    return str(request.param)


@pytest.fixture
async def make_gateway(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_prefix: str,
) -> AsyncIterator[GatewayFactory]:
    """``await make_gateway(env, redis=False)``: a started gateway; stopped after the test.
    ``redis`` is True or a ``backend`` name: True and ``"redis"`` put its state on the test
    Redis, ``"cluster"`` on the local Redis Cluster, False and ``"memory"`` in process."""
    stack = contextlib.AsyncExitStack()
    used: set[str] = set()

    async def make(env: Mapping[str, str] | None = None, *, redis: bool | str = False) -> Gateway:
        # Imported here so the settings tests run even while the app does not import.
        from gateway.app import build_app, start_runtime

        full = dict(env or {})
        if redis and redis != "memory":
            mode = "cluster" if redis == "cluster" else "standalone"
            full["VOICEGW_REDIS_URL"] = redis_url_for(request, mode)
            full["VOICEGW_REDIS_MODE"] = mode
            full["VOICEGW_REDIS_KEY_PREFIX"] = redis_prefix
            used.add(mode)
        settings = make_settings(tmp_path, full)
        app = build_app(settings)
        runtime = await start_runtime(settings)
        stack.push_async_callback(runtime.stop)
        app.state.runtime = runtime
        transport = httpx.ASGITransport(app=app)
        http = await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://testserver")
        )
        keys = devkeys.load_or_create(settings.data_dir)
        return Gateway(app=app, runtime=runtime, settings=settings, keys=keys, http=http)

    try:
        yield make
    finally:
        await stack.aclose()
        for mode in used:
            client = await open_test_redis(redis_url_for(request, mode), mode)
            try:
                await remove_keys(client, redis_prefix)
            finally:
                await client.aclose()


@pytest.fixture
async def gw(make_gateway: GatewayFactory) -> Gateway:
    """A development gateway with in-process state and the default settings."""
    return await make_gateway()


@pytest.fixture
async def state_gw(make_gateway: GatewayFactory, backend: str) -> Gateway:
    """A development gateway on the ``backend`` under test."""
    return await make_gateway(redis=backend)
