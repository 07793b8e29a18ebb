"""Malformed input to the operator routes gets a 4xx with a short reason, never a 500, on both
store backends (PostgreSQL refuses NUL in text, which SQLite stores).

Every value the routes take from a request is covered by a class: Origin headers urllib cannot
split, NUL and other control characters in JSON fields, query and path parameters, numbers
that are not finite, overlong values, and credentials carrying NUL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from gateway.cli.admin import create_api_key
from gateway.records.base import Role
from gateway.services import open_auditor
from tests.records.backends import BACKENDS
from tests.sessions.harness import PASSWORD, PUBLIC_URL, Gw, csrf_headers, running

BAD_ORIGINS = ["http://x:99999", "http://[::1", "https://gw.test:abc", "http://[zz]", "http://x:-1"]
CONTROL = ["\x00", "a\x00b", "\x1b[2J", "\x7f", "a\x85b"]
FILTERS = ["action", "actor", "outcome", "entity_type", "entity_id"]


@pytest.fixture(params=BACKENDS)
async def gw(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Gw]:
    async with running(tmp_path, store_kind=str(request.param)) as gw:
        await gw.user("ada", Role.ADMIN)
        gw.auth.auditor = open_auditor(gw.settings, gw.store)
        yield gw


@pytest.fixture
async def key(gw: Gw) -> str:
    new, _ = await create_api_key(gw.store, "hostile", Role.ADMIN)
    return new.token


def refused(response: httpx.Response, status: int, reason: str | None = None) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"} and len(body["error"]) < 100
    if reason is not None:
        assert body["error"] == reason


async def test_a_malformed_origin_is_refused_on_every_csrf_checked_route(gw: Gw) -> None:
    async with gw.client() as client:
        assert (await gw.login(client, "ada")).status_code == 200
        for origin in BAD_ORIGINS:
            headers = {**csrf_headers(client), "Origin": origin}
            login = await client.post(
                "/auth/login", json={"username": "ada", "password": PASSWORD}, headers=headers
            )
            refused(login, 403, "origin not allowed")
            for path in (
                "/auth/refresh",
                "/auth/logout",
                "/auth/logout-all",
                "/api/v1/users/+15550100001/delete",
            ):
                refused(await client.post(path, headers=headers), 403, "origin not allowed")
        # The session survived every refused request.
        assert (await client.get("/auth/session")).status_code == 200


async def test_control_characters_in_a_user_name_are_refused_before_the_lockout(gw: Gw) -> None:
    async with gw.client() as client:
        for name in [*CONTROL, "ada\x00"]:
            reply = await gw.login(client, name, PASSWORD)
            refused(reply, 400, "username has a character that is not allowed")
        assert (await gw.login(client, "ada")).status_code == 200
    assert await gw.store.count_login_failures("ada", 0) == 0


async def test_a_user_agent_with_nul_is_audited_not_lost(gw: Gw) -> None:
    async with gw.client(headers={"user-agent": "evil\x00agent"}) as client:
        assert (await gw.login(client, "ada", "wrong password!")).status_code == 401
    (event,) = [e for e in await gw.store.iter_audit(0, 100) if e.action == "auth.login"]
    assert event.outcome == "failure" and event.user_agent == "evil?agent"


async def test_audit_filters_and_times(gw: Gw, key: str) -> None:
    headers = {"authorization": f"Bearer {key}"}
    async with gw.client(headers=headers) as client:
        for name in FILTERS:
            for value in CONTROL:
                reply = await client.get("/api/v1/audit", params={name: value})
                refused(reply, 400, f"{name} has a character that is not allowed")
            refused(await client.get("/api/v1/audit", params={name: "x" * 129}), 400)
        for name in ("since", "until"):
            for value in ("nan", "inf", "-inf", "1e309", "\x00", "1" * 40, "yesterday"):
                refused(await client.get("/api/v1/audit", params={name: value}), 400)
        refused(await client.get("/api/v1/audit?action=%00"), 400)
        # Invalid UTF-8 arrives as U+FFFD: a filter that matches nothing, not an error.
        assert (await client.get("/api/v1/audit?actor=%ff%fe")).json() == {"events": []}
        assert (await client.get("/api/v1/audit", params={"since": "1.5"})).status_code == 200


async def test_path_parameters(gw: Gw, key: str) -> None:
    headers = {"authorization": f"Bearer {key}"}
    async with gw.client(headers=headers) as client:
        for value in CONTROL:
            segment = quote(value, safe="")
            refused(await client.get(f"/api/v1/calls/{segment}/recording"), 400)
            refused(await client.get(f"/api/v1/users/{segment}/data"), 400)
            refused(await client.post(f"/api/v1/users/{segment}/delete"), 400)
        refused(await client.get(f"/api/v1/calls/{'c' * 65}/recording"), 400)
        refused(await client.get("/api/v1/calls/CA1/recording"), 404)


async def test_credentials_carrying_nul(gw: Gw, key: str) -> None:
    async with gw.client() as client:
        for authorization in (b"Bearer \x00", b"Bearer " + key.encode() + b"\x00", b"\x00"):
            reply = await client.get("/api/v1/calls", headers=[(b"authorization", authorization)])
            refused(reply, 401)
        for cookie in (b"voicegw_access=a\x00b", b"__Host-voicegw_access=\x00"):
            reply = await client.get("/auth/session", headers=[(b"cookie", cookie)])
            refused(reply, 401)
        reply = await client.post(
            "/auth/refresh",
            headers=[
                (b"origin", PUBLIC_URL.encode()),
                (b"x-csrf-token", b"t"),
                (b"cookie", b"__Host-voicegw_csrf=t; __Secure-voicegw_refresh=r\x00r"),
            ],
        )
        refused(reply, 401)
