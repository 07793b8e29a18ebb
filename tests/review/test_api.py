"""``GET /api/v1/security/review`` and ``/api/v1/security/keys``: admins only, every review
audited; operators and auditors are refused (and that refusal audited), anonymous callers
get 401. The app is the real one (``build_app``) with its runtime started."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.records.base import AuditQuery, Role
from gateway.review.checks import CHECKS
from tests.sessions.harness import Gw, running


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gw]:
    async with running(tmp_path) as gw:
        gw.auth.auditor = gw.runtime.auditor  # as start_runtime wires it: refusals audited
        for role in Role:
            await gw.user(f"{role.value}-user", role)
        yield gw


async def _audit(gw: Gw, action: str) -> list:
    return await gw.store.query_audit(AuditQuery(action=action))


async def test_admin_gets_the_review_and_the_call_is_audited(gw: Gw) -> None:
    async with gw.client() as client:
        assert (await gw.login(client, "admin-user")).status_code == 200
        response = await client.get("/api/v1/security/review")
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        report = response.json()
        assert [f["id"] for f in report["findings"]] == [c.id for c in CHECKS]
        assert report["env"] == "development" and report["exit_code"] == 2
        await client.get("/api/v1/security/review")
    events = await _audit(gw, "security.review")
    assert len(events) == 2
    event = events[0]
    assert (event.actor, event.role, event.outcome) == ("admin-user", "admin", "success")
    assert event.detail["exit_code"] == 2
    assert event.detail["fail"] == report["counts"]["fail"]


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.AUDITOR])
@pytest.mark.parametrize("path", ["/api/v1/security/review", "/api/v1/security/keys"])
async def test_other_roles_are_refused(gw: Gw, role: Role, path: str) -> None:
    async with gw.client() as client:
        assert (await gw.login(client, f"{role.value}-user")).status_code == 200
        response = await client.get(path)
        assert response.status_code == 403
        assert "findings" not in response.text
    assert await _audit(gw, "security.review") == []
    denied = await _audit(gw, "auth.denied")
    assert [(e.actor, e.detail["permission"]) for e in denied] == [
        (f"{role.value}-user", "security:review")
    ]


@pytest.mark.parametrize("path", ["/api/v1/security/review", "/api/v1/security/keys"])
async def test_anonymous_callers_get_401(gw: Gw, path: str) -> None:
    async with gw.client() as client:
        response = await client.get(path)
    assert response.status_code == 401
    assert await _audit(gw, "security.review") == []


async def test_admin_gets_the_key_inventory(gw: Gw) -> None:
    async with gw.client() as client:
        await gw.login(client, "admin-user")
        response = await client.get("/api/v1/security/keys")
    assert response.status_code == 200
    inventory = response.json()
    kinds = {row["kind"]: row for row in inventory["kinds"]}
    assert set(kinds) == {"signing", "data"}  # no API keys, no secondary Twilio token
    assert 89 * 86400 < kinds["signing"]["rotation_due_in_s"] <= 90 * 86400
    assert inventory["policy"] == {
        "rotation_period_days": 90.0,
        "notice_days": 14.0,
        "twilio_secondary_window_days": 7.0,
    }
    assert {k["status"] for k in inventory["keys"]} == {"active"}
