"""Three ``voicegw serve`` replicas on loopback sharing one Redis and one PostgreSQL, set up
the way a deployment behind a load balancer is: one public URL, and the carrier secrets,
session signing key and data keys given to every replica through their settings. Each replica
has a data directory of its own, so nothing is shared through a disk.

Isolation from other runs on the same servers: the Redis keys live under a prefix unique to
the run (``VOICEGW_REDIS_KEY_PREFIX``) in the test database and are deleted afterwards; the
records live in a PostgreSQL database created for the run and dropped afterwards (the gateway
always uses the schema ``voicegw``, so a database of its own is what keeps runs apart).

The replicas' providers are ``openai,echo`` with OpenAI pointing at a ``Refuser``: every
connect fails at once and is counted, and echo takes the call.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
from nacl.signing import VerifyKey
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from gateway import devkeys
from gateway.cli.admin import add_user, create_api_key
from gateway.records.base import Role
from gateway.records.postgres import PostgresStore
from gateway.settings import Settings
from security.audit import VerifyResult, verify
from security.signing_keys import KeyRing
from tests.conftest import REDIS_URL, UNIT
from tests.e2e.carrier import OPENAI_KEY, TWILIO_TOKEN, Gateway, free_port
from tests.e2e.processes import (
    PROCESSES,
    clear_gateway_keys,
    serve_processes,
    stop_processes,
)
from tests.fakes.carrier_rest import FakeCarrierRest
from tests.fakes.refuser import Refuser
from tests.records.backends import DATABASE_URL, check_postgres
from tests.sessions.harness import PASSWORD, TEST_HASHER

NAMES = ("a", "b", "c")
TRANSFER_TO = "+14155550123"
RATE_LIMIT = 30
"""Verified webhooks per carrier per rolling minute, for the whole cluster."""
USER = "cluster-ops"

FIGURES: list[tuple[str, str]] = []
"""What each test measured (requests tried, accepted, refused, ...), printed after the run."""


def report(test: str, figures: str) -> None:
    FIGURES.append((test, figures))


@dataclass
class Replica:
    name: str
    url: str
    proc: asyncio.subprocess.Process
    log: Path
    gateway: Gateway  # for the carrier helpers of tests.e2e.carrier

    def holds(self, replica_id: str) -> bool:
        """Whether a call registry's ``replica`` field names this process
        (``host-pid-random``)."""
        _, pid, _ = replica_id.rsplit("-", 2)
        return int(pid) == self.proc.pid


@dataclass
class Cluster:
    replicas: list[Replica]
    public_url: str
    database_url: str
    api_token: str
    signing_ring: KeyRing
    telnyx_keys: devkeys.DevKeys  # the Telnyx signing key this "carrier" signs with
    refuser: Refuser
    rest: FakeCarrierRest  # Twilio's REST API (hang-ups, transfers)
    _clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)

    def http(self, replica: Replica) -> httpx.AsyncClient:
        """A client of ``replica`` (reused across requests)."""
        client = self._clients.get(replica.name)
        if client is None:
            client = self._clients[replica.name] = httpx.AsyncClient(
                base_url=replica.url, timeout=10 * UNIT
            )
        return client

    async def api(self, replica: Replica, path: str) -> Any:
        """GET an ``/api/v1`` route of ``replica`` with the cluster's API key; the JSON body."""
        reply = await self.http(replica).get(
            path, headers={"Authorization": f"Bearer {self.api_token}"}
        )
        assert reply.status_code == 200, (replica.name, path, reply.status_code, reply.text)
        return reply.json()

    async def metrics(self, replica: Replica) -> dict[tuple[str, frozenset[Any]], float]:
        """Every sample ``replica`` exposes on ``/metrics``, by name and labels."""
        reply = await self.http(replica).get("/metrics")
        assert reply.status_code == 200, reply.text
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(reply.text)
            for s in family.samples
        }

    async def sql(self, query: str, *params: object) -> list[tuple[Any, ...]]:
        """Run ``query`` on the cluster's database, outside the gateway."""
        async with await psycopg.AsyncConnection.connect(self.database_url) as conn:
            await conn.execute("SET search_path TO voicegw")
            cursor = await conn.execute(query.encode(), params)
            return await cursor.fetchall()

    @contextlib.asynccontextmanager
    async def store(self) -> AsyncIterator[PostgresStore]:
        """The shared store, opened by the test (as ``voicegw audit verify`` opens it)."""
        store = PostgresStore(self.database_url, max_size=1)
        await store.open()
        try:
            yield store
        finally:
            await store.close()

    async def verify_audit(self, store: PostgresStore | None = None) -> VerifyResult:
        """Walk the shared audit chain, checking checkpoint signatures with the signing key."""
        keys = [VerifyKey(key.public_raw) for key in self.signing_ring.keys()]
        if store is not None:
            return await verify(store, keys)
        async with self.store() as opened:
            return await verify(opened, keys)

    async def stop(self) -> list[int | None]:
        """SIGTERM to all three at once (a rolling restart's worst case); their exit codes."""
        await stop_processes([r.proc for r in self.replicas])
        return [r.proc.returncode for r in self.replicas]

    async def close_clients(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


def metric(samples: dict[tuple[str, frozenset[Any]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@contextlib.asynccontextmanager
async def database() -> AsyncIterator[str]:
    """A PostgreSQL database of this run's own on the test server; dropped afterwards."""
    await check_postgres()
    name = f"voicegw_cluster_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(DATABASE_URL, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlsplit(DATABASE_URL)._replace(path=f"/{name}").geturl()
    finally:
        async with await psycopg.AsyncConnection.connect(DATABASE_URL, autocommit=True) as admin:
            await admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


async def _provision(database_url: str) -> str:
    """Migrate the schema once, add the operator user and an admin API key (returned)."""
    store = PostgresStore(database_url, max_size=1)
    await store.open()
    try:
        await add_user(store, TEST_HASHER, USER, Role.ADMIN, PASSWORD)
        new, _ = await create_api_key(store, "cluster-tests", Role.ADMIN)
        return new.token
    finally:
        await store.close()


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@contextlib.asynccontextmanager
async def start_cluster(tmp: Path) -> AsyncIterator[Cluster]:
    """Three replicas, ready; stopped, and their Redis keys and database removed, on exit."""
    telnyx_keys = devkeys.load_or_create(tmp / "carrier")
    prefix = f"voicegw-cluster:{uuid.uuid4().hex[:12]}:"
    signing_seed = _b64url(secrets.token_bytes(32))
    ports = [free_port() for _ in NAMES]
    public_url = f"http://127.0.0.1:{ports[0]}"  # as behind a load balancer: one public URL
    async with contextlib.AsyncExitStack() as stack:
        database_url = await stack.enter_async_context(database())
        api_token = await _provision(database_url)
        refuser = await stack.enter_async_context(Refuser())
        rest = await stack.enter_async_context(FakeCarrierRest(twilio_auth_token=TWILIO_TOKEN))
        agents = tmp / "agents.toml"
        agents.write_text(
            "[agents.desk]\n"
            'providers = ["openai", "echo"]\n'
            'instructions = "You answer the front desk."\n'
            f'transfer = {{ billing = "{TRANSFER_TO}" }}\n'
            'allowed_destinations = ["+1"]\n'
        )
        stack.push_async_callback(clear_gateway_keys, REDIS_URL, prefix)
        shared = {
            "PATH": os.environ.get("PATH", ""),
            "VOICEGW_PUBLIC_URL": public_url,
            "VOICEGW_REDIS_URL": REDIS_URL,
            "VOICEGW_REDIS_KEY_PREFIX": prefix,
            "VOICEGW_DATABASE_URL": database_url,
            "VOICEGW_RATE_LIMIT_PER_MINUTE": str(RATE_LIMIT),
            "VOICEGW_LOGIN_RATE_PER_MINUTE": "1000",  # many logins from one test address
            "VOICEGW_TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            "VOICEGW_TELNYX_PUBLIC_KEY": telnyx_keys.telnyx_public_key,
            "VOICEGW_SIGNING_KEY": signing_seed,
            "VOICEGW_ENCRYPTION_KEYS": "k1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
            "VOICEGW_BLIND_INDEX_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
            "VOICEGW_PROVIDERS": "openai,echo",
            "OPENAI_API_KEY": OPENAI_KEY,
            "VOICEGW_OPENAI_REALTIME_URL": refuser.url,
            "VOICEGW_AGENTS_FILE": str(agents),
            # Twilio's REST API is a fake; Telnyx's is nowhere (a request fails at once).
            "VOICEGW_TWILIO_API_URL": rest.base_url,
            "VOICEGW_TELNYX_API_URL": f"http://127.0.0.1:{free_port()}",
            "VOICEGW_LOG_LEVEL": "WARNING",
            "VOICEGW_DRAIN_SECONDS": "1",
        }
        specs = [
            ({**shared, "VOICEGW_DATA_DIR": str(tmp / name)}, port, tmp / f"replica-{name}.log")
            for name, port in zip(NAMES, ports, strict=True)
        ]
        urls = await stack.enter_async_context(serve_processes(specs))
        replicas = []
        for (env, port, log), name, url in zip(specs, NAMES, urls, strict=True):
            settings = Settings.from_env({**env, "VOICEGW_DATA_DIR": str(tmp / "carrier")})
            gateway = Gateway(url, settings, None, None)  # type: ignore[arg-type]
            replicas.append(Replica(name, url, PROCESSES[port], log, gateway))
        cluster = Cluster(
            replicas=replicas,
            public_url=public_url,
            database_url=database_url,
            api_token=api_token,
            signing_ring=KeyRing.from_seeds([signing_seed]),
            telnyx_keys=telnyx_keys,
            refuser=refuser,
            rest=rest,
        )
        stack.push_async_callback(cluster.close_clients)
        yield cluster
