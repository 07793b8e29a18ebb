"""The gateway app (``build_app``: session, API and console routes and middleware included)
with its runtime started; tests swap in an ``AuthRuntime`` with a cheaper password hash at
``app.state.runtime.auth``.

State is real: SQLite for users and keys, real Redis when asked, a real key file.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis
from starlette.applications import Starlette

from gateway import devkeys
from gateway.app import build_app, start_runtime
from gateway.cli.admin import add_user
from gateway.operators.sessions import AuthConfig, AuthRuntime
from gateway.records.base import Role, Store
from gateway.records.sqlite import SqliteStore
from gateway.runtime import Runtime
from gateway.settings import Settings
from security.apikeys import KeyPolicy
from security.lockout import LockoutPolicy
from security.passwords import PasswordHasher
from security.signing_keys import FileKeyRing
from tests.records.backends import open_backend

PUBLIC_URL = "https://gw.test"
# A cheaper scrypt cost than production (2**15) so the suite stays fast; the format and code
# path are the same, and tests/sessions/test_passwords.py checks the production default.
TEST_HASHER = PasswordHasher(log_n=10)
PASSWORD = "correct horse battery staple"


def compose(settings: Settings) -> Starlette:
    """The application exactly as ``voicegw serve`` builds it."""
    return build_app(settings)


CORS: tuple[str, ...] = ("https://ops.example.com",)


def make_auth(
    settings: Settings,
    store: Store,
    *,
    redis: aioredis.Redis | None = None,
    redis_prefix: str = "voicegw:",
    **config: Any,
) -> AuthRuntime:
    # Many logins from one address in a test: the per-address limit has its own tests.
    config.setdefault("login_rate_per_minute", 1000)
    cfg = AuthConfig(
        public_url=settings.public_url,
        cors_origins=CORS,
        lockout=LockoutPolicy(),
        api_keys=KeyPolicy(),
        production=settings.production,
        **config,
    )
    ring = FileKeyRing(settings.data_dir / "signing-keys.json")
    return AuthRuntime.build(
        cfg, ring=ring, store=store, redis=redis, redis_prefix=redis_prefix, hasher=TEST_HASHER
    )


def settings_for(tmp_path: Path, public_url: str = PUBLIC_URL, **env: str) -> Settings:
    base: dict[str, str] = {
        "VOICEGW_DATA_DIR": str(tmp_path / "data"),
        "VOICEGW_PUBLIC_URL": public_url,
        "VOICEGW_CORS_ORIGINS": ",".join(CORS),
    }
    base.update(env)
    return devkeys.apply(Settings.from_env(base))


@contextlib.asynccontextmanager
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "data" / "voicegw.sqlite3")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    *,
    redis: aioredis.Redis | None = None,
    redis_prefix: str = "voicegw:",
    env: Mapping[str, str] | None = None,
    store_kind: str = "sqlite",
    **config: Any,
) -> AsyncIterator[Gw]:
    """A composed app with its runtime started (no server: use ``gw.client()``). Users and
    keys live in ``store_kind``: SQLite, or PostgreSQL in a schema of the test's own."""
    settings = settings_for(tmp_path, **dict(env or {}))
    async with open_backend(store_kind, tmp_path) as (_, store):
        app = compose(settings)
        runtime = await start_runtime(settings)
        runtime.auth = make_auth(  # type: ignore[attr-defined]
            settings, store, redis=redis, redis_prefix=redis_prefix, **config
        )
        # The routes that read runtime.store (recordings, data-subject requests) use it too.
        own_store, runtime.store = runtime.store, store
        app.state.runtime = runtime
        try:
            yield Gw(app, runtime, store, settings)
        finally:
            runtime.store = own_store
            await runtime.stop()


class Gw:
    def __init__(self, app: Starlette, runtime: Runtime, store: Store, settings: Settings):
        self.app = app
        self.runtime = runtime
        self.store = store
        self.settings = settings

    @property
    def auth(self) -> AuthRuntime:
        value: AuthRuntime = self.runtime.auth  # type: ignore[attr-defined]
        return value

    def client(self, address: str = "127.0.0.1", **kw: Any) -> httpx.AsyncClient:
        """An httpx client on the app, its requests coming from ``address``."""
        transport = httpx.ASGITransport(app=self.app, client=(address, 123))
        return httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL, **kw)

    async def user(self, name: str, role: Role = Role.ADMIN, password: str = PASSWORD) -> None:
        await add_user(self.store, TEST_HASHER, name, role, password)

    async def login(
        self, client: httpx.AsyncClient, name: str, password: str = PASSWORD
    ) -> httpx.Response:
        return await client.post(
            "/auth/login",
            json={"username": name, "password": password},
            headers={"Origin": PUBLIC_URL},
        )


def csrf_headers(client: httpx.AsyncClient) -> dict[str, str]:
    """What the console sends on an unsafe request: Origin and the CSRF cookie echoed."""
    return {"Origin": PUBLIC_URL, "X-CSRF-Token": client.cookies.get("__Host-voicegw_csrf") or ""}


def now() -> float:
    return time.time()


class AsgiStream:
    """A streaming GET straight through the ASGI app (``httpx.ASGITransport`` waits for the
    whole body, which a Server-Sent Events stream never finishes). ``status`` once started;
    ``events(n)`` parses SSE events; ``close()`` disconnects like a browser leaving."""

    def __init__(self, app: Starlette, path: str, headers: Mapping[str, str]) -> None:
        self._messages: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
        self._gone = asyncio.Event()
        self._buffer = b""
        self.status = 0
        self.headers: dict[str, str] = {}
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "https",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 40000),
            "server": ("gw.test", 443),
        }
        self._task = asyncio.create_task(app(scope, self._receive, self._send))

    async def _receive(self) -> dict[str, Any]:
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: MutableMapping[str, Any]) -> None:
        await self._messages.put(message)

    async def start(self, within: float = 5.0) -> int:
        async with asyncio.timeout(within):
            message = await self._messages.get()
        assert message["type"] == "http.response.start"
        self.status = message["status"]
        self.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        return self.status

    async def events(self, want: int, within: float = 5.0) -> list[tuple[str, Any]]:
        found: list[tuple[str, Any]] = []
        async with asyncio.timeout(within):
            while len(found) < want:
                while b"\n\n" not in self._buffer:
                    message = await self._messages.get()
                    self._buffer += message.get("body", b"")
                    if not message.get("more_body", False) and b"\n\n" not in self._buffer:
                        return found
                block, self._buffer = self._buffer.split(b"\n\n", 1)
                fields = dict(
                    line.split(": ", 1) for line in block.decode().splitlines() if ": " in line
                )
                if "event" in fields:
                    found.append((fields["event"], orjson.loads(fields.get("data", "null"))))
        return found

    async def close(self) -> None:
        self._gone.set()
        async with asyncio.timeout(5):
            await self._task


def cookie_header(client: httpx.AsyncClient) -> dict[str, str]:
    return {"cookie": "; ".join(f"{k}={v}" for k, v in client.cookies.items())}
