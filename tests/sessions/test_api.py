"""/api/v1: the role on every route (sessions and API keys), API keys (shown once, hashed,
prefix ids, rotation grace, expiry, revocation), and the live-call event stream."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.cli.admin import create_api_key, revoke_api_key, rotate_api_key
from gateway.operators import agents as agents_api
from gateway.operators import api, calls_api, deliveries
from gateway.operators.permissions import ROLE_PERMISSIONS, Permission
from gateway.records.base import Role
from security.apikeys import DAY_S, KeyPolicy, KeyState
from tests.sessions.harness import AsgiStream, Gw, cookie_header, csrf_headers, running

SUBJECT = "%2B15550100009"  # a fictional number, URL-encoded as a subject
# What a permitted request answers (the recording of an unknown call does not exist).
# What an allowed role gets on each route with the test's (unknown call, empty) requests.
ALLOWED_STATUS = {
    "/api/v1/calls/{call_id}/recording": 404,
    "/api/v1/calls/{call_id}": 404,
    "/api/v1/calls/{call_id}/hangup": 404,
    "/api/v1/calls/{call_id}/transfer": 415,  # no JSON body
    "/api/v1/agents/reload": 422,  # no agents file configured
    "/api/v1/deliveries/{event_id}/retry": 404,  # not an event id
}
UNSAFE = ("/delete", "/hangup", "/transfer", "/reload", "/retry", "/retry-dead")
ROUTE_PERMISSION = {
    r.path: r.endpoint.permission  # type: ignore[attr-defined]
    for r in (*api.routes(), *agents_api.routes(), *calls_api.routes(), *deliveries.routes())
}


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gw]:
    async with running(tmp_path) as gw:
        for role in Role:
            await gw.user(f"{role.value}-user", role)
        yield gw


def test_every_api_route_declares_a_permission() -> None:
    assert set(ROUTE_PERMISSION) == {
        "/api/v1/calls",
        "/api/v1/providers",
        "/api/v1/audit",
        "/api/v1/events",
        "/api/v1/users/{subject}/data",
        "/api/v1/users/{subject}/delete",
        "/api/v1/calls/{call_id}/recording",
        "/api/v1/compliance/report",
        "/api/v1/agents",
        "/api/v1/agents/reload",
        "/api/v1/calls/{call_id}",
        "/api/v1/calls/{call_id}/hangup",
        "/api/v1/calls/{call_id}/transfer",
        "/api/v1/deliveries",
        "/api/v1/deliveries/retry-dead",
        "/api/v1/deliveries/{event_id}/retry",
    }
    assert all(isinstance(p, Permission) for p in ROUTE_PERMISSION.values())


def test_roles_table() -> None:
    assert ROLE_PERMISSIONS[Role.ADMIN] == frozenset(Permission)
    assert ROLE_PERMISSIONS[Role.OPERATOR] == {
        Permission.CALLS_READ,
        Permission.CALLS_CONTROL,
        Permission.PROVIDERS_READ,
        Permission.AGENTS_READ,
    }
    assert ROLE_PERMISSIONS[Role.DIALER] == {Permission.CALLS_DIAL}
    assert ROLE_PERMISSIONS[Role.AUDITOR] == {
        Permission.AUDIT_READ,
        Permission.SUBJECTS_EXPORT,
        Permission.SUBJECTS_ERASE,
    }


async def get(
    gw: Gw, client: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None
) -> int:
    if path == "/api/v1/events":
        stream = AsgiStream(gw.app, path, {**cookie_header(client), **(headers or {})})
        status = await stream.start()
        await stream.close()
        return status
    path = path.replace("{subject}", SUBJECT).replace("{call_id}", "call_unknown")
    if path.endswith(UNSAFE):  # the unsafe routes: CSRF headers as the console sends
        sent = {**csrf_headers(client), **(headers or {})}
        return (await client.post(path, headers=sent)).status_code
    return (await client.get(path, headers=headers)).status_code


@pytest.mark.parametrize("role", list(Role))
async def test_every_route_by_session_role(gw: Gw, role: Role) -> None:
    async with gw.client() as client:
        assert (await gw.login(client, f"{role.value}-user")).status_code == 200
        for path, permission in ROUTE_PERMISSION.items():
            allowed = ALLOWED_STATUS.get(path, 200)
            expected = allowed if permission in ROLE_PERMISSIONS[role] else 403
            assert await get(gw, client, path) == expected, (role, path)


@pytest.mark.parametrize("role", list(Role))
async def test_every_route_by_api_key_role(gw: Gw, role: Role) -> None:
    new, _ = await create_api_key(gw.store, f"svc-{role.value}", role)
    bearer = {"Authorization": f"Bearer {new.token}"}
    async with gw.client() as client:
        for path, permission in ROUTE_PERMISSION.items():
            allowed = ALLOWED_STATUS.get(path, 200)
            expected = allowed if permission in ROLE_PERMISSIONS[role] else 403
            assert await get(gw, client, path, bearer) == expected, (role, path)


async def test_every_route_refuses_anonymous_and_garbage(gw: Gw) -> None:
    async with gw.client() as client:
        for path in ROUTE_PERMISSION:
            assert await get(gw, client, path) == 401
            for auth in ("Bearer", "Bearer nope", "Basic YWRhOnB3", "Bearer vgk_x_y"):
                assert await get(gw, client, path, {"Authorization": auth}) == 401
        r = await client.get("/api/v1/calls")
        assert r.headers["www-authenticate"].startswith("Bearer")


async def test_denials_are_audited(gw: Gw) -> None:
    recorded: list[tuple[str, str, dict[str, object]]] = []

    class Sink:
        async def record(self, action: str, outcome: str, **kw: object) -> None:
            recorded.append((action, outcome, kw))

    gw.auth.auditor = Sink()
    async with gw.client() as client:
        await gw.login(client, "operator-user")
        assert (await client.get("/api/v1/audit")).status_code == 403
    assert ("auth.login", "success") in [(a, o) for a, o, _ in recorded]
    denied = [kw for a, o, kw in recorded if a == "auth.denied"]
    assert denied and denied[0]["actor"] == "operator-user"


async def test_calls_and_providers_content(gw: Gw) -> None:
    call, _ = await gw.runtime.registry.create("twilio", "CA" + "1" * 32, "echo")
    async with gw.client() as client:
        await gw.login(client, "operator-user")
        calls = (await client.get("/api/v1/calls")).json()
        providers = (await client.get("/api/v1/providers")).json()
    (live,) = calls["live"]
    assert live["call_id"] == call.call_id and live["carrier"] == "twilio"
    assert live["provider"] == "echo" and live["state"] == "ringing"
    assert calls["recent"] == []
    assert "echo" in {p["name"] for p in providers["providers"]}
    assert {p["state"] for p in providers["providers"]} == {"closed"}


async def test_audit_query(gw: Gw) -> None:
    from security.audit import Auditor, HashChainer

    gw.auth.auditor = Auditor(gw.store, HashChainer(), ip_hash_key=b"k" * 32)
    async with gw.client() as client:
        await gw.login(client, "admin-user")
        await gw.login(client, "auditor-user", "wrong password!")
        await gw.login(client, "auditor-user")
        all_events = (await client.get("/api/v1/audit")).json()["events"]
        assert [e["action"] for e in all_events][:3] == ["auth.login"] * 3
        failures = (await client.get("/api/v1/audit?outcome=failure")).json()["events"]
        assert [e["actor"] for e in failures] == ["auditor-user"]
        mine = (await client.get("/api/v1/audit?actor=admin-user&order=oldest")).json()["events"]
        assert {e["actor"] for e in mine} == {"admin-user"}
        assert (await client.get("/api/v1/audit?limit=x")).status_code == 400
        assert (await client.get("/api/v1/audit?since=yesterday")).status_code == 400


# -- API keys ------------------------------------------------------------------------------------


async def test_api_key_is_shown_once_stored_hashed_and_prefix_identified(gw: Gw) -> None:
    new, record = await create_api_key(gw.store, "billing", Role.OPERATOR)
    assert new.token.startswith(f"vgk_{new.key_id}_")
    assert record.key_id == new.key_id and len(new.key_id) == 12
    stored = await gw.store.get_api_key(new.key_id)
    assert stored is not None
    secret = new.token.rsplit("_", 1)[1]
    assert secret not in repr(stored) and new.token not in repr(stored)
    assert stored.key_hash != secret and len(stored.key_hash) == 64
    db = (gw.settings.data_dir / "voicegw.sqlite3").read_bytes()
    assert secret.encode() not in db


async def test_api_key_works_until_revoked(gw: Gw) -> None:
    new, _ = await create_api_key(gw.store, "billing", Role.OPERATOR)
    async with gw.client(headers={"Authorization": f"Bearer {new.token}"}) as client:
        assert (await client.get("/api/v1/calls")).status_code == 200
        stored = await gw.store.get_api_key(new.key_id)
        assert stored is not None and stored.last_used_at is not None
        await revoke_api_key(gw.store, new.key_id)
        assert (await client.get("/api/v1/calls")).status_code == 401
    wrong_secret = new.token[:-4] + "AAAA"
    async with gw.client(headers={"Authorization": f"Bearer {wrong_secret}"}) as client:
        assert (await client.get("/api/v1/calls")).status_code == 401


async def test_api_key_never_needs_csrf_and_cookies_never_outrank_it(gw: Gw) -> None:
    new, _ = await create_api_key(gw.store, "auditor-svc", Role.AUDITOR)
    async with gw.client() as client:
        await gw.login(client, "admin-user")
        r = await client.get("/api/v1/calls", headers={"Authorization": f"Bearer {new.token}"})
        assert r.status_code == 403  # the key's role applies, not the admin cookie's


async def test_rotation_grace_period(gw: Gw) -> None:
    policy = KeyPolicy()
    old, _ = await create_api_key(gw.store, "billing", Role.OPERATOR)
    new, new_record, old_record = await rotate_api_key(gw.store, old.key_id, policy)
    assert new_record.name == "billing" and new_record.role is Role.OPERATOR
    assert old_record.expires_at == pytest.approx(time.time() + 7 * DAY_S, abs=5)
    for token in (old.token, new.token):
        async with gw.client(headers={"Authorization": f"Bearer {token}"}) as client:
            assert (await client.get("/api/v1/calls")).status_code == 200
    # Eight days later only the new key works.
    gw.auth.clock = lambda: time.time() + 8 * DAY_S
    async with gw.client(headers={"Authorization": f"Bearer {old.token}"}) as client:
        assert (await client.get("/api/v1/calls")).status_code == 401
    async with gw.client(headers={"Authorization": f"Bearer {new.token}"}) as client:
        assert (await client.get("/api/v1/calls")).status_code == 200


def test_key_policy_states() -> None:
    policy = KeyPolicy()
    t0 = 1_000_000.0

    def state(days: float, expires: float | None = None, revoked: float | None = None) -> KeyState:
        return policy.state(
            created_at=t0, expires_at=expires, revoked_at=revoked, now=t0 + days * DAY_S
        )

    assert state(1) is KeyState.ACTIVE
    assert state(91) is KeyState.ROTATION_DUE and state(91).accepted
    assert state(97.01) is KeyState.EXPIRED  # 90 days + 7 days' grace, never rotated
    assert state(1, expires=t0 + 7 * DAY_S) is KeyState.GRACE
    assert state(8, expires=t0 + 7 * DAY_S) is KeyState.EXPIRED
    assert state(1, revoked=t0) is KeyState.REVOKED and not state(1, revoked=t0).accepted
    assert policy.grace_end(t0, t0 + DAY_S) == t0 + DAY_S  # rotation never extends a grace


# -- the live event stream -------------------------------------------------------------------------


async def test_event_stream_shows_calls_as_they_come_and_go(gw: Gw) -> None:
    async with gw.client() as client:
        await gw.login(client, "operator-user")
        stream = AsgiStream(gw.app, "/api/v1/events", cookie_header(client))
        try:
            assert await stream.start() == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            assert await stream.events(1) == [("calls", [])]
            call, _ = await gw.runtime.registry.create("telnyx", "v3:abc", "echo")
            ((kind, calls),) = await stream.events(1)
            assert kind == "calls" and [c["call_id"] for c in calls] == [call.call_id]
            await gw.runtime.records.end_call(call, "hangup")
            assert await stream.events(1) == [("calls", [])]
        finally:
            await stream.close()


async def test_event_stream_ends_when_the_session_is_revoked(
    gw: Gw, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "EVENTS_SESSION_CHECK_S", 0.2)
    async with gw.client() as client:
        await gw.login(client, "operator-user")
        stream = AsgiStream(gw.app, "/api/v1/events", cookie_header(client))
        try:
            assert await stream.start() == 200
            assert (await stream.events(1))[0][0] == "calls"
            assert (
                await client.post("/auth/logout", headers=csrf_headers(client))
            ).status_code == 204
            assert await stream.events(1) == [("session-ended", {})]
        finally:
            await stream.close()


async def test_authentication_failures_are_counted_by_reason(gw: Gw) -> None:
    from metrics.registry import AUTH_FAILURES, REGISTRY

    def count() -> float:
        value = REGISTRY.get_sample_value(
            "voicegw_auth_failures_total", {"reason": "authentication required"}
        )
        return value or 0.0

    assert AUTH_FAILURES is not None
    before = count()
    async with gw.client() as client:
        assert (await client.get("/api/v1/calls")).status_code == 401
    assert count() == before + 1
