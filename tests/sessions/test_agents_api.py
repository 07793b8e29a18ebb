"""/api/v1/agents and /api/v1/agents/reload: who may read and reload the agent profiles, what
the answers hold (the list of profiles and where they come from), and that no phone number
of the file (the agents' numbers, a transfer destination) ever leaves in clear."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.cli.admin import create_api_key
from gateway.records.base import AuditQuery, Role
from tests.sessions.harness import Gw, csrf_headers, running

SUPPORT = "+15550100111"
SALES = "+15550100122"
BILLING = "+15550100133"  # a transfer destination: never shown, not even masked
NUMBERS = (SUPPORT, SALES, BILLING)

GOOD = f"""
[agents.support]
default = true
numbers = ["{SUPPORT}"]
providers = ["echo"]
instructions = "You answer the support line."
greeting = "Support, hello."
transfer = {{ billing = "{BILLING}", desk = "sip:desk@pbx.example.com" }}
"""

SALES_AGENT = f"""
[agents.sales]
numbers = ["{SALES}"]
providers = ["echo"]
instructions = "You answer the sales line."
end_call = false
"""


def agents_file(tmp_path: Path) -> Path:
    path = tmp_path / "agents.toml"
    path.write_text(GOOD)
    return path


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gw]:
    env = {"VOICEGW_AGENTS_FILE": str(agents_file(tmp_path))}
    async with running(tmp_path, env=env) as gw:
        for role in Role:
            await gw.user(f"{role.value}-user", role)
        yield gw


async def signed_in(gw: Gw, client: httpx.AsyncClient, role: Role) -> None:
    assert (await gw.login(client, f"{role.value}-user")).status_code == 200


def assert_no_number(response: httpx.Response) -> None:
    for number in NUMBERS:
        assert number not in response.text
        assert number[1:] not in response.text  # nor its digits without the +
    assert "pbx.example.com" not in response.text  # nor a SIP destination


async def test_anonymous_and_garbage_credentials_get_401(gw: Gw) -> None:
    async with gw.client() as client:
        for auth in (None, "Bearer", "Bearer nope", "Bearer vgk_x_y"):
            headers = {} if auth is None else {"Authorization": auth}
            assert (await client.get("/api/v1/agents", headers=headers)).status_code == 401
            reload = await client.post(
                "/api/v1/agents/reload", headers={**csrf_headers(client), **headers}
            )
            assert reload.status_code == 401
    assert gw.runtime.agents.last_reload is None  # nothing was reloaded


async def test_operator_reads_but_may_not_reload(gw: Gw, tmp_path: Path) -> None:
    async with gw.client() as client:
        await signed_in(gw, client, Role.OPERATOR)
        read = await client.get("/api/v1/agents")
        assert read.status_code == 200
        body = read.json()
        assert body["source"] == "file" and body["count"] == 1
        assert body["digest"] == gw.runtime.agents.book.digest
        assert body["last_reload"] is None
        [support] = body["agents"]
        assert support["name"] == "support" and support["default"] is True
        assert support["numbers"] == ["+1********11"]
        assert support["providers"] == ["echo"]
        assert support["transfer"] == ["billing", "desk"]
        assert support["greeting"] == "Support, hello."
        assert_no_number(read)

        (tmp_path / "agents.toml").write_text(GOOD + SALES_AGENT)
        refused = await client.post("/api/v1/agents/reload", headers=csrf_headers(client))
        assert refused.status_code == 403
    assert gw.runtime.agents.last_reload is None
    assert set(gw.runtime.agents.book.profiles) == {"support"}


async def test_operator_api_key_reads_but_may_not_reload(gw: Gw) -> None:
    new, _ = await create_api_key(gw.store, "svc-operator", Role.OPERATOR)
    bearer = {"Authorization": f"Bearer {new.token}"}
    async with gw.client() as client:
        assert (await client.get("/api/v1/agents", headers=bearer)).status_code == 200
        assert (await client.post("/api/v1/agents/reload", headers=bearer)).status_code == 403


async def test_auditor_may_neither_read_nor_reload(gw: Gw) -> None:
    async with gw.client() as client:
        await signed_in(gw, client, Role.AUDITOR)
        assert (await client.get("/api/v1/agents")).status_code == 403
        reload = await client.post("/api/v1/agents/reload", headers=csrf_headers(client))
        assert reload.status_code == 403
    assert gw.runtime.agents.last_reload is None


async def test_reload_without_the_csrf_header_is_refused(gw: Gw, tmp_path: Path) -> None:
    async with gw.client() as client:
        await signed_in(gw, client, Role.ADMIN)
        (tmp_path / "agents.toml").write_text(GOOD + SALES_AGENT)
        forged = await client.post("/api/v1/agents/reload", headers={"Origin": "https://gw.test"})
        assert forged.status_code == 403
    assert set(gw.runtime.agents.book.profiles) == {"support"}


async def test_admin_reloads_a_good_file_then_a_bad_one(gw: Gw, tmp_path: Path) -> None:
    path = tmp_path / "agents.toml"
    async with gw.client() as client:
        await signed_in(gw, client, Role.ADMIN)
        path.write_text(GOOD + SALES_AGENT)
        applied = await client.post("/api/v1/agents/reload", headers=csrf_headers(client))
        assert applied.status_code == 200
        body = applied.json()
        assert body["ok"] is True and body["count"] == 2
        assert [a["name"] for a in body["agents"]] == ["support", "sales"]  # default first
        assert body["agents"][1]["end_call"] is False
        assert body["last_reload"]["ok"] is True and body["last_reload"]["problems"] == 0
        assert_no_number(applied)
        digest = body["digest"]

        # The sales agent claims the support number: the problem names it by place, not value.
        path.write_text(GOOD + SALES_AGENT.replace(SALES, SUPPORT))
        refused = await client.post("/api/v1/agents/reload", headers=csrf_headers(client))
        assert refused.status_code == 422
        problems = refused.json()
        assert problems["ok"] is False
        assert problems["problems"] == [
            f"{path}:11: agents.sales.numbers[0]: already listed by agent 'support'"
        ]
        assert_no_number(refused)

        # The profiles in force stay; the refusal is the last reload.
        after = (await client.get("/api/v1/agents")).json()
        assert after["digest"] == digest and after["count"] == 2
        assert after["last_reload"]["ok"] is False
        assert after["last_reload"]["problems"] == len(problems["problems"])

    # Every load is audited with the SHA-256 of the file as read, a refused one too.
    await gw.runtime.auditor.flush()
    events = await gw.runtime.store.query_audit(AuditQuery(action="agents."))
    start, good, bad = events[-3:]
    assert (start.action, start.outcome) == ("agents.load", "success")
    assert (good.action, good.outcome, bad.action, bad.outcome) == (
        "agents.reload", "success", "agents.reload", "failure"
    )  # fmt: skip
    assert good.detail["file_sha256"] == good.detail["in_force_sha256"] == digest
    assert bad.detail["file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() != digest
    assert bad.detail["in_force_sha256"] == digest and bad.entity_id == digest[:16]


async def test_readyz_reports_the_count_of_agents(gw: Gw) -> None:
    async with gw.client() as client:
        report = (await client.get("/readyz")).json()
    assert report["agents"]["source"] == "file" and report["agents"]["count"] == 1


async def test_built_in_agent_without_a_file(tmp_path: Path) -> None:
    async with running(tmp_path) as gw:
        await gw.user("admin-user", Role.ADMIN)
        async with gw.client() as client:
            await signed_in(gw, client, Role.ADMIN)
            body = (await client.get("/api/v1/agents")).json()
            assert body["source"] == "built-in" and body["count"] == len(body["agents"]) == 1
            assert body["agents"][0]["default"] is True
            reload = await client.post("/api/v1/agents/reload", headers=csrf_headers(client))
            assert reload.status_code == 422
            assert reload.json()["problems"] == [
                "no agents file is configured (VOICEGW_AGENTS_FILE)"
            ]
